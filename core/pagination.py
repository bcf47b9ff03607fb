"""One pagination style for every /api/ list: ``?limit=&offset=``, ``{"items": [...], "count": N}``."""

from __future__ import annotations

from ninja.pagination import LimitOffsetPagination

DEFAULT_LIMIT = 50
MAX_LIMIT = 500


class Pagination(LimitOffsetPagination):
    class Input(LimitOffsetPagination.Input):
        pass
