"""Schemas of an organisation's keeping policy (docs/retention.md): retention, quota, usage."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

MAX_DAYS = 36500
MIN_TRANSCRIPT_CAP = 64 << 10
# 2**53 - 1 (8 PiB): fits int64 with room (a sum of sizes never overflows Postgres' bigint), and
# every integer up to it is exact in a JSON number read as a double, so a client comparing as
# floats agrees with the API on what is over the bound (2**62 + 95 reads as 2**62 as a double).
MAX_BYTES = (1 << 53) - 1

Days = int | None


class OrgRetention(BaseModel):
    """PUT /api/org/retention body and GET answer: days each kind of output is kept after its job
    ended (null keeps it forever). `logs_days`: transcripts; `artifacts_days`: artifacts;
    `jobs_days`: the job rows themselves with their events (and so every output left)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    logs_days: Days = Field(default=None, ge=1, le=MAX_DAYS)
    artifacts_days: Days = Field(default=None, ge=1, le=MAX_DAYS)
    jobs_days: Days = Field(default=None, ge=1, le=MAX_DAYS)


class OrgRetentionPublic(OrgRetention):
    model_config = ConfigDict(extra="forbid")

    updated_at: datetime | None = None
    updated_by: str | None = None
    schedule_id: str = Field(description="the Temporal Schedule that enforces it (Web UI: Schedules)")


class OrgQuota(BaseModel):
    """PUT /api/org/quota body and GET answer. `storage_bytes`: the most the org's jobs may keep
    in object storage (artifacts and transcript archives; null: no quota). `transcript_cap_bytes`:
    the most one job's stored transcript keeps, head and tail (null: the deployment default)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    storage_bytes: int | None = Field(default=None, ge=0, le=MAX_BYTES)
    transcript_cap_bytes: int | None = Field(default=None, ge=MIN_TRANSCRIPT_CAP, le=MAX_BYTES)


class OrgQuotaPublic(OrgQuota):
    model_config = ConfigDict(extra="forbid")

    default_transcript_cap_bytes: int = Field(description="the cap a job gets when transcript_cap_bytes is null")


class OrgUsage(BaseModel):
    """GET /api/org/usage: what the org keeps now."""

    storage_bytes: int = Field(description="artifact_bytes + log_archive_bytes: what the quota counts")
    artifact_bytes: int
    log_archive_bytes: int
    transcript_bytes: int = Field(description="transcript lines held in Postgres (not in the quota)")
    artifacts: int
    jobs: int
    quota_bytes: int | None = Field(description="storage_bytes of the quota; null: none")
