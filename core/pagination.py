"""One pagination style for every /api/ list: ``?limit=&offset=``, ``{"items": [...], "count": N}``.

A page holds ``DEFAULT_LIMIT`` rows unless ``?limit=`` asks for another size; a larger ``limit`` than
``MAX_LIMIT`` is capped to it (one request never loads a whole table).
"""

from __future__ import annotations

from typing import Any

from ninja import Field, Schema
from ninja.pagination import LimitOffsetPagination

DEFAULT_LIMIT = 50
MAX_LIMIT = 500


class Pagination(LimitOffsetPagination):
    class Input(Schema):
        limit: int = Field(DEFAULT_LIMIT, ge=1, description=f"Rows per page (default {DEFAULT_LIMIT}); values above "
                                                           f"{MAX_LIMIT} are capped to {MAX_LIMIT}.")
        offset: int = Field(0, ge=0)

    def __init__(self, max_limit: int = MAX_LIMIT, **kwargs: Any) -> None:
        super().__init__(max_limit=min(max_limit, MAX_LIMIT), **kwargs)


class Mapped:
    """A queryset whose rows are turned into output dicts only after the paginator cut the page.

    ``return [Out.from_row(r) for r in qs]`` from a paginated view loads every row of the table and then
    keeps 50; ``return Mapped(qs, Out.from_row)`` lets the database apply LIMIT/OFFSET and COUNT.
    """

    def __init__(self, queryset, fn) -> None:
        self.queryset = queryset
        self.fn = fn

    def all(self) -> Mapped:
        return self

    def count(self) -> int:
        return self.queryset.count()

    def __len__(self) -> int:
        return self.count()

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self.fn(row) for row in self.queryset[index]]
        return self.fn(self.queryset[index])

    def __iter__(self):
        return (self.fn(row) for row in self.queryset)
