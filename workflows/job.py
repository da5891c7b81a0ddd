"""JobWorkflow: one job from queued to a terminal state; workflow id = job id."""

from __future__ import annotations

import asyncio
import builtins
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import TypeVar

from pydantic import BaseModel
from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import (
    ActivityError,
    ApplicationError,
    CancelledError,
    FailureError,
    TimeoutError,
    TimeoutType,
)

with workflow.unsafe.imports_passed_through():
    from boxrun.activities.control import ControlActivities
    from boxrun.activities.dispatch import DispatchActivities
    from boxrun.constants import ErrorKind, JobState
    from boxrun.messages import (
        AcquireInput,
        ArchiveInput,
        CancelInput,
        FinishInput,
        JobInput,
        JobOutcome,
        RunJobInput,
        RunJobResult,
        VerifyInput,
        WithdrawInput,
    )
    from boxrun.temporal import BUG_TYPES, KEY_BOX_ID, KEY_JOB_STATE

In = TypeVar("In", bound=BaseModel)
Out = TypeVar("Out", bound=BaseModel)

# -- Options per activity. Every call states its timeouts; the why sits next to each.
#
# acquire_box, record_transition, finish_job: one short Postgres transaction each, idempotent
# (a retried grant returns the lease already held, a re-applied transition is a no-op, finish
# absorbs). 10 s is far above their milliseconds; retries ride out a Postgres restart for up to
# 10 minutes. Past that the workflow fails and the reaper ends the job once Postgres is back.
# Permanent refusals (no such job, a move the state machine forbids) are non_retryable.
DB_STEP_TIMEOUT = timedelta(seconds=10)
DB_STEP_DEADLINE = timedelta(minutes=10)
DB_STEP_RETRY = RetryPolicy(initial_interval=timedelta(milliseconds=200), maximum_interval=timedelta(seconds=5))
# verify_artifacts asks storage for each object (a HEAD, or every byte read back where the store
# checks no checksum), so its bound grows with the bytes and the count: a minute plus 10 MB/s of
# read-back plus 50 ms an object. It
# heartbeats all along, so a dead worker is noticed within VERIFY_HEARTBEAT whatever the size.
# Verifying again is harmless (recording an artifact is idempotent); three attempts, then the
# job fails with the error and its box is freed instead of retrying forever under the lease.
VERIFY_HEARTBEAT = timedelta(seconds=30)
VERIFY_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_attempts=3)
# archive_logs streams the transcript from Postgres into one gzip object: a minute plus 1 ms a
# line (a conservative 1,000 lines/s) bounds it, the heartbeat notices a dead worker. It runs
# after the job ended and the box is free, so it may retry a few times with a longer backoff.
ARCHIVE_HEARTBEAT = timedelta(seconds=60)
ARCHIVE_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=2), maximum_interval=timedelta(seconds=60), maximum_attempts=5
)
# run_job: a job never runs twice, so exactly one attempt, whatever happens to it. It runs on the
# control worker until the box claims the job, then the API heartbeats and completes it for the box.
RUN_ONCE = RetryPolicy(maximum_attempts=1)
# Slack past claim + timeout_s before Temporal itself gives up on run_job: the agent kills the
# process at timeout_s, uploads and reports; this bound only fires if the box cannot report.
RUN_GRACE = timedelta(seconds=30)
# request_cancel: one short transaction + NOTIFY, idempotent.
CANCEL_TIMEOUT = timedelta(seconds=10)
CANCEL_RETRY = RetryPolicy(initial_interval=timedelta(milliseconds=200), maximum_attempts=5)
HEARTBEAT_LOST = "box heartbeat lost"
# A waiting job waits for a wake-up (or its deadline, or a window's end) without a periodic
# re-check: the reaper's waiter sweep stands in for a lost signal (issue 15).
WAKE_ONLY_PATCH = "wait-wake-only"
# run_job ended on its heartbeat timeout before the box claimed the job (the control worker
# running it died before or after offering): offer the job again, at most this many times.
REOFFER_PATCH = "reoffer-unclaimed"
MAX_REOFFERS = 3
# A cancel whose finish found the job already completed (by the box's clean result, recorded by
# the API): the workflow completes as the job did.
COMPLETED_BEFORE_CANCEL_PATCH = "completed-before-cancel"
JOB_CANCELLED = "JobCancelled"
CLAIM_TIMEOUT = "ClaimTimeout"
# The Temporal failure type a job that did not complete ends its workflow with (non-retryable,
# the JobOutcome as details), so the Web UI's ExecutionStatus filters agree with JobState.
FAILURE_TYPES = {
    JobState.FAILED: "JobFailed",
    JobState.TIMED_OUT: "JobTimedOut",
    JobState.UNSCHEDULABLE: "JobUnschedulable",
}


def _verify_timeout(total_bytes: int, count: int = 0) -> timedelta:
    return timedelta(seconds=60 + total_bytes / 10_000_000 + count * 0.05)


def _archive_timeout(lines: int) -> timedelta:
    return timedelta(seconds=60 + lines / 1_000)


# A bug (TypeError, KeyError, ...) fails the workflow instead of retrying its task forever, where
# the job would sit live with its box leased and the reaper (which looks at closed workflows)
# would never see it. Non-determinism is deliberately not in the list: after a bad deploy the
# tasks wait for a fixed worker instead of failing every running job.
@workflow.defn(name="JobWorkflow", failure_exception_types=BUG_TYPES)
class JobWorkflow:
    def __init__(self) -> None:
        self._state = JobState.QUEUED
        self._wake = False
        self._error: str | None = None
        self._local_control = False
        self._log_lines = 0
        self._error_kind: ErrorKind | None = None

    @workflow.signal(name="wake")
    def wake(self) -> None:
        """A lease was released on a box this job waits for: try to acquire again now."""
        self._wake = True

    @workflow.query(name="state")
    def state(self) -> str:
        return self._state.value

    @workflow.run
    async def run(self, spec: JobInput) -> JobOutcome:
        self._local_control = spec.local_control
        try:
            box = await self._place(spec)
            if box is not None:
                state, exit_code, error, kind = await self._run_on(spec, box)
        except asyncio.CancelledError:
            # whatever step it hit: end the job cancelled and free any lease it holds
            await asyncio.shield(self._finish(spec, JobState.CANCELLED, None, "cancelled", ErrorKind.CANCELLED))
            if not self._completed_before_cancel():
                raise
            return await self._archived(spec)
        except Exception as exc:
            if _is_cancellation(exc):  # the cancel surfaced through an activity it cancelled
                await self._finish(spec, JobState.CANCELLED, None, "cancelled", ErrorKind.CANCELLED)
                if not self._completed_before_cancel():
                    raise
                return await self._archived(spec)
            # A bug or a permanent control-plane failure: end the job failed and free the box,
            # then fail this workflow (never its task, which Temporal would retry forever).
            await self._finish(spec, JobState.FAILED, None, f"internal error: {exc}", ErrorKind.INTERNAL)
            if isinstance(exc, FailureError):
                raise
            raise ApplicationError(f"internal error: {exc}", type=type(exc).__name__, non_retryable=True) from exc
        if box is None:  # unschedulable: ended in _place
            return self._end(self._outcome(spec))
        await self._finish(spec, state, exit_code, error, kind)
        return await self._archived(spec, exit_code, error)

    async def _archived(self, spec: JobInput, exit_code: int | None = 0, error: str | None = None) -> JobOutcome:
        """The transcript is complete (run_job returns only once every line is stored, and a job
        completed by its result had every line stored before): archive it, then end."""
        await workflow.execute_activity_method(
            ControlActivities.archive_logs,
            ArchiveInput(job_id=spec.job_id),
            start_to_close_timeout=_archive_timeout(self._log_lines),
            heartbeat_timeout=ARCHIVE_HEARTBEAT,
            retry_policy=ARCHIVE_RETRY,
        )
        return self._end(self._outcome(spec, exit_code, error))

    def _completed_before_cancel(self) -> bool:
        """A cancel that lost the race with the job's clean end: the API had already recorded
        `completed` from the box's result (terminal states absorb the cancel's finish), so the
        workflow completes too instead of ending cancelled, and the Web UI agrees with the job.
        Histories from before this (no COMPLETED_BEFORE_CANCEL_PATCH marker) end cancelled."""
        return self._state == JobState.COMPLETED and workflow.patched(COMPLETED_BEFORE_CANCEL_PATCH)

    def _end(self, outcome: JobOutcome) -> JobOutcome:
        """Completed: the outcome is the workflow's result. Otherwise the workflow ends failed
        (non-retryable, the reason as message, the outcome as details) or cancelled."""
        if outcome.state == JobState.COMPLETED:
            return outcome
        if outcome.state == JobState.CANCELLED:
            # the job was cancelled (its workflow's cancel, or the box reporting one): the workflow
            # ends cancelled when a cancel was requested, else failed with a CancelledError
            raise CancelledError(outcome.error or "cancelled", outcome.model_dump(mode="json"))
        raise ApplicationError(
            outcome.error or str(outcome.state),
            outcome.model_dump(mode="json"),
            type=FAILURE_TYPES.get(outcome.state, "JobFailed"),
            non_retryable=True,
        )

    async def _place(self, spec: JobInput) -> str | None:
        """Lease a box (the grant also moves the job to dispatching); wait while none is free,
        for at most queue_timeout_s (then the job ends unschedulable).

        A waiting job sleeps until a `wake` signal: releases, grants, agents coming back and
        maintenance ending wake waiters (the wake cascade), and the reaper's waiter sweep wakes
        any that could run but were not woken (a lost signal). Its only timers are the queue
        deadline and the end of a blocking maintenance window: no periodic re-check, so a large
        backlog costs Temporal nothing while it waits. Workflows that started waiting before
        this (no WAKE_ONLY_PATCH marker) keep their backed-off periodic re-check on replay."""
        rechecks = 0
        deadline = workflow.now() + timedelta(seconds=spec.queue_timeout_s)
        while True:
            self._wake = False
            got = await self._db_step(ControlActivities.acquire_box, AcquireInput(job_id=spec.job_id))
            if got.box is not None:
                self._set_state(JobState.DISPATCHING, got.box)
                await self._wake_jobs(got.wake_job_ids)
                return got.box
            if got.unschedulable_reason is not None:
                self._error = got.unschedulable_reason
                await self._finish(spec, JobState.UNSCHEDULABLE, None, self._error, ErrorKind.UNSCHEDULABLE)
                return None
            self._set_state(JobState.WAITING_FOR_BOX)
            wake_only = workflow.patched(WAKE_ONLY_PATCH)
            if wake_only:
                wait_s = spec.queue_timeout_s  # bounded by the deadline below
            else:
                # Before WAKE_ONLY_PATCH: a periodic re-check as a safety net, backed off up to
                # 8x and jittered (workflow.random() is replay-safe).
                wait_s = spec.wait_poll_s * min(2**rechecks, 8) * (0.75 + 0.5 * workflow.random().random())
                rechecks += 1
            if got.retry_after_s is not None:  # a maintenance window ends sooner
                wait_s = min(wait_s, got.retry_after_s + 0.5)
            left_s = (deadline - workflow.now()).total_seconds()
            if left_s <= 0:
                self._error = f"no box within queue_timeout_s ({spec.queue_timeout_s:g} s)"
                await self._finish(spec, JobState.UNSCHEDULABLE, None, self._error, ErrorKind.UNSCHEDULABLE)
                return None
            wait_s = min(wait_s, left_s)
            try:
                await workflow.wait_condition(lambda: self._wake, timeout=timedelta(seconds=wait_s))
            except builtins.TimeoutError:
                pass  # the deadline (checked above), a window's end, or (before the patch) a re-check

    async def _run_on(self, spec: JobInput, box: str) -> tuple[JobState, int | None, str | None, ErrorKind | None]:
        reoffers = 0
        while True:
            run = workflow.start_activity_method(
                DispatchActivities.run_job,
                RunJobInput(job_id=spec.job_id, box=box),
                start_to_close_timeout=timedelta(seconds=spec.claim_timeout_s + spec.timeout_s) + RUN_GRACE,
                heartbeat_timeout=timedelta(seconds=spec.heartbeat_timeout_s),
                retry_policy=RUN_ONCE,
                cancellation_type=workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
            )
            try:
                # shielded: a workflow cancel lands here as CancelledError (below), not as a cancel
                # the SDK would pass to run_job silently, so the box is told at once
                result: RunJobResult = await asyncio.shield(run)
                break
            except ActivityError as exc:
                if reoffers < MAX_REOFFERS and await self._lost_before_claim(spec, exc):
                    reoffers += 1
                    continue
                return self._run_failure(exc)
            except asyncio.CancelledError:
                await self._cancel_run(spec, run)
                raise
        return await self._outcome_of(spec, result)

    async def _lost_before_claim(self, spec: JobInput, exc: ActivityError) -> bool:
        """run_job timed out on its heartbeat: was it lost before the box claimed the job? Then the
        offer is closed (a late claim gets 409) and the job may be offered again: a control worker
        killed while it held run_job costs a heartbeat timeout, never the job. Once the box has
        claimed it, the lost heartbeat is the box's and the job fails as before."""
        cause = exc.cause
        if not (isinstance(cause, TimeoutError) and cause.type == TimeoutType.HEARTBEAT):
            return False
        if not workflow.patched(REOFFER_PATCH):  # a history from before the re-offer: fail as it did
            return False
        withdrawn = await self._db_step(ControlActivities.withdraw_offer, WithdrawInput(job_id=spec.job_id))
        return withdrawn.unclaimed

    async def _cancel_run(self, spec: JobInput, run: workflow.ActivityHandle[RunJobResult]) -> None:
        """Cancelled while the job is offered or running: cancel run_job, push the cancel to the
        box, and wait until it confirms the process group is gone (the lease is never freed under
        a live job)."""
        run.cancel()
        await workflow.execute_activity_method(
            ControlActivities.request_cancel,
            CancelInput(job_id=spec.job_id),
            start_to_close_timeout=CANCEL_TIMEOUT,
            retry_policy=CANCEL_RETRY,
        )
        try:
            await run
        except (ActivityError, asyncio.CancelledError):
            pass

    async def _outcome_of(
        self, spec: JobInput, result: RunJobResult
    ) -> tuple[JobState, int | None, str | None, ErrorKind | None]:
        """The job's end from what the box reported and what verification found."""
        self._log_lines = result.log_lines
        artifact_error = None
        if result.artifacts or result.refused:
            artifact_error = await self._verify(spec, result)
        if result.timed_out:
            return JobState.TIMED_OUT, result.exit_code, f"timed out after {spec.timeout_s}s", ErrorKind.TIMED_OUT
        if result.error is not None:
            return JobState.FAILED, result.exit_code, result.error, ErrorKind.INTERNAL
        if artifact_error is not None:
            return JobState.FAILED, result.exit_code, artifact_error, ErrorKind.ARTIFACTS
        if result.exit_code == 0:
            return JobState.COMPLETED, 0, None, None
        return JobState.FAILED, result.exit_code, f"exit code {result.exit_code}", ErrorKind.EXIT_CODE

    def _run_failure(self, exc: ActivityError) -> tuple[JobState, int | None, str | None, ErrorKind | None]:
        cause = exc.cause
        if isinstance(cause, CancelledError):  # the workflow was cancelled; the box killed the process
            return JobState.CANCELLED, None, "cancelled", ErrorKind.CANCELLED
        if isinstance(cause, TimeoutError):
            if cause.type == TimeoutType.HEARTBEAT:
                return JobState.FAILED, None, HEARTBEAT_LOST, ErrorKind.HEARTBEAT_LOST
            return JobState.TIMED_OUT, None, "timed out: the box did not report back", ErrorKind.TIMED_OUT
        if isinstance(cause, ApplicationError):
            if cause.type == JOB_CANCELLED:
                return JobState.CANCELLED, None, "cancelled", ErrorKind.CANCELLED
            if cause.type == CLAIM_TIMEOUT:
                return JobState.FAILED, None, cause.message, ErrorKind.CLAIM_TIMEOUT
            return JobState.FAILED, None, cause.message, ErrorKind.INTERNAL
        return JobState.FAILED, None, str(cause or exc), ErrorKind.INTERNAL

    async def _verify(self, spec: JobInput, result: RunJobResult) -> str | None:
        """The box uploaded straight to storage with presigned PUTs: check every manifest entry
        there and record the good ones. Returns an error naming what failed, or None."""
        try:
            verified = await workflow.execute_activity_method(
                ControlActivities.verify_artifacts,
                VerifyInput(job_id=spec.job_id),
                start_to_close_timeout=_verify_timeout(result.artifact_bytes, result.artifacts + result.refused),
                heartbeat_timeout=VERIFY_HEARTBEAT,
                retry_policy=VERIFY_RETRY,
            )
        except ActivityError as exc:
            if isinstance(exc.cause, CancelledError):
                raise asyncio.CancelledError() from exc
            return f"artifact verification failed: {exc.cause or exc}"
        problems = []
        if verified.refused:
            problems.append("artifacts refused: " + "\n".join(verified.refused))
        if verified.mismatched:
            problems.append("artifact verification failed: " + ", ".join(verified.mismatched))
        if not problems:
            return None
        shown = len(verified.refused) + len(verified.mismatched)
        if verified.failed_total > shown:
            problems.append(f"(and {verified.failed_total - shown} more)")
        return "\n".join(problems)

    async def _finish(
        self, spec: JobInput, state: JobState, exit_code: int | None, error: str | None, kind: ErrorKind | None
    ) -> None:
        """Terminal transition + lease release in one activity, then wake whoever waits for the box."""
        self._error_kind = kind
        released = await self._db_step(
            ControlActivities.finish_job,
            FinishInput(
                job_id=spec.job_id,
                to_state=state,
                exit_code=exit_code,
                error=error,
                error_kind=kind.value if kind else None,
            ),
        )
        self._set_state(released.state or state)
        await self._wake_jobs(released.wake_job_ids)

    async def _wake_jobs(self, job_ids: list[str]) -> None:
        for job_id in job_ids:
            try:
                await workflow.get_external_workflow_handle(job_id).signal("wake")
            except ApplicationError:
                pass  # that job ended meanwhile; its own poll or the next release covers the rest

    async def _db_step(self, step: Callable[[ControlActivities, In], Awaitable[Out]], arg: In) -> Out:
        """acquire_box, record_transition or finish_job with the DB_STEP options above: as a local
        activity (inside this worker, no server round trip) when the job was submitted so, else as
        a regular activity on the workflow's own queue (boxrun-control)."""
        if self._local_control:
            return await workflow.execute_local_activity_method(
                step,
                arg,
                start_to_close_timeout=DB_STEP_TIMEOUT,
                schedule_to_close_timeout=DB_STEP_DEADLINE,
                retry_policy=DB_STEP_RETRY,
            )
        return await workflow.execute_activity_method(
            step,
            arg,
            start_to_close_timeout=DB_STEP_TIMEOUT,
            schedule_to_close_timeout=DB_STEP_DEADLINE,
            retry_policy=DB_STEP_RETRY,
        )

    def _set_state(self, state: JobState, box: str | None = None) -> None:
        self._state = state
        updates = [KEY_JOB_STATE.value_set(state.value)]
        if box is not None:
            updates.append(KEY_BOX_ID.value_set(box))
        workflow.upsert_search_attributes(updates)

    def _outcome(self, spec: JobInput, exit_code: int | None = None, error: str | None = None) -> JobOutcome:
        kind = None if self._state == JobState.COMPLETED else self._error_kind
        return JobOutcome(
            job_id=spec.job_id,
            state=self._state,
            exit_code=exit_code,
            error=error or self._error,
            error_kind=kind.value if kind else None,
        )


def _is_cancellation(exc: BaseException) -> bool:
    return isinstance(exc, CancelledError) or (isinstance(exc, ActivityError) and isinstance(exc.cause, CancelledError))
