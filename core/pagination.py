"""One pagination style for every /api/ list: ``?limit=&offset=``, ``{"items": [...], "count": N}``."""

from __future__ import annotations

from ninja.pagination import LimitOffsetPagination

DEFAULT_LIMIT = 50
MAX_LIMIT = 500


class Pagination(LimitOffsetPagination):
    class Input(LimitOffsetPagination.Input):
        pass


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
