"""/api/jobs in-process: submit, list, get, events, cancel, re-run; status AND body of each error."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import httpx
from fastapi import FastAPI
from temporalio.api.enums.v1 import EventType

from boxrun.constants import DEFAULT_ORG
from boxrun.temporal import connect
from tests.api.helpers import Box, assert_error
from tests.integration.helpers import add_job

SCRIPT = {"script": "echo hi"}


async def submit(api: httpx.AsyncClient, **body: Any) -> dict[str, Any]:
    resp = await api.post("/api/jobs", json={**SCRIPT, **body})
    assert resp.status_code == 201, resp.text
    return dict(resp.json())


async def history_events(app: FastAPI, job_id: str) -> list[int]:
    history = await app.state.temporal.get_workflow_handle(job_id).fetch_history()
    return [e.event_type for e in history.events]


# ------------------------------------------------------------------ submit


async def test_submit_answers_201_with_the_queued_job_and_starts_its_workflow(
    api: httpx.AsyncClient, app: FastAPI, make_box: Callable[..., Awaitable[Box]]
) -> None:
    await make_box("bench-1")
    job = await submit(api, box="bench-1", env={"A": "1"}, priority=5)
    assert job["state"] == "queued" and job["box"] == "bench-1" and job["owner"] == "admin"
    assert job["priority"] == 5 and job["rerun_of"] is None
    assert uuid.UUID(job["id"])
    assert job["temporal_ui_url"].endswith(f"/workflows/{job['id']}")
    desc = await app.state.temporal.get_workflow_handle(job["id"]).describe()
    assert desc.workflow_type == "JobWorkflow"


async def test_submit_to_a_group_needs_no_box(api: httpx.AsyncClient) -> None:
    job = await submit(api, box_group="benches", requires=["gpu", "gpu"])
    assert job["box"] is None and job["box_group"] == "benches" and job["requires"] == ["gpu"]


async def test_an_unknown_box_is_422_naming_the_box_field(api: httpx.AsyncClient, db: asyncpg.Connection) -> None:
    resp = await api.post("/api/jobs", json={**SCRIPT, "box": "nope"})
    body = assert_error(resp, 422, "invalid_input", detail="'nope' does not exist", field="box")
    assert body["errors"] == [{"field": "box", "message": "box 'nope' does not exist"}]
    assert await db.fetchval("SELECT count(*) FROM jobs") == 0, "nothing written"


async def test_both_or_neither_of_box_and_box_group_is_422(api: httpx.AsyncClient) -> None:
    for target in ({"box": "a", "box_group": "b"}, {}):
        resp = await api.post("/api/jobs", json={**SCRIPT, **target})
        assert_error(resp, 422, "invalid_input", detail="exactly one of 'box' or 'box_group'", field="body")


async def test_a_schema_violation_is_422_naming_each_field(api: httpx.AsyncClient) -> None:
    resp = await api.post("/api/jobs", json={**SCRIPT, "box_group": "g", "timeout_s": 0, "secret_value_x": 1})
    body = assert_error(resp, 422, "invalid_input", field="body.timeout_s")
    assert "body.secret_value_x" in [e["field"] for e in body["errors"]]


async def test_an_idempotency_key_returns_the_first_job_with_200(
    api: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    first = await submit(api, box_group="g", idempotency_key="k-1")
    again = await api.post("/api/jobs", json={**SCRIPT, "box_group": "g", "idempotency_key": "k-1"})
    assert again.status_code == 200, again.text
    assert again.json()["id"] == first["id"] and again.json()["idempotency_key"] == "k-1"
    assert await db.fetchval("SELECT count(*) FROM jobs") == 1


async def test_an_idempotency_key_reused_with_another_spec_is_409(api: httpx.AsyncClient) -> None:
    await submit(api, box_group="g", idempotency_key="k-1")
    resp = await api.post("/api/jobs", json={"script": "echo other", "box_group": "g", "idempotency_key": "k-1"})
    assert_error(resp, 409, "conflict", detail="idempotency key 'k-1' was used for a different job spec")


async def test_temporal_refusing_the_start_is_503_and_leaves_no_job(
    api: httpx.AsyncClient, app: FastAPI, db: asyncpg.Connection
) -> None:
    # a real refusal: the dev server has no such namespace
    settings = app.state.settings
    good = app.state.temporal
    app.state.temporal = await connect(settings.temporal_address, namespace=f"missing-{uuid.uuid4().hex[:8]}")
    try:
        resp = await api.post("/api/jobs", json={**SCRIPT, "box_group": "g"})
    finally:
        app.state.temporal = good
    assert_error(resp, 503, "unavailable", detail="workflow engine is unavailable")
    assert resp.headers["retry-after"] == "1"
    assert await db.fetchval("SELECT count(*) FROM jobs") == 0, "the row is withdrawn again"


# ------------------------------------------------------------------ read


async def test_get_list_and_events(api: httpx.AsyncClient, make_box: Callable[..., Awaitable[Box]]) -> None:
    await make_box("bench-1")
    a = await submit(api, box="bench-1")
    b = await submit(api, box_group="g")
    got = await api.get(f"/api/jobs/{a['id']}")
    assert got.status_code == 200 and got.json() == a

    listed = await api.get("/api/jobs")
    assert listed.status_code == 200
    assert listed.json()["count"] == 2 and {j["id"] for j in listed.json()["data"]} == {a["id"], b["id"]}
    by_box = (await api.get("/api/jobs", params={"box": "bench-1", "state": "queued"})).json()
    assert by_box["count"] == 1 and by_box["data"][0]["id"] == a["id"]
    empty = (await api.get("/api/jobs", params={"offset": 10})).json()
    assert empty == {"data": [], "count": 2, "next_cursor": None}

    events = await api.get(f"/api/jobs/{a['id']}/events")
    assert events.status_code == 200
    [first] = events.json()["data"]
    assert first["from_state"] is None and first["to_state"] == "queued" and first["detail"] == {"owner": "admin"}


async def test_list_refuses_bad_filters_with_422(api: httpx.AsyncClient) -> None:
    cases = [
        ({"state": "sleeping"}, "query.state"),
        ({"box": "bad\x00name"}, "query.box"),
        ({"offset": str(2**63)}, "query.offset"),
        ({"limit": "0"}, "query.limit"),
    ]
    for params, field in cases:
        assert_error(await api.get("/api/jobs", params=params), 422, "invalid_input", field=field)


async def test_an_unknown_or_malformed_job_id_is_404_on_every_job_route(api: httpx.AsyncClient) -> None:
    for job_id in (str(uuid.uuid4()), "not-a-uuid", "%00", "1" * 300):
        for method, suffix in (
            ("GET", ""),
            ("GET", "/events"),
            ("POST", "/cancel"),
            ("POST", "/rerun"),
            ("GET", "/logs"),
            ("GET", "/logs/stream"),
            ("GET", "/logs/archive"),
            ("GET", "/artifacts"),
            ("GET", "/artifacts/a/b.txt"),
        ):
            resp = await api.request(method, f"/api/jobs/{job_id}{suffix}")
            assert_error(resp, 404, "not_found", detail="not found")


# ------------------------------------------------------------------ cancel


async def test_cancel_asks_the_running_workflow_and_answers_202(
    api: httpx.AsyncClient, app: FastAPI, db: asyncpg.Connection
) -> None:
    job = await submit(api, box_group="g")
    resp = await api.post(f"/api/jobs/{job['id']}/cancel")
    assert resp.status_code == 202, resp.text
    # no worker runs here: the workflow holds the request, the job is still queued until it acts
    assert resp.json()["id"] == job["id"] and resp.json()["state"] == "queued"
    assert EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CANCEL_REQUESTED in await history_events(app, job["id"])
    audit = await db.fetchrow("SELECT actor, action, job_id::text FROM audit_log WHERE action = 'job.cancel'")
    assert dict(audit) == {"actor": "admin", "action": "job.cancel", "job_id": job["id"]}


async def test_cancel_without_a_workflow_cancels_the_row_then_a_second_cancel_is_409(
    api: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    job_id = await add_job(db, group="g")  # a row whose workflow never started
    resp = await api.post(f"/api/jobs/{job_id}/cancel")
    assert resp.status_code == 202, resp.text
    assert resp.json()["state"] == "cancelled" and resp.json()["error"] == "cancelled (no workflow was running)"
    events = (await api.get(f"/api/jobs/{job_id}/events")).json()["data"]
    assert [e["to_state"] for e in events] == ["queued", "cancelled"]

    again = await api.post(f"/api/jobs/{job_id}/cancel")
    assert_error(again, 409, "conflict", detail="already ended (cancelled)")


# ------------------------------------------------------------------ rerun


async def test_rerun_makes_a_new_job_from_the_frozen_spec(api: httpx.AsyncClient, app: FastAPI) -> None:
    job = await submit(api, box_group="g", env={"X": "y"}, timeout_s=77, idempotency_key="once")
    resp = await api.post(f"/api/jobs/{job['id']}/rerun")
    assert resp.status_code == 201, resp.text
    new = resp.json()
    assert new["id"] != job["id"] and new["rerun_of"] == job["id"] and new["state"] == "queued"
    assert new["timeout_s"] == 77 and new["box_group"] == "g" and new["idempotency_key"] is None
    assert (await app.state.temporal.get_workflow_handle(new["id"]).describe()).workflow_type == "JobWorkflow"


async def test_rerun_of_a_spec_naming_a_box_that_is_gone_is_422(api: httpx.AsyncClient, db: asyncpg.Connection) -> None:
    job_id = await add_job(db, box="gone")
    await db.execute(
        "UPDATE jobs SET spec = $2 WHERE id = $1", job_id, {"script": "x", "box": "gone", "box_group": None}
    )
    resp = await api.post(f"/api/jobs/{job_id}/rerun")
    assert_error(resp, 422, "invalid_input", detail="'gone' does not exist", field="box")
    assert await db.fetchval("SELECT count(*) FROM jobs WHERE org_id = $1", DEFAULT_ORG) == 1
