"""Health (liveness: the process answers) and readiness (Postgres, Temporal and storage answer)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import timedelta

import asyncpg
from fastapi import APIRouter, Request

from boxrun import __version__
from boxrun.api.errors import responses
from boxrun.errors import Unavailable
from boxrun.schemas import Health, Ready

log = logging.getLogger(__name__)
router = APIRouter(tags=["health"])

# Each dependency gets this long to answer; a readiness probe must answer sooner than its own
# timeout (Kubernetes' default is 1 s, Compose's 30 s: set the probe's to at least 5 s).
CHECK_TIMEOUT_S = 3.0


@router.get("/health", response_model=Health)
async def health() -> Health:
    """Liveness: the API process serves requests. It checks no dependency (a restart would not
    bring a dependency back); GET /api/ready does."""
    return Health(status="ok", version=__version__)


async def _database(request: Request) -> None:
    pool: asyncpg.Pool = request.app.state.pool
    async with pool.acquire(timeout=CHECK_TIMEOUT_S) as conn:
        await conn.fetchval("SELECT 1", timeout=CHECK_TIMEOUT_S)


async def _temporal(request: Request) -> None:
    await request.app.state.temporal.service_client.check_health(timeout=timedelta(seconds=CHECK_TIMEOUT_S))


async def _storage(request: Request) -> None:
    storage = request.app.state.storage
    # boto3 retries a refused connection a few times: the wait bounds the answer, not the thread
    await asyncio.wait_for(asyncio.to_thread(storage.client.head_bucket, Bucket=storage.bucket), CHECK_TIMEOUT_S)


CHECKS: dict[str, Callable[[Request], Awaitable[None]]] = {
    "database": _database,
    "temporal": _temporal,
    "storage": _storage,
}


async def _failure(name: str, check: Callable[[Request], Awaitable[None]], request: Request) -> str | None:
    """None if the dependency answered, else why not in a few public words (the exception's
    type; the whole message, which may name hosts, goes to the log)."""
    try:
        await check(request)
    except TimeoutError:
        log.warning("not ready: %s gave no answer within %g s", name, CHECK_TIMEOUT_S)
        return f"no answer within {CHECK_TIMEOUT_S:g} s"
    except Exception as exc:  # any failure to answer is the answer: the probe reports it
        log.warning("not ready: %s: %s: %s", name, type(exc).__name__, exc)
        return type(exc).__name__
    return None


@router.get(
    "/ready",
    response_model=Ready,
    responses=responses(
        503, e503="a dependency is down: `detail` names each, e.g. `not ready: storage (no answer within 3 s)`"
    ),
)
async def ready(request: Request) -> Ready:
    """Readiness: Postgres, Temporal and the S3 store each answered within 3 s (checked at once)."""
    results = await asyncio.gather(*(_failure(name, check, request) for name, check in CHECKS.items()))
    down = [f"{name} ({why})" for name, why in zip(CHECKS, results, strict=True) if why is not None]
    if down:
        raise Unavailable("not ready: " + ", ".join(down), retry_after_s=CHECK_TIMEOUT_S)
    return Ready(status="ok", database="ok", temporal="ok", storage="ok", version=__version__)
