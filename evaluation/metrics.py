"""Evaluation metrics as plain functions (no Django): loss/perplexity on assistant tokens, style indicators
for Chinese and English text, and overlap with a reference answer.

Text units: a CJK character counts as one unit and a run of latin letters/digits as one word, so lengths
mean the same thing for Chinese written without spaces and for English. Word-frequency profiles segment
Chinese with jieba.
"""

from __future__ import annotations

import math
import re
import statistics
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence

from ml.data import IGNORE_INDEX, Collator, check_record, encode_record, to_item, truncate_examples

CJK = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
UNIT_RE = re.compile(rf"[{CJK}]|[A-Za-z0-9]+(?:['’][A-Za-z]+)?")
HAS_CJK = re.compile(rf"[{CJK}]")
WORD_RE = re.compile(rf"[{CJK}A-Za-z0-9]")
SENTENCE_END = re.compile(r"[。！？!?；;…]+|\.(?=\s|$)|\n+")
PARAGRAPH_SPLIT = re.compile(r"\n\s*\n")
SENTENCE_BINS = (5, 10, 20, 40)  # histogram upper bounds (units); the last bin is "more than 40"


# ================================================================================================ perplexity

def loss_on_examples(model, examples: Sequence, *, pad_token_id: int | None, batch_size: int = 8,
                     device: str | None = None) -> dict:
    """Mean token cross-entropy over the target (assistant) tokens of ``examples`` (``ml.data.Example``).

    Batched, under ``torch.no_grad``; returns ``{"loss", "perplexity", "tokens"}`` where perplexity is
    ``exp(loss)`` of the token-weighted mean loss.
    """
    import torch  # the evaluation child only

    collate = Collator(pad_token_id)
    device = device or str(next(model.parameters()).device)
    total, tokens = 0.0, 0
    model.eval()
    with torch.no_grad():
        for start in range(0, len(examples), batch_size):
            batch = collate([to_item(ex) for ex in examples[start:start + batch_size]])
            batch = {k: v.to(device) for k, v in batch.items()}
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                           use_cache=False).logits.float()
            labels = batch["shift_labels"]
            total += torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1),
                                                       ignore_index=IGNORE_INDEX, reduction="sum").item()
            tokens += int((labels != IGNORE_INDEX).sum().item())
    loss = total / tokens if tokens else float("nan")
    return {"loss": loss, "perplexity": math.exp(loss) if tokens else float("nan"), "tokens": tokens}


def encode_for_loss(tokenizer, records: Iterable[dict], *, max_seq_length: int | None) -> tuple[list, dict]:
    """Tokenise records with the training masks (assistant tokens only) and truncate to ``max_seq_length``."""
    examples = []
    for i, record in enumerate(records):
        check_record(record, i)
        examples.append(encode_record(tokenizer, record))
    out, report = truncate_examples(examples, max_seq_length)
    return out, report.to_dict()


def relative_change(before: float, after: float) -> float | None:
    """(after - before) / before; negative when the adapter lowers perplexity."""
    if not before or math.isnan(before) or math.isnan(after):
        return None
    return (after - before) / before


# ================================================================================================ text units

def units(text: str) -> list[str]:
    """CJK characters and latin words, lower-cased."""
    return [u.lower() for u in UNIT_RE.findall(text or "")]


def words(text: str) -> list[str]:
    """Words for frequency profiles: jieba for text with CJK characters, latin words otherwise."""
    if HAS_CJK.search(text or ""):
        import jieba

        jieba.setLogLevel(60)
        return [w.lower() for w in jieba.lcut(text) if WORD_RE.search(w)]
    return units(text)


def sentences(text: str) -> list[str]:
    return [s for s in (p.strip() for p in SENTENCE_END.split(text or "")) if units(s)]


def paragraphs(text: str) -> list[str]:
    return [p for p in (q.strip() for q in PARAGRAPH_SPLIT.split(text or "")) if units(p)]


def is_punctuation(ch: str) -> bool:
    return unicodedata.category(ch).startswith("P")


# ================================================================================================ style

def punctuation_ratio(texts: Iterable[str]) -> float:
    """Punctuation characters / non-whitespace characters."""
    chars = [c for t in texts for c in t if not c.isspace()]
    return sum(1 for c in chars if is_punctuation(c)) / len(chars) if chars else 0.0


def type_token_ratio(texts: Iterable[str]) -> float:
    toks = [w for t in texts for w in words(t)]
    return len(set(toks)) / len(toks) if toks else 0.0


def sentence_lengths(texts: Iterable[str]) -> list[int]:
    return [len(units(s)) for t in texts for s in sentences(t)]


def length_histogram(lengths: Sequence[int], bins: Sequence[int] = SENTENCE_BINS) -> dict[str, int]:
    labels = []
    low = 1
    for high in bins:
        labels.append(f"{low}-{high}")
        low = high + 1
    labels.append(f">{bins[-1]}")
    counts = dict.fromkeys(labels, 0)
    for n in lengths:
        idx = next((i for i, high in enumerate(bins) if n <= high), len(bins))
        counts[labels[idx]] += 1
    return counts


def distribution_summary(lengths: Sequence[int]) -> dict:
    if not lengths:
        return {"count": 0, "mean": 0.0, "median": 0.0, "stdev": 0.0, "histogram": length_histogram([])}
    return {"count": len(lengths), "mean": statistics.fmean(lengths), "median": float(statistics.median(lengths)),
            "stdev": statistics.pstdev(lengths), "histogram": length_histogram(lengths)}


def average_paragraph_length(texts: Iterable[str]) -> float:
    lengths = [len(units(p)) for t in texts for p in paragraphs(t)]
    return statistics.fmean(lengths) if lengths else 0.0


def word_frequencies(texts: Iterable[str]) -> dict[str, float]:
    counts = Counter(w for t in texts for w in words(t))
    total = sum(counts.values())
    return {w: n / total for w, n in counts.items()} if total else {}


def js_divergence(p: dict[str, float], q: dict[str, float]) -> float:
    """Jensen–Shannon divergence in bits (0 for equal distributions, 1 for disjoint ones)."""
    keys = set(p) | set(q)
    sp, sq = sum(p.values()) or 1.0, sum(q.values()) or 1.0

    def kl(a: dict, sa: float, m: dict) -> float:
        return sum((a.get(k, 0) / sa) * math.log2((a.get(k, 0) / sa) / m[k]) for k in keys if a.get(k, 0) > 0)

    m = {k: 0.5 * (p.get(k, 0) / sp + q.get(k, 0) / sq) for k in keys}
    return max(0.0, 0.5 * kl(p, sp, m) + 0.5 * kl(q, sq, m))


def style_profile(texts: Sequence[str], *, top_k: int = 20) -> dict:
    """Every style indicator of one corpus (a list of outputs)."""
    freqs = word_frequencies(texts)
    top = sorted(freqs.items(), key=lambda kv: (-kv[1], kv[0]))[:top_k]
    return {
        "sentence_length": distribution_summary(sentence_lengths(texts)),
        "punctuation_ratio": punctuation_ratio(texts),
        "type_token_ratio": type_token_ratio(texts),
        "average_paragraph_length": average_paragraph_length(texts),
        "top_words": [[w, f] for w, f in top],
    }


def _rel_diff(value: float, ref: float) -> float:
    if ref == 0:
        return 0.0 if value == 0 else 1.0
    return abs(value - ref) / abs(ref)


def style_distance(texts: Sequence[str], reference: Sequence[str]) -> dict:
    """How far one corpus is from the reference: JS divergence of word frequencies and relative differences of
    the scalar indicators; ``overall`` is their mean (0 = same style)."""
    a, r = style_profile(texts), style_profile(reference)
    parts = {
        "word_js_divergence": js_divergence(word_frequencies(texts), word_frequencies(reference)),
        "sentence_length": _rel_diff(a["sentence_length"]["mean"], r["sentence_length"]["mean"]),
        "punctuation_ratio": _rel_diff(a["punctuation_ratio"], r["punctuation_ratio"]),
        "type_token_ratio": _rel_diff(a["type_token_ratio"], r["type_token_ratio"]),
        "average_paragraph_length": _rel_diff(a["average_paragraph_length"], r["average_paragraph_length"]),
    }
    parts["overall"] = statistics.fmean(parts.values())
    return parts


def style_report(outputs: dict[str, Sequence[str]], reference: Sequence[str]) -> dict:
    """``{"reference": profile, "<name>": {**profile, "distance": {...}}}`` for each named output corpus."""
    report = {"reference": style_profile(reference)}
    for name, texts in outputs.items():
        report[name] = {**style_profile(texts), "distance": style_distance(texts, reference)}
    return report


def word_comparison(outputs: dict[str, Sequence[str]], reference: Sequence[str], *, top_k: int = 15) -> list[dict]:
    """The reference's ``top_k`` most frequent words with their relative frequency in the reference and in each
    output corpus: ``[{"word": w, "reference": f, "<name>": f, ...}]`` (what the comparison chart draws)."""
    ref = word_frequencies(reference)
    freqs = {name: word_frequencies(texts) for name, texts in outputs.items()}
    top = sorted(ref.items(), key=lambda kv: (-kv[1], kv[0]))[:top_k]
    return [{"word": w, "reference": f, **{name: fq.get(w, 0.0) for name, fq in freqs.items()}} for w, f in top]


# ================================================================================================ overlap

def normalize(text: str) -> str:
    return " ".join((text or "").split()).lower()


def exact_match(prediction: str, reference: str) -> float:
    return 1.0 if normalize(prediction) == normalize(reference) else 0.0


def _chars(text: str) -> list[str]:
    return [c for c in normalize(text) if not c.isspace() and not is_punctuation(c)]


def _f1(pred: Sequence[str], ref: Sequence[str]) -> float:
    common = sum((Counter(pred) & Counter(ref)).values())
    if not pred or not ref or not common:
        return 1.0 if not pred and not ref else 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def char_f1(prediction: str, reference: str) -> float:
    """F1 of the character multisets (whitespace and punctuation ignored): works without word spaces."""
    return _f1(_chars(prediction), _chars(reference))


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F1 over units (each CJK character, each latin word)."""
    pred, ref = units(prediction), units(reference)
    if not pred or not ref:
        return 1.0 if not pred and not ref else 0.0
    lcs = lcs_length(pred, ref)
    if not lcs:
        return 0.0
    precision, recall = lcs / len(pred), lcs / len(ref)
    return 2 * precision * recall / (precision + recall)


def overlap(prediction: str, reference: str) -> dict[str, float]:
    return {"exact_match": exact_match(prediction, reference), "char_f1": char_f1(prediction, reference),
            "rouge_l": rouge_l(prediction, reference)}


def mean_overlap(pairs: Iterable[tuple[str, str]]) -> dict[str, float]:
    rows = [overlap(p, r) for p, r in pairs]
    if not rows:
        return {"exact_match": 0.0, "char_f1": 0.0, "rouge_l": 0.0, "count": 0}
    return {**{k: statistics.fmean(row[k] for row in rows) for k in rows[0]}, "count": len(rows)}


# ================================================================================================ A/B review

def win_rate(wins: int, losses: int, ties: int) -> dict:
    """Adapter win rate (ties count half) with a 95% Wilson interval over the decisive-plus-tie votes."""
    n = wins + losses + ties
    if not n:
        return {"votes": 0, "wins": 0, "losses": 0, "ties": 0, "win_rate": None, "ci95": None}
    p = (wins + 0.5 * ties) / n
    z = 1.96
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return {"votes": n, "wins": wins, "losses": losses, "ties": ties, "win_rate": p,
            "ci95": [max(0.0, centre - half), min(1.0, centre + half)]}


def pairwise_agreement(votes_per_pair: Iterable[Sequence[str]]) -> float | None:
    """Share of reviewer pairs that agree, over pairs with more than one vote (None when there are none)."""
    agree = total = 0
    for votes in votes_per_pair:
        for i in range(len(votes)):
            for j in range(i + 1, len(votes)):
                total += 1
                agree += votes[i] == votes[j]
    return agree / total if total else None
