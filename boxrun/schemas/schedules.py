"""Schemas of schedules: a template run on a cron through a Temporal Schedule (docs/templates.md)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from boxrun.schemas import CleanStr, Name
from boxrun.schemas.templates import MAX_PARAMS


class ScheduleCreate(BaseModel):
    """POST /api/schedules body."""

    model_config = ConfigDict(extra="forbid", strict=True)

    template: Name = Field(description="the template's name")
    params: dict[str, Any] = Field(default_factory=dict, max_length=MAX_PARAMS, description="as for a run")
    cron: CleanStr = Field(
        min_length=1,
        max_length=200,
        description="a cron expression as Temporal takes it (5 fields, e.g. `0 3 * * *`, UTC; or @daily, @hourly ...)",
    )
    version: int | None = Field(default=None, ge=1, le=2**31 - 1, description="default: the latest at each run")


class SchedulePublic(BaseModel):
    id: str
    template: str
    version: int | None = Field(description="the template version each run uses; null: the latest at that time")
    params: dict[str, Any]
    cron: str
    paused: bool
    next_runs: list[datetime] | None = Field(
        default=None, description="GET /api/schedules/{id} only: the next run times (UTC) as Temporal has them"
    )
    temporal_schedule_id: str = Field(description="boxrun-schedule-<id>: the Schedule in Temporal's Web UI")
    owner: str = Field(description="what the runs are owned by: schedule:<id>")
    created_by: str
    created_at: datetime


class SchedulesPublic(BaseModel):
    data: list[SchedulePublic]


class ScheduledRunInput(BaseModel):
    """ScheduledRunWorkflow's (and its activity's) input: the schedule, read afresh at each run."""

    schedule_id: str


class ScheduledRunResult(BaseModel):
    """What one scheduled run made (shown in Temporal's Web UI)."""

    kind: str
    run_id: str
    created: bool = Field(description="false: a retried activity found the run it made before")
