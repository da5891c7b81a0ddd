"""Schedules: a template run on a cron by a Temporal Schedule (docs/templates.md, "Schedules").
Reads: every role; create: operators and admins; pause, unpause, delete: its creator or an admin."""

from __future__ import annotations

import asyncpg
from fastapi import APIRouter, Response, status

from boxrun.api.deps import ConnDep, CurrentUser, Operator, TemporalDep
from boxrun.api.errors import responses
from boxrun.schemas.schedules import ScheduleCreate, SchedulePublic, SchedulesPublic
from boxrun.services import schedules as service

router = APIRouter(prefix="/schedules", tags=["templates"])

SCHEDULE_404 = "no such schedule"
CHANGE_403 = "viewers; an operator changing a schedule another person created"


def schedule_public(row: asyncpg.Record, upcoming: service.Upcoming | None = None) -> SchedulePublic:
    return SchedulePublic(
        id=str(row["id"]),
        template=row["template"],
        version=row["version"],
        params=row["params"],
        cron=row["cron"],
        paused=upcoming.paused if upcoming else row["paused"],
        next_runs=upcoming.next_runs if upcoming else None,
        temporal_schedule_id=row["temporal_schedule_id"],
        owner=service.SCHEDULE_OWNER.format(id=row["id"]),
        created_by=row["created_by"],
        created_at=row["created_at"],
    )


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=SchedulePublic,
    responses=responses(
        401,
        403,
        409,
        422,
        503,
        e409="the org has 200 schedules already",
        e422="no such template (or version), params the template refuses (body.params.NAME), or a cron "
        "expression Temporal refuses (body.cron, with its reason)",
    ),
)
async def create_schedule(body: ScheduleCreate, conn: ConnDep, temporal: TemporalDep, user: Operator) -> SchedulePublic:
    """Run `template` with `params` on `cron` (UTC): a Temporal Schedule `boxrun-schedule-<id>`
    whose every run submits the template as POST /api/templates/{name}/run would, owned by
    `schedule:<id>`."""
    return schedule_public(await service.create_schedule(conn, temporal, user, body))


@router.get("", response_model=SchedulesPublic, responses=responses(401))
async def list_schedules(conn: ConnDep, user: CurrentUser) -> SchedulesPublic:
    """Your org's schedules, oldest first."""
    return SchedulesPublic(data=[schedule_public(r) for r in await service.list_schedules(conn, user)])


@router.get("/{schedule_id}", response_model=SchedulePublic, responses=responses(401, 404, e404=SCHEDULE_404))
async def get_schedule(schedule_id: str, conn: ConnDep, temporal: TemporalDep, user: CurrentUser) -> SchedulePublic:
    """The schedule with its next run times and paused state as Temporal has them (a pause in the
    Web UI shows here); `next_runs` is null when Temporal cannot be asked."""
    row = await service.load_schedule(conn, user, schedule_id)
    return schedule_public(row, await service.upcoming(temporal, row))


@router.post(
    "/{schedule_id}/pause",
    response_model=SchedulePublic,
    responses=responses(401, 403, 404, 503, e403=CHANGE_403, e404=SCHEDULE_404),
)
async def pause_schedule(schedule_id: str, conn: ConnDep, temporal: TemporalDep, user: Operator) -> SchedulePublic:
    """No runs until unpaused (pausing a paused schedule is no error)."""
    return schedule_public(await service.set_paused(conn, temporal, user, schedule_id, True))


@router.post(
    "/{schedule_id}/unpause",
    response_model=SchedulePublic,
    responses=responses(401, 403, 404, 503, e403=CHANGE_403, e404=SCHEDULE_404),
)
async def unpause_schedule(schedule_id: str, conn: ConnDep, temporal: TemporalDep, user: Operator) -> SchedulePublic:
    return schedule_public(await service.set_paused(conn, temporal, user, schedule_id, False))


@router.delete(
    "/{schedule_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=responses(401, 403, 404, 503, e403=CHANGE_403, e404=SCHEDULE_404),
)
async def delete_schedule(schedule_id: str, conn: ConnDep, temporal: TemporalDep, user: Operator) -> Response:
    """Delete the schedule and its Temporal Schedule; the runs it made stay."""
    await service.delete_schedule(conn, temporal, user, schedule_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
