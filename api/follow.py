"""Following a job's transcript: the events SSE and WebSocket followers both receive.

A follower pulls lines from Postgres from its own cursor, so the API never holds more than one
page per follower, whatever the follower's speed; a NOTIFY (via the process's one LISTEN
connection) only tells it that there is more to read.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import asyncpg

from boxrun import logstore
from boxrun.api.notify import Notifier
from boxrun.constants import JobState
from boxrun.db import Q

PAGE = 1000


@dataclass(frozen=True)
class FollowEvent:
    event: str  # log | state | keepalive | dropped | done
    data: Any = None
    id: int | None = None


async def follow(pool: asyncpg.Pool, notifier: Notifier, org_id: str, job_id: str, *, after: int,
                 keepalive_s: float, stall_s: float) -> AsyncIterator[FollowEvent]:
    job_id = str(job_id)  # NOTIFY payloads are text: subscribe by the same text, not a UUID object
    sub = notifier.subscribe(job_id)
    cursor, state = after, None
    try:
        while True:
            sub.event.clear()  # before reading: a notification after this point wakes the next wait
            async with pool.acquire() as conn:
                lines = await logstore.read(conn, job_id, cursor, PAGE)
                current = JobState(await conn.fetchval(Q.job_state, org_id, job_id)) if len(lines) < PAGE else None
            for line in lines:
                cursor = line.seq
                handed = time.monotonic()
                yield FollowEvent("log", line.public(), line.seq)
                if time.monotonic() - handed > stall_s:
                    # the follower stalled: let it go rather than hold anything for it
                    yield FollowEvent("dropped", {"reason": "follower too slow", "resume_after": cursor})
                    return
            if current is None:
                continue  # a full page: more lines are waiting
            if current != state:
                state = current
                yield FollowEvent("state", {"state": state.value})
            if state.terminal:
                # Every line is acknowledged before a job ends: one more read drains the tail.
                async with pool.acquire() as conn:
                    async for line in _rest(conn, job_id, cursor):
                        cursor = line.seq
                        yield FollowEvent("log", line.public(), line.seq)
                yield FollowEvent("done", {"state": state.value, "last_seq": cursor})
                return
            if not await sub.wait(keepalive_s):
                yield FollowEvent("keepalive")
    finally:
        sub.close()


async def _rest(conn: asyncpg.Connection, job_id: str, after: int) -> AsyncIterator[logstore.Line]:
    while batch := await logstore.read(conn, job_id, after, PAGE):
        for line in batch:
            yield line
        after = batch[-1].seq
