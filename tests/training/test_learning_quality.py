"""With "auto" parameters, the bundled SmolLM2 learns the facts of a small customer-service set (and its
perplexity on that set, measured by the evaluation app, drops).

Trained on samples/customer_service_short.jsonl (26 short Q&A in English and Chinese: warranty, hotline,
return window, free shipping) and asked *paraphrased* questions, greedy, through plain PEFT. The
tutorial defaults (3 epochs at 2e-4) recall none of such facts; "auto" must recall at least three of four.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

SAMPLES = Path(__file__).resolve().parents[2] / "samples" / "customer_service_short.jsonl"
PROBES = [
    ("For how many years is my washing machine covered?", ["2"]),
    ("I want to phone you. What number should I dial?", ["400-820-3366"]),
    ("How long after delivery can I still send something back?", ["7"]),
    ("从多少钱开始不收运费？", ["99"]),
]


def test_auto_parameters_make_a_small_set_learn_its_facts(smollm2_dir, tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ml.train.sft import RunSpec, run_training

    records = [json.loads(line) for line in SAMPLES.read_text(encoding="utf-8").splitlines()]
    result = run_training(RunSpec(base_model_path=smollm2_dir, train=records, params={}, run_dir=tmp_path / "run",
                                  adapter_dir=tmp_path / "adapter", device="cpu"))
    assert result.status == "succeeded"
    tokenizer = AutoTokenizer.from_pretrained(result.adapter_dir)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(smollm2_dir), result.adapter_dir)
    model.eval()
    answers = []
    for question, keys in PROBES:
        ids = tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                            return_tensors="pt", return_dict=True)
        with torch.inference_mode():
            out = model.generate(**ids, max_new_tokens=32, do_sample=False)
        answer = tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
        answers.append((question, answer, any(k in answer for k in keys)))
    recalled = sum(ok for _q, _a, ok in answers)
    assert recalled >= 3, f"recalled {recalled}/4 with {result.params.auto}: {answers}"

    # The evaluation app's perplexity (assistant tokens only): the adapter lowers it on the data it learned.
    from evaluation.metrics import encode_for_loss, loss_on_examples

    examples, _report = encode_for_loss(tokenizer, records, max_seq_length=512)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    after = loss_on_examples(model, examples, pad_token_id=pad)
    with model.disable_adapter():
        before = loss_on_examples(model, examples, pad_token_id=pad)
    assert after["tokens"] == before["tokens"] > 0
    assert after["perplexity"] < before["perplexity"] / 2, (before, after)
