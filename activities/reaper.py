"""The reaper: frees leases, box holds and ends jobs whose workflow is gone; starts workflows a
crash missed; wakes waiting jobs whose wake-up was lost."""

from __future__ import annotations

import logging
import time

import asyncpg
from temporalio import activity
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode

from boxrun.constants import TERMINAL_STATES, JobState, PipelineState
from boxrun.db import Conn, Q
from boxrun.messages import ReapResult
from boxrun.placement import finish, release
from boxrun.services.dispatch import hold_for_the_box
from boxrun.services.pipelines import end_rows, release_pipeline_holds, start_pipeline_workflow, stored_input
from boxrun.services.webhooks import start_deliveries, start_deliveries_of
from boxrun.services.workflow_start import job_input, start_job_workflow
from boxrun.settings import Settings

log = logging.getLogger(__name__)

_ACTIVE = ", ".join(f'"{s.value}"' for s in JobState if s not in TERMINAL_STATES)
# Job workflows that closed while their last recorded JobState was not terminal: terminated from
# the UI/CLI, or failed in a way the workflow itself could not clean up after.
ORPHANS_QUERY = f'WorkflowType = "JobWorkflow" AND ExecutionStatus != "Running" AND JobState IN ({_ACTIVE})'
# The waiter sweep passes over a box that granted or freed a lease this recently: the wake-up that
# change sent (or the grant's cascade) is still on its way, not lost.
WAKE_IN_FLIGHT_S = 2.0


class ReaperActivities:
    def __init__(self, pool: asyncpg.Pool, settings: Settings) -> None:
        self.pool = pool
        self.settings = settings
        self._waiters_swept_at: float | None = None  # time.monotonic() of this worker's last waiter sweep

    @activity.defn
    async def reap(self) -> ReapResult:
        client = activity.client()
        result = ReapResult()
        wake: list[str] = []
        async with self.pool.acquire() as conn:
            # 1. leases still held by jobs that already ended
            for row in await conn.fetch(Q.leases_of_finished_jobs):
                freed = await release(conn, row["job_id"])
                wake += freed.wake_job_ids
                result.leases_freed += int(freed.released)
            # 2. jobs whose workflow is closed but never brought them to an end
            async for wf in client.list_workflows(ORPHANS_QUERY, limit=500):
                status = wf.status.name.lower() if wf.status else "closed"
                state = await conn.fetchval(Q.job_state_any_org, wf.id)
                if state is None or JobState(state).terminal:
                    continue  # unknown here, or already ended (step 1 frees any lease it kept)
                async with conn.transaction():
                    # a job its box still runs under an offer no run_job adopted: told to stop,
                    # ended by a later sweep once the box reported (never freed under it)
                    if await hold_for_the_box(conn, wf.id, self.settings.box_offline_after_s):
                        continue
                    done = await finish(conn, wf.id, JobState.FAILED, error=f"workflow {status} before the job ended")
                log.warning("reaped job %s (workflow %s): now %s", wf.id, status, done.state)
                await start_deliveries_of(self.pool, client, wf.id)  # its job.failed webhooks
                wake += done.wake_job_ids
                result.jobs_ended += 1
            # 3. queued jobs whose workflow never started (the API died between commit and start)
            for row in await conn.fetch(Q.stale_queued_jobs, 30.0):
                if row["pipeline_id"] is not None:
                    continue  # a pipeline step's job: its StepWorkflow starts (or ends) it
                try:
                    await client.get_workflow_handle(str(row["id"])).describe()
                    continue
                except RPCError as exc:
                    if exc.status != RPCStatusCode.NOT_FOUND:
                        raise
                await start_job_workflow(client, job_input(row, self.settings))
                log.warning("started the missing workflow of queued job %s", row["id"])
                result.workflows_started += 1
            # 4. pipelines whose workflow never started, or closed before recording an end (their
            # box holds are released with them), and holds an ended pipeline still has
            await self._reap_pipelines(conn, client, result)
            await self._reap_holds(conn, client, result)
            # 5. webhooks: boxes that came online or went offline since the last sweep, and
            # deliveries a crash left without a workflow (written, not started)
            await self._sweep_webhooks(conn, client, result)
            # 6. waiting jobs a box could take now but that were not woken (a lost signal)
            wake += await self._sweep_waiters(conn, result)
        for job_id in dict.fromkeys(wake):
            try:
                await client.get_workflow_handle(job_id).signal("wake")
            except RPCError as exc:
                log.info("could not wake job %s: %s", job_id, exc)
        return result

    async def _reap_pipelines(self, conn: Conn, client: Client, result: ReapResult) -> None:
        for row in await conn.fetch(Q.stale_active_pipelines, 30.0):
            pid = str(row["id"])
            try:
                status = (await client.get_workflow_handle(pid).describe()).status
            except RPCError as exc:
                if exc.status != RPCStatusCode.NOT_FOUND:
                    raise
                await start_pipeline_workflow(client, stored_input(row, await conn.fetch(Q.pipeline_steps, row["id"])))
                log.warning("started the missing workflow of pipeline %s", pid)
                result.workflows_started += 1
                continue
            if status == WorkflowExecutionStatus.RUNNING:
                continue
            name = status.name.lower() if status else "closed"
            ended = PipelineState.CANCELLED if status == WorkflowExecutionStatus.CANCELED else PipelineState.FAILED
            await end_rows(conn, client, pid, ended, f"workflow {name} before the pipeline ended", by="reaper")
            log.warning("reaped pipeline %s (workflow %s): now %s", pid, name, ended.value)
            result.pipelines_ended += 1

    async def _reap_holds(self, conn: Conn, client: Client, result: ReapResult) -> None:
        """Release the box holds of pipelines that ended (a crash between a pipeline's end and its
        release, or a hold taken as the pipeline ended without its workflow) and wake their boxes'
        waiters."""
        for row in await conn.fetch(Q.holds_of_ended_pipelines):
            pid = str(row["pipeline_id"])
            woken = await release_pipeline_holds(conn, client, pid, by="reaper")
            log.warning("released the box holds of ended pipeline %s (woke %d jobs)", pid, len(woken))
            result.holds_released += 1

    async def _sweep_webhooks(self, conn: Conn, client: Client, result: ReapResult) -> None:
        flips = await conn.fetchrow(Q.box_liveness_flips, self.settings.box_offline_after_s)
        assert flips is not None  # an aggregate: always one row
        result.boxes_flipped += flips["flipped"]
        if flips["delivery_ids"]:
            await start_deliveries(conn, client, flips["delivery_ids"])
        stale = [r["id"] for r in await conn.fetch(Q.stale_unstarted_deliveries, self.settings.webhook_start_grace_s)]
        if stale:
            result.deliveries_started += await start_deliveries(conn, client, stale)
            log.warning("started %d webhook deliveries left without a workflow", len(stale))

    async def _sweep_waiters(self, conn: Conn, result: ReapResult) -> list[str]:
        """The one safety net of waiting jobs (they have no periodic re-check of their own): for
        every box that could take a job now and has been quiet for WAKE_IN_FLIGHT_S, name as many
        of its waiters as it has free slots, in grant order, to be woken. Runs at most every
        waiter_sweep_interval_s on this worker (half a reaper interval of slack, so a sweep due
        now is not put off a whole interval by timer jitter)."""
        now = time.monotonic()
        every = self.settings.waiter_sweep_interval_s
        if (
            self._waiters_swept_at is not None
            and now - self._waiters_swept_at + self.settings.reaper_interval_s / 2 < every
        ):
            return []
        self._waiters_swept_at = now
        wake: list[str] = []
        for box in await conn.fetch(Q.idle_boxes_with_waiters, self.settings.box_offline_after_s, WAKE_IN_FLIGHT_S):
            woken = [str(w["id"]) for w in await conn.fetch(Q.waiters_for_box, box["id"], box["free"])]
            if woken:
                log.warning("box %s could take a job but its waiters were not woken: waking %s", box["name"], woken)
            wake += woken
        result.waiters_woken = len(set(wake))
        return wake
