"""What the API tells its operators: the request id and log context of every request, the metrics
it counts as requests pass (log followers, log ingest), and its GET /metrics port.

`Observe` is the outermost ASGI middleware: it takes the client's X-Request-ID (or makes one),
echoes it in the answer, and binds it, with the job id in the path, to every log line the
request writes (boxrun.logcontext); the user's or box's org and the box are noted by the auth
dependencies. `start`/`stop` run in the app's lifespan.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Iterable

import asyncpg
from fastapi import FastAPI
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from boxrun import logcontext, metrics
from boxrun.db import Q
from boxrun.settings import Settings

log = logging.getLogger(__name__)

_JOB_PATH = re.compile(r"^/api/(?:agent/)?jobs/([0-9a-fA-F-]{36})(?:/|$)")
_SSE_PATH = re.compile(r"^/api/jobs/[^/]+/logs/stream$")
_WS_PATH = re.compile(r"^/api/jobs/[^/]+/logs/ws$")
_INGEST_PATH = re.compile(r"^/api/agent/jobs/[^/]+/logs$")
_HEADER = logcontext.REQUEST_ID_HEADER.lower().encode()
# the waiting-jobs query of a scrape: its answer or nothing within this long
WAITING_QUERY_TIMEOUT_S = 2.0


class Observe:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        request_id = logcontext.request_id_from(Headers(scope=scope).get(logcontext.REQUEST_ID_HEADER))
        job = _JOB_PATH.match(path)
        follower = None
        if scope["type"] == "websocket" and _WS_PATH.match(path):
            follower = "websocket"
        elif scope["type"] == "http" and scope["method"] == "GET" and _SSE_PATH.match(path):
            follower = "sse"
        ingest = scope["type"] == "http" and scope["method"] == "POST" and _INGEST_PATH.match(path) is not None
        received = newlines = 0
        status = 0
        following = False

        async def counting_receive() -> Message:
            nonlocal received, newlines
            message = await receive()
            if message["type"] == "http.request":
                body = message.get("body", b"")
                received += len(body)
                newlines += body.count(b"\n")
            return message

        async def tagged_send(message: Message) -> None:
            nonlocal status, following
            kind = message["type"]
            if kind in ("http.response.start", "websocket.accept"):
                message["headers"] = [*message.get("headers", []), (_HEADER, request_id.encode())]
                status = message.get("status", 101)
                if follower is not None and status in (101, 200) and not following:
                    following = True
                    metrics.FOLLOWERS.labels(follower).inc()
            await send(message)

        began = time.perf_counter()
        with logcontext.bound(request_id=request_id, job_id=job.group(1).lower() if job else None):
            try:
                await self.app(scope, counting_receive if ingest else receive, tagged_send)
            finally:
                if following:
                    metrics.FOLLOWERS.labels(follower).dec()
                # the access log (uvicorn's is off), with the request's context; DEBUG: not by default
                took_ms = (time.perf_counter() - began) * 1000
                log.debug("%s %s -> %s in %.1f ms", scope.get("method", "WS"), path, status or "-", took_ms)
        if ingest and status == 200:
            # a batch is a header line, then its lines, each ended by a newline (boxrun/logbatch.py)
            metrics.logs_ingested(received, max(0, newlines - 1))


def install(app: FastAPI) -> None:
    """Add the middleware; call it after every other add_middleware (it must be the outermost)."""
    app.add_middleware(Observe)


class _Waiting:
    """The jobs_waiting source: the API's pool queried on its own loop from the scrape thread."""

    def __init__(self, pool: asyncpg.Pool, loop: asyncio.AbstractEventLoop, max_series: int) -> None:
        self.pool, self.loop, self.max_series = pool, loop, max_series

    async def query(self) -> list[metrics.WaitingRow]:
        async with self.pool.acquire(timeout=WAITING_QUERY_TIMEOUT_S) as conn:
            rows = await conn.fetch(Q.jobs_waiting_by_target, self.max_series, timeout=WAITING_QUERY_TIMEOUT_S)
        return [(r["org_id"], r["kind"], r["name"], r["n"]) for r in rows]

    def __call__(self) -> Iterable[metrics.WaitingRow]:
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self.loop:  # it would wait on itself: counted only from another thread
            return []
        future = asyncio.run_coroutine_threadsafe(self.query(), self.loop)
        return future.result(timeout=WAITING_QUERY_TIMEOUT_S * 2)


def start(app: FastAPI, settings: Settings) -> None:
    """In the lifespan, once the pool and the dispatch hub exist: the scrape-time sources, and the
    metrics port if one is set (an address in use fails the start, saying so)."""
    state = app.state
    metrics.WAITING.source = _Waiting(state.pool, asyncio.get_running_loop(), settings.metrics_waiting_max_series)
    hub = state.dispatch_hub
    metrics.CONNECTED_AGENTS.set_function(lambda: hub.waiting_boxes)
    state.metrics_server = None
    if settings.api_metrics_port is not None:
        try:
            state.metrics_server = metrics.serve(settings.metrics_host, settings.api_metrics_port)
        except OSError as exc:
            raise RuntimeError(
                f"cannot serve metrics on {settings.metrics_host}:{settings.api_metrics_port}"
                f" (BOXRUN_API_METRICS_PORT): {(exc.strerror or str(exc)).lower()}"
            ) from exc


def stop(app: FastAPI) -> None:
    server = getattr(app.state, "metrics_server", None)
    if server is not None:
        server.close()
        app.state.metrics_server = None
    metrics.WAITING.source = None
