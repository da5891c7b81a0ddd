"""A job's outputs (its transcript and its artifacts): deleting them, crash-safe, and the 410 every
read of them answers afterwards (docs/retention.md).

Deletion runs in three steps, each safe to repeat: (1) mark: `logs_deleted_*` /
`artifacts_deleted_*` set, `outputs_purge_pending` raised and the audit row written, in one
transaction (from then on every read answers 410); (2) the objects go from storage (the
transcript archive, everything under the job's artifact prefix); (3) the rows go (log chunks,
artifacts, the manifest) and the flag is lowered. A crash between them leaves the flag up: the
retention activity finishes every flagged job on its next run (`purge_pending`)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg
from botocore.exceptions import BotoCoreError, ClientError

from boxrun.constants import ARTIFACT_KEY_PREFIX, LOG_ARCHIVE_KEY, JobState
from boxrun.db import Conn, Q
from boxrun.errors import Conflict, Forbidden, Gone, Unavailable
from boxrun.services.identity import User
from boxrun.services.jobs import load_job
from boxrun.storage import Storage

log = logging.getLogger(__name__)

PURGE_BATCH = 100


def gone_reason(why: str | None, at: datetime, fallback: str) -> str:
    """The 410 sentence: who or what deleted it, and when (UTC, to the second)."""
    return f"{why or fallback} at {at.astimezone(UTC):%Y-%m-%dT%H:%M:%SZ}"


def check_logs_kept(job: asyncpg.Record) -> None:
    """Gone (410) if the job's transcript was deleted: reads of lines, logs.txt, the follow
    streams and the archive."""
    at = job["logs_deleted_at"]
    if at is not None:
        raise Gone(gone_reason(job["logs_deleted_why"], at, f"the transcript of job {job['id']} was deleted"))


def check_artifacts_kept(job: asyncpg.Record) -> None:
    """Gone (410) if the job's artifacts were deleted: the list and every download."""
    at = job["artifacts_deleted_at"]
    if at is not None:
        raise Gone(gone_reason(job["artifacts_deleted_why"], at, f"the artifacts of job {job['id']} were deleted"))


@dataclass
class Purged:
    """What one purge removed."""

    transcript_bytes: int = 0  # log chunks in Postgres
    archive_bytes: int = 0  # the transcript archive in storage
    artifacts: int = 0
    artifact_bytes: int = 0
    objects: int = 0  # objects deleted from storage

    def add(self, other: Purged) -> None:
        self.transcript_bytes += other.transcript_bytes
        self.archive_bytes += other.archive_bytes
        self.artifacts += other.artifacts
        self.artifact_bytes += other.artifact_bytes
        self.objects += other.objects


async def mark(conn: Conn, job_id: str, *, logs: bool, artifacts: bool, logs_why: str, artifacts_why: str) -> None:
    """Step 1, inside the caller's transaction (with its audit row)."""
    await conn.execute(Q.mark_outputs_deleted, job_id, logs, artifacts, logs_why, artifacts_why)


async def purge(conn: Conn, storage: Storage, job_id: str, *, on_progress: Callable[[], None] | None = None) -> Purged:
    """Steps 2 and 3 for what is marked of the job: objects, then rows, then the flag lowered.
    Idempotent. Unavailable if storage does not answer (the flag stays up: retried later)."""
    done = Purged()
    left = await conn.fetchrow(Q.outputs_left, job_id)
    if left is None:
        return done
    jid = str(left["id"])
    keys = []
    if left["logs_marked"]:
        keys.append(LOG_ARCHIVE_KEY.format(job_id=jid))
        done.transcript_bytes, done.archive_bytes = left["transcript_bytes"], left["archive_bytes"]
    if left["artifacts_marked"]:
        done.artifacts, done.artifact_bytes = left["artifacts"], left["artifact_bytes"]
    try:
        for key in keys:
            await asyncio.to_thread(storage.delete, key)
            done.objects += 1 if left["log_archive_key"] else 0
        if left["artifacts_marked"]:
            done.objects += await asyncio.to_thread(storage.delete_prefix, ARTIFACT_KEY_PREFIX.format(job_id=jid))
    except (BotoCoreError, ClientError) as exc:
        raise Unavailable(f"object storage did not delete the outputs of job {jid} ({exc}); retried later") from exc
    if on_progress is not None:
        on_progress()
    async with conn.transaction():
        if left["logs_marked"]:
            await conn.execute(Q.delete_log_rows, jid)
        if left["artifacts_marked"]:
            await conn.execute(Q.delete_artifact_rows, jid)
        await conn.execute(Q.clear_purge_pending, jid)
    return done


async def purge_pending(
    conn: Conn, storage: Storage, *, limit: int, on_progress: Callable[[], None] | None = None
) -> tuple[int, Purged]:
    """Finish the jobs a crash left marked with objects or rows behind (at most `limit`)."""
    total = Purged()
    jobs = 0
    while jobs < limit:
        ids = [r["id"] for r in await conn.fetch(Q.purge_pending_jobs, min(PURGE_BATCH, limit - jobs))]
        if not ids:
            break
        for job_id in ids:
            total.add(await purge(conn, storage, str(job_id), on_progress=on_progress))
            jobs += 1
    return jobs, total


async def delete_outputs(conn: asyncpg.Connection, storage: Storage, user: User, job_id: str) -> None:
    """DELETE /api/jobs/{id}/outputs: the job's transcript and artifacts, from Postgres and
    storage; the job row and its events stay. The owner or an org admin (Forbidden otherwise);
    the job must have ended (Conflict). Again: nothing left, nothing done. Audited
    `job.outputs_delete` when it marks anything."""
    job = await load_job(conn, user, job_id)
    jid = str(job["id"])
    if not user.is_admin and job["owner"] != user.name:
        raise Forbidden(f"you may delete the outputs of your own jobs only (job {jid} belongs to {job['owner']})")
    if not JobState(job["state"]).terminal:
        raise Conflict(f"job {jid} is still {job['state']}")
    async with conn.transaction():
        now = await conn.fetchrow(Q.lock_job_outputs, jid)
        assert now is not None  # load_job found it and an ended job is deleted only by retention
        logs, artifacts = now["logs_deleted_at"] is None, now["artifacts_deleted_at"] is None
        if logs or artifacts:
            why = f"the outputs of job {jid} were deleted by {user.name}"
            await mark(conn, jid, logs=logs, artifacts=artifacts, logs_why=why, artifacts_why=why)
            await conn.execute(
                Q.audit,
                user.org_id,
                user.name,
                "job.outputs_delete",
                job["id"],
                job["box"],
                {"transcript": logs, "artifacts": artifacts},
            )
        elif not now["outputs_purge_pending"]:
            return  # deleted before, and nothing left
    await purge(conn, storage, jid)
