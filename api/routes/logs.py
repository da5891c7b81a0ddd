"""Logs: paged replay, live Server-Sent Events and WebSocket, and the compressed archive."""

from __future__ import annotations

import asyncio
from contextlib import suppress
from typing import Annotated, Any, cast

import asyncpg
from fastapi import APIRouter, Header, Query, WebSocket, WebSocketDisconnect, status
from fastapi.responses import RedirectResponse, StreamingResponse
from starlette.types import Send

from boxrun import logstore
from boxrun.api.auth import authenticate
from boxrun.api.deps import ConnDep, CurrentUser, PoolDep, SettingsDep, StorageDep, TailsDep
from boxrun.api.errors import responses
from boxrun.api.live.follower import Follower
from boxrun.api.live.job_tail import encode_event
from boxrun.db import Q
from boxrun.errors import InvalidInput, NotFound, Unauthorized
from boxrun.schemas import MAX_SEQ, LogsPublic
from boxrun.services.downloads import archive_url
from boxrun.services.jobs import load_job, parse_job_id

router = APIRouter(prefix="/jobs", tags=["logs"])

JOB_404 = "no such job"


@router.get("/{job_id}/logs", response_model=LogsPublic, responses=responses(401, 404, 422, e404=JOB_404))
async def get_logs(
    job_id: str,
    conn: ConnDep,
    user: CurrentUser,
    after: Annotated[int, Query(ge=0, le=MAX_SEQ)] = 0,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
) -> LogsPublic:
    row = await load_job(conn, user, job_id)
    lines = await logstore.read(conn, row["id"], after, limit)
    return LogsPublic(data=[line.public() for line in lines])


def _cursor(after: int | None, last_event_id: str | None) -> int:
    if after is not None:
        return after
    if last_event_id is None or last_event_id == "":
        return 0
    if not (last_event_id.isascii() and last_event_id.isdigit() and int(last_event_id) <= MAX_SEQ):
        raise InvalidInput(
            f"Last-Event-ID must be the seq of a line (0..{MAX_SEQ}), not {last_event_id[:40]!r}",
            field="header.last-event-id",
        )
    return int(last_event_id)


class EventStream(StreamingResponse):
    """A follower's batches as Server-Sent Events: each batch is one pre-encoded chunk, one write.

    A write the client has not taken within stall_s (the server writes only once the client has
    read what is pending) is abandoned: the stream ends with `event: dropped` and `resume_after`,
    the last seq written, if the client takes that within another stall_s."""

    media_type = "text/event-stream"

    def __init__(self, follower: Follower) -> None:
        # the batches are written by stream_response below, not through StreamingResponse's body
        super().__init__((), headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self.follower = follower
        self.batches = follower.batches()

    async def stream_response(self, send: Send) -> None:
        follower = self.follower
        loop = asyncio.get_running_loop()
        writer = asyncio.current_task()
        assert writer is not None  # a response is always sent from a task
        follower.writer = writer
        try:
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            written = follower.cursor
            async for batch in self.batches:
                follower.writing_since = loop.time()
                try:
                    await send({"type": "http.response.body", "body": batch.sse(), "more_body": True})
                except asyncio.CancelledError:
                    if not follower.is_stalled:
                        raise
                    writer.uncancel()  # cancelled by the tail's watchdog, not by a disconnect
                    await self._dropped(send, written)
                    return
                follower.writing_since = None
                written = follower.cursor
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            follower.writing_since = follower.writer = None
            follower.close()

    async def _dropped(self, send: Send, resume_after: int) -> None:
        body = encode_event("dropped", {"reason": "follower too slow", "resume_after": resume_after})
        with suppress(TimeoutError):
            async with asyncio.timeout(self.follower.stall_s):
                await send({"type": "http.response.body", "body": body, "more_body": False})


# The route returns an EventStream itself; this documents it as FastAPI documents an SSE route.
SSE_DOC: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "Successful Response",
        "content": {
            "text/event-stream": {
                "itemSchema": {
                    "type": "object",
                    "properties": {
                        "data": {"type": "string"},
                        "event": {"type": "string"},
                        "id": {"type": "string"},
                        "retry": {"type": "integer", "minimum": 0},
                    },
                }
            }
        },
    }
}


@router.get(
    "/{job_id}/logs/stream",
    response_class=StreamingResponse,
    responses={
        **SSE_DOC,
        **responses(401, 404, 422, e404=JOB_404, e422="bad Last-Event-ID or ?after="),
    },
)
async def stream_logs(
    job_id: str,
    pool: PoolDep,
    tails: TailsDep,
    settings: SettingsDep,
    user: CurrentUser,
    after: Annotated[int | None, Query(ge=0, le=MAX_SEQ)] = None,
    last_event_id: Annotated[str | None, Header()] = None,
) -> EventStream:
    """`event: log` per line (id = seq), `event: state` on each change, a keepalive comment when
    idle, then `event: done` with the final state, and the server closes. Resume with the
    Last-Event-ID header (or ?after=SEQ). A follower that stalls is sent `event: dropped` with
    `resume_after` and closed."""
    async with pool.acquire() as conn:
        row = await load_job(cast(asyncpg.Connection, conn), user, job_id)  # a pooled connection proxies one
    follower = Follower(
        tails,
        pool,
        user.org_id,
        row["id"],
        after=_cursor(after, last_event_id),
        keepalive_s=settings.sse_keepalive_s,
        stall_s=settings.follower_stall_s,
        log_head=row["log_seq"],
    )
    return EventStream(follower)


@router.websocket("/{job_id}/logs/ws")
async def ws_logs(
    websocket: WebSocket,
    job_id: str,
    after: Annotated[int | None, Query(ge=0, le=MAX_SEQ)] = None,
    token: str | None = None,
) -> None:
    """The same events as the SSE stream, one JSON message each: {"event", "id", "data"}.
    Authenticate with the Authorization header or ?token= (browsers cannot set headers)."""
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
    try:
        async for batch in follower.batches():
            for message in batch.ws():
                async with asyncio.timeout(settings.follower_stall_s):
                    await websocket.send_text(message)
        await websocket.close()
    except (WebSocketDisconnect, TimeoutError):
        pass  # the client left, or stalled: it resumes with ?after=
    finally:
        follower.close()


@router.get(
    "/{job_id}/logs/archive",
    status_code=status.HTTP_307_TEMPORARY_REDIRECT,
    response_class=RedirectResponse,
    responses={
        307: {"description": "redirect to the gzip JSON-lines transcript (5-minute link)"},
        **responses(401, 404, 422, e404="no such job, or its transcript is not archived yet"),
    },
)
async def logs_archive(job_id: str, conn: ConnDep, user: CurrentUser, storage: StorageDep) -> RedirectResponse:
    url = await archive_url(conn, storage, user, job_id)
    return RedirectResponse(url, status_code=status.HTTP_307_TEMPORARY_REDIRECT)
