"""Placing jobs on boxes: leases granted and released in Postgres transactions."""

from __future__ import annotations

import asyncpg

from boxrun.constants import JobState
from boxrun.db import Q
from boxrun.errors import NotFound
from boxrun.messages import AcquireResult, ReleaseResult
from boxrun.transitions import transition

WAIT_BUSY = "busy"


def _missing(requires: list[str], capabilities: list[str]) -> list[str]:
    return sorted(set(requires) - set(capabilities))


async def acquire(conn: asyncpg.Connection, job_id: str) -> AcquireResult:
    """Lease a box for `job_id` and move it to `dispatching`, or to `waiting_for_box`, or report
    that no box can ever take it. Idempotent: a job that already holds a lease gets that box back.

    The target boxes are locked FOR UPDATE (in id order) for the whole decision, and release()
    locks the box too, so a release either frees capacity this grant sees or finds this job
    already waiting and wakes it: no lost wake-ups, no double booking.
    """
    async with conn.transaction():
        job = await conn.fetchrow(Q.lock_job, job_id)
        if job is None:
            raise NotFound(f"job {job_id} does not exist")
        held = await conn.fetchrow(Q.active_lease, job_id)
        if held is not None:
            return AcquireResult(box=held["box"])
        if JobState(job["state"]).terminal:
            return AcquireResult(unschedulable_reason=f"job is already {job['state']}")

        boxes = await conn.fetch(Q.lock_target_boxes, job["org_id"], job["box_name"], job["box_group"])
        requires = list(job["requires"])
        fitting = [b for b in boxes if not _missing(requires, b["capabilities"])]
        if not fitting:
            if job["box_name"] is not None and boxes:
                reason = f"box {job['box_name']} lacks capabilities {_missing(requires, boxes[0]['capabilities'])}"
            elif job["box_name"] is not None:
                reason = f"box {job['box_name']} does not exist"
            elif boxes:
                reason = f"no box in group {job['box_group']} has all of {requires}"
            else:
                reason = f"group {job['box_group']} has no boxes"
            return AcquireResult(unschedulable_reason=reason)

        candidates = []
        for box in fitting:
            load = await conn.fetchrow(Q.box_load, box["id"])
            if load["exclusive"]:
                continue
            if job["lock"] and load["active"] > 0:
                continue
            if load["active"] >= box["capacity"]:
                continue
            if await conn.fetchval(Q.earlier_waiter, box["id"], job_id) is not None:
                continue
            candidates.append((load["active"] / box["capacity"], box["name"], box))
        if not candidates:
            if job["state"] != JobState.WAITING_FOR_BOX:
                await transition(conn, job_id, JobState.WAITING_FOR_BOX, waiting_reason=WAIT_BUSY)
            return AcquireResult(wait_reason=WAIT_BUSY)

        _, _, box = min(candidates, key=lambda c: (c[0], c[1]))
        await conn.execute(Q.insert_lease, job_id, job["org_id"], box["id"], job["lock"])
        await transition(conn, job_id, JobState.DISPATCHING, box_id=box["id"], detail={"box": box["name"]})
        return AcquireResult(box=box["name"])


async def release(conn: asyncpg.Connection, job_id: str, *, wake: int = 1) -> ReleaseResult:
    """Free the job's lease (if any) and name the waiting jobs that may now take the box."""
    async with conn.transaction():
        box_id = await conn.fetchval(Q.release_lease, job_id)
        if box_id is None:
            return ReleaseResult(released=False)
        await conn.execute(Q.lock_box, box_id)
        waiters = await conn.fetch(Q.waiters_for_box, box_id, wake)
        return ReleaseResult(released=True, wake_job_ids=[str(w["id"]) for w in waiters])
