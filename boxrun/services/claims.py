"""A box's log lines for the jobs it claimed. A node token reaches only its own box's jobs."""

from __future__ import annotations

import logging

import asyncpg

from boxrun import logbatch, logstore
from boxrun.constants import JobState
from boxrun.db import Q
from boxrun.errors import Conflict, InvalidInput, NotFound
from boxrun.services.archive import write_archive
from boxrun.services.identity import NodeBox
from boxrun.services.jobs import parse_job_id
from boxrun.storage import Storage

log = logging.getLogger(__name__)

MAX_BATCH_BYTES = 16 << 20


async def ingest_logs(
    conn: asyncpg.Connection,
    box: NodeBox,
    job_id: str,
    body: bytes,
    *,
    tail_grace_s: float,
    transcript_cap_bytes: int = logstore.DEFAULT_CAP_BYTES,
) -> tuple[int, bool]:
    """Store a batch of a job's lines (boxrun/logbatch.py) sent by `box`; idempotent by seq, so the
    agent may resend after any failure. Returns (the seq every line up to which is stored, whether
    the job had already ended). The caller bounds the body's size (MAX_BATCH_BYTES).

    NotFound: no such job for this box (it was never dispatched to it). InvalidInput: not a valid
    batch, or a `system` line (that stream belongs to the control plane). Conflict: lines before
    the batch's first seq are missing, or the job ended and this is not a tail delivered within
    the grace period (before the box's result). `transcript_cap_bytes`: the deployment's transcript
    cap (Settings.transcript_cap_bytes), for jobs of orgs without their own."""
    jid = parse_job_id(job_id)
    try:
        batch = logbatch.decode(body)
    except logbatch.BadBatch as exc:
        raise InvalidInput(f"invalid log batch: {exc}", field="body") from None
    if any(run[1] == "system" for run in batch.runs):
        raise InvalidInput("the system stream is written by the control plane only", field="body")
    row: asyncpg.Record | None = await conn.fetchrow(Q.log_dispatch, jid, box.id, tail_grace_s)
    if row is None or row["claimed_at"] is None:
        raise NotFound(f"job {jid} not found")
    ended = JobState(row["state"]).terminal
    if ended and (row["result_at"] is not None or not row["in_grace"]):
        raise Conflict(f"job {jid} ended ({row['state']}); its log is closed")
    try:
        return await logstore.append(conn, jid, batch, cap_bytes=transcript_cap_bytes), ended
    except logstore.LogGap as gap:
        raise Conflict(f"lines before seq {batch.first_seq} are missing; send from seq {gap.expected}") from gap


async def refresh_archive(pool: asyncpg.Pool, storage: Storage, job_id: str) -> None:
    """Rewrite the transcript archive after a late tail (only if the job already has one)."""
    async with pool.acquire() as conn:
        if await conn.fetchval(Q.job_has_archive, job_id) is not True:
            return  # the workflow archives it at the end as usual
    try:
        await write_archive(pool, storage, job_id)
    except Exception:  # the live transcript in Postgres is complete; only the archive is behind
        log.exception("could not refresh the log archive of job %s", job_id)
