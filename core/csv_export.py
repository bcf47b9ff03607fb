"""CSV exports that a spreadsheet cannot turn into formulas (CSV/formula injection, OWASP).

A text cell starting with ``= + - @``, a tab or a carriage return is prefixed with ``'`` so Excel,
LibreOffice and Google Sheets show it as text instead of evaluating it. Numbers are written as they are
(a negative loss stays a number).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable

FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def safe_cell(value: object) -> object:
    if isinstance(value, str) and value.startswith(FORMULA_PREFIXES):
        return "'" + value
    return value


def to_csv(header: list[str], rows: Iterable[Iterable[object]], **writer_options) -> str:
    """The whole export as text, every cell through ``safe_cell``."""
    out = io.StringIO()
    writer = csv.writer(out, **writer_options)
    writer.writerow([safe_cell(h) for h in header])
    for row in rows:
        writer.writerow([safe_cell(v) for v in row])
    return out.getvalue()
