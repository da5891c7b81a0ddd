"""run_job on the control worker: offer the job to its box, wait for the claim, then hand the
activity over to the API (async completion with the task token kept in Postgres)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import asyncpg
from temporalio import activity
from temporalio.exceptions import ApplicationError

from boxrun import logcontext
from boxrun.db import Conn, Q
from boxrun.messages import RunJobInput, RunJobResult
from boxrun.services.dispatch import DB_DOWN, notify

# How often the waiting activity looks at the dispatch row and heartbeats. The claim itself
# does not wait for this: the box starts the job at once, this only ends the activity's wait.
CLAIM_POLL_S = 0.5
DB_RETRY_S = 0.5
# What run_job waits out and retries itself (it has one attempt): Postgres unreachable, or a
# transaction rolled back by Postgres (deadlock, serialization failure), which redoes cleanly.
DB_TRANSIENT = (*DB_DOWN, asyncpg.TransactionRollbackError)
T = TypeVar("T")


class DispatchActivities:
    """Bound to one Postgres pool; registered on the control worker."""

    def __init__(self, pool: asyncpg.Pool, *, claim_timeout_s: float) -> None:
        self.pool = pool
        self.claim_timeout_s = claim_timeout_s

    def all(self) -> list[Callable[..., Awaitable[Any]]]:
        return [self.run_job]

    @activity.defn
    async def run_job(self, inp: RunJobInput) -> RunJobResult:
        """Offer the job (store the task token, NOTIFY the box), wait until the box claims it or the
        claim deadline passes. Claimed: completed later by the API with the box's result.

        One attempt only (a job never runs twice), so a Postgres outage is waited out here,
        heartbeating, rather than failing the job."""
        token = activity.info().task_token
        box_id, early = await self._db(lambda conn: self._offer(conn, inp, token))
        if early is not None:  # offered at submission, and the box ended it before this adopted it
            if "failure" in early:
                failure = early["failure"]
                raise ApplicationError(failure["message"], type=failure["type"], non_retryable=True)
            return RunJobResult.model_validate(early["result"])
        try:
            while True:
                activity.heartbeat()
                if await self._db(lambda conn: self._claimed_or_expired(conn, inp.job_id)):
                    break
                await asyncio.sleep(CLAIM_POLL_S)
        except asyncio.CancelledError:
            # Cancelled before the box claimed it: close the offer so a late claim gets 409. If the
            # box claimed it meanwhile, the cancel is pushed to it and the API reports it.
            expired = await self._db(lambda conn: conn.fetchval(Q.expire_dispatch, inp.job_id))
            if expired is not None:
                raise
        activity.logger.debug("job %s claimed by box %s (id %d)", inp.job_id, inp.box, box_id)
        activity.raise_complete_async()

    async def _offer(self, conn: Conn, inp: RunJobInput, token: bytes) -> tuple[int, dict[str, Any] | None]:
        """Offer the job to its box, or adopt the offer made at submission (returns what the box
        reported if it already ended the job: early_result)."""
        async with conn.transaction():
            box_id: int | None = await conn.fetchval(Q.box_id_by_name, inp.job_id, inp.box)
            if box_id is None:
                raise ApplicationError(f"box {inp.box} no longer exists", type="BoxGone", non_retryable=True)
            offered = await conn.fetchrow(
                Q.offer_dispatch,
                inp.job_id,
                box_id,
                token,
                self.claim_timeout_s,
                logcontext.get("request_id"),
                activity.info().scheduled_time,
            )
            if offered is None:  # claimed under an earlier offer, or offered by a later run_job
                raise ApplicationError(
                    f"job {inp.job_id} is no longer open to this offer", type="OfferSuperseded", non_retryable=True
                )
            if offered["claimed_at"] is None:
                await notify(conn, box_id, inp.job_id, "offer")
        return box_id, offered["early_result"]

    async def _claimed_or_expired(self, conn: Conn, job_id: str) -> bool:
        """True once claimed; raises the claim-deadline failure when this call expires the offer."""
        row = await conn.fetchrow(Q.dispatch_state, job_id)
        if row is not None and row["claimed_at"] is not None:
            return True
        if row is None or row["expired_at"] is not None or row["overdue"]:
            if await conn.fetchval(Q.expire_dispatch, job_id) is not None or row is None:
                raise ApplicationError(
                    f"the box did not claim the job within {self.claim_timeout_s:g} s (agent gone?)",
                    type="ClaimTimeout",
                    non_retryable=True,
                )
        return False  # not yet (or claimed in the same instant: the next look sees it)

    async def _db(self, step: Callable[[Conn], Awaitable[T]]) -> T:
        """Run `step` on a pooled connection, waiting out a Postgres outage or a rolled-back
        transaction (heartbeating)."""
        while True:
            try:
                async with self.pool.acquire() as conn:
                    return await step(conn)
            except DB_TRANSIENT as exc:
                activity.logger.warning("Postgres unavailable or the transaction was rolled back (%s); retrying", exc)
                activity.heartbeat()
                await asyncio.sleep(DB_RETRY_S)
