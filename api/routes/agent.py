"""The box agents' side of the API (node-token auth): liveness, the start-of-run claim, log ingest."""

from __future__ import annotations

from fastapi import APIRouter, Request

from boxrun import logbatch
from boxrun.api.deps import ConnDep, CurrentBox, SettingsDep, TemporalDep
from boxrun.api.errors import responses
from boxrun.api.to_public import box_public
from boxrun.errors import TooLarge
from boxrun.schemas import AgentHeartbeat, BoxPublic, ClaimPublic, LogBatchAck
from boxrun.services import claims
from boxrun.services.boxes import record_heartbeat
from boxrun.services.jobs import parse_job_id

router = APIRouter(prefix="/agent", tags=["agent"])


@router.post("/heartbeat", response_model=BoxPublic, responses=responses(401, 422))
async def heartbeat(
    body: AgentHeartbeat, box: CurrentBox, conn: ConnDep, settings: SettingsDep, temporal: TemporalDep
) -> BoxPublic:
    """Liveness. A box that comes back (or stops draining) wakes the jobs waiting for it."""
    row = await record_heartbeat(
        conn,
        temporal,
        box,
        agent_version=body.agent_version,
        draining=body.draining,
        offline_after_s=settings.box_offline_after_s,
    )
    return box_public(row, settings)


@router.post(
    "/jobs/{job_id}/claim",
    response_model=ClaimPublic,
    responses=responses(
        401,
        403,
        404,
        409,
        422,
        e403="the job is leased to another box",
        e404="no such job",
        e409="the job may not start on this box now (cancelled, ended, no lease)",
    ),
)
async def claim_job(job_id: str, box: CurrentBox, conn: ConnDep) -> ClaimPublic:
    """The agent's last check before it starts a job's process: the job is still `dispatching`
    and holds a lease on this very box."""
    return ClaimPublic(job_id=await claims.claim_job(conn, box, job_id), box=box.name)


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
        403,
        404,
        409,
        413,
        422,
        e403="the job is not placed on this box",
        e404="no such job",
        e409="lines before first_seq are missing",
        e413="the batch is over 16 MiB",
        e422="the body is not a valid batch",
    ),
)
async def ingest_logs(job_id: str, request: Request, box: CurrentBox, conn: ConnDep) -> LogBatchAck:
    """Store a batch of lines; idempotent by seq, so the agent may resend after any failure.
    The body is the batch as it will be stored (boxrun/logbatch.py): a JSON header line with the
    first seq and the runs of lines sharing a stream and time, then the lines themselves."""
    jid = parse_job_id(job_id)
    body = await _read_bounded(request, claims.MAX_BATCH_BYTES)
    return LogBatchAck(stored_through=await claims.ingest_logs(conn, box, jid, body))


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
