"""Control-plane activities: every job state change, lease, presign and verification."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
from temporalio import activity
from temporalio.exceptions import ApplicationError

from boxrun import logstore
from boxrun.constants import LOG_ARCHIVE_KEY, artifact_key
from boxrun.db import Q
from boxrun.errors import InvalidTransition, NotFound
from boxrun.messages import (
    AcquireInput,
    AcquireResult,
    ArchiveInput,
    ArchiveResult,
    FinishInput,
    PresignInput,
    PresignResult,
    ReleaseResult,
    TransitionInput,
    TransitionResult,
    UploadTarget,
    VerifyInput,
    VerifyResult,
)
from boxrun.placement import acquire, finish
from boxrun.storage import Storage
from boxrun.transitions import transition


def _permanent(exc: Exception) -> ApplicationError:
    return ApplicationError(str(exc), type=type(exc).__name__, non_retryable=True)


@asynccontextmanager
async def _heartbeating(every_s: float = 5.0) -> AsyncIterator[None]:
    """Heartbeat all along a step whose single operations can be long (one multi-GB object read
    back, one big transcript upload), so the workflow's heartbeat_timeout stays short."""

    async def beat() -> None:
        while True:
            activity.heartbeat()
            await asyncio.sleep(every_s)

    task = asyncio.create_task(beat())
    try:
        yield
    finally:
        task.cancel()


class ControlActivities:
    """Bound to one Postgres pool and one storage client; registered on the control worker."""

    def __init__(self, pool: asyncpg.Pool, storage: Storage, *, offline_after_s: float = 15.0) -> None:
        self.pool = pool
        self.storage = storage
        self.offline_after_s = offline_after_s

    def all(self) -> list[Callable[..., Awaitable[Any]]]:
        return [
            self.acquire_box,
            self.record_transition,
            self.finish_job,
            self.presign_uploads,
            self.verify_artifacts,
            self.archive_logs,
        ]

    @activity.defn
    async def acquire_box(self, inp: AcquireInput) -> AcquireResult:
        async with self.pool.acquire() as conn:
            try:
                return await acquire(conn, inp.job_id, offline_after_s=self.offline_after_s)
            except (NotFound, InvalidTransition) as exc:
                raise _permanent(exc) from exc

    @activity.defn
    async def record_transition(self, inp: TransitionInput) -> TransitionResult:
        async with self.pool.acquire() as conn, conn.transaction():
            try:
                state, changed = await transition(
                    conn,
                    inp.job_id,
                    inp.to_state,
                    exit_code=inp.exit_code,
                    error=inp.error,
                    waiting_reason=inp.waiting_reason,
                    detail=inp.detail,
                )
            except (NotFound, InvalidTransition) as exc:
                raise _permanent(exc) from exc
        return TransitionResult(state=state, changed=changed)

    @activity.defn
    async def finish_job(self, inp: FinishInput) -> ReleaseResult:
        """Terminal transition + lease release in one transaction (terminal states absorb)."""
        async with self.pool.acquire() as conn:
            try:
                return await finish(conn, inp.job_id, inp.to_state, exit_code=inp.exit_code, error=inp.error)
            except (NotFound, InvalidTransition, ValueError) as exc:
                raise _permanent(exc) from exc

    @activity.defn
    async def archive_logs(self, inp: ArchiveInput) -> ArchiveResult:
        """Write the whole transcript to storage as gzip JSON lines (idempotent: same key, same bytes)."""
        key = LOG_ARCHIVE_KEY.format(job_id=inp.job_id)
        with tempfile.SpooledTemporaryFile(max_size=8 << 20) as raw:
            lines = 0
            with gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz:
                async with self.pool.acquire() as conn:
                    async for line in logstore.read_all(conn, inp.job_id):
                        gz.write(json.dumps(line.public(), ensure_ascii=False).encode() + b"\n")
                        lines += 1
                        if lines % 20_000 == 0:
                            activity.heartbeat(lines)
            if lines == 0:
                return ArchiveResult()
            size = raw.tell()
            raw.seek(0)
            digest = hashlib.sha256()
            for chunk in iter(lambda: raw.read(1 << 20), b""):
                digest.update(chunk)
            raw.seek(0)
            async with _heartbeating():
                await asyncio.to_thread(self.storage.put, key, raw, digest.hexdigest())
        async with self.pool.acquire() as conn:
            await conn.execute(Q.set_log_archive, inp.job_id, key, size, digest.hexdigest())
        return ArchiveResult(key=key, lines=lines, size=size)

    @activity.defn
    async def presign_uploads(self, inp: PresignInput) -> PresignResult:
        targets = []
        for entry in inp.artifacts:
            key = artifact_key(inp.job_id, entry.path)
            url, headers = self.storage.presign_put(key, entry.size, entry.sha256)
            targets.append(UploadTarget(path=entry.path, key=key, url=url, headers=headers))
        return PresignResult(targets=targets)

    @activity.defn
    async def verify_artifacts(self, inp: VerifyInput) -> VerifyResult:
        """Record an artifact only once storage holds exactly the bytes the box hashed."""
        mismatched: list[str] = []
        recorded = 0
        async with self.pool.acquire() as conn, _heartbeating():
            org_id = await conn.fetchval(Q.job_org, inp.job_id)
            for entry in inp.artifacts:
                key = artifact_key(inp.job_id, entry.path)
                check = await asyncio.to_thread(self.storage.verify, key, entry.size, entry.sha256)
                if not check.ok:
                    activity.logger.warning("artifact %s of job %s rejected: %s", entry.path, inp.job_id, check.reason)
                    mismatched.append(f"{entry.path} ({check.reason})")
                    continue
                await conn.execute(Q.insert_artifact, inp.job_id, org_id, entry.path, key, entry.size, entry.sha256)
                recorded += 1
        return VerifyResult(recorded=recorded, mismatched=mismatched)
