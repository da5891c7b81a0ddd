"""JobWorkflow on the real Temporal dev server, with its activities replaced by mocks."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field

import pytest
from temporalio import activity
from temporalio.client import WorkflowExecutionStatus, WorkflowFailureError
from temporalio.exceptions import ApplicationError
from temporalio.worker import Worker

from boxrun.constants import JobState, box_task_queue
from boxrun.messages import (
    AcquireInput,
    AcquireResult,
    ArchiveInput,
    ArchiveResult,
    ArtifactEntry,
    FinishInput,
    JobOutcome,
    JobSpec,
    PresignInput,
    PresignResult,
    ReleaseResult,
    RunJobInput,
    RunJobResult,
    TransitionInput,
    TransitionResult,
    UploadInput,
    UploadResult,
    UploadTarget,
    VerifyInput,
    VerifyResult,
)
from boxrun.temporal import KEY_JOB_STATE
from boxrun.workflows import JobWorkflow
from tests.conftest import wait_for


@dataclass
class MockControlPlane:
    """Mock activities standing in for Postgres/S3/the box; records what the workflow asked."""

    acquire_answers: list[AcquireResult]
    run_result: RunJobResult | None = None
    run_mode: str = "return"  # return | hang | heartbeat_until_cancelled
    mismatched: list[str] = field(default_factory=list)
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
            return ReleaseResult(released=True, state=inp.to_state)

        @activity.defn(name="presign_uploads")
        async def mock_presign_uploads(inp: PresignInput) -> PresignResult:
            self.calls.append(("presign", inp))
            return PresignResult(
                targets=[UploadTarget(path=a.path, key=a.path, url="http://s3/x", headers={}) for a in inp.artifacts]
            )

        @activity.defn(name="verify_artifacts")
        async def mock_verify_artifacts(inp: VerifyInput) -> VerifyResult:
            self.calls.append(("verify", inp))
            return VerifyResult(recorded=len(inp.artifacts) - len(self.mismatched), mismatched=self.mismatched)

        @activity.defn(name="archive_logs")
        async def mock_archive_logs(inp: ArchiveInput) -> ArchiveResult:
            self.calls.append(("archive", inp))
            return ArchiveResult()

        return [
            mock_acquire_box,
            mock_record_transition,
            mock_finish_job,
            mock_presign_uploads,
            mock_verify_artifacts,
            mock_archive_logs,
        ]

    def box(self) -> list:
        @activity.defn(name="run_job")
        async def mock_run_job(inp: RunJobInput) -> RunJobResult:
            self.calls.append(("run_job", inp))
            if self.run_mode == "hang":
                await asyncio.sleep(3600)  # never heartbeats: the box "died"
            if self.run_mode == "heartbeat_until_cancelled":
                while True:
                    activity.heartbeat()
                    await asyncio.sleep(0.1)
            return self.run_result

        @activity.defn(name="upload_artifacts")
        async def mock_upload_artifacts(inp: UploadInput) -> UploadResult:
            self.calls.append(("upload", inp))
            return UploadResult(uploaded=len(inp.targets))

        return [mock_run_job, mock_upload_artifacts]


def job_spec(box: str, **kw) -> JobSpec:
    return JobSpec(job_id=str(uuid.uuid4()), owner="t", box=box, box_group=None, script="print(1)", timeout_s=60, **kw)


async def run_workflow(client, task_queue: str, mock: MockControlPlane, spec: JobSpec, *, during=None):
    box_queue = box_task_queue(spec.box)
    async with (
        Worker(client, task_queue=task_queue, workflows=[JobWorkflow], activities=mock.control()),
        Worker(client, task_queue=box_queue, activities=mock.box()),
    ):
        handle = await client.start_workflow(JobWorkflow.run, spec, id=spec.job_id, task_queue=task_queue)
        if during is not None:
            await during(handle)
        result = await handle.result()
        return handle, result


@pytest.mark.parametrize("local_control", [False, True], ids=["activities", "local-activities"])
async def test_completed_with_artifacts(temporal_client, task_queue, local_control):
    box = f"b-{uuid.uuid4().hex[:6]}"
    art = ArtifactEntry(path="r.json", size=2, sha256="ab" * 32)
    mock = MockControlPlane([AcquireResult(box=box)], RunJobResult(exit_code=0, pid=42, artifacts=[art]))
    spec = job_spec(box, local_control=local_control)
    handle, result = await run_workflow(temporal_client, task_queue, mock, spec)
    assert result == JobOutcome(job_id=handle.id, state=JobState.COMPLETED, exit_code=0)
    assert mock.names() == [
        "acquire",
        "run_job",
        "running",
        "uploading_artifacts",
        "presign",
        "upload",
        "verify",
        "finish",
        "archive",
    ]
    assert mock.finished().to_state == JobState.COMPLETED
    desc = await handle.describe()
    assert desc.typed_search_attributes.get(KEY_JOB_STATE) == "completed"
    history = [e.WhichOneof("attributes") for e in (await handle.fetch_history()).events]
    markers = history.count("marker_recorded_event_attributes")  # local activity results
    scheduled = history.count("activity_task_scheduled_event_attributes")
    assert (markers, scheduled) == ((4, 5) if local_control else (0, 9))


async def test_non_zero_exit_fails_with_exit_code(temporal_client, task_queue):
    box = f"b-{uuid.uuid4().hex[:6]}"
    mock = MockControlPlane([AcquireResult(box=box)], RunJobResult(exit_code=3, pid=7))
    _, result = await run_workflow(temporal_client, task_queue, mock, job_spec(box))
    assert (result.state, result.exit_code, result.error) == (JobState.FAILED, 3, "exit code 3")
    assert "presign" not in mock.names()


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

    spec = job_spec(box, wait_poll_s=3600)  # a poll would take an hour: only the signal can wake it
    _, result = await asyncio.wait_for(
        run_workflow(temporal_client, task_queue, mock, spec, during=wake_once_waiting), 30
    )
    assert result.state == JobState.COMPLETED
    assert mock.names().count("acquire") == 2


async def test_unschedulable_never_runs(temporal_client, task_queue):
    mock = MockControlPlane([AcquireResult(unschedulable_reason="no box in group lab has all of ['fpga']")])
    _, result = await run_workflow(temporal_client, task_queue, mock, job_spec("unused"))
    assert result.state == JobState.UNSCHEDULABLE and "fpga" in result.error
    assert mock.names() == ["acquire", "unschedulable"]


async def test_lost_heartbeat_fails_the_job_and_frees_the_box(temporal_client, task_queue):
    box = f"b-{uuid.uuid4().hex[:6]}"
    mock = MockControlPlane([AcquireResult(box=box)], run_mode="hang")
    _, result = await run_workflow(temporal_client, task_queue, mock, job_spec(box, heartbeat_timeout_s=1))
    assert (result.state, result.error) == (JobState.FAILED, "box heartbeat lost")
    assert mock.names().count("run_job") == 1, "a job is never re-dispatched"
    assert mock.finished().error == "box heartbeat lost"


async def test_artifact_mismatch_fails_the_job(temporal_client, task_queue):
    box = f"b-{uuid.uuid4().hex[:6]}"
    art = ArtifactEntry(path="a.bin", size=1, sha256="00" * 32)
    mock = MockControlPlane(
        [AcquireResult(box=box)],
        RunJobResult(exit_code=0, pid=3, artifacts=[art]),
        mismatched=["a.bin (read-back sha256 differs)"],
    )
    _, result = await run_workflow(temporal_client, task_queue, mock, job_spec(box))
    assert result.state == JobState.FAILED and result.error.startswith("artifact verification failed: a.bin")


async def test_cancel_while_running_ends_cancelled_and_releases(temporal_client, task_queue):
    box = f"b-{uuid.uuid4().hex[:6]}"
    mock = MockControlPlane([AcquireResult(box=box)], run_mode="heartbeat_until_cancelled")

    async def cancel_when_running(handle):
        await wait_for(lambda: "run_job" in mock.names(), what="run_job")
        await handle.cancel()

    with pytest.raises(WorkflowFailureError):
        await run_workflow(temporal_client, task_queue, mock, job_spec(box), during=cancel_when_running)
    assert mock.finished().to_state == JobState.CANCELLED


async def test_a_bug_fails_the_workflow_and_the_job_and_frees_the_box(temporal_client, task_queue):
    """A plain exception in workflow code must fail the workflow, not its task (which Temporal
    would retry forever with the box leased). The bug here: an artifact size so large that the
    upload timeout overflows timedelta (OverflowError), which the workflow does not expect."""
    box = f"b-{uuid.uuid4().hex[:6]}"
    art = ArtifactEntry(path="huge.bin", size=10**30, sha256="ab" * 32)
    mock = MockControlPlane([AcquireResult(box=box)], RunJobResult(exit_code=0, pid=5, artifacts=[art]))
    with pytest.raises(WorkflowFailureError) as failed:
        await asyncio.wait_for(run_workflow(temporal_client, task_queue, mock, job_spec(box)), 30)
    cause = failed.value.cause
    assert isinstance(cause, ApplicationError) and cause.type == "OverflowError" and cause.non_retryable
    finished = mock.finished()
    assert finished.to_state == JobState.FAILED and finished.error.startswith("internal error:")
    assert mock.names().count("finish") == 1 and "archive" not in mock.names()
    desc = await temporal_client.get_workflow_handle(finished.job_id).describe()
    assert desc.status == WorkflowExecutionStatus.FAILED


async def test_verify_and_archive_bounds_grow_with_the_work(temporal_client, task_queue):
    """verify_artifacts gets 60 s + 10 MB/s of the artifacts' bytes, archive_logs 60 s + 1 ms a
    line, each with a heartbeat timeout and a bounded number of attempts (not one 30 s bound)."""
    box = f"b-{uuid.uuid4().hex[:6]}"
    art = ArtifactEntry(path="big.bin", size=10 * 10**9, sha256="ab" * 32)  # 10 GB
    mock = MockControlPlane(
        [AcquireResult(box=box)], RunJobResult(exit_code=0, pid=5, log_lines=600_000, artifacts=[art])
    )
    handle, result = await run_workflow(temporal_client, task_queue, mock, job_spec(box))
    assert result.state == JobState.COMPLETED
    scheduled = {
        e.activity_task_scheduled_event_attributes.activity_type.name: e.activity_task_scheduled_event_attributes
        for e in (await handle.fetch_history()).events
        if e.HasField("activity_task_scheduled_event_attributes")
    }
    verify, archive = scheduled["verify_artifacts"], scheduled["archive_logs"]
    assert verify.start_to_close_timeout.ToSeconds() == 60 + 1_000
    assert verify.heartbeat_timeout.ToSeconds() == 30 and verify.retry_policy.maximum_attempts == 3
    assert archive.start_to_close_timeout.ToSeconds() == 60 + 600
    assert archive.heartbeat_timeout.ToSeconds() == 60 and archive.retry_policy.maximum_attempts == 5
    assert scheduled["acquire_box"].start_to_close_timeout.ToSeconds() == 10
