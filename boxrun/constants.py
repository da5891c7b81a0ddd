"""Names shared by every process: task queues, job states, search attributes, channels."""

from __future__ import annotations

from enum import StrEnum

CONTROL_TASK_QUEUE = "boxrun-control"
# Webhook delivery attempts only: their own slots, so receivers that stall cannot take the control
# queue's (a job's own steps never wait behind an org's webhooks).
WEBHOOK_TASK_QUEUE = "boxrun-webhooks"
BOX_TASK_QUEUE_PREFIX = "box."

DEFAULT_ORG = "default"

# Search attributes the Temporal Web UI filters jobs by (Keyword type).
SA_JOB_STATE = "JobState"
SA_BOX_ID = "BoxId"
SA_OWNER = "Owner"
SA_PIPELINE_ID = "PipelineId"  # on a pipeline's workflow, its step workflows and every step job
SEARCH_ATTRIBUTES = (SA_JOB_STATE, SA_BOX_ID, SA_OWNER, SA_PIPELINE_ID)

# Postgres NOTIFY channels.
CHANNEL_LOGS = "boxrun_logs"
CHANNEL_JOBS = "boxrun_jobs"
CHANNEL_PIPELINES = "boxrun_pipelines"  # payload {"pipeline_id", "event_id", "step", "state"}

ARTIFACT_KEY_PREFIX = "jobs/{job_id}/files_out/"
LOG_ARCHIVE_KEY = "jobs/{job_id}/logs.jsonl.gz"


def box_task_queue(box_name: str) -> str:
    """The task queue only the agent of `box_name` polls."""
    return f"{BOX_TASK_QUEUE_PREFIX}{box_name}"


def artifact_key(job_id: str, path: str) -> str:
    return ARTIFACT_KEY_PREFIX.format(job_id=job_id) + path


class JobState(StrEnum):
    QUEUED = "queued"
    WAITING_FOR_BOX = "waiting_for_box"
    DISPATCHING = "dispatching"
    RUNNING = "running"
    UPLOADING_ARTIFACTS = "uploading_artifacts"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"
    UNSCHEDULABLE = "unschedulable"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATES


TERMINAL_STATES = frozenset(
    {JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED, JobState.TIMED_OUT, JobState.UNSCHEDULABLE}
)

# The one-way state machine: target state -> states it may be entered from.
# The same table guards the SQL UPDATE (see db/sql/jobs.sql: transition).
_ACTIVE_BEFORE_RUN = (JobState.QUEUED, JobState.WAITING_FOR_BOX, JobState.DISPATCHING)
ALLOWED_FROM: dict[JobState, tuple[JobState, ...]] = {
    JobState.WAITING_FOR_BOX: (JobState.QUEUED,),
    JobState.DISPATCHING: (JobState.QUEUED, JobState.WAITING_FOR_BOX),
    JobState.RUNNING: (JobState.DISPATCHING,),
    JobState.UPLOADING_ARTIFACTS: (JobState.RUNNING,),
    JobState.COMPLETED: (JobState.RUNNING, JobState.UPLOADING_ARTIFACTS),
    JobState.FAILED: (*_ACTIVE_BEFORE_RUN, JobState.RUNNING, JobState.UPLOADING_ARTIFACTS),
    JobState.CANCELLED: (*_ACTIVE_BEFORE_RUN, JobState.RUNNING, JobState.UPLOADING_ARTIFACTS),
    JobState.TIMED_OUT: (JobState.DISPATCHING, JobState.RUNNING, JobState.UPLOADING_ARTIFACTS),
    JobState.UNSCHEDULABLE: (JobState.QUEUED, JobState.WAITING_FOR_BOX),
}


class PipelineState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"

    @property
    def terminal(self) -> bool:
        return self not in (PipelineState.QUEUED, PipelineState.RUNNING)


class StepState(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    SKIPPED = "skipped"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self not in (StepState.PENDING, StepState.RUNNING)


class ErrorKind(StrEnum):
    """Why a job did not complete (jobs.error_kind), beside the human `error`."""

    EXIT_CODE = "exit_code"
    HEARTBEAT_LOST = "heartbeat_lost"
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"
    UNSCHEDULABLE = "unschedulable"
    CLAIM_TIMEOUT = "claim_timeout"
    ARTIFACTS = "artifacts"
    INPUT_MISSING = "input_missing"
    INTERNAL = "internal"
