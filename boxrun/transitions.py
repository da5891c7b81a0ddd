"""The job state machine in Postgres: one guarded UPDATE, an event row and a NOTIFY per change."""

from __future__ import annotations

import json
from typing import Any

from boxrun import metrics
from boxrun.constants import ALLOWED_FROM, CHANNEL_JOBS, JobState
from boxrun.db import Conn, Q
from boxrun.errors import InvalidTransition, NotFound


async def transition(
    conn: Conn,
    job_id: str,
    to_state: JobState,
    *,
    box_id: int | None = None,
    exit_code: int | None = None,
    error: str | None = None,
    waiting_reason: str | None = None,
    detail: dict[str, Any] | None = None,
) -> tuple[JobState, bool]:
    """Move `job_id` to `to_state` inside the caller's transaction.

    Returns (state, changed). Re-applying the transition the job already made is a no-op
    (activity retries are safe); any other disallowed move raises InvalidTransition.
    """
    row = await conn.fetchrow(Q.lock_job, job_id)
    if row is None:
        raise NotFound(f"job {job_id} does not exist")
    current = JobState(row["state"])
    if current == to_state:
        return current, False
    allowed = ALLOWED_FROM[to_state]
    if current not in allowed:
        raise InvalidTransition(f"job {job_id} is {current}; it cannot become {to_state}")
    updated = await conn.fetchval(
        Q.transition,
        job_id,
        to_state,
        [s.value for s in allowed],
        box_id,
        exit_code,
        error,
        waiting_reason,
        to_state.terminal,
    )
    if updated is None:  # the guard and the row lock above make this unreachable; fail loudly if not
        raise InvalidTransition(f"job {job_id}: guarded update to {to_state} matched nothing")
    event_detail = {k: v for k, v in (detail or {}).items() if v is not None}
    for key, value in (("exit_code", exit_code), ("error", error), ("reason", waiting_reason)):
        if value is not None:
            event_detail[key] = value
    await conn.execute(Q.insert_event, row["org_id"], job_id, current, to_state, event_detail)
    await conn.execute(Q.notify, CHANNEL_JOBS, json.dumps({"job_id": str(job_id), "state": to_state.value}))
    metrics.job_changed(to_state.value, terminal=to_state.terminal, created_at=row["created_at"])
    return to_state, True
