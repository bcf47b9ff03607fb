"""The classifier's data, metrics and inference (plain module: no Django; torch, transformers and peft only inside
the inference functions): records, the stratified split, label maps, class weights, accuracy / macro-F1 /
per-class scores, and a trained adapter loaded with plain PEFT and its predictions. The web process
(``classifier.services``, ``classifier.predict``, which loads a model only when a prediction is first asked for),
evaluation and the recipe (``ml.train.classifier``) share it."""

from __future__ import annotations

import json
import random
from pathlib import Path

from ml.errors import DATASET_ERROR, TrainingError
from ml.model import load_sequence_classifier, load_tokenizer, tokenizer_source
from ml.train.checkpoints import ADAPTER_CONFIG

LABEL_MAP_FILE = "label_map.json"  # in every classifier adapter folder: {"id2label": ..., "label2id": ...}


def read_jsonl(path: str | Path) -> list[dict]:
    with Path(path).open("rb") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def clean_records(records: list[dict], *, where: str) -> list[dict]:
    out = []
    for i, rec in enumerate(records, 1):
        text, label = rec.get("text"), rec.get("label")
        if not isinstance(text, str) or not text.strip() or label is None or str(label).strip() == "":
            raise TrainingError(DATASET_ERROR, f"{where} record {i} needs a non-empty 'text' and 'label'.")
        out.append({"text": text, "label": str(label)})
    return out


def load_records(source: str | Path | list[dict], *, where: str) -> list[dict]:
    if isinstance(source, list):
        return clean_records(source, where=where)
    try:
        return clean_records(read_jsonl(source), where=where)
    except (OSError, ValueError) as exc:
        raise TrainingError(DATASET_ERROR, f"The {where} data could not be read: {exc}") from None


def label_map_from(records: list[dict]) -> dict[int, str]:
    """id -> label, labels sorted so the map is the same however the file is ordered."""
    return dict(enumerate(sorted({str(r["label"]) for r in records})))


def label_map_to_json(id2label: dict[int, str]) -> dict[str, str]:
    return {str(k): v for k, v in sorted(id2label.items())}


def label_map_from_json(data: dict) -> dict[int, str]:
    return {int(k): str(v) for k, v in data.items()}


def label_map_file(id2label: dict[int, str]) -> dict:
    """What ``LABEL_MAP_FILE`` holds."""
    label_json = label_map_to_json(id2label)
    return {"id2label": label_json, "label2id": {v: int(k) for k, v in label_json.items()}}


def read_label_map(adapter_dir: str | Path) -> dict[int, str]:
    labels = json.loads((Path(adapter_dir) / LABEL_MAP_FILE).read_text(encoding="utf-8"))
    return label_map_from_json(labels["id2label"])


def stratified_split(records: list[dict], *, val_ratio: float, seed: int) -> tuple[list[dict], list[dict]]:
    """Hold out ``val_ratio`` of each class (at least one where a class has two or more examples).

    The same records, ratio and seed always give the same split, whatever the order of the classes.
    """
    by_label: dict[str, list[int]] = {}
    for i, rec in enumerate(records):
        by_label.setdefault(str(rec["label"]), []).append(i)
    val_idx: set[int] = set()
    for label in sorted(by_label):
        idx = by_label[label]
        if len(idx) < 2:
            continue
        n_val = min(len(idx) - 1, max(1, round(len(idx) * val_ratio)))
        shuffled = list(idx)
        random.Random(f"{seed}:{label}").shuffle(shuffled)
        val_idx.update(shuffled[:n_val])
    train = [r for i, r in enumerate(records) if i not in val_idx]
    val = [r for i, r in enumerate(records) if i in val_idx]
    return train, val


def class_weights(counts: dict[int, int], n_labels: int, mode: str) -> list[float] | None:
    """Inverse-frequency weights (``n / (k * n_c)``), or None for an unweighted loss."""
    present = [counts.get(i, 0) for i in range(n_labels)]
    nonzero = [c for c in present if c]
    if mode == "none" or not nonzero:
        return None
    if mode == "auto" and max(nonzero) <= 1.5 * min(nonzero):
        return None
    total = sum(present)
    return [total / (n_labels * c) if c else 0.0 for c in present]


def confusion_matrix(y_true: list[int], y_pred: list[int], n_labels: int) -> list[list[int]]:
    """Rows: true class; columns: predicted class."""
    matrix = [[0] * n_labels for _ in range(n_labels)]
    for t, p in zip(y_true, y_pred, strict=True):
        matrix[t][p] += 1
    return matrix


def metrics_from_confusion(matrix: list[list[int]], labels: list[str]) -> dict:
    """Accuracy, macro-F1 and per-class precision/recall/F1/support (0 where undefined)."""
    n = len(labels)
    total = sum(sum(row) for row in matrix)
    correct = sum(matrix[i][i] for i in range(n))
    per_class = {}
    f1s = []
    for i, label in enumerate(labels):
        tp = matrix[i][i]
        predicted = sum(matrix[r][i] for r in range(n))
        support = sum(matrix[i])
        precision = tp / predicted if predicted else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[label] = {"precision": precision, "recall": recall, "f1": f1, "support": support}
        f1s.append(f1)
    return {"accuracy": correct / total if total else 0.0, "macro_f1": sum(f1s) / n if n else 0.0,
            "per_class": per_class, "confusion_matrix": matrix, "labels": list(labels), "support": total}


def classification_metrics(y_true: list[int], y_pred: list[int], labels: list[str]) -> dict:
    return metrics_from_confusion(confusion_matrix(y_true, y_pred, len(labels)), labels)


# ------------------------------------------------------------------------------------------------- inference

def load_for_inference(adapter_dir: str | Path, base_model_path: str | Path | None = None, *, device: str = "cpu"):
    """(model, tokenizer, id2label) with plain PEFT, as any user would load the adapter."""
    from peft import PeftModel

    adapter_dir = Path(adapter_dir)
    id2label = read_label_map(adapter_dir)
    if base_model_path is None:
        base_model_path = json.loads((adapter_dir / ADAPTER_CONFIG).read_text())["base_model_name_or_path"]
    base = load_sequence_classifier(base_model_path, id2label=id2label)
    model = PeftModel.from_pretrained(base, str(adapter_dir)).to(device).eval()
    tokenizer = load_tokenizer(tokenizer_source(adapter_dir, base_model_path))
    return model, tokenizer, id2label


def predict_texts(model, tokenizer, id2label: dict[int, str], texts: list[str], *, max_length: int = 512,
                  device: str = "cpu", batch_size: int = 64) -> list[dict]:
    """label, confidence and per-class probabilities for each text, in order."""
    import torch

    max_length = min(max_length, getattr(model.config, "max_position_embeddings", max_length) or max_length)
    out = []
    with torch.no_grad():
        for i in range(0, len(texts), batch_size):
            chunk = texts[i:i + batch_size]
            enc = tokenizer(chunk, truncation=True, max_length=max_length, padding=True, return_tensors="pt")
            probs = torch.softmax(model(**{k: v.to(device) for k, v in enc.items()}).logits.float(), -1).cpu()
            for row in probs.tolist():
                best = max(range(len(row)), key=row.__getitem__)
                out.append({"label": id2label[best], "confidence": row[best],
                            "probabilities": {id2label[j]: p for j, p in enumerate(row)}})
    return out
