"""RetentionWorkflow: one run of retention, started by the `boxrun-retention` Temporal Schedule."""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from boxrun.activities.retention import RetentionActivities, RetentionInput, RetentionResult
    from boxrun.temporal import BUG_TYPES

# A run deletes at most max_jobs jobs' outputs per org and kind, in batches, heartbeating after
# each job (and every few seconds inside one long deletion): the heartbeat timeout notices a dead
# worker quickly, the run itself may take long.
RUN_TIMEOUT = timedelta(hours=2)
HEARTBEAT_TIMEOUT = timedelta(seconds=60)
# Storage or Postgres unavailable: retried (each step is idempotent, the marks already made stay),
# a few times; the schedule's next run comes anyway.
RUN_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=10), maximum_interval=timedelta(minutes=5), maximum_attempts=5
)


@workflow.defn(name="RetentionWorkflow", failure_exception_types=BUG_TYPES)
class RetentionWorkflow:
    """Runs apply_retention once and returns what it deleted (shown in the Web UI)."""

    @workflow.run
    async def run(self, inp: RetentionInput) -> RetentionResult:
        return await workflow.execute_activity_method(
            RetentionActivities.apply_retention,
            inp,
            start_to_close_timeout=RUN_TIMEOUT,
            heartbeat_timeout=HEARTBEAT_TIMEOUT,
            retry_policy=RUN_RETRY,
        )
