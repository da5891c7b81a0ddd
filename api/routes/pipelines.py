"""Pipelines: submit (JSON or YAML), get with steps and attempts, list, cancel, rerun, and the
live stream of step and pipeline state changes (Server-Sent Events)."""

from __future__ import annotations

import asyncio
from contextlib import suppress
from typing import Annotated, Any, cast

import asyncpg
from fastapi import APIRouter, Header, HTTPException, Query, Request, status
from fastapi.responses import StreamingResponse
from starlette.types import Send

from boxrun.api.deps import (
    ConnDep,
    CurrentUser,
    Operator,
    PoolDep,
    SettingsDep,
    StorageDep,
    StreamGuardDep,
    TemporalDep,
)
from boxrun.api.errors import responses
from boxrun.api.live.guard import StreamGuard, watch_task
from boxrun.api.live.job_tail import encode_event
from boxrun.api.live.pipelines import PipelineHub
from boxrun.api.sse import SSE_DOC, resume_cursor
from boxrun.api.to_public import pipeline_event_public, pipeline_public, pipeline_summary
from boxrun.constants import PipelineState
from boxrun.db import Q
from boxrun.errors import InvalidInput
from boxrun.pipelines.definition import media_kind, parse_definition
from boxrun.pipelines.model import ExpandedPipeline
from boxrun.pipelines.spec import definition_json_schema
from boxrun.schemas import MAX_SEQ
from boxrun.schemas.pipelines import MAX_PIPELINE_LIMIT, PipelinePublic, PipelineRerun, PipelinesPublic
from boxrun.services import pipelines as service
from boxrun.services.identity import User
from boxrun.settings import Settings

router = APIRouter(prefix="/pipelines", tags=["pipelines"])

PIPELINE_404 = "no such pipeline"
# The media types documented (application/x-yaml, text/yaml and `+json`/`+yaml` are taken too).
JSON_MEDIA, YAML_MEDIA = "application/json", "application/yaml"
# Events read from Postgres per round of the stream.
EVENT_PAGE = 500

_REF = "#/components/schemas/{model}"
_DEFINITION = definition_json_schema(ref_template=_REF)
# The definition's shared schemas, published under components (api/app.py adds them).
DEFINITION_SCHEMAS: dict[str, Any] = {
    **_DEFINITION.pop("$defs"),
    "PipelineDefinition": _DEFINITION,
}
_BODY_SCHEMA = {"$ref": _REF.format(model="PipelineDefinition")}


async def _load(conn: asyncpg.Connection, settings: Settings, user: User, pipeline_id: str) -> PipelinePublic:
    return pipeline_public(*await service.pipeline_view(conn, user, pipeline_id), settings)


def _in_body(exc: InvalidInput) -> InvalidInput:
    """A definition's 422 with its field placed in the body, as a job's are (`body.steps.x...`)."""
    field = exc.field or "body"
    if field != "body" and not field.startswith("body."):
        field = f"body.{field}"
    return InvalidInput(exc.reason, field=field)


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=PipelinePublic,
    openapi_extra={
        "requestBody": {
            "required": True,
            "description": "the definition (docs/pipelines.md), as JSON or as YAML",
            "content": {media: {"schema": _BODY_SCHEMA} for media in (JSON_MEDIA, YAML_MEDIA)},
        }
    },
    responses={
        415: {"description": "the body is neither application/json nor application/yaml"},
        **responses(
            401,
            403,
            413,
            422,
            503,
            e422="a definition the rules refuse (a cycle, unknown needs, an input from a step that is not an "
            "ancestor, duplicate names, over 500 steps or 256 combinations, invalid YAML with line and column), "
            "a box that does not exist, an upload not found, or a step's files over the total",
        ),
    },
)
async def create_pipeline(
    request: Request,
    conn: ConnDep,
    temporal: TemporalDep,
    settings: SettingsDep,
    storage: StorageDep,
    user: Operator,
) -> PipelinePublic:
    """Submit a pipeline (operator or admin); its `owner` is the caller. The body is the
    definition as JSON (`application/json`) or YAML (`application/yaml`), one schema."""
    content_type = request.headers.get("content-type", "")
    if media_kind(content_type) is None:
        raise HTTPException(
            status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
            f"a pipeline definition is sent as application/json or application/yaml, not {content_type[:80]!r}",
        )
    raw = await request.body()
    try:  # parsing and expanding up to 500 steps is CPU work: off the event loop
        definition: ExpandedPipeline = await asyncio.to_thread(parse_definition, raw, content_type)
    except InvalidInput as exc:
        raise _in_body(exc) from None
    try:
        pipeline_id = await service.submit_pipeline(conn, temporal, settings, storage, user, definition)
    except InvalidInput as exc:
        raise _in_body(exc) from None
    return await _load(conn, settings, user, pipeline_id)


@router.get("", response_model=PipelinesPublic, responses=responses(401, 422))
async def list_pipelines(
    conn: ConnDep,
    settings: SettingsDep,
    user: CurrentUser,
    state: PipelineState | None = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PIPELINE_LIMIT)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_SEQ)] = 0,
) -> PipelinesPublic:
    """The org's pipelines, newest first (every role sees all of them); filter by state. The
    steps are in GET /api/pipelines/{id}; their jobs in GET /api/jobs?pipeline_id=."""
    rows, total = await service.list_pipelines(conn, user, state, limit, offset)
    return PipelinesPublic(data=[pipeline_summary(r, settings) for r in rows], count=total)


@router.get("/{pipeline_id}", response_model=PipelinePublic, responses=responses(401, 404, 422, e404=PIPELINE_404))
async def get_pipeline(pipeline_id: str, conn: ConnDep, settings: SettingsDep, user: CurrentUser) -> PipelinePublic:
    """The pipeline with each step's state, needs and attempts (each attempt a job)."""
    return await _load(conn, settings, user, pipeline_id)


@router.post(
    "/{pipeline_id}/cancel",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=PipelinePublic,
    responses=responses(
        401,
        403,
        404,
        409,
        422,
        503,
        e403="not your pipeline (operators cancel only their own)",
        e404=PIPELINE_404,
        e409="the pipeline already ended",
    ),
)
async def cancel_pipeline(
    pipeline_id: str, conn: ConnDep, temporal: TemporalDep, settings: SettingsDep, user: Operator
) -> PipelinePublic:
    """Ask the pipeline to cancel (an operator its own pipelines, an admin any of the org):
    running step jobs are cancelled (SIGTERM, grace, SIGKILL), pending steps end `cancelled`,
    `when: always` steps still run. 202: follow the pipeline (GET, or its events)."""
    pid = await service.cancel_pipeline_as(conn, temporal, user, pipeline_id)
    return await _load(conn, settings, user, pid)


@router.post(
    "/{pipeline_id}/rerun",
    status_code=status.HTTP_201_CREATED,
    response_model=PipelinePublic,
    responses=responses(
        401,
        403,
        404,
        409,
        422,
        503,
        e403="not your pipeline (operators rerun only their own)",
        e404=PIPELINE_404,
        e409="only_failed: the pipeline has not ended, or every step completed",
        e422="the stored definition names a box that no longer exists, or no longer passes validation",
    ),
)
async def rerun_pipeline(
    pipeline_id: str,
    conn: ConnDep,
    temporal: TemporalDep,
    settings: SettingsDep,
    storage: StorageDep,
    user: Operator,
    body: PipelineRerun | None = None,
) -> PipelinePublic:
    """A new pipeline from the original's definition, linked by `rerun_of`, owned by the caller
    (an operator reruns its own pipelines, an admin any of the org). With `only_failed`, steps
    that did not complete run again, with every step that needs one of them; the others reuse
    the completed jobs and their artifacts (`reused_from` names the pipeline they ran in)."""
    only_failed = body.only_failed if body is not None else False
    try:
        new_id = await service.rerun_pipeline(
            conn, temporal, settings, storage, user, pipeline_id, only_failed=only_failed
        )
    except InvalidInput as exc:
        raise _in_body(exc) from None
    return await _load(conn, settings, user, new_id)


class PipelineEventStream(StreamingResponse):
    """A pipeline's events as Server-Sent Events: replay after the cursor, then follow (woken by
    NOTIFY, re-reading Postgres), a keepalive comment when idle, `event: done` once the pipeline
    is terminal and every event is written. A write the client has not taken within stall_s
    ends the stream (it resumes with Last-Event-ID). Registered with the stream guard: when its
    token stops being valid the stream ends with `event: revoked` {"reason"}."""

    media_type = "text/event-stream"

    def __init__(
        self,
        pool: asyncpg.Pool,
        hub: PipelineHub,
        pipeline_id: str,
        *,
        after: int,
        keepalive_s: float,
        stall_s: float,
        guard: StreamGuard | None = None,
        user: User | None = None,
    ) -> None:
        super().__init__((), headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self.pool = pool
        self.hub = hub
        self.pipeline_id = pipeline_id
        self.cursor = after
        self.keepalive_s = keepalive_s
        self.stall_s = stall_s
        self.guard = guard
        self.user = user

    async def _write(self, send: Send, body: bytes, *, more: bool = True) -> None:
        async with asyncio.timeout(self.stall_s):
            await send({"type": "http.response.body", "body": body, "more_body": more})

    async def _round(self, send: Send) -> dict[str, Any] | None:
        """Write the events after the cursor; the final state if the pipeline has ended and
        nothing is left to write."""
        async with self.pool.acquire() as conn:
            # the state first: an ending is written with its event, so once it reads terminal,
            # the events read next include the last one
            head = await conn.fetchrow(Q.pipeline_state, self.pipeline_id)
            rows = await conn.fetch(Q.pipeline_events_after, self.pipeline_id, self.cursor, EVENT_PAGE)
        if rows:
            chunk = b"".join(
                b"id: %d\n" % r["id"]
                + encode_event(
                    "pipeline" if r["step"] is None else "step",
                    pipeline_event_public(r).model_dump(mode="json"),
                )
                for r in rows
            )
            await self._write(send, chunk)
            self.cursor = rows[-1]["id"]
        if head is None:  # deleted meanwhile
            return {"state": None, "error": "the pipeline no longer exists"}
        if len(rows) < EVENT_PAGE and PipelineState(head["state"]).terminal:
            return {"state": head["state"], "error": head["error"]}
        return None

    async def stream_response(self, send: Send) -> None:
        writer = asyncio.current_task()
        assert writer is not None  # a response is always sent from a task
        watch = watch_task(self.guard, self.user, writer)
        woken = self.hub.watch(self.pipeline_id)  # before the first read: nothing slips between
        try:
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            while True:
                ended = await self._round(send)
                if ended is not None:
                    await self._write(send, encode_event("done", ended), more=False)
                    return
                if not await woken.wait(self.keepalive_s):
                    await self._write(send, b": keepalive\n\n")
        except TimeoutError:
            return  # the client stopped reading: it resumes with Last-Event-ID
        except asyncio.CancelledError:
            if watch is None or watch.reason is None:
                raise
            writer.uncancel()  # cancelled by the stream guard: the token is no longer valid
            with suppress(TimeoutError):
                await self._write(send, encode_event("revoked", {"reason": watch.reason}), more=False)
        finally:
            woken.close()
            if watch is not None:
                watch.close()


@router.get(
    "/{pipeline_id}/events",
    response_class=StreamingResponse,
    responses={
        **SSE_DOC,
        **responses(401, 404, 422, e404=PIPELINE_404, e422="bad Last-Event-ID or ?after="),
    },
)
async def pipeline_events(
    pipeline_id: str,
    request: Request,
    pool: PoolDep,
    settings: SettingsDep,
    guard: StreamGuardDep,
    user: CurrentUser,
    after: Annotated[int | None, Query(ge=0, le=MAX_SEQ)] = None,
    last_event_id: Annotated[str | None, Header()] = None,
) -> PipelineEventStream:
    """`event: step` and `event: pipeline` for each state change (id = the event's id; data
    {"id", "step", "state", "at", "detail"}), a keepalive comment when idle, then `event: done`
    {"state", "error"} once the pipeline has ended, and the server closes. Resume with the
    Last-Event-ID header (or ?after=ID). When the token the stream was opened with is revoked or
    expires, or its user is disabled, the stream ends within `auth_recheck_s` with
    `event: revoked` {"reason"}."""
    cursor = resume_cursor(after, last_event_id, of="the id of an event")
    async with pool.acquire() as conn:
        row = await service.load_pipeline(cast(asyncpg.Connection, conn), user, pipeline_id)
    return PipelineEventStream(
        pool,
        request.app.state.pipeline_hub,
        str(row["id"]),
        after=cursor,
        keepalive_s=settings.sse_keepalive_s,
        stall_s=settings.follower_stall_s,
        guard=guard,
        user=user,
    )
