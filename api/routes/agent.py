"""The box agents' side of the API (node-token auth): liveness and log ingest."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request, status

from boxrun import logbatch, logstore
from boxrun.api.deps import ConnDep, CurrentBox, SettingsDep, TemporalDep
from boxrun.api.routes.jobs import parse_job_id
from boxrun.api.to_public import box_public
from boxrun.db import Q
from boxrun.schemas import AgentHeartbeat, BoxPublic, ClaimPublic, LogBatchAck
from boxrun.services.wakeups import wake_waiters

router = APIRouter(prefix="/agent", tags=["agent"])


@router.post("/heartbeat", response_model=BoxPublic)
async def heartbeat(
    body: AgentHeartbeat, box: CurrentBox, conn: ConnDep, settings: SettingsDep, temporal: TemporalDep
) -> BoxPublic:
    """Liveness. A box that comes back (or stops draining) wakes the jobs waiting for it."""
    row = await conn.fetchrow(Q.box_report, box.id, body.agent_version, settings.box_offline_after_s, body.draining)
    if not row["was_live"] and not body.draining:
        await wake_waiters(conn, temporal, box.id, row["capacity"])
    return box_public(row, settings)


@router.post(
    "/jobs/{job_id}/claim",
    response_model=ClaimPublic,
    responses={
        409: {"description": "the job may not start on this box (cancelled, no lease)"},
        404: {"description": "no such job"},
    },
)
async def claim_job(job_id: str, box: CurrentBox, conn: ConnDep) -> ClaimPublic:
    """The agent's last check before it starts a job's process: the job is still `dispatching`
    and holds a lease on this very box."""
    row = await conn.fetchrow(Q.job_claim, parse_job_id(job_id))
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"job {job_id} not found")
    if row["state"] != "dispatching" or row["lease_box"] != box.id:
        raise HTTPException(status.HTTP_409_CONFLICT, f"job {job_id} is {row['state']} and not leased to {box.name}")
    return ClaimPublic(job_id=str(row["id"]), box=box.name)


MAX_BATCH_BYTES = 16 << 20


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
    responses={
        403: {"description": "the job is not placed on this box"},
        404: {"description": "no such job"},
        409: {"description": "lines before first_seq are missing"},
        413: {"description": "the batch is over 16 MiB"},
        422: {"description": "the body is not a valid batch"},
    },
)
async def ingest_logs(job_id: str, request: Request, box: CurrentBox, conn: ConnDep) -> LogBatchAck:
    """Store a batch of lines; idempotent by seq, so the agent may resend after any failure.
    The body is the batch as it will be stored (boxrun/logbatch.py): a JSON header line with the
    first seq and the runs of lines sharing a stream and time, then the lines themselves."""
    jid = parse_job_id(job_id)
    body = await request.body()
    if len(body) > MAX_BATCH_BYTES:
        raise HTTPException(
            status.HTTP_413_REQUEST_ENTITY_TOO_LARGE, f"a log batch may hold at most {MAX_BATCH_BYTES} bytes"
        )
    try:
        batch = logbatch.decode(body)
    except logbatch.BadBatch as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_ENTITY, f"invalid log batch: {exc}") from None
    placed_on = await conn.fetchrow(Q.job_placement, jid)
    if placed_on is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"job {job_id} not found")
    if placed_on["box_id"] != box.id:
        raise HTTPException(status.HTTP_403_FORBIDDEN, f"job {job_id} is not placed on box {box.name}")
    try:
        stored = await logstore.append(conn, jid, batch)
    except logstore.LogGap as gap:
        raise HTTPException(
            status.HTTP_409_CONFLICT, f"lines before seq {batch.first_seq} are missing; send from seq {gap.expected}"
        ) from gap
    return LogBatchAck(stored_through=stored)
