"""The metric functions against hand-computed values."""

from __future__ import annotations

import math

import pytest

from evaluation import metrics as m


def test_js_divergence_of_equal_and_disjoint_distributions():
    assert m.js_divergence({"a": 1}, {"a": 2}) == 0
    assert m.js_divergence({"a": 1}, {"b": 1}) == pytest.approx(1.0)


def test_js_divergence_hand_computed():
    # p = (1/2, 1/2, 0), q = (1/2, 0, 1/2), M = (1/2, 1/4, 1/4):
    # KL(p||M) = 1/2*log2(1) + 1/2*log2(2) = 1/2, same for q -> JS = 1/2
    assert m.js_divergence({"x": 1, "y": 1}, {"x": 1, "z": 1}) == pytest.approx(0.5)


def test_rouge_l_on_chinese_without_spaces():
    # units: 今 天 天 气 很 好 / 今 天 气 好 -> LCS 今天气好 = 4; P = 4/4, R = 4/6 -> F = 0.8
    assert m.rouge_l("今天气好", "今天天气很好") == pytest.approx(0.8)


def test_rouge_l_on_english_words():
    # LCS(the cat sat, the cat on the mat sat) = 3; P = 1, R = 3/6 -> F = 2/3
    assert m.rouge_l("The cat sat", "the cat on the mat sat") == pytest.approx(2 / 3)


def test_char_f1_on_chinese_ignores_punctuation():
    # 保修两年 vs 保修期为两年: common 保修两年 = 4; P = 4/4, R = 4/6 -> F = 0.8
    assert m.char_f1("保修两年。", "保修期为两年") == pytest.approx(0.8)
    assert m.char_f1("", "") == 1.0 and m.char_f1("甲", "乙") == 0.0


def test_exact_match_normalises_case_and_spaces():
    assert m.exact_match("  Call 800  ", "call 800") == 1.0
    assert m.exact_match("Call", "call now") == 0.0


def test_style_indicators_of_a_fixed_english_text():
    text = "I like tea. I like it!\n\nTea is good."
    # sentences: "I like tea" (3), "I like it" (3), "Tea is good" (3)
    assert m.sentence_lengths([text]) == [3, 3, 3]
    # non-space chars: 30, punctuation: . ! . -> 3/30
    assert m.punctuation_ratio([text]) == pytest.approx(3 / 27)
    # words: i like tea i like it tea is good -> 9 tokens, 6 types
    assert m.type_token_ratio([text]) == pytest.approx(6 / 9)
    # paragraphs: 6 units and 3 units
    assert m.average_paragraph_length([text]) == pytest.approx(4.5)


def test_style_indicators_of_a_fixed_chinese_text():
    text = "我爱喝茶。茶很好！"
    # sentences: 我爱喝茶 (4 characters), 茶很好 (3)
    assert m.sentence_lengths([text]) == [4, 3]
    # 9 characters, 2 of them punctuation
    assert m.punctuation_ratio([text]) == pytest.approx(2 / 9)
    summary = m.distribution_summary(m.sentence_lengths([text]))
    assert summary["mean"] == 3.5 and summary["histogram"]["1-5"] == 2
    assert "茶" in m.word_frequencies([text])


def test_style_distance_is_zero_for_the_reference_itself():
    ref = ["The warranty lasts two years.", "保修期為兩年。"]
    assert m.style_distance(ref, ref)["overall"] == pytest.approx(0)
    report = m.style_report({"base": ["Hello there hello."], "adapter": ref}, ref)
    assert report["adapter"]["distance"]["overall"] < report["base"]["distance"]["overall"]


def test_win_rate_counts_ties_as_half_and_bounds_the_interval():
    result = m.win_rate(6, 2, 2)
    assert result["win_rate"] == pytest.approx(0.7)
    low, high = result["ci95"]
    assert 0 < low < 0.7 < high < 1


def test_perplexity_equals_exp_of_the_mean_token_loss(tiny_model_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ml.data import IGNORE_INDEX
    from tests.training.tiny import chat_records

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    examples, _ = m.encode_for_loss(tok, chat_records(5), max_seq_length=128)
    result = m.loss_on_examples(model, examples, pad_token_id=tok.pad_token_id, batch_size=2, device="cpu")
    # independently: one example at a time, unbatched, summing token losses by hand
    total, count = 0.0, 0
    with torch.no_grad():
        for ex in examples:
            logits = model(input_ids=torch.tensor([ex.input_ids])).logits[0, :-1]
            labels = torch.tensor(ex.labels[1:])
            keep = labels != IGNORE_INDEX
            total += torch.nn.functional.cross_entropy(logits[keep], labels[keep], reduction="sum").item()
            count += int(keep.sum())
    assert result["tokens"] == count
    assert result["loss"] == pytest.approx(total / count, rel=1e-4)
    assert result["perplexity"] == pytest.approx(math.exp(total / count), rel=1e-4)


def test_max_seq_length_truncates_the_evaluated_tokens(tiny_model_dir):
    from transformers import AutoTokenizer

    from tests.training.tiny import chat_records

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    full, _ = m.encode_for_loss(tok, chat_records(2), max_seq_length=None)
    cut_at = len(full[0]) - 3
    cut, report = m.encode_for_loss(tok, chat_records(2), max_seq_length=cut_at)
    assert report["truncated"] == 2 and all(len(ex) <= cut_at for ex in cut)


def test_word_comparison_lists_the_reference_top_words_with_each_outputs_frequency():
    reference = ["tea tea tea coffee"]
    rows = m.word_comparison({"base": ["water water"], "adapter": ["tea coffee coffee tea"]}, reference, top_k=2)
    # reference: tea 3/4, coffee 1/4; base has neither; adapter: tea 2/4, coffee 2/4
    assert rows == [{"word": "tea", "reference": 0.75, "base": 0.0, "adapter": 0.5},
                    {"word": "coffee", "reference": 0.25, "base": 0.0, "adapter": 0.5}]
    # Chinese is segmented into words (jieba), not characters.
    # words: 我们 喜欢 喝茶 我们 喜欢 咖啡 (punctuation is not a word); ties in word order
    zh = m.word_comparison({"adapter": ["我们喜欢喝茶"]}, ["我们喜欢喝茶。我们喜欢咖啡。"], top_k=3)
    assert [(r["word"], r["reference"], r["adapter"]) for r in zh] == [
        ("喜欢", pytest.approx(1 / 3), pytest.approx(1 / 3)), ("我们", pytest.approx(1 / 3), pytest.approx(1 / 3)),
        ("咖啡", pytest.approx(1 / 6), 0.0)]
