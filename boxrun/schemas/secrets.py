"""Schemas of organisation secrets (docs/secrets.md). A value goes in (SecretPut) and never
comes out: the public shapes carry names and times only."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator

from boxrun.schemas import UNSTORABLE, CleanStr, rule

SECRET_NAME_PATTERN = r"^[A-Z_][A-Z0-9_]{0,127}$"
MAX_SECRET_BYTES = 64 * 1024
# Not only whitespace (the box could mask such a value only by blanking every space of the
# transcript): str.strip() in the validator, \s in the schema's pattern (the same set in Python).
SECRET_VALUE_PATTERN = rf"^[^{UNSTORABLE}]*[^{UNSTORABLE}\s][^{UNSTORABLE}]*$"
SecretValue = Annotated[CleanStr, rule(pattern=SECRET_VALUE_PATTERN)]


class SecretPut(BaseModel):
    """PUT /api/secrets/{name} body: the value (at most 64 KiB as UTF-8, no NUL)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    value: SecretValue = Field(
        min_length=1, description=f"at most {MAX_SECRET_BYTES} bytes as UTF-8, not only spaces; never shown again"
    )

    @field_validator("value")
    @classmethod
    def _size(cls, v: str) -> str:
        if len(v.encode()) > MAX_SECRET_BYTES:  # the message states the rule, never the value
            raise ValueError(f"a secret value is at most {MAX_SECRET_BYTES} bytes as UTF-8")
        if not v.strip():  # the box could mask it only by blanking every space of the transcript
            raise ValueError("a secret value is not only spaces or line breaks")
        return v

    def __repr__(self) -> str:  # a value must not reach a log line through a repr
        return "SecretPut(value='***')"

    __str__ = __repr__


class SecretPublic(BaseModel):
    name: str
    created_at: datetime
    updated_at: datetime
    updated_by: str = Field(description="the admin who last put the value")


class SecretsPublic(BaseModel):
    data: list[SecretPublic]
