"""Rows for integration tests, written with the product's own queries."""

from __future__ import annotations

import uuid

import asyncpg

from boxrun.api.auth import hash_token
from boxrun.constants import DEFAULT_ORG
from boxrun.db import Q


async def add_box(
    conn: asyncpg.Connection, name: str, *, groups=(), capabilities=(), capacity: int = 1, live: bool = True
) -> int:
    """A registered box; `live` also records an agent report now, as a running agent would."""
    row = await conn.fetchrow(
        Q.insert_box,
        DEFAULT_ORG,
        name,
        list(groups),
        list(capabilities),
        capacity,
        hash_token(f"token-{name}-{uuid.uuid4()}"),
    )
    if live:
        await conn.fetchrow(Q.box_report, row["id"], "test", 15.0, False, None)
    return row["id"]


async def add_job(
    conn: asyncpg.Connection,
    *,
    box: str | None = None,
    group: str | None = None,
    requires=(),
    lock: bool = False,
    priority: int = 0,
) -> str:
    job_id = str(uuid.uuid4())
    await conn.execute(
        Q.insert_job,
        job_id,
        DEFAULT_ORG,
        "tester",
        box,
        group,
        list(requires),
        {"script": "x"},
        "hash",
        60,
        lock,
        priority,
        None,
        10,
        None,
    )
    await conn.execute(Q.insert_first_event, DEFAULT_ORG, job_id, {})
    return job_id


async def state_of(conn: asyncpg.Connection, job_id: str) -> str:
    return await conn.fetchval(Q.job_state, DEFAULT_ORG, job_id)
