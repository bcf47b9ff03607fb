"""The classifier recipe on every encoder family it claims: tiny random configs built here, no hub.

For each: LoRA reaches the attention and feed-forward layers under the architecture's own names (never the
head, which trains in full), a short run writes an adapter that plain PEFT loads, and it classifies. One WordPiece
tokenizer serves every family: the recipe only sees token ids, and each config is given its pad id.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from ml import classifier_data as data  # noqa: E402
from ml.train import classifier as recipe  # noqa: E402
from tests.classifier.tiny import build_tokenizer, records  # noqa: E402

SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
             max_position_embeddings=80, initializer_range=0.2)
ENCODERS = {
    "bert": ("BertConfig", SMALL),
    "roberta": ("RobertaConfig", SMALL),
    "xlm-roberta": ("XLMRobertaConfig", SMALL),
    "distilbert": ("DistilBertConfig", dict(dim=32, n_layers=2, n_heads=2, hidden_dim=64, max_position_embeddings=80,
                                            initializer_range=0.2)),
    "deberta-v2": ("DebertaV2Config", dict(SMALL, relative_attention=True, pos_att_type=["p2c", "c2p"],
                                           position_buckets=16)),
}
# LoRA's layers per family: attention query/key/value and output, feed-forward in and out
ADAPTED = {
    "distilbert": {"q_lin", "k_lin", "v_lin", "out_lin", "lin1", "lin2"},
    "deberta-v2": {"query_proj", "key_proj", "value_proj", "dense"},
}
HEADS = {"distilbert": ["classifier", "pre_classifier"], "deberta-v2": ["classifier", "pooler"]}
# No early stopping: on a 6-question validation split it ends some of these tiny random models' runs at epoch 5,
# before they learn (the matrix checks that each family trains, not the stopping rule).
FAST = {"n_epochs": 8, "batch_size": 6, "learning_rate": 1e-2, "lora_r": 8, "lora_alpha": 16, "lora_dropout": 0.0,
        "early_stopping_patience": 0, "seed": 3}


@pytest.fixture(scope="module")
def saved_encoders(tmp_path_factory) -> dict[str, Path]:
    import transformers

    tokenizer = build_tokenizer()
    root = tmp_path_factory.mktemp("encoders")
    out = {}
    for name, (class_name, kwargs) in ENCODERS.items():
        config = getattr(transformers, class_name)(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                                                   **kwargs)
        torch.manual_seed(0)
        folder = root / name
        transformers.AutoModel.from_config(config).save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        out[name] = folder
    return out


@pytest.mark.parametrize("name", list(ENCODERS))
def test_default_targets_resolve_to_each_encoders_own_layers(name, saved_encoders):
    from ml.classifier_params import validate_params

    model, _ = recipe.load_model(saved_encoders[name], {0: "a", 1: "b"}, params=validate_params({}))
    adapted = {n for n, m in model.named_modules() if hasattr(m, "lora_A")}
    assert {n.rsplit(".", 1)[-1] for n in adapted} >= ADAPTED.get(name, {"query", "key", "value", "dense"})
    assert not any(".classifier." in n or ".pre_classifier" in n for n in adapted)  # the head trains in full
    config = model.peft_config["default"]
    assert set(HEADS.get(name, ["classifier"])) <= set(config.modules_to_save)


@pytest.mark.parametrize("name", list(ENCODERS))
def test_short_run_writes_an_adapter_plain_peft_classifies_with(name, saved_encoders, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    rows = records(12)
    result = recipe.train_classifier(recipe.ClassifierSpec(
        base_model_path=saved_encoders[name], train=rows, run_dir=tmp_path / "run", adapter_dir=tmp_path / "adapter",
        params=dict(FAST), device="cpu"))
    assert result.status == "succeeded" and (result.adapter_dir / "adapter_model.safetensors").is_file()

    # plain PEFT, as a user would load it
    labels = json.loads((result.adapter_dir / data.LABEL_MAP_FILE).read_text())["id2label"]
    id2label = {int(k): v for k, v in labels.items()}
    base = AutoModelForSequenceClassification.from_pretrained(
        str(saved_encoders[name]), num_labels=len(id2label), id2label=id2label,
        label2id={v: k for k, v in id2label.items()})
    model = PeftModel.from_pretrained(base, str(result.adapter_dir)).eval()
    tok = AutoTokenizer.from_pretrained(str(result.adapter_dir))
    texts = [r["text"] for r in rows]
    with torch.no_grad():
        logits = model(**tok(texts, padding=True, return_tensors="pt")).logits
    predicted = [id2label[i] for i in logits.argmax(-1).tolist()]
    accuracy = sum(p == r["label"] for p, r in zip(predicted, rows, strict=True)) / len(rows)
    assert accuracy > 0.6  # three classes: chance is a third
