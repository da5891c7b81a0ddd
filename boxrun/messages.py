"""Inputs and outputs of workflows, activities and signals: one pydantic model each."""

from __future__ import annotations

from pydantic import BaseModel, Field

from boxrun.constants import JobState, PipelineState, StepState


class JobInput(BaseModel):
    """The job workflow's input: it names the job and carries what the workflow itself needs.
    No script, files or env: those stay in Postgres and reach only the box that claims the job."""

    job_id: str
    spec_hash: str
    owner: str
    box: str | None
    box_group: str | None
    timeout_s: int
    # The job ends unschedulable if no box takes it within this.
    queue_timeout_s: float = 86400.0
    # SIGTERM -> SIGKILL grace when the job is cancelled.
    cancel_grace_s: float = 10.0
    heartbeat_timeout_s: float = 15.0
    # How long an offered job may wait for its box to claim it (the box's agent is gone past it).
    claim_timeout_s: float = 60.0
    # Short control steps as local activities (settings.local_control_activities at submission).
    local_control: bool = False
    # Read only by workflows that started waiting before workflows/job.py WAKE_ONLY_PATCH (their
    # periodic re-check); a waiting job now relies on wake-ups and the reaper's waiter sweep.
    wait_poll_s: float = 30.0


class JobSpec(BaseModel):
    """A job as the box runs it, built by the agent from the bundle it claimed (never a Temporal payload)."""

    job_id: str
    script: str
    files: dict[str, str] = Field(default_factory=dict)
    env: dict[str, str] = Field(default_factory=dict)
    timeout_s: int
    cancel_grace_s: float = 10.0


class JobOutcome(BaseModel):
    """A job workflow's result; a job that did not complete also ends its workflow failed (or
    cancelled), with this outcome as the failure's details."""

    job_id: str
    state: JobState
    exit_code: int | None = None
    error: str | None = None
    error_kind: str | None = None  # boxrun.constants.ErrorKind, None for a completed job


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
    error_kind: str | None = None  # boxrun.constants.ErrorKind


class ReleaseResult(BaseModel):
    released: bool
    # The job's state after the call (finish_job only).
    state: JobState | None = None
    # Jobs waiting for the freed box, oldest first, that the workflow should wake.
    wake_job_ids: list[str] = Field(default_factory=list)


class RunJobInput(BaseModel):
    job_id: str
    box: str


class ArtifactEntry(BaseModel):
    path: str
    size: int
    sha256: str


class RunJobResult(BaseModel):
    """What the box reported, with the manifest's counts: small whatever the number of artifacts."""

    exit_code: int | None
    timed_out: bool = False
    error: str | None = None
    pid: int | None = None
    log_lines: int = 0
    # Manifest entries to verify in storage, their bytes, and names the API refused.
    artifacts: int = 0
    artifact_bytes: int = 0
    refused: int = 0


class CancelInput(BaseModel):
    job_id: str


class WithdrawInput(BaseModel):
    job_id: str


class WithdrawResult(BaseModel):
    # the box never claimed the job (the offer, if any, is closed now): it may be offered again
    unclaimed: bool


class VerifyInput(BaseModel):
    job_id: str


class VerifyResult(BaseModel):
    recorded: int
    # Up to 20 "path (reason)" of artifacts not stored as the manifest says, or refused by name.
    mismatched: list[str] = Field(default_factory=list)
    refused: list[str] = Field(default_factory=list)
    failed_total: int = 0


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
    pipelines_ended: int = 0
    holds_released: int = 0  # pipelines whose box holds outlived them
    # webhooks: boxes whose liveness flipped, delivery workflows a crash had left unstarted
    boxes_flipped: int = 0
    deliveries_started: int = 0
    # waiting jobs a box could take now that no wake-up had reached (the waiter sweep)
    waiters_woken: int = 0


class ReaperInput(BaseModel):
    """The reaper singleton's settings; carried over each continue-as-new."""

    # Seconds between sweeps (settings.reaper_interval_s; the worker re-sends it at every start).
    interval_s: float = Field(gt=0)
    # Continue as new after this long, so one run's history stays small.
    run_for_s: float = Field(default=3600.0, gt=0)


# -- Pipelines. No script, env or file content in any of these: a step's job spec stays in
# Postgres (pipeline_steps.spec, then the attempt's job row).


class RetryPolicyInput(BaseModel):
    """A step's RetrySpec (boxrun.pipelines.model) as the workflows carry it."""

    max_attempts: int = 3
    initial_interval_s: float = 1.0
    backoff_coefficient: float = 2.0
    max_interval_s: float | None = None
    on: list[str] = Field(default_factory=lambda: ["failed", "timed_out"])
    exit_codes: list[int] | None = None


class PipelineStepRef(BaseModel):
    """What the pipeline workflow needs of a step to run the DAG."""

    name: str
    needs: list[str] = Field(default_factory=list)
    when: str = "on_success"  # boxrun.pipelines.model.When
    allow_failure: bool = False
    retry: RetryPolicyInput | None = None
    # rerun only_failed: this step is not run again, its earlier job stands (completed)
    reuse_job_id: str | None = None
    # placement across steps: the step this one runs on the box of; whether this step's box is held
    # for the pipeline until the steps pinned to it finished (the workflow releases the hold)
    same_box_as: str | None = None
    keep_box: bool = False


class PipelineInput(BaseModel):
    pipeline_id: str
    owner: str
    timeout_s: float
    steps: list[PipelineStepRef]


class StepWorkflowInput(BaseModel):
    pipeline_id: str
    step: str
    owner: str
    retry: RetryPolicyInput | None = None


class StepResult(BaseModel):
    """A step's end: its state, and the final attempt's job and outcome (details of a failed
    step workflow too)."""

    step: str
    state: StepState
    job_id: str | None = None
    attempt: int = 0
    exit_code: int | None = None
    error: str | None = None
    error_kind: str | None = None


class PrepareAttemptInput(BaseModel):
    pipeline_id: str
    step: str
    attempt: int


class PreparedAttempt(BaseModel):
    """The attempt's job row exists; `job` is its workflow input, or None when the job already
    ended before running (`outcome`: a missing input artifact)."""

    job_id: str
    job: JobInput | None = None
    outcome: JobOutcome | None = None


class RecordStepInput(BaseModel):
    pipeline_id: str
    step: str
    state: StepState
    job_id: str | None = None
    attempt: int | None = None
    error: str | None = None
    detail: dict[str, str | int | float | bool | None] = Field(default_factory=dict)


class RecordPipelineInput(BaseModel):
    pipeline_id: str
    state: PipelineState
    error: str | None = None


class ReleaseHoldInput(BaseModel):
    """Release the box hold of a pipeline's keep_box step (every hold of the pipeline if None)."""

    pipeline_id: str
    step: str | None = None


# Webhooks.


class DeliveryInput(BaseModel):
    """A webhook delivery names its row only: the body, URL and secret stay in Postgres."""

    delivery_id: str


class DeliveryResult(BaseModel):
    status_code: int | None = None
    # True when the delivery was no longer pending (a duplicate start after it was delivered)
    skipped: bool = False


class GiveUpInput(BaseModel):
    delivery_id: str
    error: str
