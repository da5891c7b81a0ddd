"""GET /api/health (liveness) and GET /api/ready (Postgres, Temporal and S3 reachable), in-process.
A stopped dependency is a real one: a Temporal dev server of the test's own, shut down; an S3
endpoint on a port where nothing listens any more."""

from __future__ import annotations

import httpx
from temporalio.testing import WorkflowEnvironment

from boxrun.dev.procs import free_port
from boxrun.settings import Settings
from boxrun.storage import Storage
from tests.api.helpers import assert_error
from tests.api.inprocess import api_client, app_settings, running_app
from tests.conftest import start_temporal


async def test_health_is_liveness_only(anon: httpx.AsyncClient) -> None:
    resp = await anon.get("/api/health")
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["status"] == "ok" and body["version"]
    assert set(body) == {"status", "version"}


async def test_ready_answers_ok_with_every_dependency_up(anon: httpx.AsyncClient) -> None:
    resp = await anon.get("/api/ready")
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["status"] == body["database"] == body["temporal"] == body["storage"] == "ok"
    assert body["version"]


async def test_ready_is_503_naming_a_stopped_temporal(settings: Settings) -> None:
    own = await start_temporal()
    stopped = False
    try:
        async with api_client(app_settings(settings, own)) as anon:
            assert (await anon.get("/api/ready")).status_code == 200
            await own.shutdown()
            stopped = True
            resp = await anon.get("/api/ready")
            assert_error(resp, 503, "unavailable", detail="not ready: temporal (")
            assert "database" not in resp.json()["detail"] and "storage" not in resp.json()["detail"]
            assert resp.headers["retry-after"] == "3"
            assert (await anon.get("/api/health")).status_code == 200, "liveness does not depend on Temporal"
    finally:
        if not stopped:
            await own.shutdown()


async def test_ready_is_503_naming_an_unreachable_store(settings: Settings, temporal_env: WorkflowEnvironment) -> None:
    async with running_app(app_settings(settings, temporal_env)) as app:
        # the store's address now leads nowhere (a port with no listener): the store is down
        app.state.storage = Storage(settings.model_copy(update={"s3_endpoint_url": f"http://127.0.0.1:{free_port()}"}))
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as anon:
            resp = await anon.get("/api/ready")
    assert_error(resp, 503, "unavailable", detail="not ready: storage (")
    assert "temporal" not in resp.json()["detail"]
