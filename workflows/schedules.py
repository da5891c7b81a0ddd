"""ScheduledRunWorkflow: one run of a schedule, started by its `boxrun-schedule-<id>` Temporal Schedule."""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from boxrun.activities.schedules import ScheduleActivities
    from boxrun.schemas.schedules import ScheduledRunInput, ScheduledRunResult
    from boxrun.temporal import BUG_TYPES

# Rendering and submitting one job or pipeline: Postgres, storage (uploads checked) and Temporal.
RUN_TIMEOUT = timedelta(minutes=2)
# Postgres, storage or Temporal unavailable: retried for a while (the delivery id keeps it to one
# run); bad params or a template gone are non-retryable.
RUN_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=2), maximum_interval=timedelta(minutes=1), maximum_attempts=10
)


@workflow.defn(name="ScheduledRunWorkflow", failure_exception_types=BUG_TYPES)
class ScheduledRunWorkflow:
    """Runs the schedule's template once and returns what it made (shown in the Web UI)."""

    @workflow.run
    async def run(self, inp: ScheduledRunInput) -> ScheduledRunResult:
        return await workflow.execute_activity_method(
            ScheduleActivities.run_scheduled, inp, start_to_close_timeout=RUN_TIMEOUT, retry_policy=RUN_RETRY
        )
