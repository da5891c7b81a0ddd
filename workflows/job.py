"""JobWorkflow: one job from queued to a terminal state; workflow id = job id."""

from __future__ import annotations

import asyncio
import builtins
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, CancelledError, TimeoutError, TimeoutType

with workflow.unsafe.imports_passed_through():
    from boxrun.activities.names import (
        ACQUIRE_BOX,
        ARCHIVE_LOGS,
        FINISH_JOB,
        PRESIGN_UPLOADS,
        RECORD_TRANSITION,
        RUN_JOB,
        UPLOAD_ARTIFACTS,
        VERIFY_ARTIFACTS,
    )
    from boxrun.constants import JobState, box_task_queue
    from boxrun.messages import (
        AcquireInput,
        AcquireResult,
        ArchiveInput,
        ArchiveResult,
        FinishInput,
        JobOutcome,
        JobSpec,
        JobStarted,
        PresignInput,
        PresignResult,
        ReleaseResult,
        RunJobInput,
        RunJobResult,
        TransitionInput,
        TransitionResult,
        UploadInput,
        UploadResult,
        VerifyInput,
        VerifyResult,
    )
    from boxrun.temporal import KEY_BOX_ID, KEY_JOB_STATE

# Control activities only touch Postgres/S3 and are idempotent, so Temporal may retry them
# freely; the cap on the interval keeps recovery quick once Postgres is back.
CONTROL_RETRY = RetryPolicy(initial_interval=timedelta(milliseconds=200), maximum_interval=timedelta(seconds=5))
CONTROL_TIMEOUT = timedelta(seconds=30)
ARCHIVE_TIMEOUT = timedelta(hours=2)
# A job never runs twice: run_job gets exactly one attempt, whatever happens to it.
RUN_ONCE = RetryPolicy(maximum_attempts=1)
# Uploading the same bytes to the same presigned keys again is harmless, so uploads may retry.
UPLOAD_RETRY = RetryPolicy(maximum_attempts=3, initial_interval=timedelta(seconds=1))
# Slack past timeout_s before Temporal itself gives up on run_job: the agent kills the process
# at timeout_s and reports it; this bound only fires if the box cannot report (partitioned).
RUN_GRACE = timedelta(seconds=30)
HEARTBEAT_LOST = "box heartbeat lost"
# Control steps that only touch Postgres and finish in milliseconds may run as local activities.
LOCAL_CAPABLE = frozenset({ACQUIRE_BOX, RECORD_TRANSITION, FINISH_JOB})


@workflow.defn(name="JobWorkflow")
class JobWorkflow:
    def __init__(self) -> None:
        self._state = JobState.QUEUED
        self._wake = False
        self._pid: int | None = None
        self._error: str | None = None
        self._local_control = False

    @workflow.signal(name="wake")
    def wake(self) -> None:
        """A lease was released on a box this job waits for: try to acquire again now."""
        self._wake = True

    @workflow.signal(name="started")
    def started(self, msg: JobStarted) -> None:
        """The box agent spawned the job's process."""
        self._pid = msg.pid

    @workflow.query(name="state")
    def state(self) -> str:
        return self._state.value

    @workflow.run
    async def run(self, spec: JobSpec) -> JobOutcome:
        self._local_control = spec.local_control
        try:
            box = await self._place(spec)
            if box is None:
                return self._outcome(spec)
            state, exit_code, error = await self._run_on(spec, box)
        except asyncio.CancelledError:
            # whatever step it hit: end the job cancelled and free any lease it holds
            await asyncio.shield(self._finish(spec, JobState.CANCELLED, None, "cancelled"))
            raise
        except Exception as exc:
            if _is_cancellation(exc):  # the cancel surfaced through an activity it cancelled
                await self._finish(spec, JobState.CANCELLED, None, "cancelled")
                raise
            # A bug or a permanent control-plane failure: end the job failed and free the box.
            await self._finish(spec, JobState.FAILED, None, f"internal error: {exc}")
            raise
        await self._finish(spec, state, exit_code, error)
        # The transcript is complete (run_job returns only once every line is stored): archive it.
        # A long transcript takes a while; the activity heartbeats as it goes.
        await workflow.execute_activity(
            ARCHIVE_LOGS,
            ArchiveInput(job_id=spec.job_id),
            result_type=ArchiveResult,
            start_to_close_timeout=ARCHIVE_TIMEOUT,
            heartbeat_timeout=timedelta(seconds=60),
            retry_policy=CONTROL_RETRY,
        )
        return self._outcome(spec, exit_code, error)

    async def _place(self, spec: JobSpec) -> str | None:
        """Lease a box (the grant also moves the job to dispatching); wait while none is free."""
        rechecks = 0
        while True:
            self._wake = False
            got: AcquireResult = await self._control(ACQUIRE_BOX, AcquireInput(job_id=spec.job_id))
            if got.box is not None:
                self._set_state(JobState.DISPATCHING, got.box)
                await self._wake_jobs(got.wake_job_ids)
                return got.box
            if got.unschedulable_reason is not None:
                self._error = got.unschedulable_reason
                await self._transition(spec, JobState.UNSCHEDULABLE, error=got.unschedulable_reason)
                return None
            self._set_state(JobState.WAITING_FOR_BOX)
            # The periodic re-check is only a safety net (releases, grants, agents coming back and
            # maintenance ending all wake waiters): back it off, up to 8x, and spread it so a big
            # backlog does not re-check in lockstep (workflow.random() is replay-safe).
            wait_s = spec.wait_poll_s * min(2**rechecks, 8) * (0.75 + 0.5 * workflow.random().random())
            rechecks += 1
            if got.retry_after_s is not None:  # a maintenance window ends sooner
                wait_s = min(wait_s, got.retry_after_s + 0.5)
            try:
                await workflow.wait_condition(lambda: self._wake, timeout=timedelta(seconds=wait_s))
            except builtins.TimeoutError:
                pass  # a periodic re-check covers a wake-up that could not be delivered

    async def _run_on(self, spec: JobSpec, box: str) -> tuple[JobState, int | None, str | None]:
        run = workflow.start_activity(
            RUN_JOB,
            RunJobInput(spec=spec),
            result_type=RunJobResult,
            task_queue=box_task_queue(box),
            schedule_to_start_timeout=timedelta(seconds=spec.dispatch_timeout_s),
            start_to_close_timeout=timedelta(seconds=spec.timeout_s) + RUN_GRACE,
            heartbeat_timeout=timedelta(seconds=spec.heartbeat_timeout_s),
            retry_policy=RUN_ONCE,
            cancellation_type=workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
        )
        try:
            await workflow.wait_condition(lambda: self._pid is not None or run.done())
            if self._pid is not None:
                await self._transition(spec, JobState.RUNNING, detail={"pid": self._pid})
            result: RunJobResult = await run
        except ActivityError as exc:
            return self._run_failure(exc)
        except asyncio.CancelledError:
            # Cancelled while run_job is queued or running: cancel it and wait until the box
            # confirms the process group is gone, so the lease is never freed under a live job.
            run.cancel()
            try:
                await run
            except (ActivityError, asyncio.CancelledError):
                pass
            raise
        if self._state is JobState.DISPATCHING and result.pid is not None:
            await self._transition(spec, JobState.RUNNING, detail={"pid": result.pid})
        if result.error is not None and result.pid is None:
            return JobState.FAILED, None, result.error

        artifact_error = None
        if result.artifacts:
            artifact_error = await self._store_artifacts(spec, box, result)
        if result.timed_out:
            return JobState.TIMED_OUT, result.exit_code, f"timed out after {spec.timeout_s}s"
        if artifact_error is not None:
            return JobState.FAILED, result.exit_code, artifact_error
        if result.exit_code == 0:
            return JobState.COMPLETED, 0, None
        return JobState.FAILED, result.exit_code, result.error or f"exit code {result.exit_code}"

    def _run_failure(self, exc: ActivityError) -> tuple[JobState, int | None, str | None]:
        cause = exc.cause
        if isinstance(cause, CancelledError):  # the workflow was cancelled; the box killed the process
            return JobState.CANCELLED, None, "cancelled"
        if isinstance(cause, TimeoutError):
            if cause.type == TimeoutType.HEARTBEAT:
                return JobState.FAILED, None, HEARTBEAT_LOST
            if cause.type == TimeoutType.SCHEDULE_TO_START:
                return JobState.FAILED, None, "the box did not pick up the job in time (agent gone?)"
            return JobState.TIMED_OUT, None, "timed out: the box did not report back"
        if isinstance(cause, ApplicationError):
            return JobState.FAILED, None, cause.message
        return JobState.FAILED, None, str(cause or exc)

    async def _store_artifacts(self, spec: JobSpec, box: str, result: RunJobResult) -> str | None:
        """Presign, let the box upload straight to storage, then verify. Returns an error or None."""
        await self._transition(spec, JobState.UPLOADING_ARTIFACTS, detail={"count": len(result.artifacts)})
        presigned: PresignResult = await self._control(
            PRESIGN_UPLOADS, PresignInput(job_id=spec.job_id, artifacts=result.artifacts)
        )
        total = sum(a.size for a in result.artifacts)
        try:
            await workflow.execute_activity(
                UPLOAD_ARTIFACTS,
                UploadInput(job_id=spec.job_id, targets=presigned.targets),
                result_type=UploadResult,
                task_queue=box_task_queue(box),
                # at least 1 MB/s, never under a minute
                start_to_close_timeout=timedelta(seconds=60 + total / 1_000_000),
                heartbeat_timeout=timedelta(seconds=spec.heartbeat_timeout_s),
                retry_policy=UPLOAD_RETRY,
            )
        except ActivityError as exc:
            if isinstance(exc.cause, CancelledError):
                raise asyncio.CancelledError() from exc  # the job was cancelled mid-upload
            failure = self._run_failure(exc)[2]
            return f"artifact upload failed: {failure}"
        verified: VerifyResult = await self._control(
            VERIFY_ARTIFACTS, VerifyInput(job_id=spec.job_id, artifacts=result.artifacts)
        )
        if verified.mismatched:
            return f"artifact verification failed: {', '.join(verified.mismatched)}"
        return None

    async def _finish(self, spec: JobSpec, state: JobState, exit_code: int | None, error: str | None) -> None:
        """Terminal transition + lease release in one activity, then wake whoever waits for the box."""
        released: ReleaseResult = await self._control(
            FINISH_JOB, FinishInput(job_id=spec.job_id, to_state=state, exit_code=exit_code, error=error)
        )
        self._set_state(released.state or state)
        await self._wake_jobs(released.wake_job_ids)

    async def _wake_jobs(self, job_ids: list[str]) -> None:
        for job_id in job_ids:
            try:
                await workflow.get_external_workflow_handle(job_id).signal("wake")
            except ApplicationError:
                pass  # that job ended meanwhile; its own poll or the next release covers the rest

    async def _transition(
        self, spec: JobSpec, state: JobState, *, error: str | None = None, detail: dict[str, Any] | None = None
    ) -> None:
        done: TransitionResult = await self._control(
            RECORD_TRANSITION, TransitionInput(job_id=spec.job_id, to_state=state, error=error, detail=detail or {})
        )
        self._set_state(done.state)

    async def _control(self, activity: str, arg: Any) -> Any:
        if self._local_control and activity in LOCAL_CAPABLE:
            return await workflow.execute_local_activity(
                activity,
                arg,
                result_type=_RESULT_TYPES[activity],
                start_to_close_timeout=CONTROL_TIMEOUT,
                retry_policy=CONTROL_RETRY,
            )
        # No task_queue: control activities run on the workflow's own queue (boxrun-control).
        return await workflow.execute_activity(
            activity,
            arg,
            result_type=_RESULT_TYPES[activity],
            start_to_close_timeout=CONTROL_TIMEOUT,
            retry_policy=CONTROL_RETRY,
        )

    def _set_state(self, state: JobState, box: str | None = None) -> None:
        self._state = state
        updates = [KEY_JOB_STATE.value_set(state.value)]
        if box is not None:
            updates.append(KEY_BOX_ID.value_set(box))
        workflow.upsert_search_attributes(updates)

    def _outcome(self, spec: JobSpec, exit_code: int | None = None, error: str | None = None) -> JobOutcome:
        return JobOutcome(job_id=spec.job_id, state=self._state, exit_code=exit_code, error=error or self._error)


def _is_cancellation(exc: BaseException) -> bool:
    return isinstance(exc, CancelledError) or (isinstance(exc, ActivityError) and isinstance(exc.cause, CancelledError))


_RESULT_TYPES: dict[str, type] = {
    ACQUIRE_BOX: AcquireResult,
    RECORD_TRANSITION: TransitionResult,
    FINISH_JOB: ReleaseResult,
    PRESIGN_UPLOADS: PresignResult,
    VERIFY_ARTIFACTS: VerifyResult,
}
