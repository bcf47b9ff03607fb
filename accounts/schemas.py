from __future__ import annotations

from datetime import datetime

from ninja import Schema
from pydantic import Field


class TeamOut(Schema):
    id: int
    name: str
    display_name: str
    role: str | None = Field(None, description="Your role in the team (null for superusers who are not members).")


class MeOut(Schema):
    username: str
    is_superuser: bool
    token_team: str | None
    teams: list[TeamOut]


class TeamIn(Schema):
    name: str = Field(..., description="Lowercase identifier.")
    display_name: str = ""


class MemberIn(Schema):
    username: str
    role: str = "member"


class MemberOut(Schema):
    username: str
    team: str
    role: str


class TokenIn(Schema):
    team: str
    name: str = ""
    expires_days: int | None = Field(None, ge=1, le=3650)


class TokenOut(Schema):
    id: int
    name: str
    prefix: str
    team: str
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None
    revoked_at: datetime | None


class TokenCreatedOut(TokenOut):
    token: str = Field(..., description="The secret: shown once, store it now.")
