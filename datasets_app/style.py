"""Build a style corpus from Markdown articles: clean prose, 300–800-token chunks, three instruction templates.

Plain module (no Django); ``services.style_dataset_build`` stores the result as dataset versions.

- Markdown is reduced to prose: front matter, code, tables, images, HTML, link targets and
  headings are removed, emphasis markers dropped, lines of a paragraph joined (without a space
  between Chinese characters).
- Paragraphs are packed into chunks of ``min_tokens``..``max_tokens`` tokens, cut at paragraph
  boundaries where possible, else at sentence ends (``。！？`` as well as ``.!?``); a sentence longer
  than a chunk is cut between words. Tokens are counted with the base model's tokenizer when one is
  given, else as jieba words (which also counts English words sensibly).
- Every chunk yields three examples: *rewrite* (notes -> the passage), *continue* (the opening ->
  the rest) and *summarise-then-expand* (title -> one-sentence summary, then the passage).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CJK = r"\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u3000-\u303f\uff00-\uffef"
_CJK_RE = re.compile(f"[{CJK}]")
_WORD_RE = re.compile(r"\w")
_FENCE_RE = re.compile(r"^\s*(```|~~~)")
_HEADING_RE = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
_SETEXT_RE = re.compile(r"^\s{0,3}(=+|-+)\s*$")
_HR_RE = re.compile(r"^\s{0,3}([-*_])(\s*\1){2,}\s*$")
_TABLE_RE = re.compile(r"^\s*\|.*\|\s*$|^\s*:?-{3,}:?\s*(\|\s*:?-{3,}:?\s*)+\|?\s*$")
_REFDEF_RE = re.compile(r"^\s{0,3}\[[^\]]+\]:\s+\S")
_LIST_RE = re.compile(r"^\s*(?:[-*+]|\d{1,3}[.)])\s+")
_QUOTE_RE = re.compile(r"^\s*(?:>\s?)+")
_IMAGE_RE = re.compile(r"!\[[^\]]*\]\([^)]*\)|!\[[^\]]*\]\[[^\]]*\]")
_LINK_RE = re.compile(r"\[([^\]]+)\]\([^)]*\)|\[([^\]]+)\]\[[^\]]*\]")
_AUTOLINK_RE = re.compile(r"<(?:https?|mailto):[^>]+>")
_FOOTNOTE_RE = re.compile(r"\[\^[^\]]+\]")
_HTML_RE = re.compile(r"<!--.*?-->|</?[A-Za-z][^>]*>", re.S)
_CODE_RE = re.compile(r"`+([^`]*)`+")
_EMPHASIS_RE = re.compile(r"(\*\*|__|~~)(.+?)\1|(?<![\w*])\*(?!\s)(.+?)(?<!\s)\*(?!\*)|(?<![\w_])_(?!\s)(.+?)(?<!\s)_(?!\w)")
_ESCAPE_RE = re.compile(r"\\([\\`*_{}\[\]()#+\-.!>~|])")
_SPACES_RE = re.compile(r"[ \t\u00a0]+")
# A sentence ends after 。！？ (and their closing quotes), or after .!? followed by whitespace.
_SENTENCE_RE = re.compile(
    r"(?<=[。！？])(?![”’」』）)\"'])|(?<=[。！？][”’」』）)\"'])|(?<=[.!?…])\s+|(?<=[.!?][\"'”’)])\s+")
_CLAUSE_RE = re.compile(r"[，,；;：:、]")

TEMPLATES = ("rewrite", "continue", "summarise_then_expand")


@dataclass
class Article:
    """One Markdown file reduced to prose, with its metadata."""

    path: Path
    relative: str
    title: str
    date: str | None = None
    tags: list[str] = field(default_factory=list)
    paragraphs: list[str] = field(default_factory=list)


@dataclass
class Chunk:
    text: str
    tokens: int
    sentences: list[str]
    article: Article


def is_chinese(text: str) -> bool:
    letters = sum(1 for c in text[:2000] if c.isalpha())
    return bool(letters) and len(_CJK_RE.findall(text[:2000])) / letters > 0.3


def _join(left: str, right: str) -> str:
    """Join two pieces of one paragraph: no space between Chinese characters, one between words."""
    if not left:
        return right
    if not right:
        return left
    if _CJK_RE.match(left[-1]) or _CJK_RE.match(right[0]):
        return left + right
    return left + " " + right


def _inline(text: str) -> str:
    text = _HTML_RE.sub("", text)
    text = _IMAGE_RE.sub("", text)
    text = _LINK_RE.sub(lambda m: m.group(1) or m.group(2) or "", text)
    text = _AUTOLINK_RE.sub("", text)
    text = _FOOTNOTE_RE.sub("", text)
    text = _CODE_RE.sub(lambda m: m.group(1), text)
    for _ in range(3):  # nested emphasis (***x***) needs more than one pass
        new = _EMPHASIS_RE.sub(lambda m: m.group(2) or m.group(3) or m.group(4) or "", text)
        if new == text:
            break
        text = new
    text = _ESCAPE_RE.sub(r"\1", text)
    return _SPACES_RE.sub(" ", text).strip()


def _front_matter(text: str) -> tuple[dict, str]:
    """Split off YAML front matter (``---`` ... ``---``); reads simple ``key: value`` lines only."""
    if not text.startswith("---"):
        return {}, text
    end = text.find("\n---", 3)
    if end < 0:
        return {}, text
    meta: dict[str, Any] = {}
    for line in text[3:end].splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip():
            value = value.strip().strip("'\"")
            if value.startswith("[") and value.endswith("]"):
                meta[key.strip()] = [v.strip().strip("'\"") for v in value[1:-1].split(",") if v.strip()]
            else:
                meta[key.strip()] = value
    rest = text[end + 4:]
    return meta, rest.split("\n", 1)[1] if "\n" in rest else ""


def strip_markdown(markdown: str) -> tuple[dict, str | None, list[str]]:
    """``(front matter, first H1 title, paragraphs of clean prose)``."""
    meta, body = _front_matter(markdown.replace("\r\n", "\n").replace("\r", "\n"))
    body = re.sub(r"<!--.*?-->", "", body, flags=re.S)
    title: str | None = None
    paragraphs: list[str] = []
    current = ""
    in_code = False
    fence = ""

    def flush() -> None:
        nonlocal current
        text = _inline(current)
        if text and _WORD_RE.search(text):
            paragraphs.append(text)
        current = ""

    lines = body.split("\n")
    for index, line in enumerate(lines):
        fence_match = _FENCE_RE.match(line)
        if fence_match:
            if not in_code:
                flush()
                in_code, fence = True, fence_match.group(1)
            elif fence_match.group(1) == fence:
                in_code = False
            continue
        if in_code or line.startswith(("    ", "\t")) and not current:
            continue  # fenced or indented code
        heading = _HEADING_RE.match(line)
        if heading:
            flush()
            if title is None and len(heading.group(1)) == 1:
                title = _inline(heading.group(2))
            continue
        nxt = lines[index + 1] if index + 1 < len(lines) else ""
        if current == "" and line.strip() and _SETEXT_RE.match(nxt) and not _HR_RE.match(line):
            if title is None and nxt.strip().startswith("="):
                title = _inline(line)
            continue
        if _SETEXT_RE.match(line) and current == "" or _HR_RE.match(line) or _TABLE_RE.match(line) \
                or _REFDEF_RE.match(line):
            flush()
            continue
        if not line.strip():
            flush()
            continue
        stripped = _QUOTE_RE.sub("", line)
        if _LIST_RE.match(stripped):
            flush()  # each list item stands as its own paragraph
            stripped = _LIST_RE.sub("", stripped)
        current = _join(current, stripped.strip())
    flush()
    return meta, title, paragraphs


def split_sentences(paragraph: str) -> list[str]:
    return [s.strip() for s in _SENTENCE_RE.split(paragraph) if s and s.strip()]


def jieba_counter() -> Callable[[str], int]:
    """Count words with jieba: Chinese words and English words alike; punctuation does not count."""
    import jieba

    jieba.setLogLevel(logging.WARNING)

    def count(text: str) -> int:
        return sum(1 for w in jieba.cut(text) if _WORD_RE.search(w))

    return count


def tokenizer_counter(tokenizer: Any) -> Callable[[str], int]:
    def count(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    return count


def _split_long_sentence(sentence: str, count: Callable[[str], int], max_tokens: int) -> list[str]:
    """Cut a sentence longer than a chunk between words (jieba words for Chinese, spaces otherwise)."""
    if _CJK_RE.search(sentence):
        import jieba

        words = list(jieba.cut(sentence))
    else:
        words = re.findall(r"\S+\s*", sentence)
    pieces: list[str] = []
    current = ""
    for word in words:
        candidate = current + word
        if current and count(candidate) > max_tokens:
            pieces.append(current.strip())
            current = word
        else:
            current = candidate
    if current.strip():
        pieces.append(current.strip())
    return pieces


def chunk_article(article: Article, count: Callable[[str], int], *, min_tokens: int,
                  max_tokens: int) -> tuple[list[Chunk], int]:
    """Chunks of ``min_tokens``..``max_tokens``; returns them and the number of tokens left out."""
    # (sentence, tokens, starts a paragraph)
    units: list[tuple[str, int, bool]] = []
    for paragraph in article.paragraphs:
        first = True
        for sentence in split_sentences(paragraph):
            n = count(sentence)
            pieces = [sentence] if n <= max_tokens else _split_long_sentence(sentence, count, max_tokens)
            for piece in pieces:
                units.append((piece, n if len(pieces) == 1 else count(piece), first))
                first = False

    groups: list[list[tuple[str, int, bool]]] = []
    current: list[tuple[str, int, bool]] = []
    total = 0
    for unit in units:
        if current and total + unit[1] > max_tokens:
            # Prefer the last paragraph boundary that still leaves a full-size chunk behind it.
            cut = 0
            running = 0
            for i, (_s, n, starts) in enumerate(current):
                if i and starts and running >= min_tokens:
                    cut = i
                running += n
            if cut:
                groups.append(current[:cut])
                current = current[cut:]
                total = sum(n for _s, n, _p in current)
            if current and total + unit[1] > max_tokens:
                groups.append(current)
                current, total = [], 0
        current.append(unit)
        total += unit[1]
    if current:
        if groups and total < min_tokens and sum(n for _s, n, _p in groups[-1]) + total <= max_tokens:
            groups[-1].extend(current)
        else:
            groups.append(current)

    chunks: list[Chunk] = []
    dropped = 0
    for group in groups:
        n = sum(u[1] for u in group)
        if n < min_tokens:
            dropped += n
            continue
        text = ""
        for sentence, _n, starts in group:
            text = (text + "\n\n" + sentence) if (starts and text) else _join(text, sentence)
        chunks.append(Chunk(text=text, tokens=n, sentences=[u[0] for u in group], article=article))
    return chunks, dropped


def _first_clause(sentence: str, limit: int = 40) -> str:
    clause = _CLAUSE_RE.split(sentence, maxsplit=1)[0].strip()
    return clause if len(clause) <= limit else clause[:limit].rstrip() + "…"


def make_examples(chunk: Chunk) -> list[tuple[str, dict]]:
    """The three templates for one chunk: ``[(template, {"messages": [...]}), ...]``."""
    zh = is_chinese(chunk.text)
    art = chunk.article
    sentences = chunk.sentences
    out: list[tuple[str, dict]] = []

    def example(prompt: str, answer: str) -> dict:
        return {"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]}

    notes = "\n".join(f"- {_first_clause(s)}" for s in sentences[:12])
    if zh:
        out.append(("rewrite", example(f"请用作者的文风，把下面的要点改写成一段完整的文字：\n\n{notes}", chunk.text)))
    else:
        out.append(("rewrite", example(f"Rewrite these notes as a full passage in the author's voice:\n\n{notes}",
                                       chunk.text)))
    if len(sentences) >= 2:
        head_n = max(1, min(len(sentences) - 1, round(len(sentences) * 0.3)))
        head = _join_sentences(sentences[:head_n], zh)
        tail = _join_sentences(sentences[head_n:], zh)
        prompt = f"请用同样的文风续写下面这段文字：\n\n{head}" if zh else \
            f"Continue this text in the same style:\n\n{head}"
        out.append(("continue", example(prompt, tail)))
    summary = sentences[0] if sentences else chunk.text[:80]
    tags = "、".join(art.tags) if zh else ", ".join(art.tags)
    if zh:
        prompt = f"题目：《{art.title}》" + (f"\n标签：{tags}" if tags else "") + \
            "\n请先用一句话概括要点，再用作者的文风展开成一段完整的文字。"
        answer = f"概括：{summary}\n\n{chunk.text}"
    else:
        prompt = f"Title: {art.title}" + (f"\nTags: {tags}" if tags else "") + \
            "\nFirst summarise the point in one sentence, then expand it into a full passage in the author's style."
        answer = f"Summary: {summary}\n\n{chunk.text}"
    out.append(("summarise_then_expand", example(prompt, answer)))
    return out


def _join_sentences(sentences: list[str], zh: bool) -> str:
    return ("" if zh else " ").join(sentences)


def find_articles(source_dir: Path) -> list[Path]:
    """Markdown files under ``source_dir`` (recursively), hidden folders skipped, in a stable order."""
    root = Path(source_dir)
    found = []
    for path in sorted(root.rglob("*.md")):
        rel = path.relative_to(root)
        if any(part.startswith(".") for part in rel.parts) or not path.is_file():
            continue
        found.append(path)
    return found


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def article_meta(path: Path) -> dict:
    """Metadata beside an article: ``<name>.meta.json``, or ``meta.json`` in its folder (one article's
    metadata, or a mapping of file names to metadata)."""
    own = _load_json(path.with_name(path.stem + ".meta.json"))
    if isinstance(own, dict):
        return own
    shared = _load_json(path.parent / "meta.json")
    if not isinstance(shared, dict):
        return {}
    if path.name in shared and isinstance(shared[path.name], dict):
        return shared[path.name]
    if any(str(k).endswith(".md") for k in shared):
        return {}
    return shared


def read_article(path: Path, root: Path) -> Article:
    text = path.read_text(encoding="utf-8-sig", errors="replace")
    front, h1, paragraphs = strip_markdown(text)
    meta = {**front, **article_meta(path)}
    tags = meta.get("tags") or []
    if isinstance(tags, str):
        tags = [t.strip() for t in re.split(r"[,，、]", tags) if t.strip()]
    title = str(meta.get("title") or h1 or path.stem)
    date = meta.get("date")
    return Article(path=path, relative=str(path.relative_to(root)), title=title,
                   date=str(date) if date else None, tags=[str(t) for t in tags if str(t).strip()],
                   paragraphs=paragraphs)
