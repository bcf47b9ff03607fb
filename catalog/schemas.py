"""Schemas of the base-model endpoints."""

from __future__ import annotations

from datetime import datetime

from ninja import Schema


class BaseModelOut(Schema):
    id: int
    name: str
    kind: str
    format: str
    architecture: str
    parameter_count: int
    size_bytes: int
    tokenizer_present: bool
    has_chat_template: bool
    max_position_embeddings: int | None
    team: str | None
    available: bool
    bundled: bool
    created_at: datetime
    last_scanned_at: datetime | None

    @staticmethod
    def resolve_team(obj) -> str | None:
        return obj.team.name if obj.team_id else None


class ScanRowOut(Schema):
    name: str
    action: str
    kind: str
    parameter_count: int
    size_bytes: int
    message: str


class ScanOut(Schema):
    rows: list[ScanRowOut]
