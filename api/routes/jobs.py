"""Jobs: submit, get, list, state history, cancel, re-run."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query, Response, status

from boxrun.api.deps import ConnDep, CurrentUser, Operator, SettingsDep, StorageDep, TemporalDep
from boxrun.api.errors import responses
from boxrun.api.to_public import job_event_public, job_public
from boxrun.constants import JobState
from boxrun.db import Q
from boxrun.errors import InvalidInput
from boxrun.schemas import (
    MAX_LABELS,
    MAX_SEQ,
    NAME_PATTERN,
    OWNER_PATTERN,
    JobCreate,
    JobEventsPublic,
    JobPublic,
    JobsPublic,
    Timestamp,
)
from boxrun.services import jobs, outputs
from boxrun.services.submission import submit_job

router = APIRouter(prefix="/jobs", tags=["jobs"])

JOB_404 = "no such job"


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=JobPublic,
    responses={
        200: {"model": JobPublic, "description": "idempotency key seen before: the first job"},
        **responses(
            401,
            403,
            409,
            422,
            503,
            e409="idempotency key reused with a different spec",
            e422="invalid body, a box that does not exist (or that the caller may not see), an upload not "
            "found, or files over the total",
        ),
    },
)
async def create_job(
    body: JobCreate,
    conn: ConnDep,
    temporal: TemporalDep,
    settings: SettingsDep,
    storage: StorageDep,
    user: Operator,
    response: Response,
) -> JobPublic:
    """Submit a job (operator or admin); its `owner` is the caller."""
    job_id, created = await submit_job(conn, temporal, settings, user, body, storage=storage)
    if not created:
        response.status_code = status.HTTP_200_OK
    return job_public(await jobs.load_job(conn, user, job_id), settings)


@router.get("", response_model=JobsPublic, responses=responses(401, 422))
async def list_jobs(
    conn: ConnDep,
    settings: SettingsDep,
    user: CurrentUser,
    state: JobState | None = None,
    box: Annotated[str | None, Query(pattern=NAME_PATTERN)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_SEQ)] = 0,
    owner: Annotated[
        str | None,
        Query(
            pattern=OWNER_PATTERN,
            description="`me` (the caller), a user name, `trigger:<template>` or `schedule:<id>`: only the "
            "jobs they submitted",
        ),
    ] = None,
    pipeline_id: Annotated[
        uuid.UUID | None, Query(description="only the jobs of this pipeline's steps (every attempt)")
    ] = None,
    since: Annotated[
        Timestamp | None,
        Query(description="only jobs created at or after this time (RFC 3339 with a timezone); not after `until`"),
    ] = None,
    until: Annotated[
        Timestamp | None, Query(description="only jobs created before this time (RFC 3339 with a timezone)")
    ] = None,
    label: Annotated[
        list[str] | None,
        Query(
            max_length=MAX_LABELS,
            description="`key:value`, repeatable: only jobs carrying every label given",
        ),
    ] = None,
    cursor: Annotated[
        str | None,
        Query(
            max_length=200,
            description="`next_cursor` of the page before: the page after it (with offset 0); newest first, "
            "stable while jobs are added",
        ),
    ] = None,
) -> JobsPublic:
    """The org's jobs, newest first (every role sees all of them); filter by state, box, owner,
    pipeline, creation time and labels. Page with `limit` and `offset`, or with `cursor`: each answer's
    `next_cursor` (null on the last page) continues after its last job, unaffected by jobs submitted
    meanwhile."""
    if since is not None and until is not None and since > until:
        raise InvalidInput("since is after until", field="query.since")
    after_at, after_id = (None, None)
    if cursor is not None:
        if offset:
            raise InvalidInput("give cursor or offset, not both", field="query.offset")
        after_at, after_id = jobs.decode_cursor(cursor)
    wanted = jobs.parse_label_filters(label or [])
    if wanted is None:  # one key asked with two values: no job carries both
        return JobsPublic(data=[], count=0)
    labels = wanted or None
    who = user.name if owner == "me" else owner  # a name nobody has matches no job: an empty list
    filters = (who, pipeline_id, since, until, labels)
    # one row past the page says whether another follows; the count is its own (cheap) query
    rows = await conn.fetch(Q.list_jobs, user.org_id, state, box, limit + 1, offset, *filters, after_at, after_id)
    more, rows = len(rows) > limit, rows[:limit]
    total = await conn.fetchval(Q.count_jobs, user.org_id, state, box, *filters)
    next_cursor = jobs.encode_cursor(rows[-1]["created_at"], rows[-1]["id"]) if more else None
    return JobsPublic(data=[job_public(r, settings) for r in rows], count=total, next_cursor=next_cursor)


@router.get("/{job_id}", response_model=JobPublic, responses=responses(401, 404, 422, e404=JOB_404))
async def get_job(job_id: str, conn: ConnDep, settings: SettingsDep, user: CurrentUser) -> JobPublic:
    return job_public(await jobs.load_job(conn, user, job_id), settings)


@router.get("/{job_id}/events", response_model=JobEventsPublic, responses=responses(401, 404, 422, e404=JOB_404))
async def job_events(job_id: str, conn: ConnDep, user: CurrentUser) -> JobEventsPublic:
    row = await jobs.load_job(conn, user, job_id)
    return JobEventsPublic(data=[job_event_public(e) for e in await conn.fetch(Q.job_events, row["id"])])


@router.post(
    "/{job_id}/cancel",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobPublic,
    responses=responses(
        401,
        403,
        404,
        409,
        422,
        503,
        e403="not your job (operators cancel only their own)",
        e404=JOB_404,
        e409="the job already ended",
    ),
)
async def cancel_job(
    job_id: str, conn: ConnDep, temporal: TemporalDep, settings: SettingsDep, user: Operator
) -> JobPublic:
    """Ask the job's workflow to cancel (an operator its own jobs, an admin any job of the org).
    A running process gets SIGTERM, then SIGKILL after the job's cancel_grace_s; the job ends
    `cancelled` and its lease is freed. 202: follow the job."""
    row = await jobs.cancel_job(conn, temporal, user, job_id, offline_after_s=settings.box_offline_after_s)
    return job_public(row, settings)


@router.post(
    "/{job_id}/rerun",
    status_code=status.HTTP_201_CREATED,
    response_model=JobPublic,
    responses=responses(
        401,
        403,
        404,
        422,
        503,
        e403="not your job (operators rerun only their own)",
        e404=JOB_404,
        e422="the frozen spec names a box that no longer exists (or that the caller may not see)",
    ),
)
async def rerun_job(
    job_id: str, conn: ConnDep, temporal: TemporalDep, settings: SettingsDep, storage: StorageDep, user: Operator
) -> JobPublic:
    """A new job from the original's frozen spec, linked by `rerun_of`, owned by the caller (an
    operator reruns its own jobs, an admin any job of the org). Retries are never automatic."""
    new_id = await jobs.rerun_job(conn, temporal, settings, storage, user, job_id)
    return job_public(await jobs.load_job(conn, user, new_id), settings)


@router.delete(
    "/{job_id}/outputs",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=responses(
        401,
        403,
        404,
        409,
        422,
        503,
        e403="not your job (operators delete only their own jobs' outputs)",
        e404=JOB_404,
        e409="the job is still running (or queued, waiting, uploading)",
        e503="object storage did not answer: the outputs are marked deleted and go on the next retention run",
    ),
)
async def delete_outputs(job_id: str, conn: ConnDep, storage: StorageDep, user: Operator) -> Response:
    """Delete an ended job's transcript (lines and archive) and its artifacts from Postgres and
    object storage (its owner, or an org admin). The job and its events stay, with
    `logs_deleted_at`, `artifacts_deleted_at` and `outputs_deleted_at`; every later read of the
    transcript or the artifacts answers 410 with who deleted them and when. Again: 204, nothing
    left. Audited as `job.outputs_delete` (docs/retention.md)."""
    await outputs.delete_outputs(conn, storage, user, job_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
