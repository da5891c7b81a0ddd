"""What a box agent may do with a job: claim it before its process starts, store its log lines.
A node token reaches only the jobs placed on its own box."""

from __future__ import annotations

import asyncpg

from boxrun import logbatch, logstore
from boxrun.db import Q
from boxrun.errors import Conflict, Forbidden, InvalidInput, NotFound
from boxrun.services.identity import NodeBox
from boxrun.services.jobs import parse_job_id

MAX_BATCH_BYTES = 16 << 20


async def claim_job(conn: asyncpg.Connection, box: NodeBox, job_id: str) -> str:
    """The agent's last check before it starts a job's process: the job is still `dispatching`
    and holds a lease on this very box. Returns the job id.

    NotFound: no such job (or not in the box's org). Forbidden: the job is leased to another box.
    Conflict: the job may not start here now (cancelled, ended, no lease any more)."""
    jid = parse_job_id(job_id)
    row: asyncpg.Record | None = await conn.fetchrow(Q.job_claim, jid)
    if row is None or row["org_id"] != box.org_id:
        raise NotFound(f"job {jid} not found")
    if row["lease_box"] is not None and row["lease_box"] != box.id:
        raise Forbidden(f"job {jid} is not placed on box {box.name}")
    if row["state"] != "dispatching" or row["lease_box"] != box.id:
        raise Conflict(f"job {jid} is {row['state']} and not leased to {box.name}")
    return jid


async def ingest_logs(conn: asyncpg.Connection, box: NodeBox, job_id: str, body: bytes) -> int:
    """Store a batch of a job's lines (boxrun/logbatch.py) sent by `box`; idempotent by seq, so the
    agent may resend after any failure. Returns the seq every line up to which is stored. The
    caller bounds the body's size (MAX_BATCH_BYTES).

    NotFound: no such job. InvalidInput: not a valid batch. Forbidden: the job is not placed on
    this box. Conflict: lines before the batch's first seq are missing."""
    jid = parse_job_id(job_id)
    try:
        batch = logbatch.decode(body)
    except logbatch.BadBatch as exc:
        raise InvalidInput(f"invalid log batch: {exc}", field="body") from None
    placed: asyncpg.Record | None = await conn.fetchrow(Q.job_placement, jid)
    if placed is None or placed["org_id"] != box.org_id:
        raise NotFound(f"job {jid} not found")
    if placed["box_id"] != box.id:
        raise Forbidden(f"job {jid} is not placed on box {box.name}")
    try:
        return await logstore.append(conn, jid, batch)
    except logstore.LogGap as gap:
        raise Conflict(f"lines before seq {batch.first_seq} are missing; send from seq {gap.expected}") from gap
