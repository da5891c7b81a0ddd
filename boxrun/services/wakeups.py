"""Waking jobs that wait for a box when the API changes what that box can take, or a pipeline's
hold on it ends. A waiting job has no periodic re-check: a wake-up that fails here is made up by
the reaper's waiter sweep (activities/reaper.py) within BOXRUN_WAITER_SWEEP_INTERVAL_S."""

from __future__ import annotations

import logging

from temporalio.client import Client
from temporalio.service import RPCError

from boxrun.db import Q
from boxrun.db.types import Conn
from boxrun.placement import lock_box_targets

log = logging.getLogger(__name__)


async def wake_waiters(conn: Conn, temporal: Client, box_id: int, count: int) -> list[str]:
    """Signal up to `count` jobs waiting for `box_id` (oldest first) to try again now. The
    caller has committed what made the box available; the box's placement locks are taken first
    (placement.lock_box_targets), so a placement deciding meanwhile is either seen waiting here or
    sees the box available."""
    async with conn.transaction():
        await lock_box_targets(conn, [box_id])
        waiters = await conn.fetch(Q.waiters_for_box, box_id, count)
    woken = []
    for row in waiters:
        job_id = str(row["id"])
        try:
            await temporal.get_workflow_handle(job_id).signal("wake")
            woken.append(job_id)
        except RPCError as exc:  # ended meanwhile; else the waiter sweep covers it
            log.info("could not wake job %s: %s", job_id, exc)
    return woken


async def wake_jobs(temporal: Client, job_ids: list[str]) -> list[str]:
    """Signal these jobs' workflows to try placement again now; returns those signalled."""
    woken = []
    for job_id in job_ids:
        try:
            await temporal.get_workflow_handle(job_id).signal("wake")
            woken.append(job_id)
        except RPCError as exc:  # ended meanwhile; else the waiter sweep covers it
            log.info("could not wake job %s: %s", job_id, exc)
    return woken
