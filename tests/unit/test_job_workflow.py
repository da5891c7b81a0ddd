"""JobWorkflow on the real Temporal dev server, with its activities replaced by mocks."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field

import pytest
from temporalio import activity
from temporalio.client import WorkflowExecutionStatus, WorkflowFailureError
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.exceptions import ApplicationError, CancelledError
from temporalio.worker import Replayer, Worker

from boxrun.constants import JobState
from boxrun.messages import (
    AcquireInput,
    AcquireResult,
    ArchiveInput,
    ArchiveResult,
    CancelInput,
    FinishInput,
    JobInput,
    JobOutcome,
    ReleaseResult,
    RunJobInput,
    RunJobResult,
    TransitionInput,
    TransitionResult,
    VerifyInput,
    VerifyResult,
    WithdrawInput,
    WithdrawResult,
)
from boxrun.temporal import KEY_JOB_STATE
from boxrun.workflows.job import MAX_REOFFERS, JobWorkflow
from tests.conftest import wait_for


@dataclass
class MockControlPlane:
    """Mock activities standing in for Postgres/S3/the box; records what the workflow asked."""

    acquire_answers: list[AcquireResult]
    run_result: RunJobResult | None = None
    run_mode: str = "return"  # return | hang | hang_first | heartbeat_until_cancelled | fail
    # what withdraw_offer answers after a run_job heartbeat timeout: True, the box never claimed
    unclaimed: bool = False
    run_error: ApplicationError | None = None
    mismatched: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    # what finish_job finds the job already is (terminal states absorb): None, not terminal yet
    ended_as: JobState | None = None
    calls: list[tuple[str, object]] = field(default_factory=list)

    def names(self) -> list[str]:
        return [name for name, _ in self.calls]

    def finished(self) -> FinishInput:
        return next(arg for name, arg in self.calls if name == "finish")

    def control(self) -> list:
        """Named as ControlActivities' methods are (what the workflow calls by reference)."""

        @activity.defn(name="acquire_box")
        async def mock_acquire_box(inp: AcquireInput) -> AcquireResult:
            self.calls.append(("acquire", inp))
            return self.acquire_answers.pop(0) if len(self.acquire_answers) > 1 else self.acquire_answers[0]

        @activity.defn(name="record_transition")
        async def mock_record_transition(inp: TransitionInput) -> TransitionResult:
            self.calls.append((inp.to_state.value, inp))
            return TransitionResult(state=inp.to_state, changed=True)

        @activity.defn(name="finish_job")
        async def mock_finish_job(inp: FinishInput) -> ReleaseResult:
            self.calls.append(("finish", inp))
            if self.ended_as is not None:
                return ReleaseResult(released=False, state=self.ended_as)
            return ReleaseResult(released=True, state=inp.to_state)

        @activity.defn(name="verify_artifacts")
        async def mock_verify_artifacts(inp: VerifyInput) -> VerifyResult:
            self.calls.append(("verify", inp))
            failed = len(self.mismatched) + len(self.refused)
            return VerifyResult(recorded=1, mismatched=self.mismatched, refused=self.refused, failed_total=failed)

        @activity.defn(name="request_cancel")
        async def mock_request_cancel(inp: CancelInput) -> bool:
            self.calls.append(("request_cancel", inp))
            return True

        @activity.defn(name="withdraw_offer")
        async def mock_withdraw_offer(inp: WithdrawInput) -> WithdrawResult:
            self.calls.append(("withdraw", inp))
            return WithdrawResult(unclaimed=self.unclaimed)

        @activity.defn(name="archive_logs")
        async def mock_archive_logs(inp: ArchiveInput) -> ArchiveResult:
            self.calls.append(("archive", inp))
            return ArchiveResult()

        return [
            mock_acquire_box,
            mock_record_transition,
            mock_finish_job,
            mock_verify_artifacts,
            mock_archive_logs,
            mock_request_cancel,
            mock_withdraw_offer,
            self.run_job(),
        ]

    def run_job(self):
        """DispatchActivities.run_job: offered, claimed, then completed by the API for the box."""

        @activity.defn(name="run_job")
        async def mock_run_job(inp: RunJobInput) -> RunJobResult:
            self.calls.append(("run_job", inp))
            if self.run_mode == "hang" or (self.run_mode == "hang_first" and self.names().count("run_job") == 1):
                await asyncio.sleep(3600)  # never heartbeats: the box (or run_job's worker) "died"
            if self.run_mode == "heartbeat_until_cancelled":
                while True:
                    activity.heartbeat()
                    await asyncio.sleep(0.1)
            if self.run_mode == "fail":
                assert self.run_error is not None
                raise self.run_error
            assert self.run_result is not None
            return self.run_result

        return mock_run_job


def job_spec(box: str, **kw) -> JobInput:
    return JobInput(job_id=str(uuid.uuid4()), spec_hash="h", owner="t", box=box, box_group=None, timeout_s=60, **kw)


# The Temporal failure a job that did not complete ends its workflow with (the Web UI's truth).
FAILURE_TYPE = {
    JobState.FAILED: "JobFailed",
    JobState.TIMED_OUT: "JobTimedOut",
    JobState.UNSCHEDULABLE: "JobUnschedulable",
}


async def run_workflow(client, task_queue: str, mock: MockControlPlane, spec: JobInput, *, during=None):
    """Runs the workflow to its end; returns (handle, the job's outcome). A job that did not
    complete ends its workflow failed, non-retryably, with the outcome as the failure's details
    (checked here), or, cancelled, with a CancelledError."""
    async with Worker(client, task_queue=task_queue, workflows=[JobWorkflow], activities=mock.control()):
        handle = await client.start_workflow(JobWorkflow.run, spec, id=spec.job_id, task_queue=task_queue)
        if during is not None:
            await during(handle)
        try:
            result = await handle.result()
        except WorkflowFailureError as exc:
            cause = exc.cause
            if not isinstance(cause, (ApplicationError, CancelledError)) or not cause.details:
                raise
            result = JobOutcome.model_validate(cause.details[0])
            if result.state == JobState.CANCELLED:
                assert isinstance(cause, CancelledError)
            else:
                assert isinstance(cause, ApplicationError) and cause.non_retryable
                assert cause.type == FAILURE_TYPE[result.state] and cause.message == result.error
            assert (await handle.describe()).status == WorkflowExecutionStatus.FAILED
        else:
            assert result.state == JobState.COMPLETED
            assert (await handle.describe()).status == WorkflowExecutionStatus.COMPLETED
        return handle, result


@pytest.mark.parametrize("local_control", [False, True], ids=["activities", "local-activities"])
async def test_completed_with_artifacts(temporal_client, task_queue, local_control):
    box = f"b-{uuid.uuid4().hex[:6]}"
    mock = MockControlPlane([AcquireResult(box=box)], RunJobResult(exit_code=0, pid=42, artifacts=1, artifact_bytes=2))
    spec = job_spec(box, local_control=local_control)
    handle, result = await run_workflow(temporal_client, task_queue, mock, spec)
    assert result == JobOutcome(job_id=handle.id, state=JobState.COMPLETED, exit_code=0)
    # running and uploading_artifacts are recorded by the API (claim, first manifest page)
    assert mock.names() == ["acquire", "run_job", "verify", "finish", "archive"]
    assert mock.calls[1][1] == RunJobInput(job_id=spec.job_id, box=box)
    assert mock.finished().to_state == JobState.COMPLETED
    desc = await handle.describe()
    assert desc.typed_search_attributes.get(KEY_JOB_STATE) == "completed"
    history = [e.WhichOneof("attributes") for e in (await handle.fetch_history()).events]
    markers = history.count("marker_recorded_event_attributes")  # local activity results
    scheduled = history.count("activity_task_scheduled_event_attributes")
    assert (markers, scheduled) == ((2, 3) if local_control else (0, 5))


async def test_non_zero_exit_fails_with_exit_code(temporal_client, task_queue):
    box = f"b-{uuid.uuid4().hex[:6]}"
    mock = MockControlPlane([AcquireResult(box=box)], RunJobResult(exit_code=3, pid=7))
    _, result = await run_workflow(temporal_client, task_queue, mock, job_spec(box))
    assert (result.state, result.exit_code, result.error) == (JobState.FAILED, 3, "exit code 3")
    assert result.error_kind == "exit_code" and mock.finished().error_kind == "exit_code"
    assert "verify" not in mock.names()


async def test_waiting_job_is_woken_by_signal_not_by_polling(temporal_client, task_queue):
    box = f"b-{uuid.uuid4().hex[:6]}"
    mock = MockControlPlane(
        [AcquireResult(wait_reason="busy"), AcquireResult(box=box)], RunJobResult(exit_code=0, pid=1)
    )

    async def wake_once_waiting(handle):
        await wait_for(lambda: mock.names().count("acquire") == 1, what="first acquire")
        await wait_for(lambda: _query_state(handle), what="waiting state")
        await handle.signal(JobWorkflow.wake)

    async def _query_state(handle):
        return await handle.query(JobWorkflow.state) == "waiting_for_box"

    spec = job_spec(box, wait_poll_s=0.1)  # ignored since WAKE_ONLY_PATCH: only the signal wakes it
    handle, result = await asyncio.wait_for(
        run_workflow(temporal_client, task_queue, mock, spec, during=wake_once_waiting), 30
    )
    assert result.state == JobState.COMPLETED
    assert mock.names().count("acquire") == 2
    # its one timer while waiting is the queue deadline (no periodic re-check), cancelled by the wake-up
    events = (await handle.fetch_history()).events
    timers = [e.timer_started_event_attributes for e in events if e.HasField("timer_started_event_attributes")]
    assert (
        len(timers) == 1
        and spec.queue_timeout_s - 60 < timers[0].start_to_fire_timeout.ToSeconds() <= spec.queue_timeout_s
    )
    assert not any(e.HasField("timer_fired_event_attributes") for e in events)
    markers = [e.marker_recorded_event_attributes for e in events if e.HasField("marker_recorded_event_attributes")]
    assert [m.marker_name for m in markers] == ["core_patch"]


async def test_unschedulable_never_runs(temporal_client, task_queue):
    mock = MockControlPlane([AcquireResult(unschedulable_reason="no box in group lab has all of ['fpga']")])
    _, result = await run_workflow(temporal_client, task_queue, mock, job_spec("unused"))
    assert result.state == JobState.UNSCHEDULABLE and "fpga" in result.error
    assert mock.names() == ["acquire", "finish"]
    assert (mock.finished().to_state, mock.finished().error_kind) == (JobState.UNSCHEDULABLE, "unschedulable")


async def test_lost_heartbeat_fails_the_job_and_frees_the_box(temporal_client, task_queue):
    box = f"b-{uuid.uuid4().hex[:6]}"
    mock = MockControlPlane([AcquireResult(box=box)], run_mode="hang")
    _, result = await run_workflow(temporal_client, task_queue, mock, job_spec(box, heartbeat_timeout_s=1))
    assert (result.state, result.error) == (JobState.FAILED, "box heartbeat lost")
    assert mock.names() == ["acquire", "run_job", "withdraw", "finish", "archive"], (
        "a claimed job is never re-dispatched"
    )
    assert mock.finished().error == "box heartbeat lost"
    assert result.error_kind == mock.finished().error_kind == "heartbeat_lost"


@pytest.mark.parametrize("local_control", [False, True], ids=["activities", "local-activities"])
async def test_run_job_lost_before_the_claim_is_offered_again(temporal_client, task_queue, local_control):
    """The control worker running run_job died before the box claimed the job (withdraw_offer
    finds it unclaimed): the job is offered again by a new run_job instead of failing."""
    box = f"b-{uuid.uuid4().hex[:6]}"
    mock = MockControlPlane(
        [AcquireResult(box=box)], RunJobResult(exit_code=0, pid=5), run_mode="hang_first", unclaimed=True
    )
    spec = job_spec(box, heartbeat_timeout_s=1, local_control=local_control)
    handle, result = await run_workflow(temporal_client, task_queue, mock, spec)
    assert result.state == JobState.COMPLETED
    assert mock.names() == ["acquire", "run_job", "withdraw", "run_job", "finish", "archive"]
    events = (await handle.fetch_history()).events
    timed_out = [e for e in events if e.HasField("activity_task_timed_out_event_attributes")]
    assert len(timed_out) == 1, "the first run_job ended on its heartbeat timeout"


async def test_an_offer_lost_every_time_fails_after_the_last_reoffer(temporal_client, task_queue):
    box = f"b-{uuid.uuid4().hex[:6]}"
    mock = MockControlPlane([AcquireResult(box=box)], run_mode="hang", unclaimed=True)
    _, result = await run_workflow(temporal_client, task_queue, mock, job_spec(box, heartbeat_timeout_s=1))
    assert (result.state, result.error_kind) == (JobState.FAILED, "heartbeat_lost")
    assert mock.names().count("run_job") == 1 + MAX_REOFFERS
    assert mock.names().count("withdraw") == MAX_REOFFERS


async def test_artifact_mismatch_fails_the_job(temporal_client, task_queue):
    box = f"b-{uuid.uuid4().hex[:6]}"
    mock = MockControlPlane(
        [AcquireResult(box=box)],
        RunJobResult(exit_code=0, pid=3, artifacts=1, artifact_bytes=1),
        mismatched=["a.bin (read-back sha256 differs)"],
    )
    _, result = await run_workflow(temporal_client, task_queue, mock, job_spec(box))
    assert result.state == JobState.FAILED and result.error.startswith("artifact verification failed: a.bin")
    assert result.error_kind == "artifacts"


async def test_cancel_while_running_ends_cancelled_and_releases(temporal_client, task_queue):
    box = f"b-{uuid.uuid4().hex[:6]}"
    mock = MockControlPlane([AcquireResult(box=box)], run_mode="heartbeat_until_cancelled")

    async def cancel_when_running(handle):
        await wait_for(lambda: "run_job" in mock.names(), what="run_job")
        await handle.cancel()

    with pytest.raises(WorkflowFailureError):
        await run_workflow(temporal_client, task_queue, mock, job_spec(box), during=cancel_when_running)
    assert (mock.finished().to_state, mock.finished().error_kind) == (JobState.CANCELLED, "cancelled")
    desc = await temporal_client.get_workflow_handle(mock.finished().job_id).describe()
    assert desc.status == WorkflowExecutionStatus.CANCELED
    assert "request_cancel" in mock.names(), "the cancel is pushed to the box, not left to its next heartbeat"


async def test_a_cancel_that_lost_the_race_with_a_clean_end_completes(temporal_client, task_queue):
    """The API recorded `completed` from the box's clean result before the cancel's finish ran
    (finish_job absorbs and answers the state it found): the workflow completes with the job,
    archives its transcript, and the Web UI shows what Postgres shows."""
    box = f"b-{uuid.uuid4().hex[:6]}"
    mock = MockControlPlane([AcquireResult(box=box)], run_mode="heartbeat_until_cancelled", ended_as=JobState.COMPLETED)

    async def cancel_when_running(handle):
        await wait_for(lambda: "run_job" in mock.names(), what="run_job")
        await handle.cancel()

    handle, result = await run_workflow(temporal_client, task_queue, mock, job_spec(box), during=cancel_when_running)
    assert (result.state, result.exit_code, result.error, result.error_kind) == (JobState.COMPLETED, 0, None, None)
    assert mock.finished().to_state == JobState.CANCELLED, "the cancel's finish ran and was absorbed"
    assert mock.names()[-1] == "archive"
    assert (await handle.describe()).status == WorkflowExecutionStatus.COMPLETED
    replayer = Replayer(workflows=[JobWorkflow], data_converter=pydantic_data_converter)
    await replayer.replay_workflow(await handle.fetch_history())  # the new branch is deterministic


async def test_box_confirmed_cancel_as_failure_ends_cancelled(temporal_client, task_queue):
    """The API answers a box's cancelled report with JobCancelled when Temporal's own cancel had
    not landed yet: the job ends cancelled all the same."""
    box = f"b-{uuid.uuid4().hex[:6]}"
    mock = MockControlPlane(
        [AcquireResult(box=box)],
        run_mode="fail",
        run_error=ApplicationError("cancelled", type="JobCancelled", non_retryable=True),
    )
    _, result = await run_workflow(temporal_client, task_queue, mock, job_spec(box))
    assert (result.state, result.error) == (JobState.CANCELLED, "cancelled")


async def test_claim_deadline_fails_the_job_with_its_reason(temporal_client, task_queue):
    box = f"b-{uuid.uuid4().hex[:6]}"
    why = "the box did not claim the job within 60 s (agent gone?)"
    mock = MockControlPlane(
        [AcquireResult(box=box)],
        run_mode="fail",
        run_error=ApplicationError(why, type="ClaimTimeout", non_retryable=True),  # as DispatchActivities raises it
    )
    _, result = await run_workflow(temporal_client, task_queue, mock, job_spec(box))
    assert (result.state, result.error, result.error_kind) == (JobState.FAILED, why, "claim_timeout")
    assert mock.names().count("run_job") == 1


async def test_no_box_within_queue_timeout_is_unschedulable(temporal_client, task_queue):
    mock = MockControlPlane([AcquireResult(wait_reason="box b is offline")])
    spec = job_spec("b", queue_timeout_s=1, wait_poll_s=0.2)
    _, result = await asyncio.wait_for(run_workflow(temporal_client, task_queue, mock, spec), 30)
    assert (result.state, result.error) == (JobState.UNSCHEDULABLE, "no box within queue_timeout_s (1 s)")
    assert mock.names().count("acquire") == 2, "the deadline's own re-check only: no periodic re-check in between"
    assert "run_job" not in mock.names() and mock.names()[-1] == "finish"
    assert mock.finished().to_state == JobState.UNSCHEDULABLE


async def test_refused_artifact_names_are_listed_in_the_error(temporal_client, task_queue):
    box = f"b-{uuid.uuid4().hex[:6]}"
    mock = MockControlPlane(
        [AcquireResult(box=box)],
        RunJobResult(exit_code=0, pid=3, artifacts=1, refused=1),
        refused=["bad\\nname (control characters)"],
    )
    _, result = await run_workflow(temporal_client, task_queue, mock, job_spec(box))
    assert result.state == JobState.FAILED
    assert result.error == "artifacts refused: bad\\nname (control characters)"


async def test_a_bug_fails_the_workflow_and_the_job_and_frees_the_box(temporal_client, task_queue):
    """A plain exception in workflow code must fail the workflow, not its task (which Temporal
    would retry forever with the box leased). The bug here: an artifact size so large that the
    verify timeout overflows timedelta (OverflowError), which the workflow does not expect."""
    box = f"b-{uuid.uuid4().hex[:6]}"
    mock = MockControlPlane(
        [AcquireResult(box=box)], RunJobResult(exit_code=0, pid=5, artifacts=1, artifact_bytes=10**30)
    )
    with pytest.raises(WorkflowFailureError) as failed:
        await asyncio.wait_for(run_workflow(temporal_client, task_queue, mock, job_spec(box)), 30)
    cause = failed.value.cause
    assert isinstance(cause, ApplicationError) and cause.type == "OverflowError" and cause.non_retryable
    finished = mock.finished()
    assert finished.to_state == JobState.FAILED and finished.error.startswith("internal error:")
    assert finished.error_kind == "internal"
    assert mock.names().count("finish") == 1 and "archive" not in mock.names()
    desc = await temporal_client.get_workflow_handle(finished.job_id).describe()
    assert desc.status == WorkflowExecutionStatus.FAILED


async def test_verify_and_archive_bounds_grow_with_the_work(temporal_client, task_queue):
    """verify_artifacts gets 60 s + 10 MB/s of the artifacts' bytes + 50 ms an artifact,
    archive_logs 60 s + 1 ms a line, each with a heartbeat timeout and a bounded number of
    attempts (not one 30 s bound); run_job gets claim + timeout + 30 s and one attempt."""
    box = f"b-{uuid.uuid4().hex[:6]}"
    mock = MockControlPlane(
        [AcquireResult(box=box)],
        RunJobResult(exit_code=0, pid=5, log_lines=600_000, artifacts=10_000, artifact_bytes=10 * 10**9),
    )
    handle, result = await run_workflow(temporal_client, task_queue, mock, job_spec(box))
    assert result.state == JobState.COMPLETED
    scheduled = {
        e.activity_task_scheduled_event_attributes.activity_type.name: e.activity_task_scheduled_event_attributes
        for e in (await handle.fetch_history()).events
        if e.HasField("activity_task_scheduled_event_attributes")
    }
    verify, archive = scheduled["verify_artifacts"], scheduled["archive_logs"]
    assert verify.start_to_close_timeout.ToSeconds() == 60 + 1_000 + 500
    assert verify.heartbeat_timeout.ToSeconds() == 30 and verify.retry_policy.maximum_attempts == 3
    assert archive.start_to_close_timeout.ToSeconds() == 60 + 600
    assert archive.heartbeat_timeout.ToSeconds() == 60 and archive.retry_policy.maximum_attempts == 5
    assert scheduled["acquire_box"].start_to_close_timeout.ToSeconds() == 10
    run = scheduled["run_job"]
    assert run.start_to_close_timeout.ToSeconds() == 60 + 60 + 30 and run.retry_policy.maximum_attempts == 1
    assert run.task_queue.name == scheduled["acquire_box"].task_queue.name, "run_job runs on the control worker"
