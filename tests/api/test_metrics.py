"""The API's Prometheus metrics, counted after real requests in-process (the real Postgres, Temporal
and S3 of tests/conftest.py), and served on the metrics port of their own, never on the API's.

Counters are per process and these tests share one: each asserts a difference, not a value."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg
import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from temporalio.testing import WorkflowEnvironment
from websockets.asyncio.client import connect as ws_connect

from boxrun.constants import DEFAULT_ORG, JobState
from boxrun.dev.procs import free_port
from boxrun.metrics import REGISTRY
from boxrun.settings import Settings
from boxrun.transitions import transition
from tests.api.helpers import Box
from tests.api.inprocess import ADMIN, ADMIN_TOKEN, app_settings, running_app
from tests.api.test_agent import BATCH, batch, claimed_job
from tests.conftest import wait_for
from tests.integration.helpers import add_job


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def scrape_text(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition: (name, sorted labels) -> value."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def scrape() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    # from a thread, as the metrics port's server does: the waiting-jobs query runs on the app's loop
    return scrape_text((await asyncio.to_thread(generate_latest, REGISTRY)).decode())


async def test_submissions_and_finishes_are_counted(api: httpx.AsyncClient) -> None:
    submitted, cancelled = (
        sample("boxrun_jobs_submitted_total"),
        sample("boxrun_jobs_finished_total", state="cancelled"),
    )
    ids = []
    for _ in range(3):
        resp = await api.post("/api/jobs", json={"script": "pass", "box_group": "nobody"})
        assert resp.status_code == 201, resp.text
        ids.append(resp.json()["id"])
    bad = await api.post("/api/jobs", json={"script": "pass"})  # neither box nor group: refused, not counted
    assert bad.status_code == 422
    assert sample("boxrun_jobs_submitted_total") == submitted + 3
    assert sample("boxrun_jobs_finished_total", state="cancelled") == cancelled


async def test_a_claim_observes_submit_to_running_and_log_batches_count_bytes_and_lines(
    api: httpx.AsyncClient, db: asyncpg.Connection, make_box: Callable[..., Awaitable[Box]]
) -> None:
    runs = sample("boxrun_job_submit_to_running_seconds_count")
    box = await make_box("bench-1")
    job = await claimed_job(api, db, box)
    assert sample("boxrun_job_submit_to_running_seconds_count") == runs + 1
    lines, size = sample("boxrun_log_ingest_lines_total"), sample("boxrun_log_ingest_bytes_total")
    body = batch(1, "one", "two", "three")
    resp = await box.agent.post(f"/api/agent/jobs/{job}/logs", content=body, headers=BATCH)
    assert resp.status_code == 200, resp.text
    assert sample("boxrun_log_ingest_lines_total") == lines + 3
    assert sample("boxrun_log_ingest_bytes_total") == size + len(body)
    refused = await box.agent.post(f"/api/agent/jobs/{job}/logs", content=b"not a batch\n", headers=BATCH)
    assert refused.status_code == 422
    assert sample("boxrun_log_ingest_lines_total") == lines + 3, "a refused batch is not ingested"
    finished = sample("boxrun_jobs_finished_total", state="completed")
    await transition(db, job, JobState.COMPLETED, exit_code=0)
    assert sample("boxrun_jobs_finished_total", state="completed") == finished + 1


async def test_jobs_waiting_per_box_and_group_are_counted_at_scrape_time(
    api: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    for target in ({"group": "gpu"}, {"group": "gpu"}, {"box": "bench-9"}):
        job = await add_job(db, **target)
        await transition(db, job, JobState.WAITING_FOR_BOX, waiting_reason="no box free")
    await add_job(db, group="gpu")  # queued, not waiting
    samples = await scrape()
    assert samples[("boxrun_jobs_waiting", (("kind", "group"), ("name", "gpu"), ("org", DEFAULT_ORG)))] == 2
    assert samples[("boxrun_jobs_waiting", (("kind", "box"), ("name", "bench-9"), ("org", DEFAULT_ORG)))] == 1


async def test_connected_agents_are_the_long_polls_held(
    app: FastAPI, api: httpx.AsyncClient, make_box: Callable[..., Awaitable[Box]]
) -> None:
    box = await make_box("bench-1")
    resp = await box.agent.post("/api/agent/session", json={"agent_version": "t", "slots": 1})
    headers = {"X-Boxrun-Session": resp.json()["session"]}
    before = sample("boxrun_connected_agents")
    poll = asyncio.create_task(box.agent.get("/api/agent/events", params={"wait": 3}, headers=headers))
    await wait_for(lambda: sample("boxrun_connected_agents") == before + 1, timeout=5, what="the long-poll held")
    assert (await poll).status_code == 200
    assert sample("boxrun_connected_agents") == before


@pytest.fixture
async def base_url(app: FastAPI) -> AsyncIterator[str]:
    """The test's app served by uvicorn on a free port (streams stay open while the test acts)."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, port=port, lifespan="off", log_level="warning"))
    task = asyncio.create_task(server.serve())
    await wait_for(lambda: server.started, timeout=10, what="uvicorn to start")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


async def test_open_sse_streams_are_followers(base_url: str, db: asyncpg.Connection) -> None:
    job = await add_job(db, group="g")  # queued: its stream stays open
    before = sample("boxrun_log_followers", kind="sse")
    async with httpx.AsyncClient(base_url=base_url, headers=ADMIN, timeout=30) as client:
        async with client.stream("GET", f"/api/jobs/{job}/logs/stream") as resp:
            assert resp.status_code == 200
            await wait_for(lambda: sample("boxrun_log_followers", kind="sse") == before + 1, timeout=5, what="+1")
    await wait_for(lambda: sample("boxrun_log_followers", kind="sse") == before, timeout=10, what="back to before")


async def test_open_websockets_are_followers(base_url: str, db: asyncpg.Connection) -> None:
    job = await add_job(db, group="g")  # queued: the socket stays open
    before = sample("boxrun_log_followers", kind="websocket")
    url = base_url.replace("http://", "ws://") + f"/api/jobs/{job}/logs/ws?after=0&token={ADMIN_TOKEN}"
    async with ws_connect(url):
        await wait_for(lambda: sample("boxrun_log_followers", kind="websocket") == before + 1, timeout=5, what="+1")
    await wait_for(
        lambda: sample("boxrun_log_followers", kind="websocket") == before, timeout=10, what="back to before"
    )


async def test_request_id_is_echoed_or_made(api: httpx.AsyncClient, anon: httpx.AsyncClient) -> None:
    given = await api.get("/api/jobs", headers={"X-Request-ID": "trace-42.a"})
    assert given.headers["x-request-id"] == "trace-42.a"
    made = await anon.get("/api/jobs")  # refused by the guard (401): still answered with an id
    assert made.status_code == 401 and len(made.headers["x-request-id"]) == 32
    wild = await api.get("/api/health", headers={"X-Request-ID": "x" * 200})
    assert wild.headers["x-request-id"] != "x" * 200, "an untame id is replaced"


async def test_metrics_are_served_on_their_own_port_only(settings: Settings, temporal_env: WorkflowEnvironment) -> None:
    port = free_port()
    async with running_app(app_settings(settings, temporal_env, api_metrics_port=port)) as app:
        async with app.state.pool.acquire() as db:
            job = await add_job(db, group="arm64")
            await transition(db, job, JobState.WAITING_FOR_BOX, waiting_reason="no box free")
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api", headers=ADMIN) as api:
            assert (await api.get("/metrics")).status_code == 404, "never on the API's own port"
        async with httpx.AsyncClient(timeout=10) as client:
            resp = await client.get(f"http://127.0.0.1:{port}/metrics")
        assert resp.status_code == 200
        samples = scrape_text(resp.text)
        assert {"boxrun_jobs_submitted_total", "boxrun_connected_agents", "process_cpu_seconds_total"} <= {
            name for name, _ in samples
        }
        # counted by the app's pool on its loop, asked from the metrics server's thread
        assert samples[("boxrun_jobs_waiting", (("kind", "group"), ("name", "arm64"), ("org", DEFAULT_ORG)))] == 1
    with pytest.raises(httpx.ConnectError):  # closed with the app
        async with httpx.AsyncClient(timeout=2) as client:
            await client.get(f"http://127.0.0.1:{port}/metrics")
