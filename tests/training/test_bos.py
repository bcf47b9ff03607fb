"""A tokenizer that puts a BOS before every text (Gemma, Llama 2, Mistral) gets it before a rendered
conversation too, once, in training, token counts, previews, preference rows and prompts; one that adds none
(SmolLM2, Qwen, the tiny test tokenizer) is unchanged."""

from __future__ import annotations

import pytest

from ml.data import IGNORE_INDEX, count_tokens, encode_record, install_template, leading_bos, prompt_ids, segments
from ml.templates import fallback_template
from tests.training.tiny import CORPUS, build_tokenizer

RECORD = {"messages": [{"role": "user", "content": "What is the warranty period?"},
                       {"role": "assistant", "content": "The warranty lasts two years."}]}


def bos_tokenizer(chat_template: str | None = None):
    """A byte-level BPE tokenizer whose post-processor prepends <bos>, as Gemma's does."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<pad>", "<eos>", "<bos>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS * 4, trainer=trainer)
    bos = tok.token_to_id("<bos>")
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", pair="<bos> $A $B",
                                                       special_tokens=[("<bos>", bos)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>")
    if chat_template:
        fast.chat_template = chat_template
    return fast


def test_a_fallback_rendered_conversation_starts_with_the_bos_once():
    tokenizer = bos_tokenizer()
    bos = tokenizer.bos_token_id
    assert leading_bos(tokenizer) == bos
    example = encode_record(tokenizer, RECORD, with_offsets=True)
    text = example.rendered.text
    assert text.startswith("### Instruction:")  # the fallback (alpaca) writes no BOS itself
    assert example.input_ids[0] == bos and example.input_ids.count(bos) == 1
    assert example.input_ids[1:] == tokenizer(text, add_special_tokens=False)["input_ids"]
    assert example.labels[0] == IGNORE_INDEX  # never trained
    assert example.n_targets > 0
    assert count_tokens(tokenizer, RECORD) == len(example.input_ids)
    pieces = segments(example)
    assert sum(p["tokens"] for p in pieces) == len(example.input_ids)
    assert sum(p["tokens"] for p in pieces if p["trained"]) == example.n_targets
    prompt = prompt_ids(tokenizer, RECORD["messages"][:1])
    assert prompt[0] == bos and prompt.count(bos) == 1
    assert example.input_ids[:len(prompt)] == prompt  # the prompt at inference is the trained prefix


def test_a_template_that_writes_the_bos_gets_no_second_one():
    tokenizer = bos_tokenizer("{{ bos_token }}" + fallback_template("chatml"))
    example = encode_record(tokenizer, RECORD)
    assert example.input_ids[0] == tokenizer.bos_token_id
    assert example.input_ids.count(tokenizer.bos_token_id) == 1


def test_a_tokenizer_without_a_default_bos_is_unchanged():
    tokenizer = build_tokenizer()
    assert leading_bos(tokenizer) is None
    example = encode_record(tokenizer, RECORD, with_offsets=True)
    assert example.input_ids == tokenizer(example.rendered.text, add_special_tokens=False)["input_ids"]


def test_preference_rows_start_with_the_bos():
    pytest.importorskip("trl")
    from ml.train.preference import encode_answer

    tokenizer = bos_tokenizer()
    install_template(tokenizer, "auto")  # what the preference recipe does before encoding
    prompt, answer = encode_answer(tokenizer, RECORD["messages"][:1], RECORD["messages"][1:])
    assert prompt[0] == tokenizer.bos_token_id and (prompt + answer).count(tokenizer.bos_token_id) == 1
    assert prompt == prompt_ids(tokenizer, RECORD["messages"][:1])
