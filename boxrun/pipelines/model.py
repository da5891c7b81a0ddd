"""A pipeline definition after parsing, validation and matrix expansion: what the API stores and
the pipeline workflow runs. Steps here are concrete (`test[voltage=3.0]`), their `needs` name
concrete steps, and each carries the job it submits per attempt."""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, Field

from boxrun.schemas import JobCreate

MAX_STEPS = 500  # after matrix expansion
MAX_MATRIX_COMBINATIONS = 256  # per step
DEFAULT_PIPELINE_TIMEOUT_S = 86400


class When(StrEnum):
    ON_SUCCESS = "on_success"  # every need completed (or failed with allow_failure)
    ON_FAILURE = "on_failure"  # some need failed (without allow_failure)
    ALWAYS = "always"  # once every need ended, whatever the outcome; also after a cancel/timeout


class RetryOn(StrEnum):
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    HEARTBEAT_LOST = "heartbeat_lost"  # narrows `failed` to that cause


class RetrySpec(BaseModel):
    """Temporal RetryPolicy semantics for a step; each attempt is a new job."""

    max_attempts: int = Field(default=3, ge=1, le=100)
    initial_interval_s: float = Field(default=1.0, gt=0, le=86400)
    backoff_coefficient: float = Field(default=2.0, ge=1.0, le=100)
    max_interval_s: float | None = Field(default=None, gt=0, le=86400)
    on: list[RetryOn] = Field(default_factory=lambda: [RetryOn.FAILED, RetryOn.TIMED_OUT])
    exit_codes: list[int] | None = None  # if given, only these exit codes retry


class StepInput(BaseModel):
    """An upstream artifact placed in the workspace before the script starts."""

    from_step: str  # a concrete step name, an ancestor of this step
    path: str  # the artifact's path in that step's outputs
    dest: str  # where it lands in this step's workspace (default: path)


class ExpandedStep(BaseModel):
    name: str
    needs: list[str] = Field(default_factory=list)  # concrete step names
    job: JobCreate  # the job each attempt submits (pipeline env merged, matrix substituted)
    inputs: list[StepInput] = Field(default_factory=list)
    retry: RetrySpec | None = None
    when: When = When.ON_SUCCESS
    allow_failure: bool = False
    same_box_as: str | None = None  # a concrete ancestor: each attempt runs on the box it ran on
    keep_box: bool = False  # the pipeline holds this step's box until its pinned steps finished


class ExpandedPipeline(BaseModel):
    name: str | None = None
    timeout_s: int = DEFAULT_PIPELINE_TIMEOUT_S
    steps: list[ExpandedStep]  # in a topological order
