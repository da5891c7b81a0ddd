"""The `boxrun-retention` Temporal Schedule (Web UI: Schedules), made or updated by every control
worker at start-up."""

from __future__ import annotations

import logging
from datetime import timedelta

from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleAlreadyRunningError,
    ScheduleHandle,
    ScheduleIntervalSpec,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleSpec,
    ScheduleUpdate,
    ScheduleUpdateInput,
)

from boxrun.activities.retention import RetentionInput
from boxrun.constants import CONTROL_TASK_QUEUE
from boxrun.services.org_policy import RETENTION_SCHEDULE_ID
from boxrun.workflows.retention import RetentionWorkflow

log = logging.getLogger(__name__)

# The id of each run's workflow (Temporal appends the scheduled time).
RETENTION_WORKFLOW_ID = "boxrun-retention-run"


def retention_schedule(every_s: float) -> Schedule:
    return Schedule(
        action=ScheduleActionStartWorkflow(
            RetentionWorkflow.run,
            RetentionInput(),
            id=RETENTION_WORKFLOW_ID,
            task_queue=CONTROL_TASK_QUEUE,
        ),
        spec=ScheduleSpec(intervals=[ScheduleIntervalSpec(every=timedelta(seconds=every_s))]),
        # a run still going when the next is due: the next is skipped (two runs would race on
        # the same jobs); a run missed while the server was down is not caught up one by one
        policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP, catchup_window=timedelta(minutes=1)),
    )


async def ensure_retention_schedule(client: Client, every_s: float) -> ScheduleHandle:
    """Create the schedule, or bring the existing one to this worker's interval and action
    (idempotent; several workers starting at once all end with the same schedule). A schedule
    paused from the Web UI stays paused."""
    wanted = retention_schedule(every_s)
    try:
        handle = await client.create_schedule(RETENTION_SCHEDULE_ID, wanted)
        log.info("retention schedule %s created (every %.0fs)", RETENTION_SCHEDULE_ID, every_s)
        return handle
    except ScheduleAlreadyRunningError:
        pass
    handle = client.get_schedule_handle(RETENTION_SCHEDULE_ID)

    def update(current: ScheduleUpdateInput) -> ScheduleUpdate:
        schedule = current.description.schedule
        schedule.action, schedule.spec, schedule.policy = wanted.action, wanted.spec, wanted.policy
        return ScheduleUpdate(schedule=schedule)

    await handle.update(update)
    log.info("retention schedule %s updated (every %.0fs)", RETENTION_SCHEDULE_ID, every_s)
    return handle
