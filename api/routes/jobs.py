"""Jobs: submit, get, list, state history."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Response, status
from temporalio.service import RPCError, RPCStatusCode

from boxrun.api.deps import ConnDep, CurrentUser, SettingsDep, TemporalDep
from boxrun.api.to_public import job_public
from boxrun.constants import JobState
from boxrun.db import Q
from boxrun.schemas import MAX_BIGINT, JobCreate, JobEventsPublic, JobPublic, JobsPublic, Name
from boxrun.services.submission import submit_job
from boxrun.transitions import transition

router = APIRouter(prefix="/jobs", tags=["jobs"])

NOT_FOUND = {404: {"description": "no such job"}}


def parse_job_id(job_id: str) -> str:
    """Job ids are UUIDs; anything else cannot name a job (404, not 500)."""
    try:
        return str(uuid.UUID(job_id))
    except ValueError:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"job {job_id} not found") from None


async def load_job(conn, user, job_id: str):
    row = await conn.fetchrow(Q.get_job, user.org_id, parse_job_id(job_id))
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"job {job_id} not found")
    return row


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=JobPublic,
    responses={
        200: {"model": JobPublic, "description": "idempotency key seen before: the first job"},
        409: {"description": "idempotency key reused with a different spec"},
        422: {"description": "invalid body, or a box that does not exist"},
    },
)
async def create_job(
    body: JobCreate, conn: ConnDep, temporal: TemporalDep, settings: SettingsDep, user: CurrentUser, response: Response
) -> JobPublic:
    job_id, created = await submit_job(conn, temporal, settings, user, body)
    if not created:
        response.status_code = status.HTTP_200_OK
    return job_public(await load_job(conn, user, job_id), settings)


@router.get("", response_model=JobsPublic)
async def list_jobs(
    conn: ConnDep,
    settings: SettingsDep,
    user: CurrentUser,
    state: JobState | None = None,
    box: Name | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_BIGINT)] = 0,
) -> JobsPublic:
    rows = await conn.fetch(Q.list_jobs, user.org_id, state, box, limit, offset)
    if rows:
        total = rows[0]["total"]
    else:
        total = await conn.fetchval(Q.count_jobs, user.org_id, state, box)
    return JobsPublic(data=[job_public(r, settings) for r in rows], count=total)


@router.get("/{job_id}", response_model=JobPublic, responses=NOT_FOUND)
async def get_job(job_id: str, conn: ConnDep, settings: SettingsDep, user: CurrentUser) -> JobPublic:
    return job_public(await load_job(conn, user, job_id), settings)


@router.get("/{job_id}/events", response_model=JobEventsPublic, responses=NOT_FOUND)
async def job_events(job_id: str, conn: ConnDep, user: CurrentUser) -> JobEventsPublic:
    row = await load_job(conn, user, job_id)
    events = await conn.fetch(Q.job_events, row["id"])
    return JobEventsPublic(data=[dict(e) for e in events])


@router.post(
    "/{job_id}/cancel",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobPublic,
    responses={409: {"description": "the job already ended"}, **NOT_FOUND},
)
async def cancel_job(
    job_id: str, conn: ConnDep, temporal: TemporalDep, settings: SettingsDep, user: CurrentUser
) -> JobPublic:
    """Ask the job's workflow to cancel. A running process gets SIGTERM, then SIGKILL after the
    job's cancel_grace_s; the job ends `cancelled` and its lease is freed. 202: follow the job."""
    row = await load_job(conn, user, job_id)
    if JobState(row["state"]).terminal:
        raise HTTPException(status.HTTP_409_CONFLICT, f"job {job_id} already ended ({row['state']})")
    await conn.execute(Q.audit, user.org_id, user.name, "job.cancel", f"job:{row['id']}", {"state": row["state"]})
    try:
        await temporal.get_workflow_handle(str(row["id"])).cancel()
    except RPCError as exc:
        if exc.status != RPCStatusCode.NOT_FOUND:
            raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, f"workflow engine: {exc}") from exc
        # No running workflow: it already ended (the job is about to be terminal) or never started.
        async with conn.transaction():
            current = JobState(await conn.fetchval(Q.job_state, user.org_id, row["id"]))
            if current.terminal:
                raise HTTPException(status.HTTP_409_CONFLICT, f"job {job_id} already ended ({current})") from exc
            await transition(conn, str(row["id"]), JobState.CANCELLED, error="cancelled (no workflow was running)")
    return job_public(await load_job(conn, user, job_id), settings)


@router.post(
    "/{job_id}/rerun",
    status_code=status.HTTP_201_CREATED,
    response_model=JobPublic,
    responses={422: {"description": "the frozen spec names a box that no longer exists"}, **NOT_FOUND},
)
async def rerun_job(
    job_id: str, conn: ConnDep, temporal: TemporalDep, settings: SettingsDep, user: CurrentUser
) -> JobPublic:
    """A new job from the original's frozen spec, linked by `rerun_of`. Retries are never automatic."""
    row = await load_job(conn, user, job_id)
    new_id, _ = await submit_job(conn, temporal, settings, user, JobCreate(**row["spec"]), rerun_of=str(row["id"]))
    return job_public(await load_job(conn, user, new_id), settings)
