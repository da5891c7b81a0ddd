"""Logs: paged replay (one stream, the tail), the plain-text transcript, live Server-Sent Events
and WebSocket, and the compressed archive."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import suppress
from typing import Annotated, Any, Literal, cast

import asyncpg
from fastapi import APIRouter, Header, Query, WebSocket, WebSocketDisconnect, status
from fastapi.responses import RedirectResponse, StreamingResponse
from starlette.types import Send

from boxrun import logstore
from boxrun.api.auth import authenticate
from boxrun.api.deps import ConnDep, CurrentUser, PoolDep, SettingsDep, StorageDep, StreamGuardDep, TailsDep
from boxrun.api.errors import responses
from boxrun.api.live.follower import Follower
from boxrun.api.live.guard import StreamGuard, watch_task
from boxrun.api.live.job_tail import encode_event
from boxrun.api.sse import SSE_DOC, resume_cursor
from boxrun.db import Q
from boxrun.errors import Gone, InvalidInput, NotFound, Unauthorized
from boxrun.schemas import MAX_SEQ, LogsPublic
from boxrun.services.audit import record
from boxrun.services.downloads import archive_url
from boxrun.services.identity import User
from boxrun.services.jobs import load_job, parse_job_id
from boxrun.services.outputs import check_logs_kept

router = APIRouter(prefix="/jobs", tags=["logs"])

JOB_404 = "no such job"
GONE_410 = "the transcript was deleted (DELETE .../outputs or the org's retention): `detail` says who or what, and when"
# WebSocket close code when the stream's token stops being valid (4000-4999: the application's;
# 4401 reads as HTTP's 401)
WS_TOKEN_REVOKED = 4401
# ... and when the transcript was deleted (reads as HTTP's 410; the reason says who and when)
WS_GONE = 4410


Stream = Literal["stdout", "stderr", "output", "system"]
STREAM_DOC = "only the lines of this stream (`output`: what the job wrote to $BOXRUN_OUTPUT; `system`: boxrun's own)"


@router.get(
    "/{job_id}/logs", response_model=LogsPublic, responses=responses(401, 404, 410, 422, e404=JOB_404, e410=GONE_410)
)
async def get_logs(
    job_id: str,
    conn: ConnDep,
    user: CurrentUser,
    after: Annotated[int, Query(ge=0, le=MAX_SEQ)] = 0,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
    stream: Annotated[Stream | None, Query(description=STREAM_DOC)] = None,
    tail: Annotated[
        int | None,
        Query(ge=1, le=10_000, description="the last N lines stored (of `stream`, when given), instead of a page"),
    ] = None,
) -> LogsPublic:
    """A page of the job's lines in seq order: those after `after`, at most `limit`; or, with `tail`,
    the last `tail` lines (then `after` and `limit` must be left out). Seqs count every stream, so
    the seqs of one stream's lines have gaps."""
    row = await load_job(conn, user, job_id)
    check_logs_kept(row)
    if tail is not None:
        if after or limit != 1000:
            raise InvalidInput("give tail, or after/limit, not both", field="query.tail")
        lines = await logstore.tail(conn, row["id"], tail, stream)
    elif stream is not None:
        lines = await logstore.read_stream(conn, row["id"], stream, after, limit)
    else:
        lines = await logstore.read(conn, row["id"], after, limit)
    return LogsPublic(data=[line.public() for line in lines])


@router.get(
    "/{job_id}/logs.txt",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "the transcript so far as text, one line per log line (streamed)",
            "content": {"text/plain": {"schema": {"type": "string"}}},
        },
        **responses(401, 404, 410, 422, e404=JOB_404, e410=GONE_410),
    },
)
async def logs_text(
    job_id: str,
    pool: PoolDep,
    user: CurrentUser,
    stream: Annotated[Stream | None, Query(description=STREAM_DOC)] = None,
) -> StreamingResponse:
    """The job's transcript as plain UTF-8 text (`Content-Disposition: attachment;
    filename=<job>.log`): every line stored so far, of every stream or of `stream`, each ended by a
    newline, without seq, time or stream. Sent as it is read from the database, a few chunks at a
    time. Audited as `transcript.download`."""
    async with pool.acquire() as conn:
        row = await load_job(cast(asyncpg.Connection, conn), user, job_id)
        check_logs_kept(row)
        await record(
            cast(asyncpg.Connection, conn),
            user,
            "transcript.download",
            job_id=str(row["id"]),
            box=row["box"],
            format="text",
            stream=stream,
        )

    async def body() -> AsyncIterator[bytes]:
        async with pool.acquire() as conn:
            async for piece in logstore.transcript(conn, row["id"], stream):
                yield piece

    return StreamingResponse(
        body(),
        media_type="text/plain; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{row["id"]}.log"', "Cache-Control": "no-store"},
    )


class EventStream(StreamingResponse):
    """A follower's batches as Server-Sent Events: each batch is one pre-encoded chunk, one write.

    A write the client has not taken within stall_s (the server writes only once the client has
    read what is pending) is abandoned: the stream ends with `event: dropped` and `resume_after`,
    the last seq written, if the client takes that within another stall_s.

    The stream is registered with the stream guard under the token it was opened with: when that
    token is revoked or expires, or its user is disabled, the stream ends with `event: revoked`
    {"reason"} (written if the client takes it within stall_s)."""

    media_type = "text/event-stream"

    def __init__(self, follower: Follower, *, guard: StreamGuard | None = None, user: User | None = None) -> None:
        # the batches are written by stream_response below, not through StreamingResponse's body
        super().__init__((), headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self.follower = follower
        self.batches = follower.batches()
        self.guard = guard
        self.user = user

    async def stream_response(self, send: Send) -> None:
        follower = self.follower
        loop = asyncio.get_running_loop()
        writer = asyncio.current_task()
        assert writer is not None  # a response is always sent from a task
        follower.writer = writer
        watch = watch_task(self.guard, self.user, writer)
        written = follower.cursor
        try:
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            async for batch in self.batches:
                follower.writing_since = loop.time()
                try:
                    await send({"type": "http.response.body", "body": batch.sse(), "more_body": True})
                except asyncio.CancelledError:
                    if not follower.is_stalled or (watch is not None and watch.reason is not None):
                        raise
                    writer.uncancel()  # cancelled by the tail's watchdog, not by a disconnect
                    await self._last(send, "dropped", {"reason": "follower too slow", "resume_after": written})
                    return
                follower.writing_since = None
                written = follower.cursor
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:
            if watch is None or watch.reason is None:
                raise
            writer.uncancel()  # cancelled by the stream guard: the token is no longer valid
            await self._last(send, "revoked", {"reason": watch.reason})
        finally:
            if watch is not None:
                watch.close()
            follower.writing_since = follower.writer = None
            follower.close()

    async def _last(self, send: Send, event: str, data: dict[str, Any]) -> None:
        with suppress(TimeoutError):
            async with asyncio.timeout(self.follower.stall_s):
                await send({"type": "http.response.body", "body": encode_event(event, data), "more_body": False})


@router.get(
    "/{job_id}/logs/stream",
    response_class=StreamingResponse,
    responses={
        **SSE_DOC,
        **responses(401, 404, 410, 422, e404=JOB_404, e410=GONE_410, e422="bad Last-Event-ID or ?after="),
    },
)
async def stream_logs(
    job_id: str,
    pool: PoolDep,
    tails: TailsDep,
    settings: SettingsDep,
    guard: StreamGuardDep,
    user: CurrentUser,
    after: Annotated[int | None, Query(ge=0, le=MAX_SEQ)] = None,
    last_event_id: Annotated[str | None, Header()] = None,
) -> EventStream:
    """`event: log` per line (id = seq), `event: state` on each change, a keepalive comment when
    idle, then `event: done` with the final state, and the server closes. Resume with the
    Last-Event-ID header (or ?after=SEQ). A follower that stalls is sent `event: dropped` with
    `resume_after` and closed. When the token the stream was opened with is revoked or expires,
    or its user is disabled, the stream ends within `auth_recheck_s` with `event: revoked`
    {"reason"}."""
    async with pool.acquire() as conn:
        row = await load_job(cast(asyncpg.Connection, conn), user, job_id)  # a pooled connection proxies one
    check_logs_kept(row)
    follower = Follower(
        tails,
        pool,
        user.org_id,
        row["id"],
        after=resume_cursor(after, last_event_id, of="the seq of a line"),
        keepalive_s=settings.sse_keepalive_s,
        stall_s=settings.follower_stall_s,
        log_head=row["log_seq"],
    )
    return EventStream(follower, guard=guard, user=user)


@router.websocket("/{job_id}/logs/ws")
async def ws_logs(
    websocket: WebSocket,
    job_id: str,
    after: Annotated[int | None, Query(ge=0, le=MAX_SEQ)] = None,
    token: str | None = None,
) -> None:
    """The same events as the SSE stream, one JSON message each: {"event", "id", "data"}.
    Authenticate with the Authorization header or ?token= (browsers cannot set headers). When the
    token is revoked or expires, or its user is disabled, the server closes with code 4401 and
    the reason within `auth_recheck_s`."""
    app = websocket.app
    settings = app.state.settings
    header = websocket.headers.get("authorization", "")
    bearer = header[7:] if header.lower().startswith("bearer ") else token
    if not bearer:
        await websocket.close(code=status.WS_1008_POLICY_VIOLATION, reason="missing bearer token")
        return
    try:
        async with app.state.pool.acquire() as conn:
            user = await authenticate(conn, bearer)
    except Unauthorized as exc:
        await websocket.close(code=status.WS_1008_POLICY_VIOLATION, reason=exc.reason)
        return
    try:
        row = await app.state.pool.fetchrow(Q.get_job, user.org_id, parse_job_id(job_id))
    except NotFound:
        row = None
    if row is None:
        await websocket.close(code=status.WS_1008_POLICY_VIOLATION, reason=f"job {job_id} not found")
        return
    await websocket.accept()
    try:
        check_logs_kept(row)
    except Gone as exc:  # accepted first, so the client can read why (a close before accept is a 403)
        await websocket.close(code=WS_GONE, reason=exc.reason[:120])
        return
    follower = Follower(
        app.state.tails,
        app.state.pool,
        user.org_id,
        row["id"],
        after=after or 0,
        keepalive_s=settings.sse_keepalive_s,
        stall_s=settings.follower_stall_s,
        joined=False,
        log_head=row["log_seq"],
    )
    task = asyncio.current_task()
    assert task is not None
    watch = watch_task(app.state.stream_guard, user, task)
    try:
        async for batch in follower.batches():
            for message in batch.ws():
                async with asyncio.timeout(settings.follower_stall_s):
                    await websocket.send_text(message)
        await websocket.close()
    except (WebSocketDisconnect, TimeoutError):
        pass  # the client left, or stalled: it resumes with ?after=
    except asyncio.CancelledError:
        if watch is None or watch.reason is None:
            raise
        task.uncancel()  # cancelled by the stream guard: the token is no longer valid
        with suppress(WebSocketDisconnect, TimeoutError, RuntimeError):
            async with asyncio.timeout(settings.follower_stall_s):
                await websocket.close(code=WS_TOKEN_REVOKED, reason=watch.reason)
    finally:
        if watch is not None:
            watch.close()
        follower.close()


@router.get(
    "/{job_id}/logs/archive",
    status_code=status.HTTP_307_TEMPORARY_REDIRECT,
    response_class=RedirectResponse,
    responses={
        307: {"description": "redirect to the gzip JSON-lines transcript (5-minute link)"},
        **responses(401, 404, 410, 422, e404="no such job, or its transcript is not archived yet", e410=GONE_410),
    },
)
async def logs_archive(job_id: str, conn: ConnDep, user: CurrentUser, storage: StorageDep) -> RedirectResponse:
    url = await archive_url(conn, storage, user, job_id)
    return RedirectResponse(url, status_code=status.HTTP_307_TEMPORARY_REDIRECT)
