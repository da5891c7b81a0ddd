"""Retention (docs/retention.md): deletes what each org keeps past its policy, run by the
`boxrun-retention` Temporal Schedule through RetentionWorkflow."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
from pydantic import BaseModel, Field
from temporalio import activity

from boxrun.activities.heartbeat import heartbeating
from boxrun.db import Conn, Q
from boxrun.services import outputs
from boxrun.storage import Storage

log = logging.getLogger(__name__)

BATCH = 100  # jobs fetched per query


class RetentionInput(BaseModel):
    """One run. `max_jobs`: at most this many jobs per org and kind (transcripts, artifacts, job
    rows) in one run; the rest waits for the next run (`more` in the result)."""

    max_jobs: int = Field(default=10_000, ge=1)


class OrgRetentionCounts(BaseModel):
    """What one run deleted of one org (the detail of its `retention.apply` audit row)."""

    transcripts: int = 0  # jobs whose transcript went (logs_days, or with their row)
    transcript_bytes: int = 0  # log chunks in Postgres
    archive_bytes: int = 0  # transcript archives in storage
    artifact_jobs: int = 0  # jobs whose artifacts went
    artifacts: int = 0
    artifact_bytes: int = 0
    jobs_deleted: int = 0  # job rows (jobs_days), with their events
    more: bool = False  # a kind hit max_jobs: the next run goes on

    def any(self) -> bool:
        return bool(self.transcripts or self.artifact_jobs or self.jobs_deleted)

    def add(self, purged: outputs.Purged) -> None:
        self.transcript_bytes += purged.transcript_bytes
        self.archive_bytes += purged.archive_bytes
        self.artifacts += purged.artifacts
        self.artifact_bytes += purged.artifact_bytes


class RetentionResult(BaseModel):
    orgs: int = 0  # orgs with a policy
    resumed: int = 0  # jobs whose deletion a crash had left half done, finished now
    by_org: dict[str, OrgRetentionCounts] = Field(default_factory=dict)  # orgs where anything went


class RetentionActivities:
    """Bound to one Postgres pool and one storage client; registered on the control worker."""

    def __init__(self, pool: asyncpg.Pool, storage: Storage) -> None:
        self.pool = pool
        self.storage = storage

    def all(self) -> list[Callable[..., Awaitable[Any]]]:
        return [self.apply_retention]

    @activity.defn
    async def apply_retention(self, inp: RetentionInput) -> RetentionResult:
        """Finish half-done deletions, then per org with a policy, oldest first, in batches:
        transcripts past logs_days, artifacts past artifacts_days, job rows past jobs_days (their
        outputs first). Objects go before rows; a job still running is never touched; audit rows
        are never deleted. One `retention.apply` audit row per org where anything went."""
        result = RetentionResult()
        async with self.pool.acquire() as conn, heartbeating():
            result.resumed, _ = await outputs.purge_pending(
                conn, self.storage, limit=inp.max_jobs, on_progress=activity.heartbeat
            )
            orgs = await conn.fetch(Q.orgs_with_retention)
            result.orgs = len(orgs)
            for org in orgs:
                counts = await self._apply_org(conn, org, inp.max_jobs)
                if counts.any():
                    policy = {k: org[k] for k in ("logs_days", "artifacts_days", "jobs_days")}
                    detail = {**counts.model_dump(), "policy": policy}
                    await conn.execute(Q.audit, org["id"], "system", "retention.apply", None, None, detail)
                    result.by_org[org["id"]] = counts
                    log.info("retention in org %s: %s", org["id"], detail)
        return result

    async def _apply_org(self, conn: Conn, org: asyncpg.Record, max_jobs: int) -> OrgRetentionCounts:
        counts = OrgRetentionCounts()
        org_id = org["id"]
        if (days := org["logs_days"]) is not None:
            async for job_id in self._expired(conn, Q.jobs_logs_expired, org_id, days, max_jobs, counts):
                why = f"the transcript of job {job_id} expired under the org's retention (logs_days={days})"
                await self._delete(conn, job_id, counts, logs=True, artifacts=False, why=why)
                counts.transcripts += 1
        if (days := org["artifacts_days"]) is not None:
            async for job_id in self._expired(conn, Q.jobs_artifacts_expired, org_id, days, max_jobs, counts):
                why = f"the artifacts of job {job_id} expired under the org's retention (artifacts_days={days})"
                await self._delete(conn, job_id, counts, logs=False, artifacts=True, why=why)
                counts.artifact_jobs += 1
        if (days := org["jobs_days"]) is not None:
            async for job_id in self._expired(conn, Q.jobs_rows_expired, org_id, days, max_jobs, counts):
                why = f"job {job_id} expired under the org's retention (jobs_days={days})"
                await self._delete(conn, job_id, counts, logs=True, artifacts=True, why=why)
                try:
                    deleted = await conn.execute(Q.delete_ended_job, job_id)
                except asyncpg.ForeignKeyViolationError as exc:  # a reference this code does not know
                    log.error("retention could not delete job %s: %s", job_id, exc)
                    continue
                counts.jobs_deleted += deleted == "DELETE 1"
        return counts

    async def _expired(
        self, conn: Conn, query: str, org_id: str, days: int, max_jobs: int, counts: OrgRetentionCounts
    ) -> AsyncIterator[str]:
        """The ids the query finds, oldest first, a batch at a time: the caller deals with each
        (so it no longer matches) before the next batch is read. At most max_jobs; an id seen
        before (one the caller could not delete) ends the walk instead of looping on it."""
        seen: set[str] = set()
        while len(seen) < max_jobs:
            rows = await conn.fetch(query, org_id, days, min(BATCH, max_jobs - len(seen)))
            fresh = [str(r["id"]) for r in rows if str(r["id"]) not in seen]
            if not fresh:
                return
            for job_id in fresh:
                seen.add(job_id)
                yield job_id
        counts.more = True

    async def _delete(
        self,
        conn: Conn,
        job_id: str,
        counts: OrgRetentionCounts,
        *,
        logs: bool,
        artifacts: bool,
        why: str,
    ) -> None:
        async with conn.transaction():
            await outputs.mark(conn, job_id, logs=logs, artifacts=artifacts, logs_why=why, artifacts_why=why)
        counts.add(await outputs.purge(conn, self.storage, job_id, on_progress=activity.heartbeat))
        activity.heartbeat()
