"""A tiny 2-layer BERT with a WordPiece tokenizer built in the test (seconds, no download)."""

from __future__ import annotations

import json
from pathlib import Path

WORDS = {
    "data": "how do i create a hive table in the data platform spark job failed query sql warehouse partition "
            "schema kafka topic etl pipeline 数 据 表 查 询 任 务",
    "chat": "hello hi good morning thanks how are you nice to meet you bye see you 你 好 谢 谢 早 上",
    "other": "how to cook rice recipe weather tomorrow football match movie song travel 做 饭 天 气 电 影",
}


def build_tokenizer():
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import BertTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    words = sorted({w for text in WORDS.values() for w in text.split()} | set("abcdefghijklmnopqrstuvwxyz?!.,"))
    vocab = {tok: i for i, tok in enumerate(specials + words)}
    tok = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    return BertTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                             sep_token="[SEP]", mask_token="[MASK]", model_max_length=64)


def save_tiny_bert(folder: Path, seed: int = 0) -> Path:
    import torch
    from transformers import BertConfig, BertModel

    tokenizer = build_tokenizer()
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64, initializer_range=0.2)
    folder.mkdir(parents=True, exist_ok=True)
    BertModel(config).save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder


def records(n_per_label: int = 12, *, imbalance: dict[str, int] | None = None) -> list[dict]:
    """Deterministic toy examples: each label's texts use that label's words."""
    out = []
    for label, text in WORDS.items():
        words = text.split()
        n = (imbalance or {}).get(label, n_per_label)
        for i in range(n):
            picked = [words[(i * 3 + k) % len(words)] for k in range(4)]
            out.append({"text": " ".join(picked), "label": label})
    return out


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path
