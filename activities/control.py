"""Control-plane activities: every job state change, lease, box hold release, cancel push,
verification and archive."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
from temporalio import activity
from temporalio.exceptions import ApplicationError

from boxrun.activities.heartbeat import heartbeating
from boxrun.activities.webhooks import start_deliveries_after
from boxrun.constants import artifact_key
from boxrun.db import Q
from boxrun.errors import InvalidTransition, NotFound
from boxrun.messages import (
    AcquireInput,
    AcquireResult,
    ArchiveInput,
    ArchiveResult,
    CancelInput,
    FinishInput,
    ReleaseHoldInput,
    ReleaseResult,
    TransitionInput,
    TransitionResult,
    VerifyInput,
    VerifyResult,
    WithdrawInput,
    WithdrawResult,
)
from boxrun.placement import acquire, finish
from boxrun.services.archive import write_archive
from boxrun.services.dispatch import hold_for_the_box, request_cancel
from boxrun.services.pipelines import release_pipeline_holds
from boxrun.storage import Storage
from boxrun.transitions import transition

# Manifest rows read per page, HEADs in flight at once, failed names listed in the job's error.
VERIFY_PAGE = 1000
VERIFY_CONCURRENCY = 16
MAX_NAMED = 20


# finish_job's retryable refusal while the box still runs a job no run_job follows yet.
STILL_RUNNING = "StillRunningOnBox"


def _permanent(exc: Exception) -> ApplicationError:
    return ApplicationError(str(exc), type=type(exc).__name__, non_retryable=True)


class ControlActivities:
    """Bound to one Postgres pool and one storage client; registered on the control worker."""

    def __init__(self, pool: asyncpg.Pool, storage: Storage, *, offline_after_s: float = 15.0) -> None:
        self.pool = pool
        self.storage = storage
        self.offline_after_s = offline_after_s
        self._verify_slots = asyncio.Semaphore(VERIFY_CONCURRENCY)

    def all(self) -> list[Callable[..., Awaitable[Any]]]:
        return [
            self.acquire_box,
            self.record_transition,
            self.finish_job,
            self.verify_artifacts,
            self.archive_logs,
            self.request_cancel,
            self.release_hold,
            self.withdraw_offer,
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
        """Terminal transition + lease release in one transaction (terminal states absorb).

        Never under a live process: a job offered at submission that no run_job adopted yet (the
        workflow was cancelled or failed before) has its offer closed with the end if the box has
        not claimed it; if the box claimed it and still reports progress for it, the cancel is
        pushed to the box and this step fails, to be retried, until the box reports its end or
        goes silent (box_offline_after_s). The offer's row is locked first, before the job's, the
        order a claim locks them in, so a claim racing this either came first or finds it closed."""
        async with self.pool.acquire() as conn:
            async with conn.transaction():
                running = await hold_for_the_box(conn, inp.job_id, self.offline_after_s)
                if not running:
                    try:
                        done = await finish(
                            conn,
                            inp.job_id,
                            inp.to_state,
                            exit_code=inp.exit_code,
                            error=inp.error,
                            error_kind=inp.error_kind,
                        )
                    except (NotFound, InvalidTransition, ValueError) as exc:
                        raise _permanent(exc) from exc
            if running:  # the cancel request is committed above; the box hears it now
                raise ApplicationError(
                    f"job {inp.job_id} still runs on its box; its lease is freed once the box reports its end",
                    type=STILL_RUNNING,
                )
        await start_deliveries_after(self.pool, inp.job_id)  # the job.<state> webhooks, committed with it
        return done

    @activity.defn
    async def release_hold(self, inp: ReleaseHoldInput) -> int:
        """Release a pipeline's box hold (its keep_box step's pinned steps all finished) and wake
        the jobs waiting for the box; returns how many were woken. Idempotent."""
        async with self.pool.acquire() as conn:
            woken = await release_pipeline_holds(conn, activity.client(), inp.pipeline_id, inp.step, by="pipeline")
        return len(woken)

    @activity.defn
    async def archive_logs(self, inp: ArchiveInput) -> ArchiveResult:
        """Write the whole transcript to storage as gzip JSON lines (idempotent: same key, same bytes)."""
        async with heartbeating():
            key, lines, size = await write_archive(self.pool, self.storage, inp.job_id, on_progress=activity.heartbeat)
        return ArchiveResult(key=key, lines=lines, size=size)

    @activity.defn
    async def request_cancel(self, inp: CancelInput) -> bool:
        """Record the cancel on the job's dispatch and push it to the box holding it (NOTIFY)."""
        async with self.pool.acquire() as conn:
            return await request_cancel(conn, inp.job_id)

    @activity.defn
    async def withdraw_offer(self, inp: WithdrawInput) -> WithdrawResult:
        """run_job ended on its heartbeat timeout: close the job's offer unless the box claimed it.
        Unclaimed means the job never started (its run_job was lost with a control worker before
        or after offering), so the workflow may offer it again. Idempotent."""
        async with self.pool.acquire() as conn:
            return WithdrawResult(unclaimed=await conn.fetchval(Q.withdraw_dispatch, inp.job_id))

    @activity.defn
    async def verify_artifacts(self, inp: VerifyInput) -> VerifyResult:
        """Read the manifest from Postgres page by page and record an artifact only once storage
        holds exactly the bytes the box hashed. Names refused at the manifest are listed too."""
        mismatched: list[str] = []
        refused: list[str] = []
        failed = 0
        recorded = 0
        after = ""
        async with self.pool.acquire() as conn, heartbeating():
            org_id = await conn.fetchval(Q.job_org, inp.job_id)
            while page := await conn.fetch(Q.manifest_page, inp.job_id, after, VERIFY_PAGE):
                after = page[-1]["path"]
                pending = [r for r in page if r["status"] != "refused"]
                for r in page:
                    if r["status"] == "refused":
                        failed += 1
                        if len(refused) < MAX_NAMED:
                            refused.append(f"{r['path']} ({r['reason']})")
                checks = await asyncio.gather(
                    *(self._verify_one(inp.job_id, r["path"], r["size"], r["sha256"]) for r in pending)
                )
                for r, reason in zip(pending, checks, strict=True):
                    key = artifact_key(inp.job_id, r["path"])
                    if reason is not None:
                        failed += 1
                        if len(mismatched) < MAX_NAMED:
                            mismatched.append(f"{r['path']} ({reason})")
                        continue
                    async with conn.transaction():
                        await conn.execute(
                            Q.insert_artifact, inp.job_id, org_id, r["path"], key, r["size"], r["sha256"]
                        )
                        await conn.execute(Q.mark_manifest, inp.job_id, r["path"], "uploaded", None)
                    recorded += 1
        return VerifyResult(recorded=recorded, mismatched=mismatched, refused=refused, failed_total=failed)

    async def _verify_one(self, job_id: str, path: str, size: int, sha256: str) -> str | None:
        async with self._verify_slots:
            check = await asyncio.to_thread(self.storage.verify, artifact_key(job_id, path), size, sha256)
        if check.ok:
            return None
        activity.logger.warning("artifact %s of job %s rejected: %s", path, job_id, check.reason)
        return check.reason or "not stored as the manifest says"
