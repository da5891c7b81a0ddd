"""Logs: paged replay and live Server-Sent Events."""

from __future__ import annotations

from collections.abc import AsyncIterable
from typing import Annotated

from fastapi import APIRouter, Header, Query
from fastapi.sse import EventSourceResponse, ServerSentEvent

from boxrun.api.deps import ConnDep, CurrentUser, NotifierDep, SettingsDep
from boxrun.api.routes.jobs import NOT_FOUND, load_job
from boxrun.constants import JobState
from boxrun.db import Q
from boxrun.schemas import LogLinePublic, LogsPublic

router = APIRouter(prefix="/jobs", tags=["logs"])

PAGE = 1000


@router.get("/{job_id}/logs", response_model=LogsPublic, responses=NOT_FOUND)
async def get_logs(job_id: str, conn: ConnDep, user: CurrentUser,
                   after: Annotated[int, Query(ge=0)] = 0,
                   limit: Annotated[int, Query(ge=1, le=10_000)] = PAGE) -> LogsPublic:
    row = await load_job(conn, user, job_id)
    lines = await conn.fetch(Q.get_logs, row["id"], after, limit)
    return LogsPublic(data=[dict(r) for r in lines])


@router.get("/{job_id}/logs/stream", response_class=EventSourceResponse, responses=NOT_FOUND)
async def stream_logs(job_id: str, conn: ConnDep, notifier: NotifierDep, settings: SettingsDep,
                      user: CurrentUser,
                      after: Annotated[int | None, Query(ge=0)] = None,
                      last_event_id: Annotated[str | None, Header()] = None) -> AsyncIterable[ServerSentEvent]:
    """`event: log` per line (id = seq), `event: state` on each change, then `event: done`.
    Resume with the Last-Event-ID header (or ?after=SEQ)."""
    row = await load_job(conn, user, job_id)
    jid = row["id"]
    cursor = after if after is not None else (int(last_event_id) if (last_event_id or "").isdigit() else 0)
    sub = notifier.subscribe(str(jid))
    try:
        state = None
        while True:
            sub.event.clear()  # before reading: a notification after this point wakes the next wait
            lines = await conn.fetch(Q.get_logs, jid, cursor, PAGE)
            for line in lines:
                cursor = line["seq"]
                yield ServerSentEvent(data=LogLinePublic(**dict(line)).model_dump(mode="json"), event="log",
                                      id=str(cursor))
            if len(lines) == PAGE:
                continue
            current = JobState(await conn.fetchval(Q.job_state, user.org_id, jid))
            if current != state:
                state = current
                yield ServerSentEvent(data={"state": state.value}, event="state")
            if state.terminal:
                # Every line is acknowledged before a job ends, so one last read drains the tail.
                tail = await conn.fetch(Q.get_logs, jid, cursor, 1_000_000)
                for line in tail:
                    cursor = line["seq"]
                    yield ServerSentEvent(data=LogLinePublic(**dict(line)).model_dump(mode="json"), event="log",
                                          id=str(cursor))
                yield ServerSentEvent(data={"state": state.value}, event="done")
                return
            await sub.wait(settings.sse_keepalive_s)
    finally:
        sub.close()
