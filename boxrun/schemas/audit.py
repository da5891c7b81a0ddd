"""The audit trail and a job's spec as the API shows them: AuditEntryPublic, AuditPublic, JobSpecPublic."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

# Query rules of GET /api/audit, stated here so the route and its OpenAPI document share them.
# actor: a user name, `system` (the control plane) or `box:NAME` (an agent).
ACTOR_PATTERN = r"^([a-z][a-z0-9_.-]{0,62}|box:[A-Za-z0-9][A-Za-z0-9._-]{0,62})$"
# action: exact (`job.cancelled`), or every action under a prefix (`job.*`, `maintenance.*`).
ACTION_PATTERN = r"^[a-z][a-z_]*(\.[a-z_]+)*(\.\*)?$"
# cursor: opaque to clients; what next_cursor said (today the last row's id, in decimal).
CURSOR_PATTERN = r"^[1-9][0-9]{0,18}$"
MAX_AUDIT_LIMIT = 1000


class AuditEntryPublic(BaseModel):
    id: str = Field(description="opaque, increasing with time")
    at: datetime
    actor: str = Field(description="a user name, `system` (the control plane) or `box:NAME` (an agent)")
    action: str = Field(description="e.g. job.running, job.cancel, lease.granted, artifact.download")
    job_id: str | None
    box: str | None
    detail: dict[str, Any] = Field(default_factory=dict)


class AuditPublic(BaseModel):
    data: list[AuditEntryPublic] = Field(description="newest first")
    next_cursor: str | None = Field(description="pass as `cursor` for the next (older) page; null on the last page")


class SpecFilePublic(BaseModel):
    path: str
    size: int = Field(description="bytes")
    sha256: str
    # a pipeline step's input: the upstream job and artifact path it was resolved to
    from_job_id: str | None = None
    from_path: str | None = None


class SpecSettingsPublic(BaseModel):
    box: str | None
    box_group: str | None
    requires: list[str]
    timeout_s: int
    lock: bool
    priority: int
    cancel_grace_s: int
    queue_timeout_s: int


class TemplateMark(BaseModel):
    """The template version a run was rendered from (docs/templates.md)."""

    name: str
    version: int


class JobSpecPublic(BaseModel):
    """What a job ran, frozen at submission. Two jobs with the same spec_hash ran the same spec."""

    job_id: str
    spec_hash: str
    script: str
    env: dict[str, str] = Field(description="variable name -> value as submitted")
    files: list[SpecFilePublic] = Field(description="every workspace file, by path")
    settings: SpecSettingsPublic
    template: TemplateMark | None = Field(
        default=None, description="the template version the job was rendered from; null: not a template run"
    )
