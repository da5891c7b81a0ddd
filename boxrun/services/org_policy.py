"""An organisation's keeping policy (docs/retention.md): retention days, storage quota, usage."""

from __future__ import annotations

import asyncpg

from boxrun.db import Conn, Q
from boxrun.errors import NotFound
from boxrun.schemas.org import OrgQuota, OrgQuotaPublic, OrgRetention, OrgRetentionPublic, OrgUsage
from boxrun.services.audit import record
from boxrun.services.identity import User

# The Temporal Schedule that enforces retention (Web UI: Schedules); worker/retention.py makes it.
RETENTION_SCHEDULE_ID = "boxrun-retention"


async def _policy(conn: Conn, org_id: str) -> asyncpg.Record:
    row: asyncpg.Record | None = await conn.fetchrow(Q.org_policy, org_id)
    if row is None:  # the caller's own org: only gone if deleted under a live token
        raise NotFound(f"org {org_id} not found")
    return row


def retention_public(row: asyncpg.Record) -> OrgRetentionPublic:
    return OrgRetentionPublic(
        logs_days=row["logs_days"],
        artifacts_days=row["artifacts_days"],
        jobs_days=row["jobs_days"],
        updated_at=row["policy_updated_at"],
        updated_by=row["policy_updated_by"],
        schedule_id=RETENTION_SCHEDULE_ID,
    )


def quota_public(row: asyncpg.Record, default_cap: int) -> OrgQuotaPublic:
    return OrgQuotaPublic(
        storage_bytes=row["storage_quota_bytes"],
        transcript_cap_bytes=row["transcript_cap_bytes"],
        default_transcript_cap_bytes=default_cap,
    )


async def get_retention(conn: Conn, user: User) -> OrgRetentionPublic:
    return retention_public(await _policy(conn, user.org_id))


async def put_retention(conn: asyncpg.Connection, user: User, body: OrgRetention) -> OrgRetentionPublic:
    """Replace the org's retention (every field: null keeps forever); audited `org.retention`."""
    async with conn.transaction():
        row = await conn.fetchrow(
            Q.set_org_retention, user.org_id, body.logs_days, body.artifacts_days, body.jobs_days, user.name
        )
        if row is None:
            raise NotFound(f"org {user.org_id} not found")
        await record(conn, user, "org.retention", **body.model_dump())
    return retention_public(row)


async def get_quota(conn: Conn, user: User, default_cap: int) -> OrgQuotaPublic:
    return quota_public(await _policy(conn, user.org_id), default_cap)


async def put_quota(conn: asyncpg.Connection, user: User, body: OrgQuota, default_cap: int) -> OrgQuotaPublic:
    """Replace the org's quota and transcript cap (null: none / the default); audited `org.quota`."""
    async with conn.transaction():
        row = await conn.fetchrow(
            Q.set_org_quota, user.org_id, body.storage_bytes, body.transcript_cap_bytes, user.name
        )
        if row is None:
            raise NotFound(f"org {user.org_id} not found")
        await record(conn, user, "org.quota", **body.model_dump())
    return quota_public(row, default_cap)


async def usage(conn: Conn, user: User) -> OrgUsage:
    row = await conn.fetchrow(Q.org_usage, user.org_id)
    assert row is not None  # scalar subqueries: always one row
    return OrgUsage(
        storage_bytes=row["artifact_bytes"] + row["log_archive_bytes"],
        artifact_bytes=row["artifact_bytes"],
        log_archive_bytes=row["log_archive_bytes"],
        transcript_bytes=row["transcript_bytes"],
        artifacts=row["artifacts"],
        jobs=row["jobs"],
        quota_bytes=row["quota_bytes"],
    )
