"""Placing jobs on boxes: leases granted and released in Postgres transactions."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import asyncpg

from boxrun.constants import JobState
from boxrun.db import Conn, Q
from boxrun.errors import NotFound
from boxrun.messages import AcquireResult, ReleaseResult
from boxrun.transitions import transition

WAIT_BUSY = "busy"
WAIT_MAINTENANCE = "maintenance"
WAIT_OFFLINE = "offline"
# The most waiters one grant wakes for the boxes it left free (each wake-up is a signal the
# granting workflow sends; the woken job's own grant hands on further). Measured (docs/
# benchmarks.md, "Throughput and backlog"): waking up to 20 at once made a 1,000-job group burst
# slower (history events per job 90 against ~50: most woken jobs found the box taken and waited
# again), so one at a time.
MAX_HAND_ON = 1


def _missing(requires: list[str], capabilities: list[str]) -> list[str]:
    return sorted(set(requires) - set(capabilities))


async def _never_reason(conn: Conn, job: asyncpg.Record, boxes: list[asyncpg.Record], requires: list[str]) -> str:
    if job["box_name"] is not None and boxes:
        return f"box {job['box_name']} lacks capabilities {_missing(requires, boxes[0]['capabilities'])}"
    if not boxes:
        closed = await conn.fetchval(
            Q.closed_target_boxes, job["org_id"], job["box_name"], job["box_group"], job["owner"]
        )
        if closed:  # box access (allowed_users) took the owner's name off every box of the target
            if job["box_name"] is not None:
                return f"box {job['box_name']} is not open to {job['owner']} (allowed_users)"
            return f"group {job['box_group']} has no box open to {job['owner']} (allowed_users)"
    # An empty target: say whether a box was deleted from under the job (the audit log keeps
    # each deletion; this runs once, when the job ends unschedulable).
    deleted = await conn.fetchrow(
        Q.last_box_deletion,
        job["org_id"],
        job["box_name"],
        job["box_group"],
        job["created_at"],
    )
    gone = f"box {deleted['box']} was deleted" if deleted is not None else None
    if job["box_name"] is not None:
        return gone or f"box {job['box_name']} does not exist"
    why = (
        f"no box in group {job['box_group']} has all of {requires}"
        if boxes
        else f"group {job['box_group']} has no boxes"
    )
    return f"{why} ({gone})" if gone else why


def target_key(org_id: object, *, box: str | None = None, group: str | None = None) -> str:
    """The placement lock of one target: a box by name, or a group, of one org (leases.sql lock_target)."""
    return f"{org_id}/box/{box}" if box is not None else f"{org_id}/group/{group}"


async def lock_box_targets(conn: Conn, box_ids: list[int]) -> None:
    """Take the placement locks of every target the boxes are in (their names and groups), in one
    order (sorted keys: two releases never deadlock), before looking for the boxes' waiters: a
    placement of any of those targets is then either committed (its job visibly waiting) or
    not yet started (it will see what the caller frees). Call it before locking a box row: a
    placement takes its target lock first, then the box it chose."""
    keys: set[str] = set()
    for box_id in box_ids:
        row = await conn.fetchrow(Q.box_targets, box_id)
        if row is None:
            continue  # deleted: no placement can choose it any more
        keys.add(target_key(row["org_id"], box=row["name"]))
        keys.update(target_key(row["org_id"], group=g) for g in row["groups"])
    for key in sorted(keys):
        await conn.execute(Q.lock_target, key)


def _refusal(job: asyncpg.Record, box: asyncpg.Record) -> str | None:
    """Why `box` (a box_facts row) cannot take `job` now, or None if it can."""
    if box["window_id"] is not None:
        return WAIT_MAINTENANCE
    if not box["live"]:
        return WAIT_OFFLINE
    full = box["active"] >= box["capacity"] or (job["lock"] and box["active"] > 0)
    # a pipeline's hold keeps the box for its pinned steps: others wait (busy), and a pinned step
    # does not queue behind the jobs the hold refuses
    behind = box["behind"] and not box["held_for_me"]
    if box["held"] or box["exclusive"] or full or behind:
        return WAIT_BUSY
    return None


async def acquire(conn: Conn, job_id: str, *, offline_after_s: float = 15.0) -> AcquireResult:
    """Lease a box for `job_id` and move it to `dispatching`, or to `waiting_for_box` with the
    reason (busy, maintenance, offline), or report that no box can ever take it. Idempotent: a
    job that already holds a lease gets that box back.

    A box qualifies when the job's owner may use it (its allowed_users names them, or is NULL, or
    the owner is an org admin), it has every required capability, its agent is live (reported within
    `offline_after_s`, not draining), no maintenance window covers now, it has free capacity, no
    exclusive lease is on it (and, for `lock` jobs, no lease at all), no pipeline holds it for other
    steps (box_holds: keep_box), and no job that waits longer (higher priority first, then FIFO)
    could use it (a job the box is held for does not wait behind jobs the hold refuses).

    Locking: the placement lock of the job's target (one advisory lock, whatever the size of the
    group) for the whole decision, then only the box chosen, checked again under its row lock
    (another target sharing the box may have taken it); boxes are never locked wholesale, so
    heartbeats updating box rows never wait for placements. release(), release_holds() and
    every wake-up take the target locks of the box they free (lock_box_targets) before looking
    for waiters, so a release either frees capacity this grant sees or finds this job waiting.
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

        await conn.execute(Q.lock_target, target_key(job["org_id"], box=job["box_name"], group=job["box_group"]))
        # only boxes the job's owner may use (allowed_users), decided in the query
        boxes = await conn.fetch(Q.target_boxes, job["org_id"], job["box_name"], job["box_group"], job["owner"])
        requires = list(job["requires"])
        fitting = [b for b in boxes if not _missing(requires, b["capabilities"])]
        if not fitting:
            return AcquireResult(unschedulable_reason=await _never_reason(conn, job, boxes, requires))

        reasons: set[str] = set()
        window_ends: list[datetime] = []
        candidates = []
        for box in await conn.fetch(Q.box_facts, [b["id"] for b in fitting], job_id, offline_after_s):
            refusal = _refusal(job, box)
            if refusal == WAIT_MAINTENANCE:
                await conn.execute(Q.record_rejection, job["org_id"], job_id, box["id"], box["window_id"])
                if box["window_ends"] is not None:
                    window_ends.append(box["window_ends"])
            if refusal is not None:
                reasons.add(refusal)
                continue
            candidates.append((box["active"] / box["capacity"], box["name"], box))

        candidates.sort(key=lambda c: (c[0], c[1]))
        for _, _, box in candidates:
            if not await _still_free(conn, job, box["id"], requires, offline_after_s):
                reasons.add(WAIT_BUSY)
                continue
            await conn.execute(Q.insert_lease, job_id, job["org_id"], box["id"], job["lock"])
            await transition(conn, job_id, JobState.DISPATCHING, box_id=box["id"], detail={"box": box["name"]})
            # the hand-on looks at every candidate, the chosen box too (it may have slots left)
            return AcquireResult(box=box["name"], wake_job_ids=await _next_waiters(conn, [c[2] for c in candidates]))

        # the most hopeful reason: a busy box frees up soonest, a window ends, an agent returns
        reason = next(r for r in (WAIT_BUSY, WAIT_MAINTENANCE, WAIT_OFFLINE) if r in reasons)
        if job["state"] != JobState.WAITING_FOR_BOX or job["waiting_reason"] != reason:
            await _wait(conn, job, reason)
        retry = None
        if window_ends:
            retry = max(0.0, (min(window_ends) - datetime.now(UTC)).total_seconds())
        return AcquireResult(wait_reason=reason, retry_after_s=retry)


async def _still_free(
    conn: Conn, job: asyncpg.Record, box_id: int, requires: list[str], offline_after_s: float
) -> bool:
    """Lock the box chosen and check it again: still in the job's target, open to its owner,
    with the capabilities, and free (a placement of another target sharing it, a hold, a window
    or an edit may have come first).

    The check runs in a savepoint that is rolled back when the box is refused, which releases its
    row lock: a placement never holds more than one box row, so two placements trying boxes in
    different orders cannot deadlock."""
    try:
        async with conn.transaction():
            locked = await conn.fetchval(
                Q.lock_chosen_box, job["org_id"], job["box_name"], job["box_group"], job["owner"], requires, box_id
            )
            facts = None if locked is None else await conn.fetchrow(Q.box_facts, [box_id], job["id"], offline_after_s)
            if facts is None or _refusal(job, facts) is not None:
                raise _Refused
    except _Refused:
        return False
    return True


class _Refused(Exception):
    """The box chosen was taken or changed meanwhile (rolls its savepoint back)."""


async def _next_waiters(conn: Conn, boxes: list[asyncpg.Record]) -> list[str]:
    """The first waiting jobs (at most MAX_HAND_ON) that could take one of `boxes` still free
    after this grant (the query counts the leases as they are now, this grant's included).
    Waking it continues the cascade: when several boxes free up at once, the waiters they woke
    may all be the same head job, which takes one box and hands the wake-up on to the next in
    line. One query over every box (leases.sql next_waiters_for_boxes)."""
    rows = await conn.fetch(Q.next_waiters_for_boxes, [b["id"] for b in boxes], MAX_HAND_ON)
    return [str(r["id"]) for r in rows]


async def _box_load(conn: Conn, box_id: int) -> asyncpg.Record:
    load = await conn.fetchrow(Q.box_load, box_id)  # an aggregate: always exactly one row
    assert load is not None
    return load


async def _wait(conn: Conn, job: asyncpg.Record, reason: str) -> None:
    if job["state"] == JobState.WAITING_FOR_BOX:
        await conn.execute(Q.set_waiting_reason, job["id"], reason)  # same state, new reason
    else:
        await transition(conn, job["id"], JobState.WAITING_FOR_BOX, waiting_reason=reason)


async def finish(
    conn: Conn,
    job_id: str,
    state: JobState,
    *,
    exit_code: int | None = None,
    error: str | None = None,
    error_kind: str | None = None,
    detail: dict[str, Any] | None = None,
) -> ReleaseResult:
    """Terminal transition and lease release in one transaction (`detail` for the job event).

    `state` must be terminal (ValueError otherwise: a caller bug). A job that is already terminal
    keeps its state (terminal states are absorbing) and its lease, if one is left, is freed. Any
    other refused move (`dispatching` -> `completed`) raises InvalidTransition and frees nothing:
    the job is still live, so its box is still in use.
    """
    if not state.terminal:
        raise ValueError(f"finish() needs a terminal state, not {state}")
    async with conn.transaction():
        job = await conn.fetchrow(Q.lock_job, job_id)
        if job is None:
            raise NotFound(f"job {job_id} does not exist")
        current = JobState(job["state"])
        if current.terminal:
            state = current  # absorbing: nothing to change, only a lease left behind to free
        else:
            state, _ = await transition(conn, job_id, state, exit_code=exit_code, error=error, detail=detail)
            if error_kind is not None:
                await conn.execute(Q.set_error_kind, job_id, error_kind)
        released = await release(conn, job_id)
    return released.model_copy(update={"state": state})


async def release(conn: Conn, job_id: str) -> ReleaseResult:
    """Free the job's lease (if any) and name the waiting jobs that may now take the box: as many
    as it has free slots (all of them once an exclusive lease ends), first in grant order.

    A pipeline step with keep_box takes its pipeline's hold on the box in the same transaction
    (holds.sql take_hold), so no other job is granted the box between the step and the steps
    pinned to it; the waiters named are then only those the hold admits."""
    async with conn.transaction():
        box_id = await conn.fetchval(Q.release_lease, job_id)
        if box_id is None:
            return ReleaseResult(released=False)
        await lock_box_targets(conn, [box_id])
        capacity = await conn.fetchval(Q.lock_box, box_id)
        await conn.fetchval(Q.take_hold, job_id, box_id)
        load = await _box_load(conn, box_id)
        free = 0 if load["exclusive"] else capacity - load["active"]
        if free <= 0:
            return ReleaseResult(released=True)
        waiters = await conn.fetch(Q.waiters_for_box, box_id, free)
        return ReleaseResult(released=True, wake_job_ids=[str(w["id"]) for w in waiters])


async def release_holds(conn: Conn, pipeline_id: str, step: str | None = None, *, by: str) -> list[str]:
    """Release the pipeline's live holds (of `step` only, if given; `by` is recorded) and name the
    waiting jobs that may now take each box freed, as release() does. Idempotent: a released hold
    is not released again (an empty list then)."""
    wake: list[str] = []
    async with conn.transaction():
        rows = await conn.fetch(Q.release_holds, uuid.UUID(pipeline_id), step, by)
        box_ids = sorted({r["box_id"] for r in rows})
        await lock_box_targets(conn, box_ids)
        for box_id in box_ids:
            # locked as release() locks it: a grant that saw the hold has made its job wait by now
            capacity = await conn.fetchval(Q.lock_box, box_id)
            if capacity is None:
                continue
            load = await _box_load(conn, box_id)
            free = 0 if load["exclusive"] else capacity - load["active"]
            if free > 0:
                wake += [str(w["id"]) for w in await conn.fetch(Q.waiters_for_box, box_id, free)]
    return wake
