"""The box agents' side of the API (node-token auth): session, liveness, long-polled offers and
cancels, claim + bundle, progress (relayed to Temporal as heartbeats), logs, artifacts, result."""

from __future__ import annotations

import asyncio
import uuid
from typing import Annotated

from fastapi import APIRouter, BackgroundTasks, Depends, Header, Query, Request

from boxrun import logbatch
from boxrun.api.auth import NodeBox, hash_token
from boxrun.api.deps import ConnDep, Credentials, CurrentBox, PoolDep, SettingsDep, StorageDep, TemporalDep
from boxrun.api.errors import responses
from boxrun.api.live.dispatch import DispatchHub
from boxrun.api.live.liveness import HeldPolls
from boxrun.api.to_public import box_public
from boxrun.db import Q
from boxrun.errors import TooLarge, Unauthorized
from boxrun.schemas import (
    AgentEvents,
    AgentHeartbeat,
    AgentMe,
    AgentSession,
    AgentSessionCreate,
    BoxPublic,
    JobBundle,
    JobClaimed,
    JobProgress,
    JobResultReport,
    LogBatchAck,
    ManifestAnswer,
    ManifestPage,
    ProgressAck,
)
from boxrun.services import claims, dispatch
from boxrun.services.boxes import record_heartbeat
from boxrun.services.jobs import parse_job_id

router = APIRouter(prefix="/agent", tags=["agent"])
SESSION_HEADER = "X-Boxrun-Session"
Session = Annotated[str | None, Header(alias=SESSION_HEADER, description="the id POST /agent/session answered")]


def relay_cache(request: Request) -> dispatch.RelayCache:
    """This process's memory of running jobs' task tokens (see dispatch.RelayCache)."""
    cache: dispatch.RelayCache | None = getattr(request.app.state, "relay_cache", None)
    if cache is None:
        cache = request.app.state.relay_cache = dispatch.RelayCache()
    return cache


async def _pooled_box(creds: Credentials, pool: PoolDep, request: Request) -> NodeBox:
    """CurrentBox without holding a connection for the request (the long-poll waits without one),
    answered from this process's memory of the token while Postgres is unreachable."""
    if creds is None:
        raise Unauthorized("missing node token")
    digest = hash_token(creds.credentials)
    cache = relay_cache(request)
    try:
        async with pool.acquire() as conn:
            row = await conn.fetchrow(Q.box_by_token_hash, digest)
    except dispatch.DB_DOWN:
        known = cache.boxes.get(digest)
        if known is None:
            raise
        return known
    if row is None:
        cache.boxes.pop(digest, None)
        raise Unauthorized("invalid node token")
    box = NodeBox(id=row["id"], name=row["name"], org_id=row["org_id"])
    cache.boxes[digest] = box
    return box


PooledBox = Annotated[NodeBox, Depends(_pooled_box)]


@router.get("/me", response_model=AgentMe, responses=responses(401))
async def me(box: CurrentBox, conn: ConnDep, settings: SettingsDep) -> AgentMe:
    """The box this node token names; an agent started for another name refuses to run."""
    row = await conn.fetchrow(Q.box_session, box.id)
    capacity = row["capacity"] if row else 1
    return AgentMe(
        box=box.name,
        capacity=capacity,
        heartbeat_interval_s=settings.agent_heartbeat_interval_s,
        heartbeat_timeout_s=settings.activity_heartbeat_timeout_s,
        poll_renews_liveness=True,
    )


@router.post(
    "/session",
    response_model=AgentSession,
    status_code=201,
    responses=responses(401, 409, 422, e409="another agent with this token is live"),
)
async def open_session(body: AgentSessionCreate, box: CurrentBox, conn: ConnDep, settings: SettingsDep) -> AgentSession:
    """One live agent per box: a second one with the same token is refused while the first reports."""
    session = await dispatch.open_session(
        conn, box, body.agent_version, body.previous_session, offline_after_s=settings.box_offline_after_s
    )
    return AgentSession(session=session)


@router.get("/events", response_model=AgentEvents, responses=responses(401, 409, 422, e409="stale session"))
async def events(
    box: PooledBox,
    pool: PoolDep,
    request: Request,
    session: Session = None,
    wait: Annotated[float, Query(ge=0, le=300)] = 25.0,
) -> AgentEvents:
    """Offers and cancels for this box, at once if any is pending, else after the first NOTIFY
    for it or `wait` seconds (long-poll). Re-sent until acted on: the agent dedupes."""
    hub: DispatchHub = request.app.state.dispatch_hub
    held: HeldPolls = request.app.state.held_polls
    wait = min(wait, request.app.state.settings.agent_poll_max_s)
    with hub.watch(box.id) as woken:
        async with pool.acquire() as conn:
            await dispatch.check_session(conn, box, session)
            found = await dispatch.pending_events(conn, box)
        if found or wait == 0:
            return AgentEvents(events=found)
        assert session is not None  # check_session refuses a poll without one
        # while it waits, the poll is the box's liveness (api/live/liveness.py)
        with held.hold(box.id, uuid.UUID(session)):
            if not await _woken_while_connected(request, woken, wait):
                return AgentEvents(events=[])
    async with pool.acquire() as conn:
        return AgentEvents(events=await dispatch.pending_events(conn, box))


async def _woken_while_connected(request: Request, woken: asyncio.Event, wait: float) -> bool:
    """Wait up to `wait` s for `woken`; False at the timeout or as soon as the client goes away."""
    wake = asyncio.ensure_future(woken.wait())
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({wake, gone}, timeout=wait, return_when=asyncio.FIRST_COMPLETED)
    finally:
        wake.cancel()
        gone.cancel()
    return woken.is_set() and not gone.done()


async def _disconnected(request: Request) -> None:
    """Returns when the client closes the connection (a GET's empty body is read first)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


@router.post("/heartbeat", response_model=BoxPublic, responses=responses(401, 409, 422, e409="stale session"))
async def heartbeat(
    body: AgentHeartbeat,
    box: CurrentBox,
    conn: ConnDep,
    settings: SettingsDep,
    temporal: TemporalDep,
    session: Session = None,
) -> BoxPublic:
    """Liveness. A box that comes back (or stops draining) wakes the jobs waiting for it."""
    row = await record_heartbeat(
        conn,
        temporal,
        box,
        agent_version=body.agent_version,
        draining=body.draining,
        offline_after_s=settings.box_offline_after_s,
        session=session,
    )
    return box_public(row, settings)


_JOB_404 = "no such job for this box (another box's job does not exist for this token)"


@router.post(
    "/jobs/{job_id}/claim",
    response_model=JobClaimed,
    responses=responses(
        401,
        404,
        409,
        422,
        e404=_JOB_404,
        e409="the job may not start now (expired, cancelled, claimed, a secret it refers to is gone)",
    ),
)
async def claim_job(
    job_id: str,
    box: CurrentBox,
    conn: ConnDep,
    temporal: TemporalDep,
    storage: StorageDep,
    settings: SettingsDep,
    background: BackgroundTasks,
    session: Session = None,
) -> JobClaimed:
    """Take an offered job: it becomes `running` and the answer carries its bundle (script, env
    with its secrets resolved, files, and `mask`: the secret values the box hides in the job's
    output). Only an open offer to this very box can be claimed. A secret the job refers to that
    no longer exists: 409, and the job fails saying so."""
    await dispatch.check_session(conn, box, session)
    return await dispatch.claim(
        conn, temporal, storage, box, job_id, secret_box=settings.secret_box(), defer=background.add_task
    )


@router.get(
    "/jobs/{job_id}/bundle",
    response_model=JobBundle,
    responses=responses(401, 404, 409, 422, e404=_JOB_404, e409="a secret the job refers to no longer exists"),
)
async def get_bundle(
    job_id: str, box: CurrentBox, conn: ConnDep, temporal: TemporalDep, storage: StorageDep, settings: SettingsDep
) -> JobBundle:
    """The bundle again, while the job is claimed by this box (for an agent that lost the claim's answer)."""
    return await dispatch.bundle(conn, temporal, storage, box, job_id, secret_box=settings.secret_box())


@router.post(
    "/jobs/{job_id}/progress",
    response_model=ProgressAck,
    responses=responses(401, 404, 409, 422, e404=_JOB_404, e409="the job is not running here (ended)"),
)
async def progress(
    job_id: str,
    body: JobProgress,
    box: PooledBox,
    pool: PoolDep,
    request: Request,
    temporal: TemporalDep,
    settings: SettingsDep,
) -> ProgressAck:
    """The box is alive and the job runs; relayed to Temporal as an activity heartbeat at most
    every heartbeat_timeout/3 (also while Postgres is unreachable, for jobs this API process
    relayed for before). `cancel: true` if the job is being cancelled."""
    relay_every = settings.activity_heartbeat_timeout_s / 3
    cache = relay_cache(request)
    try:
        async with pool.acquire() as conn:
            cancel = await dispatch.progress(conn, temporal, box, job_id, body, relay_every_s=relay_every, cache=cache)
    except dispatch.DB_DOWN:
        cancel = await dispatch.progress_without_db(cache, temporal, box, job_id, body, relay_every_s=relay_every)
    return ProgressAck(cancel=cancel)


@router.post(
    "/jobs/{job_id}/artifacts",
    response_model=ManifestAnswer,
    responses=responses(
        401,
        404,
        409,
        413,
        422,
        e404=_JOB_404,
        e409="the job is not running here",
        e413="over max_artifacts_per_job, or the org's storage quota",
    ),
)
async def artifacts_page(
    job_id: str, body: ManifestPage, box: CurrentBox, conn: ConnDep, storage: StorageDep, settings: SettingsDep
) -> ManifestAnswer:
    """A page (at most 1,000) of the job's artifact manifest: presigned PUTs for valid names,
    and the names refused (control characters, over 1,024 bytes, not a normal relative path)."""
    return await dispatch.record_manifest(
        conn, storage, box, job_id, body, max_artifacts=settings.max_artifacts_per_job
    )


@router.post(
    "/jobs/{job_id}/result",
    status_code=204,
    responses=responses(401, 404, 409, 422, 503, e404=_JOB_404, e409="the control plane already ended the job"),
)
async def result(
    job_id: str,
    body: JobResultReport,
    box: CurrentBox,
    conn: ConnDep,
    pool: PoolDep,
    temporal: TemporalDep,
    settings: SettingsDep,
    background: BackgroundTasks,
) -> None:
    """How the job's process ended, after every log line is stored and every upload done:
    completes the job's run_job activity, and records a clean end (exit 0, not timed out or
    cancelled, no error, no artifact, nothing refused, no cancel requested before it) as
    `completed` at once. Idempotent."""
    ended = await dispatch.report_result(
        conn, temporal, box, job_id, body, transcript_cap_bytes=settings.transcript_cap_bytes
    )
    if ended is not None:
        background.add_task(dispatch.after_clean_exit, pool, temporal, job_id, ended)


@router.post(
    "/jobs/{job_id}/logs",
    response_model=LogBatchAck,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                logbatch.MEDIA_TYPE: {
                    "schema": {
                        "type": "string",
                        "format": "binary",
                        "description": (
                            "one line of JSON (LogBatchHeader), then the lines' UTF-8 bytes, each ended by a newline"
                        ),
                    }
                }
            },
        }
    },
    responses=responses(
        401,
        404,
        409,
        413,
        422,
        e404=_JOB_404,
        e409="lines before first_seq are missing, or the job ended (past the tail grace)",
        e413="the batch is over 16 MiB",
        e422="the body is not a valid batch, or holds a `system` line (the control plane's stream)",
    ),
)
async def ingest_logs(
    job_id: str,
    request: Request,
    box: CurrentBox,
    conn: ConnDep,
    settings: SettingsDep,
    storage: StorageDep,
    background: BackgroundTasks,
) -> LogBatchAck:
    """Store a batch of lines; idempotent by seq, so the agent may resend after any failure.
    The body is the batch as it will be stored (boxrun/logbatch.py): a JSON header line with the
    first seq and the runs of lines sharing a stream and time, then the lines themselves."""
    jid = parse_job_id(job_id)
    body = await _read_bounded(request, claims.MAX_BATCH_BYTES)
    stored, late = await claims.ingest_logs(
        conn, box, jid, body, tail_grace_s=settings.log_tail_grace_s, transcript_cap_bytes=settings.transcript_cap_bytes
    )
    if late:  # a tail after the job ended: refresh the archive the workflow wrote
        background.add_task(claims.refresh_archive, request.app.state.pool, storage, jid)
    return LogBatchAck(stored_through=stored)


async def _read_bounded(request: Request, limit: int) -> bytes:
    """The body, refused (TooLarge) as soon as it passes `limit` bytes: never read in full."""
    declared = request.headers.get("content-length", "")
    if declared.isascii() and declared.isdigit() and int(declared) > limit:
        raise TooLarge(f"a log batch may hold at most {limit} bytes")
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise TooLarge(f"a log batch may hold at most {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)
