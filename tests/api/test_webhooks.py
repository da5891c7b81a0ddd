"""Webhooks on the real parts: the API in-process, a control worker running WebhookDeliveryWorkflow
in the test, and a real HTTP receiver (an asyncio server) that checks every signature."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import httpx
import pytest
from fastapi import FastAPI
from temporalio.client import Client
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError
from temporalio.testing import ActivityEnvironment, WorkflowEnvironment
from temporalio.worker import Worker

from boxrun.activities.control import ControlActivities
from boxrun.activities.reaper import ReaperActivities
from boxrun.activities.webhooks import WebhookActivities
from boxrun.api.app import create_app
from boxrun.constants import CONTROL_TASK_QUEUE, WEBHOOK_TASK_QUEUE, JobState, PipelineState, StepState
from boxrun.db import Q
from boxrun.errors import InvalidInput, NotFound
from boxrun.messages import DeliveryInput, FinishInput, RecordPipelineInput, RecordStepInput
from boxrun.schemas import JobCreate
from boxrun.sdk.aio import AsyncClient
from boxrun.services.identity import Role
from boxrun.services.pipelines import record_pipeline, record_step
from boxrun.services.submission import spec_hash
from boxrun.services.webhooks import delivery_body, workflow_id
from boxrun.settings import Settings
from boxrun.transitions import transition
from boxrun.webhook_target import verify
from boxrun.workflows.webhooks import WebhookDeliveryWorkflow
from tests.api.conftest import ADMIN_TOKEN, BASE_URL
from tests.api.helpers import assert_error
from tests.api.people_fixtures import add_org, add_user
from tests.api.test_cli import Cli, cli, one_line_error  # noqa: F401 (cli: the fixture)
from tests.api.test_pipelines import stored_pipeline

LOOPBACK = "127.0.0.0/8,::1/128"


# ---------------------------------------------------------------- a real receiver


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    at: float


@dataclass
class Receiver:
    """An HTTP/1.1 server on 127.0.0.1 that answers each POST with the next status of `answers`
    (200 once they run out) and keeps what it got."""

    answers: list[int]
    got: list[Received] = field(default_factory=list)
    port: int = 0
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook?src=boxrun"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            self.got.append(Received(headers, body, time.time()))
            status = self.answers.pop(0) if self.answers else 200
            text = b"nope" if status >= 300 else b"ok"
            writer.write(
                f"HTTP/1.1 {status} X\r\nContent-Length: {len(text)}\r\nConnection: close\r\n\r\n".encode() + text
            )
            await writer.drain()
            self.arrived.set()
        finally:
            writer.close()

    async def wait_for(self, n: int, timeout_s: float = 60.0) -> None:
        async with asyncio.timeout(timeout_s):
            while len(self.got) < n:
                self.arrived.clear()
                await self.arrived.wait()


@asynccontextmanager
async def receiver(answers: list[int]) -> AsyncIterator[Receiver]:
    rec = Receiver(list(answers))
    server = await asyncio.start_server(rec.handle, "127.0.0.1", 0)
    rec.port = server.sockets[0].getsockname()[1]
    try:
        yield rec
    finally:
        server.close()
        await server.wait_closed()


# ---------------------------------------------------------------- the app and a worker


def _client(app: FastAPI, token: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url=BASE_URL, headers={"Authorization": f"Bearer {token}"}
    )


@pytest.fixture
async def hooks_app(settings: Settings, temporal_env: WorkflowEnvironment) -> AsyncIterator[FastAPI]:
    """The API allowing loopback targets, as the dev stack does."""
    target = temporal_env.client.service_client.config.target_host
    app = create_app(
        settings.model_copy(
            update={"temporal_address": target, "api_token": ADMIN_TOKEN, "webhook_allow_networks": LOOPBACK}
        )
    )
    async with app.router.lifespan_context(app):
        yield app
        temporal: Client = app.state.temporal
        for row in await app.state.pool.fetch("SELECT id FROM webhook_deliveries"):
            with suppress(RPCError):
                await temporal.get_workflow_handle(workflow_id(str(row["id"]))).terminate("test over")


@pytest.fixture
async def hooks_api(hooks_app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with _client(hooks_app, ADMIN_TOKEN) as client:
        yield client


@asynccontextmanager
async def delivery_worker(app: FastAPI) -> AsyncIterator[None]:
    """WebhookDeliveryWorkflow and give_up_delivery on the control queue, the attempts on the
    webhook queue, as `boxrun worker` runs them."""
    hooks = WebhookActivities(app.state.pool, app.state.settings)
    control = Worker(
        app.state.temporal,
        task_queue=CONTROL_TASK_QUEUE,
        workflows=[WebhookDeliveryWorkflow],
        activities=hooks.control(),
    )
    attempts = Worker(app.state.temporal, task_queue=WEBHOOK_TASK_QUEUE, activities=hooks.delivery())
    async with control, attempts:
        yield


async def create_hook(api: httpx.AsyncClient, url: str, events: list[str]) -> dict[str, Any]:
    resp = await api.post("/api/webhooks", json={"url": url, "events": events})
    assert resp.status_code == 201, resp.text
    body: dict[str, Any] = resp.json()
    assert set(body) == {"id", "url", "events", "secret", "created_by", "created_at"}
    assert body["secret"].startswith("whsec_")
    return body


async def deliveries(api: httpx.AsyncClient, hook_id: str) -> list[dict[str, Any]]:
    resp = await api.get(f"/api/webhooks/{hook_id}/deliveries")
    assert resp.status_code == 200, resp.text
    data: list[dict[str, Any]] = resp.json()["data"]
    return data


async def wait_state(api: httpx.AsyncClient, hook_id: str, state: str, attempts: int, timeout_s: float = 30) -> dict:
    async with asyncio.timeout(timeout_s):
        while True:
            got = await deliveries(api, hook_id)
            if got and got[0]["state"] == state and len(got[0]["attempts"]) >= attempts:
                return got[0]
            await asyncio.sleep(0.2)


# ---------------------------------------------------------------- delivery, end to end


async def test_a_receiver_failing_twice_gets_three_signed_identical_attempts_then_a_redelivery(
    hooks_app: FastAPI, hooks_api: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    """The job's end (finish_job, the control activity JobWorkflow runs) writes the delivery in its
    transaction and starts its workflow after commit; the receiver answers 500, 500, 200: three
    attempts, one delivery id, the same bytes each time, each signed with the secret shown once."""
    async with receiver([500, 500]) as rec, delivery_worker(hooks_app):
        hook = await create_hook(hooks_api, rec.url, ["job.cancelled", "job.failed"])
        job_id = await insert_queued_job(db, "admin")
        control = ControlActivities(hooks_app.state.pool, hooks_app.state.storage)
        await ActivityEnvironment(client=hooks_app.state.temporal).run(
            control.finish_job, FinishInput(job_id=job_id, to_state=JobState.CANCELLED, error="stop")
        )
        await rec.wait_for(3)
        done = await wait_state(hooks_api, hook["id"], "delivered", 3)

        assert [a["status_code"] for a in done["attempts"]] == [500, 500, 200]
        assert [a["error"] for a in done["attempts"]] == ["HTTP 500", "HTTP 500", None]
        assert done["attempts"][0]["response"] == "nope" and done["attempts"][2]["response"] == "ok"
        assert all(a["duration_ms"] >= 0 for a in done["attempts"])
        assert (done["event"], done["subject"]) == ("job.cancelled", job_id)
        ids = {r.headers["x-boxrun-delivery"] for r in rec.got}
        assert ids == {done["id"]}
        assert len({r.body for r in rec.got}) == 1  # identical bytes on every retry
        # retried with the policy's backoff (5 s, then 10 s)
        assert rec.got[1].at - rec.got[0].at >= 4 and rec.got[2].at - rec.got[1].at >= 9
        for r in rec.got:
            assert r.headers["x-boxrun-event"] == "job.cancelled"
            assert r.headers["content-type"] == "application/json"
            assert verify(hook["secret"], r.headers["x-boxrun-signature"], r.body, now=time.time())
        body = json.loads(rec.got[0].body)
        assert set(body) == {"id", "event", "created_at", "data"}
        assert body["id"] == done["id"] and body["event"] == "job.cancelled"
        shown = (await hooks_api.get(f"/api/jobs/{job_id}")).json()
        assert body["data"] == shown  # the job as GET /api/jobs/{id} shows it
        # nothing of the webhook in Temporal: the workflow's payloads name the delivery only
        history = await hooks_app.state.temporal.get_workflow_handle(workflow_id(done["id"])).fetch_history()
        text = history.to_json()
        payloads = [base64.b64decode(b).decode("utf-8", "replace") for b in re.findall(r'"data": ?"([^"]*)"', text)]
        assert any(done["id"] in p for p in payloads)  # the payloads were read
        for secret_or_target in (hook["secret"], rec.url, '"data":{'):
            assert secret_or_target not in text and not any(secret_or_target in p for p in payloads)

        # a redelivery: a new run of the same delivery (same id, same body, a fresh signature)
        resp = await hooks_api.post(f"/api/webhooks/{hook['id']}/deliveries/{done['id']}/redeliver")
        assert resp.status_code == 202, resp.text
        assert resp.json()["id"] == done["id"] and resp.json()["state"] == "pending"
        await rec.wait_for(4)
        again = await wait_state(hooks_api, hook["id"], "delivered", 4)
        assert again["id"] == done["id"] and len(again["attempts"]) == 4
        assert rec.got[3].body == rec.got[0].body and rec.got[3].headers["x-boxrun-delivery"] == done["id"]
        assert verify(hook["secret"], rec.got[3].headers["x-boxrun-signature"], rec.got[3].body, now=time.time())
    actions = [r["action"] for r in await db.fetch("SELECT action FROM audit_log WHERE action LIKE 'webhook.%'")]
    assert actions == ["webhook.create", "webhook.redeliver"]


async def insert_queued_job(db: asyncpg.Connection, owner: str) -> str:
    """A queued job row as submission writes it (no workflow), that a test then ends."""
    job_id = str(uuid.uuid4())
    spec = JobCreate(box="nobox", script="echo hi").frozen_spec()
    await db.execute(
        Q.insert_job, job_id, "default", owner, "nobox", None, [], spec, spec_hash(spec), 60, False, 0, None, 10, None
    )
    await db.execute(Q.insert_first_event, "default", job_id, {"owner": owner})
    return job_id


async def test_a_failing_receiver_ends_failed_when_the_webhook_is_deleted(
    hooks_app: FastAPI, hooks_api: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    """A webhook deleted while its delivery retries: the next attempt stops it (non-retryable), and
    its deliveries are gone with it (404)."""
    async with receiver([503] * 10) as rec:
        hook = await create_hook(hooks_api, rec.url, ["job.failed"])
        job_id = await insert_queued_job(db, "admin")
        await transition(db, job_id, JobState.FAILED, exit_code=1, error="boom")
        (row,) = await db.fetch("SELECT * FROM webhook_deliveries")
        hooks = WebhookActivities(hooks_app.state.pool, hooks_app.state.settings)
        env = ActivityEnvironment()
        with pytest.raises(ApplicationError, match="HTTP 503") as err:
            await env.run(hooks.deliver_webhook, DeliveryInput(delivery_id=str(row["id"])))
        assert not err.value.non_retryable
        assert len(rec.got) == 1
        resp = await hooks_api.delete(f"/api/webhooks/{hook['id']}")
        assert resp.status_code == 204, resp.text
        with pytest.raises(ApplicationError, match="deleted") as err:
            await env.run(hooks.deliver_webhook, DeliveryInput(delivery_id=str(row["id"])))
        assert err.value.non_retryable and err.value.type == "WebhookGone"
        assert len(rec.got) == 1
    assert_error(await hooks_api.get(f"/api/webhooks/{hook['id']}/deliveries"), 404, "not_found")
    assert_error(await hooks_api.get(f"/api/webhooks/{hook['id']}"), 404, "not_found")
    assert_error(await hooks_api.delete(f"/api/webhooks/{hook['id']}"), 404, "not_found")
    audit = await db.fetch("SELECT action, detail FROM audit_log WHERE action LIKE 'webhook.%' ORDER BY id")
    assert [a["action"] for a in audit] == ["webhook.create", "webhook.delete"]
    assert all(hook["secret"] not in json.dumps(a["detail"]) for a in audit)
    assert [a["detail"]["target"] for a in audit] == [f"http://127.0.0.1:{rec.port}"] * 2  # no path or query


async def test_a_target_refused_at_delivery_is_an_attempt_with_the_reason(
    hooks_app: FastAPI, hooks_api: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    """Created while loopback was allowed, delivered by a worker that does not allow it: refused
    at the delivery (the address is checked at every attempt), recorded, retryable."""
    hook = await create_hook(hooks_api, "http://localhost:9/hook", ["job.failed"])
    job_id = await insert_queued_job(db, "admin")
    await transition(db, job_id, JobState.FAILED, exit_code=1, error="boom")
    (row,) = await db.fetch("SELECT * FROM webhook_deliveries")
    strict = hooks_app.state.settings.model_copy(update={"webhook_allow_networks": ""})
    with pytest.raises(ApplicationError, match="webhook target refused: localhost resolves to") as err:
        await ActivityEnvironment().run(
            WebhookActivities(hooks_app.state.pool, strict).deliver_webhook, DeliveryInput(delivery_id=str(row["id"]))
        )
    assert not err.value.non_retryable
    (got,) = await deliveries(hooks_api, hook["id"])
    assert got["state"] == "pending" and got["attempts"][0]["status_code"] is None
    assert "loopback address" in got["attempts"][0]["error"]


# ---------------------------------------------------------------- events


async def test_pipeline_and_box_events_are_written_with_the_change(
    hooks_app: FastAPI, hooks_api: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    hook = await create_hook(
        hooks_api, "http://127.0.0.1:9/x", ["pipeline.cancelled", "box.online", "box.offline", "job.completed"]
    )
    # a pipeline's terminal state: its delivery, written by the trigger in that transaction
    pipeline_id = await stored_pipeline(db, "default", "admin", "b1")
    await record_step(db, RecordStepInput(pipeline_id=pipeline_id, step="a", state=StepState.CANCELLED))
    await record_pipeline(db, RecordPipelineInput(pipeline_id=pipeline_id, state=PipelineState.CANCELLED))
    (p,) = await db.fetch("SELECT * FROM webhook_deliveries WHERE subject = $1", pipeline_id)
    assert p["event"] == "pipeline.cancelled" and p["state"] == "pending"
    body = json.loads(await delivery_body(db, hooks_app.state.settings, p))
    assert body["data"] == (await hooks_api.get(f"/api/pipelines/{pipeline_id}")).json()
    # an event nobody subscribed to writes nothing; a job that ended once is not announced twice
    job_id = await insert_queued_job(db, "admin")
    await transition(db, job_id, JobState.CANCELLED, error="stop")
    assert await db.fetchval("SELECT count(*) FROM webhook_deliveries WHERE subject = $1", job_id) == 0

    # boxes: the liveness sweep flips them and writes box.online / box.offline
    resp = await hooks_api.post("/api/boxes", json={"name": "hooked"})
    assert resp.status_code == 201, resp.text
    async with _client(hooks_app, resp.json()["node_token"]) as agent:
        assert (await agent.post("/api/agent/heartbeat", json={"agent_version": "t"})).status_code == 200
    reaper = ReaperActivities(hooks_app.state.pool, hooks_app.state.settings)
    env = ActivityEnvironment(client=hooks_app.state.temporal)
    result = await env.run(reaper.reap)
    assert result.boxes_flipped >= 1
    await db.execute("UPDATE boxes SET last_seen_at = now() - interval '1 hour' WHERE name = 'hooked'")
    await env.run(reaper.reap)
    await env.run(reaper.reap)  # nothing changed: nothing more
    rows = await db.fetch("SELECT * FROM webhook_deliveries WHERE subject = 'hooked' ORDER BY created_at")
    assert [r["event"] for r in rows] == ["box.online", "box.offline"]
    assert all(r["run_started_at"] is not None for r in rows)  # the sweep started their workflows
    body = json.loads(await delivery_body(db, hooks_app.state.settings, rows[1]))
    assert body["data"]["name"] == "hooked" and body["data"]["status"] == "offline"
    # the pipeline's delivery, written without a workflow start (no control activity ended it),
    # is started by the sweep once it is older than webhook_start_grace_s
    await db.execute("UPDATE webhook_deliveries SET created_at = now() - interval '1 minute' WHERE id = $1", p["id"])
    result = await env.run(reaper.reap)
    assert result.deliveries_started == 1
    assert await db.fetchval("SELECT run_started_at FROM webhook_deliveries WHERE id = $1", p["id"]) is not None
    got = await deliveries(hooks_api, hook["id"])
    assert {d["event"] for d in got} == {"pipeline.cancelled", "box.online", "box.offline"}


# ---------------------------------------------------------------- refusals, secrets, access


@pytest.mark.parametrize(
    ("url", "detail"),
    [
        ("http://10.0.0.1/hook", "10.0.0.1 a private address"),
        ("http://169.254.169.254/latest/meta-data/", "169.254.169.254 a link-local address"),
        ("http://[::1]:8080/hook", "::1 a loopback address"),
        ("http://localhost:8080/hook", "localhost resolves to"),
        ("http://0.0.0.0/", "an unspecified address"),
        ("ftp://example.com/", "http:// or https://"),
        ("http://user:pw@example.com/", "user or password"),
        ("http://example.com/\u0000x", "NUL"),
        ("https://example.com/" + "a" * 3000, "2048"),
    ],
)
async def test_refused_targets_are_422_with_the_reason(api: httpx.AsyncClient, url: str, detail: str) -> None:
    """The default settings (no allowed networks): private, loopback, link-local targets are
    refused at creation, literal or resolved; malformed URLs too. Never a 500."""
    resp = await api.post("/api/webhooks", json={"url": url, "events": ["job.failed"]})
    body = assert_error(resp, 422, "invalid_input", field="body.url")
    assert detail.lower() in json.dumps(body).lower(), body


async def test_bad_bodies_are_422(api: httpx.AsyncClient) -> None:
    for bad in (
        {"url": "http://93.184.216.34/", "events": []},
        {"url": "http://93.184.216.34/", "events": ["job.exploded"]},
        {"url": "http://93.184.216.34/", "events": ["job.failed", "job.failed"]},
        {"url": "http://93.184.216.34/"},
        {"url": 5, "events": ["job.failed"]},
        {"url": "http://93.184.216.34/", "events": ["job.failed"], "secret": "mine"},
    ):
        assert_error(await api.post("/api/webhooks", json=bad), 422, "invalid_input")
    for bad_id in ("nope", str(uuid.uuid4())):
        assert_error(await api.get(f"/api/webhooks/{bad_id}"), 404, "not_found")
        assert_error(await api.delete(f"/api/webhooks/{bad_id}"), 404, "not_found")


async def test_the_secret_is_shown_once_and_stored_sealed(
    api: httpx.AsyncClient, db: asyncpg.Connection, app: FastAPI
) -> None:
    created = (
        await api.post("/api/webhooks", json={"url": "http://93.184.216.34/in", "events": ["job.failed"]})
    ).json()
    listed = (await api.get("/api/webhooks")).json()
    one = (await api.get(f"/api/webhooks/{created['id']}")).json()
    assert listed == {"data": [one]} and "secret" not in one
    assert one == {k: v for k, v in created.items() if k != "secret"}
    sealed = await db.fetchval("SELECT secret_sealed FROM webhooks")
    assert created["secret"].encode() not in sealed
    assert app.state.settings.secret_box().open(sealed) == created["secret"]
    assert created["secret"] not in json.dumps([dict(r) for r in await db.fetch("SELECT detail FROM audit_log")])


async def test_admins_only_and_other_orgs_see_nothing(app: FastAPI, db: asyncpg.Connection) -> None:
    await add_org(db, "acme")
    admin = await add_user(db, "acme-admin", "acme", Role.ADMIN)
    operator = await add_user(db, "acme-op", "acme", Role.OPERATOR)
    other = await add_user(db, "beta-admin", "default", Role.ADMIN)
    async with _client(app, admin.token) as a, _client(app, operator.token) as op, _client(app, other.token) as b:
        hook = (await a.post("/api/webhooks", json={"url": "http://93.184.216.34/", "events": ["box.offline"]})).json()
        for method, path in (
            ("GET", "/api/webhooks"),
            ("POST", "/api/webhooks"),
            ("GET", f"/api/webhooks/{hook['id']}"),
            ("DELETE", f"/api/webhooks/{hook['id']}"),
            ("GET", f"/api/webhooks/{hook['id']}/deliveries"),
        ):
            kwargs: dict[str, Any] = {"json": {"url": "http://93.184.216.34/", "events": ["job.failed"]}}
            resp = await op.request(method, path, **(kwargs if method == "POST" else {}))
            assert_error(resp, 403, "forbidden", detail="needs the admin role")
        assert (await b.get("/api/webhooks")).json() == {"data": []}
        for method, path in (
            ("GET", f"/api/webhooks/{hook['id']}"),
            ("DELETE", f"/api/webhooks/{hook['id']}"),
            ("GET", f"/api/webhooks/{hook['id']}/deliveries"),
            ("POST", f"/api/webhooks/{hook['id']}/deliveries/{uuid.uuid4()}/redeliver"),
        ):
            assert_error(await b.request(method, path), 404, "not_found")
        assert (await a.get(f"/api/webhooks/{hook['id']}")).status_code == 200


async def test_deliveries_page_newest_first(api: httpx.AsyncClient, db: asyncpg.Connection) -> None:
    hook = (await api.post("/api/webhooks", json={"url": "http://93.184.216.34/", "events": ["job.failed"]})).json()
    for i in range(5):
        await db.execute(
            "INSERT INTO webhook_deliveries (id, webhook_id, org_id, event, subject, created_at)"
            " VALUES ($1, $2, 'default', 'job.failed', $3, now() - make_interval(secs => $4))",
            uuid.uuid4(),
            uuid.UUID(hook["id"]),
            f"s{i}",
            float(i),
        )
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = (await api.get(f"/api/webhooks/{hook['id']}/deliveries", params=params)).json()
        seen += [d["subject"] for d in page["data"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ["s0", "s1", "s2", "s3", "s4"]
    resp = await api.get(f"/api/webhooks/{hook['id']}/deliveries", params={"cursor": "bogus"})
    assert_error(resp, 422, "invalid_input", field="query.cursor")


# ---------------------------------------------------------------- SDK and CLI


async def test_sdk_webhooks(app: FastAPI, db: asyncpg.Connection) -> None:
    async with _client(app, ADMIN_TOKEN) as http, AsyncClient(http=http) as client:
        made = await client.webhooks.create("http://93.184.216.34/sdk", ["job.failed", "box.offline"])
        assert made.secret.startswith("whsec_") and made.events == ["job.failed", "box.offline"]
        assert [w.id for w in await client.webhooks.list()] == [made.id]
        assert (await client.webhooks.get(made.id)).url == "http://93.184.216.34/sdk"
        for i in range(3):
            await db.execute(
                "INSERT INTO webhook_deliveries (id, webhook_id, org_id, event, subject, state)"
                " VALUES ($1, $2, 'default', 'box.offline', $3, 'failed')",
                uuid.uuid4(),
                uuid.UUID(made.id),
                f"box-{i}",
            )
        got = [d async for d in client.webhooks.deliveries(made.id, page_size=2)]
        assert len(got) == 3 and {d.subject for d in got} == {"box-0", "box-1", "box-2"}
        assert len([d async for d in client.webhooks.deliveries(made.id, limit=1)]) == 1
        with pytest.raises(InvalidInput, match="private address"):
            await client.webhooks.create("http://10.0.0.1/", ["job.failed"])
        await client.webhooks.delete(made.id)
        with pytest.raises(NotFound):
            await client.webhooks.get(made.id)


async def test_cli_webhooks(cli: Cli, db: asyncpg.Connection) -> None:  # noqa: F811
    out = await cli("webhooks", "create", "http://93.184.216.34/cli", "--event", "job.failed", "-e", "job.completed")
    assert out.code == 0, out.stderr
    secret = out.stdout.strip()
    assert secret.startswith("whsec_") and "shown this once" in out.stderr
    (listed,) = (await cli("webhooks", "--json")).json()
    assert listed["url"] == "http://93.184.216.34/cli" and "secret" not in listed
    assert secret not in (await cli("webhooks", "ls")).stdout
    await db.execute(
        "INSERT INTO webhook_deliveries (id, webhook_id, org_id, event, subject) VALUES ($1, $2, 'default', $3, $4)",
        uuid.uuid4(),
        uuid.UUID(listed["id"]),
        "job.failed",
        "the-subject",
    )
    out = await cli("webhooks", "deliveries", listed["id"])
    assert out.code == 0 and "the-subject" in out.stdout and "pending" in out.stdout, out
    assert (await cli("webhooks", "show", listed["id"], "--json")).json() == listed
    refused = await cli("webhooks", "create", "http://169.254.169.254/", "-e", "job.failed")
    one_line_error(refused, "link-local")
    assert (await cli("webhooks", "rm", listed["id"])).code == 0
    one_line_error(await cli("webhooks", "show", listed["id"]), "not found")
