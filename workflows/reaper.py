"""ReaperWorkflow: one long-running singleton that sweeps every interval (the safety net)."""

from __future__ import annotations

import builtins
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from boxrun.activities.reaper import ReaperActivities
    from boxrun.messages import ReaperInput
    from boxrun.temporal import BUG_TYPES

# One workflow id for the one reaper: every control worker signal-with-starts it at start-up, so a
# second worker (or a restart) reaches the running reaper instead of starting another.
REAPER_WORKFLOW_ID = "boxrun-reaper"
# A sweep lists closed workflows and runs a few queries: a minute is ample. Three attempts, then
# the error is logged and the next sweep comes one interval later anyway.
SWEEP_TIMEOUT = timedelta(seconds=60)
SWEEP_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_attempts=3)


@workflow.defn(name="ReaperWorkflow", failure_exception_types=BUG_TYPES)
class ReaperWorkflow:
    """Sweep, wait `interval_s` on a durable timer, repeat; continue as new after `run_for_s`.

    One entry in the Web UI's workflow list per `run_for_s` (an hour by default) instead of a
    scheduled workflow per sweep (5,760 a day at 15 s), and about a dozen history events a sweep.
    """

    def __init__(self) -> None:
        self._interval_s: float | None = None
        self._sweep_now = False

    @workflow.signal(name="configure")
    def configure(self, inp: ReaperInput) -> None:
        """A control worker started with these settings (signal-with-start): use its interval."""
        self._interval_s = inp.interval_s

    @workflow.signal(name="sweep")
    def sweep(self) -> None:
        """Sweep now instead of at the end of the current interval."""
        self._sweep_now = True

    @workflow.run
    async def run(self, inp: ReaperInput) -> None:
        if self._interval_s is None:
            self._interval_s = inp.interval_s
        started = workflow.now()
        while True:
            self._sweep_now = False
            try:
                done = await workflow.execute_activity_method(
                    ReaperActivities.reap, start_to_close_timeout=SWEEP_TIMEOUT, retry_policy=SWEEP_RETRY
                )
                if (
                    done.leases_freed
                    or done.jobs_ended
                    or done.workflows_started
                    or done.deliveries_started
                    or done.waiters_woken
                ):
                    workflow.logger.info("reaper sweep: %s", done)
            except ActivityError as exc:
                workflow.logger.warning("reaper sweep failed; next one in %.0fs: %s", self._interval_s, exc.cause)
            elapsed = (workflow.now() - started).total_seconds()
            if elapsed >= inp.run_for_s or workflow.info().is_continue_as_new_suggested():
                break
            try:
                await workflow.wait_condition(lambda: self._sweep_now, timeout=timedelta(seconds=self._interval_s))
            except builtins.TimeoutError:
                pass  # the interval is up: sweep again
        workflow.continue_as_new(ReaperInput(interval_s=self._interval_s, run_for_s=inp.run_for_s))
