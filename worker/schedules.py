"""Temporal Schedules the control worker makes sure exist."""

from __future__ import annotations

import logging
from datetime import timedelta

from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleAlreadyRunningError,
    ScheduleIntervalSpec,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleSpec,
    ScheduleUpdate,
    ScheduleUpdateInput,
)

from boxrun.constants import CONTROL_TASK_QUEUE
from boxrun.workflows.reaper import REAPER_SCHEDULE_ID, ReaperWorkflow

log = logging.getLogger(__name__)


async def ensure_reaper_schedule(client: Client, every_s: float) -> None:
    """Create the reaper schedule, or bring its interval in line with the settings."""
    schedule = Schedule(
        action=ScheduleActionStartWorkflow(ReaperWorkflow.run, id=REAPER_SCHEDULE_ID, task_queue=CONTROL_TASK_QUEUE),
        spec=ScheduleSpec(intervals=[ScheduleIntervalSpec(every=timedelta(seconds=every_s))]),
        policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP),
    )
    try:
        await client.create_schedule(REAPER_SCHEDULE_ID, schedule)
        log.info("created schedule %s (every %.0fs)", REAPER_SCHEDULE_ID, every_s)
    except ScheduleAlreadyRunningError:

        async def _update(_: ScheduleUpdateInput) -> ScheduleUpdate:
            return ScheduleUpdate(schedule=schedule)

        await client.get_schedule_handle(REAPER_SCHEDULE_ID).update(_update)
