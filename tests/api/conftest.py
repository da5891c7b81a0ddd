"""The API in-process: create_app on the real test Postgres, the session's Temporal dev server and
the S3 store, its lifespan run by hand, requests through httpx's ASGI transport. No worker runs,
so a submitted job stays `queued` (the offer at submission is off here, or a job for a live box
would be leased and offered by its POST: test_offer_at_submission.py turns it on and tests it;
the whole-stack tests run with it on, the default); whatever a test needs beyond that it writes
with the product's own code (placement, transitions, queries)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg
import httpx
import pytest
from fastapi import FastAPI
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment

from boxrun.api.app import create_app
from boxrun.settings import Settings
from tests.api.helpers import Box

ADMIN_TOKEN = "test-admin-token"
BASE_URL = "http://boxrun.test"


@pytest.fixture
async def app(settings: Settings, temporal_env: WorkflowEnvironment) -> AsyncIterator[FastAPI]:
    target = temporal_env.client.service_client.config.target_host
    update = {"temporal_address": target, "api_token": ADMIN_TOKEN, "offer_at_submission": False}
    app = create_app(settings.model_copy(update=update))
    async with app.router.lifespan_context(app):
        yield app
        # Leave no workflow or schedule behind on the shared dev server: this test's database goes away.
        temporal = app.state.temporal
        for row in await app.state.pool.fetch(
            "SELECT id::text FROM jobs UNION ALL SELECT id::text FROM pipelines"
            " UNION ALL SELECT 'webhook-' || id FROM webhook_deliveries"
        ):
            try:
                await temporal.get_workflow_handle(row[0]).terminate("test over")
            except RPCError:
                pass  # never started, or already closed
        for row in await app.state.pool.fetch("SELECT temporal_schedule_id FROM schedules"):
            try:
                await temporal.get_schedule_handle(row[0]).delete()
            except RPCError:
                pass  # deleted by the test


def _client(app: FastAPI, token: str | None) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE_URL, headers=headers)


@pytest.fixture
async def api(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """A client with the admin user token."""
    async with _client(app, ADMIN_TOKEN) as client:
        yield client


@pytest.fixture
async def anon(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """A client without credentials."""
    async with _client(app, None) as client:
        yield client


@pytest.fixture
async def as_token(app: FastAPI) -> AsyncIterator[Callable[[str], httpx.AsyncClient]]:
    """Clients with a given bearer token (a node token, a wrong one)."""
    clients: list[httpx.AsyncClient] = []

    def make(token: str) -> httpx.AsyncClient:
        clients.append(_client(app, token))
        return clients[-1]

    yield make
    for client in clients:
        await client.aclose()


@pytest.fixture
async def db(app: FastAPI) -> AsyncIterator[asyncpg.Connection]:
    async with app.state.pool.acquire() as conn:
        yield conn


@pytest.fixture
async def make_box(
    api: httpx.AsyncClient, as_token: Callable[[str], httpx.AsyncClient]
) -> Callable[..., Awaitable[Box]]:
    """Register a box through the API and report its agent live (so placement can pick it)."""

    async def make(name: str, *, groups: tuple[str, ...] = (), live: bool = True) -> Box:
        resp = await api.post("/api/boxes", json={"name": name, "groups": list(groups)})
        assert resp.status_code == 201, resp.text
        token = resp.json()["node_token"]
        agent = as_token(token)
        if live:
            beat = await agent.post("/api/agent/heartbeat", json={"agent_version": "test"})
            assert beat.status_code == 200, beat.text
        return Box(name, token, agent)

    return make
