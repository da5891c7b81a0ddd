"""Pipelines as the API shows them: PipelinePublic (with its steps and their attempts),
PipelineSummary / PipelinesPublic (the list), PipelineRerun (in) and PipelineEventPublic (SSE)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from boxrun.constants import JobState, PipelineState, StepState
from boxrun.schemas import TemplateMark

MAX_PIPELINE_LIMIT = 500


class AttemptPublic(BaseModel):
    attempt: int = Field(description="1, 2, ...: each attempt of a step is a job of its own")
    job_id: str
    state: JobState
    exit_code: int | None
    error: str | None = None
    error_kind: str | None = Field(
        default=None, description="exit_code, heartbeat_lost, timed_out, cancelled, input_missing, internal, ..."
    )


class StepPublic(BaseModel):
    name: str = Field(description="a matrix step's combinations are steps of their own: `test[voltage=3.0]`")
    state: StepState
    needs: list[str]
    attempts: list[AttemptPublic] = Field(description="this pipeline's attempts, in order (none for a reused step)")
    job_id: str | None = Field(default=None, description="the latest (at the end: the final) attempt's job")
    reused_from: str | None = Field(
        default=None, description="rerun only_failed: the pipeline whose completed job stands for this step"
    )
    error: str | None = None


class PipelineSummary(BaseModel):
    id: str
    name: str | None
    state: PipelineState
    owner: str
    error: str | None
    rerun_of: str | None
    timeout_s: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    temporal_ui_url: str
    template: TemplateMark | None = Field(
        default=None, description="made from a template (a run, a trigger or a schedule): which, at which version"
    )


class PipelinePublic(PipelineSummary):
    steps: list[StepPublic] = Field(description="in the stored topological order")


class PipelinesPublic(BaseModel):
    data: list[PipelineSummary] = Field(description="newest first; GET /api/pipelines/{id} has the steps")
    count: int


class PipelineRerun(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    only_failed: bool = Field(
        default=False,
        description="rerun only the steps that did not complete (failed, timed out, cancelled, skipped) and the "
        "steps that need them; the other steps reuse their completed jobs and artifacts",
    )


class PipelineEventPublic(BaseModel):
    """One `event: step` or `event: pipeline` of GET /api/pipelines/{id}/events (id: the event's)."""

    id: int
    step: str | None = Field(description="null: the pipeline's own state")
    state: str
    at: datetime
    detail: dict[str, Any] = Field(default_factory=dict)
