"""The FastAPI application: lifespan wiring (pool, migrations, Temporal, storage, LISTEN) and routers."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, WebSocketException, status
from fastapi.dependencies.models import Dependant
from fastapi.openapi.docs import get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from starlette.requests import HTTPConnection

from boxrun import __version__
from boxrun.api import errors, observe
from boxrun.api.auth import ensure_bootstrap
from boxrun.api.limits import RequestGuard, needs_token
from boxrun.api.live.dispatch import DispatchHub
from boxrun.api.live.guard import StreamGuard
from boxrun.api.live.job_tail import Tails
from boxrun.api.live.listener import Notifier, PgListener
from boxrun.api.live.liveness import HeldPolls
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
    org,
    people,
    pipelines,
    schedules,
    secrets,
    session,
    templates,
    triggers,
    ui,
    webhooks,
)
from boxrun.db import create_pool, migrate_for
from boxrun.errors import InvalidInput
from boxrun.propagation import RequestIdPropagation
from boxrun.schemas import LogBatchHeader
from boxrun.settings import Settings, get_settings
from boxrun.storage import Storage
from boxrun.temporal import connect_with

log = logging.getLogger(__name__)

# Swagger UI's JS and CSS, shipped in the package (docs_assets/README.md): /docs needs no network
DOCS_ASSETS = Path(__file__).resolve().parent / "docs_assets"
DOCS_ASSETS_URL = "/docs/assets"
# /docs may not be framed (Swagger UI runs inline scripts, so no script-src policy here; /ui/ has
# the full policy: api/routes/ui.py).
DOCS_HEADERS = {
    "Content-Security-Policy": "frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}

_QUERY_NAMES: dict[int, frozenset[str]] = {}


def query_names(dependant: Dependant) -> frozenset[str]:
    """The query parameters a route declares, its dependencies' included (by their alias)."""
    names: set[str] = set()
    todo = [dependant]
    while todo:
        current = todo.pop()
        names.update(field.alias for field in current.query_params)
        todo.extend(current.dependencies)
    return frozenset(names)


async def reject_unknown_query(connection: HTTPConnection) -> None:
    """Every /api route: a query parameter the route does not declare is a 422 naming it (a typo
    such as `?ownr=me` would otherwise be ignored and answer as if no filter was given). Runs
    before the route's own parameters and dependencies; a WebSocket closes with 1008 instead."""
    route = connection.scope.get("route")
    dependant = getattr(route, "dependant", None)
    if dependant is None:
        return
    known = _QUERY_NAMES.get(id(route))
    if known is None:
        known = _QUERY_NAMES[id(route)] = query_names(dependant)
    unknown = sorted({name for name in connection.query_params if name not in known})
    if not unknown:
        return
    names = ", ".join(repr(n[:80]) for n in unknown[:5])
    allowed = ", ".join(sorted(known)) or "none"
    reason = f"unknown query parameter {names} (this route takes: {allowed})"
    if connection.scope["type"] == "websocket":
        raise WebSocketException(code=status.WS_1008_POLICY_VIOLATION, reason=reason[:120])
    raise InvalidInput(reason, field=f"query.{unknown[0][:80]}")


def install_docs(app: FastAPI) -> None:
    """/docs: Swagger UI over /openapi.json, its assets served from the package."""
    app.mount(DOCS_ASSETS_URL, StaticFiles(directory=DOCS_ASSETS), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        page = get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{app.title} API",
            oauth2_redirect_url="/docs/oauth2-redirect",
            swagger_js_url=f"{DOCS_ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{DOCS_ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{DOCS_ASSETS_URL}/favicon-32x32.png",
        )
        page.headers.update(DOCS_HEADERS)
        return page

    @app.get("/docs/oauth2-redirect", include_in_schema=False)
    async def swagger_ui_redirect() -> HTMLResponse:
        page = get_swagger_ui_oauth2_redirect_html()
        page.headers.update(DOCS_HEADERS)
        return page


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    settings.require_secrets("api_token", "s3_secret_access_key", "secrets_key")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Temporal first: a connection that cannot work (TLS files, docs/deploy.md) stops the
        # start before anything below is opened
        app.state.temporal = await connect_with(settings, interceptors=[RequestIdPropagation()])
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
        # one statement renews the liveness of every box whose agent holds a long-poll here
        app.state.held_polls = held_polls = HeldPolls(
            pool,
            app.state.temporal,
            interval_s=settings.box_offline_after_s / 4,
            offline_after_s=settings.box_offline_after_s,
        )
        held_polls.start()
        observe.start(app, settings)  # metrics sources and the metrics port (BOXRUN_API_METRICS_PORT)
        try:
            yield
        finally:
            observe.stop(app)
            await held_polls.stop()
            await stream_guard.stop()
            app.state.tails.close()
            await listener.stop()
            await pool.close()

    app = FastAPI(
        title="boxrun",
        version=__version__,
        lifespan=lifespan,
        description="Run scripts on a fleet of remote boxes; every job is a durable Temporal workflow.",
        docs_url=None,  # served below from the package's own copy of Swagger UI, not a CDN
        redoc_url=None,  # ReDoc loads from a CDN only; /docs is the one browsable document
    )
    install_docs(app)
    # Each module's router is included into the app itself (one level of included routers, not
    # two: FastAPI matches an included router's routes again at each level), the agents' first: a
    # fleet sends most of the requests. bench/routing_cost.py: an agent request's overhead halved.
    only_known_query = [Depends(reject_unknown_query)]
    for module in (agent, jobs, job_spec, logs, artifacts, files, boxes, people, audit, pipelines, health, session):
        app.include_router(module.router, prefix="/api", dependencies=only_known_query)
    for router in (secrets.router, webhooks.router, org.router, templates.router, triggers.router, schedules.router):
        app.include_router(router, prefix="/api", dependencies=only_known_query)
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
        for path, item in spec["paths"].items():  # reject_unknown_query: any /api route may answer 422
            for op in item.values():
                if path.startswith("/api/") and isinstance(op, dict) and "responses" in op:
                    op["responses"].setdefault(
                        "422", {"description": "invalid input (an unknown query parameter): `errors` names it"}
                    )
        return errors.document_errors(spec, authenticated=needs_token)

    app.openapi = openapi_with_ingest_schema  # type: ignore[method-assign]  # FastAPI's documented hook

    errors.install(app)
    app.add_middleware(RequestGuard, settings=settings)
    observe.install(app)  # outermost: the request id and log context cover the guard's answers too
    return app
