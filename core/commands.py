"""Base class for management commands: service errors become CommandError (exit code 1, clean message)."""

from __future__ import annotations

import unicodedata

from django.core.management.base import BaseCommand, CommandError

from core.errors import ApplicationError


class ServiceCommand(BaseCommand):
    """Subclasses implement ``run``; rule violations print one readable line instead of a traceback."""

    def handle(self, *args, **options):
        try:
            return self.run(*args, **options)
        except ApplicationError as exc:
            where = f" ({exc.param})" if exc.param else ""
            raise CommandError(f"{exc.message}{where}") from exc

    def run(self, *args, **options):  # pragma: no cover - abstract
        raise NotImplementedError


def format_bytes(n: int | float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def format_count(n: int) -> str:
    for unit, div in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            return f"{n / div:.1f}{unit}"
    return str(n)


def display_width(text: str) -> int:
    """Terminal columns of ``text``: East Asian wide and fullwidth characters take two."""
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)


def table(rows: list[list[str]], headers: list[str]) -> str:
    widths = [max(display_width(str(x)) for x in col) for col in zip(headers, *rows, strict=False)]

    def line(cells) -> str:
        return "  ".join(str(c) + " " * (w - display_width(str(c)))
                         for c, w in zip(cells, widths, strict=False)).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(r) for r in rows)])
