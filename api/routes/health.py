"""Health: the API, its database and its Temporal connection."""

from __future__ import annotations

from fastapi import APIRouter
from temporalio.service import RPCError

from boxrun import __version__
from boxrun.api.deps import ConnDep, TemporalDep
from boxrun.api.errors import responses
from boxrun.errors import Unavailable
from boxrun.schemas import Health

router = APIRouter(tags=["health"])


@router.get("/health", response_model=Health, responses=responses(503, e503="a dependency is down"))
async def health(conn: ConnDep, temporal: TemporalDep) -> Health:
    await conn.fetchval("SELECT 1")
    try:
        await temporal.service_client.check_health()
    except RPCError as exc:
        raise Unavailable(f"temporal: {exc.message}") from exc
    return Health(status="ok", database="ok", temporal="ok", version=__version__)
