"""The FastAPI application: lifespan wiring (pool, migrations, Temporal, storage, LISTEN) and routers."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, FastAPI

from boxrun import __version__
from boxrun.api import errors
from boxrun.api.auth import ensure_bootstrap
from boxrun.api.limits import RequestGuard, needs_token
from boxrun.api.live.dispatch import DispatchHub
from boxrun.api.live.guard import StreamGuard
from boxrun.api.live.job_tail import Tails
from boxrun.api.live.listener import Notifier, PgListener
from boxrun.api.live.pipelines import PipelineHub
from boxrun.api.routes import (
    agent,
    artifacts,
    audit,
    boxes,
    files,
    health,
    job_spec,
    jobs,
    logs,
    people,
    pipelines,
    session,
    ui,
)
from boxrun.db import create_pool, migrate_for
from boxrun.schemas import LogBatchHeader
from boxrun.settings import Settings, get_settings
from boxrun.storage import Storage
from boxrun.temporal import connect

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    settings.require_secrets("api_token", "s3_secret_access_key")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await migrate_for(settings.database_url, settings.database_owner_url)
        pool = await create_pool(settings.database_url, min_size=settings.db_pool_min, max_size=settings.db_pool_max)
        async with pool.acquire() as conn:
            await ensure_bootstrap(conn, settings)
        listener = PgListener(settings.database_url)  # one LISTEN connection for every part
        notifier = Notifier(listener)
        dispatch_hub = DispatchHub(listener)  # the agents' long-polls
        app.state.pipeline_hub = PipelineHub(listener)  # the pipeline event streams
        await listener.start()
        storage = Storage(settings)
        await asyncio.to_thread(storage.ensure_bucket)
        app.state.settings = settings
        app.state.pool = pool
        app.state.notifier = notifier
        app.state.dispatch_hub = dispatch_hub
        app.state.tails = Tails(notifier)  # the shared reader of each followed job
        app.state.storage = storage
        # one task re-checks the tokens of every open log stream (SSE, WebSocket)
        app.state.stream_guard = stream_guard = StreamGuard(pool, settings.auth_recheck_s)
        stream_guard.start()
        app.state.temporal = await connect(settings.temporal_address, settings.temporal_namespace)
        try:
            yield
        finally:
            await stream_guard.stop()
            app.state.tails.close()
            await listener.stop()
            await pool.close()

    app = FastAPI(
        title="boxrun",
        version=__version__,
        lifespan=lifespan,
        description="Run scripts on a fleet of remote boxes; every job is a durable Temporal workflow.",
    )
    api = APIRouter(prefix="/api")
    for module in (jobs, job_spec, logs, artifacts, files, boxes, people, audit, agent, pipelines, health, session):
        api.include_router(module.router)
    app.include_router(api)
    ui.mount(app)  # the dashboard, /ui/

    openapi = app.openapi

    def openapi_with_ingest_schema() -> dict[str, Any]:
        # the log ingest parses its raw body itself; publish its header's schema all the same
        spec = openapi()
        spec["components"]["schemas"].setdefault(
            "LogBatchHeader", LogBatchHeader.model_json_schema(ref_template="#/components/schemas/{model}")
        )
        for name, schema in pipelines.DEFINITION_SCHEMAS.items():  # POST /api/pipelines parses its body itself
            spec["components"]["schemas"].setdefault(name, schema)
        return errors.document_errors(spec, authenticated=needs_token)

    app.openapi = openapi_with_ingest_schema  # type: ignore[method-assign]  # FastAPI's documented hook

    errors.install(app)
    app.add_middleware(RequestGuard, settings=settings)
    return app
