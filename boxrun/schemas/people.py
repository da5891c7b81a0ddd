"""Schemas of organisations, users and their API tokens (docs/people.md)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StringConstraints,
    field_validator,
    model_validator,
)
from pydantic.json_schema import SkipJsonSchema

from boxrun.schemas import CleanStr
from boxrun.services.identity import Role

ORG_ID_PATTERN = r"^[a-z][a-z0-9-]{0,62}$"
USER_NAME_PATTERN = r"^[a-z][a-z0-9_.-]{0,62}$"
# `me` stands for the caller in routes and filters (?owner=me); `system` is the control plane's
# audit actor.
RESERVED_USER_NAMES = frozenset({"me", "system"})
TOKEN_ID_PATTERN = r"^tok_[a-z0-9_]{1,60}$"
MAX_TOKEN_LIFETIME_S = 10 * 366 * 24 * 3600  # ten years


def _not_reserved(name: str) -> str:
    if name in RESERVED_USER_NAMES:
        raise ValueError(f"{name!r} is a reserved name")
    return name


OrgId = Annotated[str, StringConstraints(pattern=ORG_ID_PATTERN)]
UserName = Annotated[
    str,
    StringConstraints(pattern=USER_NAME_PATTERN),
    AfterValidator(_not_reserved),
    Field(json_schema_extra={"not": {"enum": sorted(RESERVED_USER_NAMES)}}),
]


class OrgCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    id: OrgId
    name: CleanStr = Field(min_length=1, max_length=200)


class OrgPublic(BaseModel):
    id: str
    name: str
    created_at: datetime


class OrgsPublic(BaseModel):
    data: list[OrgPublic]


class UserCreate(BaseModel):
    """A new user; `org` defaults to the caller's (another org: platform admins only)."""

    model_config = ConfigDict(extra="forbid", strict=False)

    name: UserName
    role: Role
    org: OrgId | None = None


class UserCreated(BaseModel):
    name: str
    role: Role
    org: str


class UserPublic(BaseModel):
    name: str
    role: Role
    org: str
    disabled: bool
    created_at: datetime


class UsersPublic(BaseModel):
    data: list[UserPublic]


class UserUpdate(BaseModel):
    """Change a user's role, or disable (or enable again) the user: at least one of the two. A
    disabled user's every token is refused (401) and their open streams close."""

    model_config = ConfigDict(extra="forbid", strict=False, json_schema_extra={"minProperties": 1})

    # absent keeps the value; null is not a value here (the schema says so too)
    role: Role | SkipJsonSchema[None] = None
    disabled: StrictBool | SkipJsonSchema[None] = None

    @field_validator("role", "disabled", mode="before")
    @classmethod
    def _not_null(cls, value: object) -> object:
        if value is None:
            raise ValueError("may not be null: leave it out to keep the value")
        return value

    @model_validator(mode="after")
    def _something(self) -> UserUpdate:
        if self.role is None and self.disabled is None:
            raise ValueError("give `role` or `disabled`")
        return self


class TokenCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    label: CleanStr = Field(default="", max_length=200)
    expires_in_s: int | None = Field(
        default=None, ge=1, le=MAX_TOKEN_LIFETIME_S, description="seconds from now; absent or null: never expires"
    )


class TokenCreated(BaseModel):
    id: str
    token: str = Field(description="shown once: only its hash is stored")
    expires_at: datetime | None


class TokenPublic(BaseModel):
    id: str
    user: str
    label: str
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None = Field(description="updated at most once a minute")
    revoked: bool


class TokensPublic(BaseModel):
    data: list[TokenPublic]


class MePublic(BaseModel):
    name: str
    org: str
    role: Role
    platform_admin: bool
    token_id: str | None
