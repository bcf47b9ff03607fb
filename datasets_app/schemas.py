"""Request and response schemas of the datasets API."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from ninja import Schema
from pydantic import Field

ISSUES_IN_SUMMARY = 20


class IssueOut(Schema):
    line: int | None = None
    code: str
    message: str


class DatasetUploadIn(Schema):
    """Form fields sent with the file (multipart/form-data)."""

    name: str = Field(..., description="Dataset name; an existing name of the team gets a new version.")
    team: str | None = Field(None, description="Team name or id (default: the token's team / your only team).")
    format: str | None = Field(None, description="alpaca, sharegpt, openai, completion, classification, text, "
                                                 "preference or kto; empty to detect it from the first example.")
    description: str = ""
    base_model: str | None = Field(None, description="Check token lengths with this base model's tokenizer.")
    columns: str | None = Field(None, description="Column mapping our_key=file_key,... (e.g. instruction=question,"
                                                  'output=answer), or a JSON object ({"columns": {...}, '
                                                  '"tags": {...}} for ShareGPT tags).')
    skip_invalid: bool = Field(False, description="Import the valid rows and keep the report of the others "
                                                  "(default: all or nothing).")


class DatasetFilter(Schema):
    team: str | None = None
    format: str | None = None


class DatasetOut(Schema):
    id: int
    name: str
    team: str
    format: str
    description: str
    created_by: str | None
    created_at: datetime
    version_count: int = 0
    latest_version: int | None = None

    @staticmethod
    def resolve_team(obj) -> str:
        return obj.team.name

    @staticmethod
    def resolve_created_by(obj) -> str | None:
        return obj.created_by.username if obj.created_by_id else None

    @staticmethod
    def resolve_version_count(obj) -> int:
        value = getattr(obj, "version_count", None)
        return value if value is not None else obj.versions.count()

    @staticmethod
    def resolve_latest_version(obj) -> int | None:
        if hasattr(obj, "latest_number"):
            return obj.latest_number
        return obj.versions.order_by("-number").values_list("number", flat=True).first()


class DatasetVersionOut(Schema):
    id: int
    ref: str = Field(..., description="name@number")
    dataset_id: int
    dataset: str
    team: str
    number: int
    format: str
    status: str = Field(..., description="ready, or failed (see errors / the report)")
    sha256: str
    row_count: int
    source_filename: str
    created_by: str | None
    created_at: datetime
    parent_id: int | None
    split_role: str
    split_seed: int | None
    split_ratio: float | None
    error_count: int
    warning_count: int
    skipped_examples: int = Field(0, description="Invalid rows left out (uploads with skip_invalid).")
    mapping: dict[str, Any] = Field(default_factory=dict, description="The column mapping the file was read with.")
    format_reason: str = Field("", description="How the format was known: given, or detected from which row and why.")
    errors: list[IssueOut] = Field(..., description=f"The first {ISSUES_IN_SUMMARY} errors; all in /report.")
    warnings: list[IssueOut] = Field(..., description=f"The first {ISSUES_IN_SUMMARY} warnings.")
    deduplicated: bool = Field(False, description="True when an identical upload returned this existing version.")

    @staticmethod
    def resolve_dataset(obj) -> str:
        return obj.dataset.name

    @staticmethod
    def resolve_team(obj) -> str:
        return obj.dataset.team.name

    @staticmethod
    def resolve_created_by(obj) -> str | None:
        return obj.created_by.username if obj.created_by_id else None

    @staticmethod
    def resolve_skipped_examples(obj) -> int:
        return obj.skipped_count

    @staticmethod
    def resolve_format_reason(obj) -> str:
        return str((obj.report or {}).get("format_reason") or "")

    @staticmethod
    def resolve_errors(obj) -> list[dict]:
        return list((obj.report or {}).get("errors", []))[:ISSUES_IN_SUMMARY]

    @staticmethod
    def resolve_warnings(obj) -> list[dict]:
        return list((obj.report or {}).get("warnings", []))[:ISSUES_IN_SUMMARY]

    @staticmethod
    def resolve_deduplicated(obj) -> bool:
        return bool(getattr(obj, "deduplicated", False))


class DatasetDetailOut(DatasetOut):
    versions: list[DatasetVersionOut]
    stats: dict[str, Any] | None = Field(None, description="Statistics of the latest ready full upload.")

    @staticmethod
    def resolve_versions(obj) -> list:
        rows = getattr(obj, "version_rows", None)
        return rows if rows is not None else list(obj.versions.select_related("dataset__team", "created_by"))

    @staticmethod
    def resolve_stats(obj) -> dict | None:
        return getattr(obj, "latest_stats", None)


class ReportOut(Schema):
    version: str
    status: str
    format: str | None = None
    format_detected: bool = False
    format_given: bool = False
    format_reason: str = ""
    container: str | None = None
    mapping: dict[str, Any] = {}
    formats_seen: dict[str, int] = {}
    skip_invalid: bool = False
    skipped_examples: int = 0
    examples: int = 0
    valid_examples: int = 0
    error_count: int = 0
    warning_count: int = 0
    counts: dict[str, int] = {}
    errors: list[IssueOut] = []
    warnings: list[IssueOut] = []
    truncated: bool = False
    stopped_early: bool = False
    split_of: str | None = None


class SplitIn(Schema):
    val_ratio: float = Field(0.1, gt=0, lt=1, description="Share of examples held out for validation.")
    seed: int = Field(42, ge=0)
    validation: str | None = Field(None, description="Use this version (id or name@N) as the validation set "
                                                     "instead of cutting one out.")


class SplitOut(Schema):
    train: DatasetVersionOut
    validation: DatasetVersionOut


class SegmentOut(Schema):
    text: str
    trained: bool
    tokens: int


class PreviewExampleOut(Schema):
    index: int
    template: str | None = Field(None, description='"model" (the base model\'s chat template), the fallback template '
                                 'when it has none ("alpaca"), or "none" (prompt/completion and text rows)')
    text: str | None = None
    segments: list[SegmentOut] = []
    tokens: int | None = None
    trained_tokens: int | None = None
    over_limit: bool = False
    label: str | None = None
    error: str | None = None


class PreviewOut(Schema):
    version: str
    base_model: str
    max_tokens: int
    chat_template: str
    tools_rendering: str = Field("", description="How tool calls are rendered: the template's own tool support, or "
                                                 "the documented text fallback.")
    examples: list[PreviewExampleOut]


class StatsOut(Schema):
    version: str
    base_model: str | None = None
    stats: dict[str, Any]
