"""ReaperWorkflow: one sweep of the reaper activity, started by the `boxrun-reaper` Schedule."""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from boxrun.activities.names import REAP
    from boxrun.messages import ReapResult

REAPER_SCHEDULE_ID = "boxrun-reaper"


@workflow.defn(name="ReaperWorkflow")
class ReaperWorkflow:
    @workflow.run
    async def run(self) -> ReapResult:
        # The next scheduled sweep comes soon anyway: a failed sweep need not retry for long.
        return await workflow.execute_activity(
            REAP,
            result_type=ReapResult,
            start_to_close_timeout=timedelta(seconds=60),
            retry_policy=RetryPolicy(maximum_attempts=3),
        )
