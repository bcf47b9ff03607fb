"""A base model without a chat template: the preview renders exactly what training trains, through the one
fallback rule (``ml.templates``) that "auto" resolves to."""

from __future__ import annotations

import pytest

from datasets_app import render
from ml import data
from ml.hparams import resolve_params
from ml.templates import DEFAULT_FALLBACK, fallback_template
from tests.datasets_app.dataset_helpers import chat_record


def no_template_tokenizer(path):
    tokenizer = render.load_tokenizer(path)
    tokenizer = type(tokenizer).from_pretrained(str(path))  # a fresh copy: load_tokenizer caches its result
    tokenizer.chat_template = None
    return tokenizer


@pytest.mark.parametrize("record", [
    chat_record(1),
    {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello"},
                  {"role": "assistant", "content": "world", "weight": 0}, {"role": "user", "content": "how are you"},
                  {"role": "assistant", "content": "Two years ."}]},
])
def test_preview_and_training_render_a_model_without_a_chat_template_alike(record, tiny_tokenizer_dir):
    resolved = resolve_params({}, n_examples=10, n_tokens_mean=20, n_tokens_max=40, device="cpu",
                              gpu_memory_gb=None, has_chat_template=False, model_max_length=512,
                              has_validation=False)
    assert resolved.template == DEFAULT_FALLBACK
    trained_tokenizer = no_template_tokenizer(tiny_tokenizer_dir)
    data.install_template(trained_tokenizer, resolved.template)
    theirs = data.encode_record(trained_tokenizer, record)

    preview_tokenizer = no_template_tokenizer(tiny_tokenizer_dir)
    ours = render.encode_record(preview_tokenizer, record)
    assert ours.input_ids == theirs.input_ids
    assert ours.trained == [label != data.IGNORE_INDEX for label in theirs.labels]
    rendered = render.render_record(preview_tokenizer, record)
    assert rendered.template == "fallback" and "### Response:" in rendered.text
    assert trained_tokenizer.chat_template == fallback_template()
