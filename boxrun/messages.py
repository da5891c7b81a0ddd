"""Inputs and outputs of workflows, activities and signals: one pydantic model each."""

from __future__ import annotations

from pydantic import BaseModel, Field

from boxrun.constants import JobState


class JobSpec(BaseModel):
    """The frozen job spec, as the workflow and the box see it."""

    job_id: str
    owner: str
    box: str | None
    box_group: str | None
    requires: list[str] = Field(default_factory=list)
    script: str
    files: dict[str, str] = Field(default_factory=dict)
    env: dict[str, str] = Field(default_factory=dict)
    timeout_s: int
    lock: bool = False
    priority: int = 0
    heartbeat_timeout_s: float = 15.0
    # SIGTERM -> SIGKILL grace when the job is cancelled.
    cancel_grace_s: float = 10.0
    # How long run_job may sit in the box's task queue before the job fails (box never picked it up).
    dispatch_timeout_s: float = 60.0
    # Short control steps as local activities (settings.local_control_activities at submission).
    local_control: bool = False
    # How often a waiting job re-checks for a box if no wake-up signal reaches it.
    wait_poll_s: float = 30.0


class JobOutcome(BaseModel):
    job_id: str
    state: JobState
    exit_code: int | None = None
    error: str | None = None


class TransitionInput(BaseModel):
    job_id: str
    to_state: JobState
    box: str | None = None
    exit_code: int | None = None
    error: str | None = None
    waiting_reason: str | None = None
    detail: dict[str, str | int | float | bool | None] = Field(default_factory=dict)


class TransitionResult(BaseModel):
    """The state the job is in after the call (the target, or an absorbing state it already held)."""

    state: JobState
    changed: bool


class AcquireInput(BaseModel):
    job_id: str


class AcquireResult(BaseModel):
    """Either a box was leased, the job must wait (reason), or it can never be placed (reason)."""

    box: str | None = None
    wait_reason: str | None = None
    unschedulable_reason: str | None = None
    # Seconds until a maintenance window that blocks the job ends (re-check then at the latest).
    retry_after_s: float | None = None
    # After a grant: a waiting job that may take a box still free, to wake (the wake-up cascade).
    wake_job_ids: list[str] = Field(default_factory=list)


class ReleaseInput(BaseModel):
    job_id: str


class FinishInput(BaseModel):
    job_id: str
    to_state: JobState
    exit_code: int | None = None
    error: str | None = None


class ReleaseResult(BaseModel):
    released: bool
    # The job's state after the call (finish_job only).
    state: JobState | None = None
    # Jobs waiting for the freed box, oldest first, that the workflow should wake.
    wake_job_ids: list[str] = Field(default_factory=list)


class RunJobInput(BaseModel):
    spec: JobSpec


class ArtifactEntry(BaseModel):
    path: str
    size: int
    sha256: str


class RunJobResult(BaseModel):
    exit_code: int | None
    timed_out: bool = False
    error: str | None = None
    pid: int | None = None
    log_lines: int = 0
    artifacts: list[ArtifactEntry] = Field(default_factory=list)


class UploadTarget(BaseModel):
    path: str
    key: str
    url: str
    headers: dict[str, str]


class PresignInput(BaseModel):
    job_id: str
    artifacts: list[ArtifactEntry]


class PresignResult(BaseModel):
    targets: list[UploadTarget]


class UploadInput(BaseModel):
    job_id: str
    targets: list[UploadTarget]


class UploadResult(BaseModel):
    uploaded: int


class VerifyInput(BaseModel):
    job_id: str
    artifacts: list[ArtifactEntry]


class VerifyResult(BaseModel):
    recorded: int
    mismatched: list[str] = Field(default_factory=list)


class JobStarted(BaseModel):
    """Signal from the box agent: the process is spawned."""

    pid: int


class ArchiveInput(BaseModel):
    job_id: str


class ArchiveResult(BaseModel):
    key: str | None = None
    lines: int = 0
    size: int = 0


class ReapResult(BaseModel):
    leases_freed: int = 0
    jobs_ended: int = 0
    workflows_started: int = 0


class ReaperInput(BaseModel):
    """The reaper singleton's settings; carried over each continue-as-new."""

    # Seconds between sweeps (settings.reaper_interval_s; the worker re-sends it at every start).
    interval_s: float = Field(gt=0)
    # Continue as new after this long, so one run's history stays small.
    run_for_s: float = Field(default=3600.0, gt=0)
