"""Organisation secrets in-process (docs/secrets.md): PUT/GET/DELETE /api/secrets and who may call
them, bad input, references checked at submission (jobs, pipelines, reruns), the frozen spec
keeping the reference, and the bundle: the value and its mask only for the claiming box, a secret
deleted since the submission failing the job at its claim, and no value in the Temporal history."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import httpx
import pytest
from fastapi import FastAPI
from temporalio.worker import Worker

from boxrun.activities.control import ControlActivities
from boxrun.activities.dispatch import DispatchActivities
from boxrun.activities.pipeline import PipelineActivities
from boxrun.constants import CONTROL_TASK_QUEUE
from boxrun.workflows.job import JobWorkflow
from boxrun.workflows.pipeline import PipelineWorkflow
from boxrun.workflows.step import StepWorkflow
from tests.api.conftest import BASE_URL
from tests.api.helpers import Box, assert_error
from tests.api.people_fixtures import add_org, add_user
from tests.api.test_agent import session
from tests.conftest import wait_for

VALUE = "pa55-w0rd-of-the-lab"
OTHER = "an0ther-v4lue-entirely"
REF = "${{ secrets.DB_PASSWORD }}"


def client(app: FastAPI, token: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url=BASE_URL, headers={"Authorization": f"Bearer {token}"}
    )


@pytest.fixture(autouse=True)
def every_log_line(caplog: pytest.LogCaptureFixture) -> None:
    """Every log record of the test is kept, so a test can check none holds a value."""
    caplog.set_level(logging.DEBUG)


def no_value_logged(caplog: pytest.LogCaptureFixture, *values: str) -> None:
    for record in caplog.records:
        text = record.getMessage()
        assert not any(v in text for v in values), f"a secret value in a log line: {record.name}"


async def put(api: httpx.AsyncClient, name: str, value: str) -> None:
    resp = await api.put(f"/api/secrets/{name}", json={"value": value})
    assert resp.status_code == 204, resp.text
    assert resp.content == b""


# ---------------------------------------------------------------- PUT, GET, DELETE


async def test_put_list_replace_delete(
    api: httpx.AsyncClient, db: asyncpg.Connection, caplog: pytest.LogCaptureFixture
) -> None:
    assert (await api.get("/api/secrets")).json() == {"data": []}
    await put(api, "DB_PASSWORD", VALUE)
    await put(api, "API_TOKEN", OTHER)
    listed = (await api.get("/api/secrets")).json()["data"]
    assert [s["name"] for s in listed] == ["API_TOKEN", "DB_PASSWORD"]
    assert set(listed[0]) == {"name", "created_at", "updated_at", "updated_by"}
    assert listed[0]["updated_by"] == "admin"
    first = listed[1]
    await put(api, "DB_PASSWORD", OTHER + "-2")  # replace
    again = {s["name"]: s for s in (await api.get("/api/secrets")).json()["data"]}
    assert again["DB_PASSWORD"]["created_at"] == first["created_at"]
    assert again["DB_PASSWORD"]["updated_at"] > first["updated_at"]
    # sealed at rest: the row holds no plain text, and the configured key opens it
    sealed = await db.fetchval("SELECT sealed FROM secrets WHERE name = 'API_TOKEN'")
    assert OTHER.encode() not in sealed
    from boxrun.settings import Settings

    assert Settings().secret_box().open(sealed) == OTHER
    resp = await api.delete("/api/secrets/API_TOKEN")
    assert resp.status_code == 204, resp.text
    assert [s["name"] for s in (await api.get("/api/secrets")).json()["data"]] == ["DB_PASSWORD"]
    assert_error(await api.delete("/api/secrets/API_TOKEN"), 404, "not_found", detail="secret API_TOKEN not found")
    # audited by name, in order; never a value
    audit = await api.get("/api/audit", params={"action": "secret.*"})
    rows = [(r["action"], r["actor"], r["detail"]) for r in reversed(audit.json()["data"])]
    assert rows == [
        ("secret.put", "admin", {"name": "DB_PASSWORD", "created": True}),
        ("secret.put", "admin", {"name": "API_TOKEN", "created": True}),
        ("secret.put", "admin", {"name": "DB_PASSWORD", "created": False}),
        ("secret.delete", "admin", {"name": "API_TOKEN"}),
    ]
    assert VALUE not in audit.text and OTHER not in audit.text
    no_value_logged(caplog, VALUE, OTHER)


async def test_roles(app: FastAPI, api: httpx.AsyncClient, db: asyncpg.Connection) -> None:
    await add_org(db, "acme")
    people = {role: await add_user(db, f"acme-{role}", "acme", role) for role in ("viewer", "operator", "admin")}
    async with client(app, people["admin"].token) as admin:
        resp = await admin.put("/api/secrets/X_KEY", json={"value": VALUE})
        assert resp.status_code == 204, resp.text
    async with client(app, people["viewer"].token) as viewer:
        assert_error(await viewer.get("/api/secrets"), 403, "forbidden", detail="needs the operator role")
    async with client(app, people["operator"].token) as operator:
        listed = await operator.get("/api/secrets")
        assert [s["name"] for s in listed.json()["data"]] == ["X_KEY"]
        assert listed.json()["data"][0]["updated_by"] == "acme-admin"
        for resp in (
            await operator.put("/api/secrets/X_KEY", json={"value": "mine"}),
            await operator.delete("/api/secrets/X_KEY"),
        ):
            assert_error(resp, 403, "forbidden", detail="needs the admin role")


async def test_secrets_are_per_org(app: FastAPI, api: httpx.AsyncClient, db: asyncpg.Connection) -> None:
    """Org B's admin neither sees nor deletes org A's secret; its PUT of the same name makes org
    B's own, and org B's jobs cannot refer to org A's."""
    await add_org(db, "acme")
    await add_org(db, "beta")
    a = await add_user(db, "acme-admin", "acme", "admin")
    b = await add_user(db, "beta-admin", "beta", "admin")
    async with client(app, a.token) as ca, client(app, b.token) as cb:
        await put(ca, "SHARED_NAME", VALUE)
        await put(ca, "ACME_ONLY", VALUE)
        assert (await cb.get("/api/secrets")).json() == {"data": []}
        assert_error(await cb.delete("/api/secrets/ACME_ONLY"), 404, "not_found")
        await put(cb, "SHARED_NAME", OTHER)
        assert [s["updated_by"] for s in (await ca.get("/api/secrets")).json()["data"]] == ["acme-admin"] * 2
        assert [s["name"] for s in (await cb.get("/api/secrets")).json()["data"]] == ["SHARED_NAME"]
        assert (await cb.post("/api/boxes", json={"name": "beta-box"})).status_code == 201
        resp = await cb.post(
            "/api/jobs", json={"box": "beta-box", "script": "x", "env": {"K": "${{ secrets.ACME_ONLY }}"}}
        )
        assert_error(resp, 422, "invalid_input", detail="refers to secret ACME_ONLY", field="env.K")
    # the platform admin (org default) is an outsider too
    assert (await api.get("/api/secrets")).json() == {"data": []}


async def test_bad_input_is_422_and_never_echoes_the_value(api: httpx.AsyncClient) -> None:
    cases: list[tuple[str, Any, str]] = [
        ("lower", {"value": "v"}, "path.name"),
        ("9STARTS_WITH_A_DIGIT", {"value": "v"}, "path.name"),
        ("HAS-DASH", {"value": "v"}, "path.name"),
        ("A" * 129, {"value": "v"}, "path.name"),
        ("OK_NAME", {"value": "nul\u0000" + VALUE}, "body.value"),
        ("OK_NAME", {"value": ""}, "body.value"),
        ("OK_NAME", {"value": VALUE * 4000}, "body.value"),  # 80 000 bytes, over 64 KiB
        ("OK_NAME", {"value": 12345}, "body.value"),
        ("OK_NAME", {}, "body.value"),
        ("OK_NAME", {"value": VALUE, "note": "x"}, "body.note"),
    ]
    for name, body, field in cases:
        resp = await api.put(f"/api/secrets/{name}", json=body)
        assert_error(resp, 422, "invalid_input", field=field)
        assert VALUE not in resp.text
    # a lone surrogate (JSON's \ud800 escape) is no text
    raw = b'{"value": "\\ud800' + VALUE.encode() + b'"}'
    resp = await api.put("/api/secrets/OK_NAME", content=raw, headers={"Content-Type": "application/json"})
    assert_error(resp, 422, "invalid_input", field="body.value")
    assert VALUE not in resp.text
    assert_error(await api.delete("/api/secrets/lower"), 422, "invalid_input", field="path.name")
    # exactly 64 KiB is taken (multi-byte characters counted as UTF-8)
    await put(api, "BIG", "é" * (32 * 1024))
    resp = await api.put("/api/secrets/BIG", json={"value": "é" * (32 * 1024) + "x"})
    assert_error(resp, 422, "invalid_input", detail="at most 65536 bytes", field="body.value")
    # a body over the API's bound: 413 before it is read
    resp = await api.put("/api/secrets/HUGE", json={"value": "x" * (2 << 20)})
    assert_error(resp, 413, "too_large")
    assert [s["name"] for s in (await api.get("/api/secrets")).json()["data"]] == ["BIG"]


# ---------------------------------------------------------------- references at submission


@pytest.fixture
async def sbox(make_box: Callable[..., Awaitable[Box]]) -> Box:
    return await make_box("sbox")


async def test_an_unknown_reference_is_422_naming_the_key_and_the_secret(api: httpx.AsyncClient, sbox: Box) -> None:
    await put(api, "KNOWN", VALUE)
    job = {"box": "sbox", "script": "echo"}
    resp = await api.post(
        "/api/jobs", json={**job, "env": {"OK": "${{ secrets.KNOWN }}", "URL": "u:${{secrets.NOPE}}@h"}}
    )
    body = assert_error(resp, 422, "invalid_input", field="env.URL")
    assert body["detail"].startswith("env URL refers to secret NOPE, which org default does not have")
    resp = await api.post("/api/jobs", json={**job, "env": {"BAD": "${{ secrets.lower }}"}})
    assert_error(resp, 422, "invalid_input", detail="a secret name is", field="env.BAD")
    # a pipeline: the step is named, the pipeline env counts (merged into each step)
    resp = await api.post(
        "/api/pipelines",
        json={"env": {"TOKEN": "${{ secrets.MISSING }}"}, "steps": {"build": {"box": "sbox", "script": "true"}}},
    )
    body = assert_error(resp, 422, "invalid_input", field="body.steps.build.env.TOKEN")
    assert body["detail"].startswith("step 'build': env TOKEN refers to secret MISSING")
    resp = await api.post(
        "/api/pipelines", json={"steps": {"s": {"box": "sbox", "script": "true", "env": {"P": "${{ secrets.KNOWN }}"}}}}
    )
    assert resp.status_code == 201, resp.text
    # nothing half-written
    assert (await api.get("/api/jobs")).json()["count"] == 0


async def test_the_spec_keeps_the_reference_and_a_rerun_is_checked_again(api: httpx.AsyncClient, sbox: Box) -> None:
    await put(api, "DB_PASSWORD", VALUE)
    env = {"DB_PASSWORD": REF, "DSN": f"postgres://app:{REF}@db/app", "PLAIN": "p"}
    resp = await api.post("/api/jobs", json={"box": "sbox", "script": "echo", "env": env})
    assert resp.status_code == 201, resp.text
    job_id = resp.json()["id"]
    spec = await api.get(f"/api/jobs/{job_id}/spec")
    assert spec.json()["env"] == env
    for path in (f"/api/jobs/{job_id}", f"/api/jobs/{job_id}/spec", f"/api/jobs/{job_id}/events", "/api/jobs"):
        assert VALUE not in (await api.get(path)).text, path
    rerun = await api.post(f"/api/jobs/{job_id}/rerun")
    assert rerun.status_code == 201, rerun.text
    assert (await api.delete("/api/secrets/DB_PASSWORD")).status_code == 204
    resp = await api.post(f"/api/jobs/{job_id}/rerun")
    # (the stored spec is jsonb: keys come back shortest first, so DSN is the first key checked)
    assert_error(resp, 422, "invalid_input", detail="env DSN refers to secret DB_PASSWORD", field="env.DSN")


# ---------------------------------------------------------------- the bundle, with the real engine


@pytest.fixture
async def control_worker(app: FastAPI) -> AsyncIterator[None]:
    """The control worker in-process (as `boxrun worker` builds it): jobs are placed and offered
    to boxes for real; the test plays the box's agent through the API."""
    pool, settings = app.state.pool, app.state.settings
    control = ControlActivities(pool, app.state.storage, offline_after_s=settings.box_offline_after_s)
    dispatch = DispatchActivities(pool, claim_timeout_s=settings.dispatch_timeout_s)
    pipeline = PipelineActivities(pool, settings)
    async with Worker(
        app.state.temporal,
        task_queue=CONTROL_TASK_QUEUE,
        workflows=[JobWorkflow, PipelineWorkflow, StepWorkflow],
        activities=[*control.all(), *dispatch.all(), *pipeline.all()],
    ):
        yield


async def offered(api: httpx.AsyncClient, box: Box, env: dict[str, str]) -> tuple[str, dict[str, str]]:
    """A job submitted with `env`, offered to `box` by its workflow; (job id, agent session header)."""
    resp = await api.post("/api/jobs", json={"box": box.name, "script": "echo hi", "env": env})
    assert resp.status_code == 201, resp.text
    job_id = resp.json()["id"]
    headers = await session(box)

    async def offer() -> bool:
        got = await box.agent.get("/api/agent/events", params={"wait": 1}, headers=headers)
        return {"kind": "offer", "job_id": job_id} in got.json()["events"]

    await wait_for(offer, timeout=30, what="the offer")
    return job_id, headers


async def history_bytes(app: FastAPI, job_id: str) -> bytes:
    """The job workflow's whole history as protobuf bytes (payloads hold their raw JSON)."""
    history = await app.state.temporal.get_workflow_handle(job_id).fetch_history()
    return b"".join(event.SerializeToString() for event in history.events)


async def ended(api: httpx.AsyncClient, job_id: str) -> dict[str, Any]:
    async def done() -> dict[str, Any] | None:
        job: dict[str, Any] = (await api.get(f"/api/jobs/{job_id}")).json()
        return job if job["state"] in ("completed", "failed", "cancelled", "timed_out") else None

    result: dict[str, Any] = await wait_for(done, timeout=30, what=f"job {job_id} to end")
    return result


async def test_the_bundle_carries_values_and_mask_only_for_the_claiming_box(
    app: FastAPI,
    api: httpx.AsyncClient,
    make_box: Callable[..., Awaitable[Box]],
    control_worker: None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    box = await make_box("sbox")
    other = await make_box("other-box")
    multi = "-----BEGIN KEY-----\nabcdefgh\n-----END KEY-----"
    await put(api, "DB_PASSWORD", VALUE)
    await put(api, "KEY_FILE", multi)
    await put(api, "UNUSED", OTHER)
    env = {"DB_PASSWORD": REF, "DSN": f"postgres://app:{REF}@db", "KEY": "${{ secrets.KEY_FILE }}", "PLAIN": "p"}
    job_id, headers = await offered(api, box, env)
    # another box's token: the job does not exist for it, claimed or not
    other_headers = await session(other)
    assert_error(await other.agent.post(f"/api/agent/jobs/{job_id}/claim", headers=other_headers), 404, "not_found")
    assert_error(await other.agent.get(f"/api/agent/jobs/{job_id}/bundle"), 404, "not_found")
    resp = await box.agent.post(f"/api/agent/jobs/{job_id}/claim", headers=headers)
    assert resp.status_code == 200, resp.text
    bundle = resp.json()["bundle"]
    assert bundle["env"] == {"DB_PASSWORD": VALUE, "DSN": f"postgres://app:{VALUE}@db", "KEY": multi, "PLAIN": "p"}
    assert bundle["mask"] == [multi, VALUE]  # the values this job uses, longest first; not UNUSED's
    again = await box.agent.get(f"/api/agent/jobs/{job_id}/bundle")
    assert again.status_code == 200 and again.json() == bundle
    assert_error(await other.agent.get(f"/api/agent/jobs/{job_id}/bundle"), 404, "not_found")
    # the users' side still shows the reference only
    assert (await api.get(f"/api/jobs/{job_id}/spec")).json()["env"] == env
    resp = await box.agent.post(f"/api/agent/jobs/{job_id}/result", json={"exit_code": 0})
    assert resp.status_code == 204, resp.text
    assert (await ended(api, job_id))["state"] == "completed"
    # nothing in Temporal: no value in any workflow or activity payload
    history = await history_bytes(app, job_id)
    assert job_id.encode() in history  # (the bytes do hold the payloads)
    for secret in (VALUE, "abcdefgh", OTHER):
        assert secret.encode() not in history
    no_value_logged(caplog, VALUE, "abcdefgh", OTHER)


async def test_a_secret_deleted_since_submission_fails_the_job_at_its_claim(
    app: FastAPI,
    api: httpx.AsyncClient,
    db: asyncpg.Connection,
    make_box: Callable[..., Awaitable[Box]],
    control_worker: None,
) -> None:
    box = await make_box("sbox")
    await put(api, "DB_PASSWORD", VALUE)
    await put(api, "STAYS", OTHER)
    job_id, headers = await offered(api, box, {"A": "${{ secrets.STAYS }}", "B": REF})
    assert (await api.delete("/api/secrets/DB_PASSWORD")).status_code == 204
    resp = await box.agent.post(f"/api/agent/jobs/{job_id}/claim", headers=headers)
    assert_error(resp, 409, "conflict", detail="secret DB_PASSWORD no longer exists")
    assert OTHER not in resp.text
    job = await ended(api, job_id)
    assert (job["state"], job["error"], job["started_at"]) == ("failed", "secret DB_PASSWORD no longer exists", None)
    # no half state: never running, the dispatch closed, the lease released, no bundle
    states = [e["to_state"] for e in (await api.get(f"/api/jobs/{job_id}/events")).json()["data"]]
    assert "running" not in states and states[-1] == "failed"
    assert await db.fetchval("SELECT result_at IS NOT NULL FROM dispatches WHERE job_id = $1", job_id)
    assert await db.fetchval("SELECT count(*) FROM leases WHERE job_id = $1 AND released_at IS NULL", job_id) == 0
    assert_error(await box.agent.get(f"/api/agent/jobs/{job_id}/bundle"), 404, "not_found")
    assert_error(await box.agent.post(f"/api/agent/jobs/{job_id}/claim", headers=headers), 409, "conflict")
    assert OTHER.encode() not in await history_bytes(app, job_id)


async def test_a_secret_deleted_after_the_claim_fails_a_bundle_refetch(
    api: httpx.AsyncClient, make_box: Callable[..., Awaitable[Box]], control_worker: None
) -> None:
    box = await make_box("sbox")
    await put(api, "DB_PASSWORD", VALUE)
    job_id, headers = await offered(api, box, {"B": REF})
    assert (await box.agent.post(f"/api/agent/jobs/{job_id}/claim", headers=headers)).status_code == 200
    assert (await api.delete("/api/secrets/DB_PASSWORD")).status_code == 204
    resp = await box.agent.get(f"/api/agent/jobs/{job_id}/bundle")
    assert_error(resp, 409, "conflict", detail="secret DB_PASSWORD no longer exists")
    job = await ended(api, job_id)
    assert (job["state"], job["error"]) == ("failed", "secret DB_PASSWORD no longer exists")
