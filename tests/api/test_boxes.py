"""/api/boxes in-process: register, tokens, queue, maintenance (audit + wake) and windows."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
from fastapi import FastAPI
from temporalio.api.enums.v1 import EventType

from boxrun import placement
from boxrun.constants import JobState
from tests.api.helpers import Box, assert_error


def iso(delta_s: float) -> str:
    return (datetime.now(UTC) + timedelta(seconds=delta_s)).isoformat()


async def audit(db: asyncpg.Connection) -> list[tuple[str, str, Any]]:
    # the rows the box and maintenance routes write (job transitions and leases are recorded too)
    rows = await db.fetch(
        "SELECT action, box, detail FROM audit_log WHERE action ~ '^(box|maintenance)[.]' ORDER BY id"
    )
    return [(r["action"], r["box"], r["detail"]) for r in rows]


async def signals(app: FastAPI, job_id: str) -> list[str]:
    history = await app.state.temporal.get_workflow_handle(job_id).fetch_history()
    return [
        e.workflow_execution_signaled_event_attributes.signal_name
        for e in history.events
        if e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED
    ]


async def test_register_list_get_and_a_duplicate_name_is_409(api: httpx.AsyncClient, db: asyncpg.Connection) -> None:
    resp = await api.post(
        "/api/boxes", json={"name": "bench-1", "groups": ["g"], "capabilities": ["gpu"], "capacity": 2}
    )
    assert resp.status_code == 201, resp.text
    created = resp.json()
    assert created["node_token"].startswith("bxn_")
    assert created["box"]["name"] == "bench-1" and created["box"]["status"] == "offline"
    assert created["box"]["capacity"] == 2 and created["box"]["groups"] == ["g"]

    again = await api.post("/api/boxes", json={"name": "bench-1"})
    assert_error(again, 409, "conflict", detail="box bench-1 already exists")

    listed = (await api.get("/api/boxes")).json()
    assert listed["count"] == 1 and listed["data"][0]["name"] == "bench-1"
    got = await api.get("/api/boxes/bench-1")
    assert got.status_code == 200 and got.json()["capabilities"] == ["gpu"]
    assert [a[:2] for a in await audit(db)] == [("box.register", "bench-1")]


async def test_register_refuses_a_bad_name_with_422(api: httpx.AsyncClient) -> None:
    resp = await api.post("/api/boxes", json={"name": "-bad name"})
    assert_error(resp, 422, "invalid_input", field="body.name")


async def test_an_unknown_box_is_404_on_every_box_route(api: httpx.AsyncClient) -> None:
    window = {"starts_at": iso(0), "ends_at": iso(60), "reason": "r"}
    for name in ("nope", "bad%00name", "x" * 100):
        for method, suffix, body in (
            ("GET", "", None),
            ("POST", "/token", None),
            ("GET", "/queue", None),
            ("GET", "/maintenance", None),
            ("PUT", "/maintenance", {"on": True}),
            ("POST", "/maintenance/windows", window),
            ("DELETE", "/maintenance/windows/1", None),
            ("PATCH", "", {"capacity": 2}),
            ("DELETE", "", None),
        ):
            resp = await api.request(method, f"/api/boxes/{name}{suffix}", json=body)
            assert_error(resp, 404, "not_found", detail="not found")


async def test_queue_shows_leases_and_waiters_in_grant_order(
    api: httpx.AsyncClient, db: asyncpg.Connection, make_box: Callable[..., Awaitable[Box]]
) -> None:
    await make_box("bench-1")
    first = (await api.post("/api/jobs", json={"script": "x", "box": "bench-1"})).json()["id"]
    second = (await api.post("/api/jobs", json={"script": "x", "box": "bench-1"})).json()["id"]
    assert (await placement.acquire(db, first)).box == "bench-1"
    assert (await placement.acquire(db, second)).wait_reason is not None
    resp = await api.get("/api/boxes/bench-1/queue")
    assert resp.status_code == 200, resp.text
    queue = resp.json()
    assert [lease["job_id"] for lease in queue["leases"]] == [first]
    assert [w["job_id"] for w in queue["waiting"]] == [second]


async def test_maintenance_on_holds_jobs_back_and_off_wakes_them_both_audited(
    api: httpx.AsyncClient, app: FastAPI, db: asyncpg.Connection, make_box: Callable[..., Awaitable[Box]]
) -> None:
    await make_box("bench-1")
    on = await api.put("/api/boxes/bench-1/maintenance", json={"on": True, "reason": "recabling"})
    assert on.status_code == 200, on.text
    assert on.json()["maintenance"] is True
    assert [(w["reason"], w["ends_at"], w["created_by"]) for w in on.json()["windows"]] == [
        ("recabling", None, "admin")
    ]
    assert (await api.get("/api/boxes/bench-1")).json()["maintenance"] is True

    job = (await api.post("/api/jobs", json={"script": "x", "box": "bench-1"})).json()["id"]
    assert (await placement.acquire(db, job)).wait_reason == placement.WAIT_MAINTENANCE
    shown = (await api.get("/api/boxes/bench-1/maintenance")).json()
    assert [r["job_id"] for r in shown["rejections"]] == [job]
    assert "wake" not in await signals(app, job)

    off = await api.put("/api/boxes/bench-1/maintenance", json={"on": False})
    assert off.status_code == 200, off.text
    assert off.json()["maintenance"] is False and off.json()["windows"] == []
    assert await signals(app, job) == ["wake"], "the waiting job's workflow is woken"
    assert [a[:2] for a in await audit(db)][-2:] == [
        ("maintenance.on", "bench-1"),
        ("maintenance.off", "bench-1"),
    ]


async def test_maintenance_body_is_validated(api: httpx.AsyncClient, make_box: Callable[..., Awaitable[Box]]) -> None:
    await make_box("bench-1")
    resp = await api.put("/api/boxes/bench-1/maintenance", json={"reason": "x"})
    assert_error(resp, 422, "invalid_input", field="body.on")


async def test_windows_add_and_delete_audited_and_delete_wakes(
    api: httpx.AsyncClient, app: FastAPI, db: asyncpg.Connection, make_box: Callable[..., Awaitable[Box]]
) -> None:
    await make_box("bench-1")
    resp = await api.post(
        "/api/boxes/bench-1/maintenance/windows", json={"starts_at": iso(-5), "ends_at": iso(3600), "reason": "fw"}
    )
    assert resp.status_code == 201, resp.text
    window = resp.json()
    assert window["reason"] == "fw" and window["created_by"] == "admin" and window["id"] >= 1
    job = (await api.post("/api/jobs", json={"script": "x", "box": "bench-1"})).json()["id"]
    assert (await placement.acquire(db, job)).wait_reason == placement.WAIT_MAINTENANCE

    gone = await api.delete(f"/api/boxes/bench-1/maintenance/windows/{window['id']}")
    assert gone.status_code == 204 and gone.content == b""
    assert await signals(app, job) == ["wake"]
    assert (await api.get("/api/boxes/bench-1/maintenance")).json()["windows"] == []
    assert [a[:2] for a in await audit(db)][-2:] == [
        ("maintenance.window", "bench-1"),
        ("maintenance.window_deleted", "bench-1"),
    ]

    again = await api.delete(f"/api/boxes/bench-1/maintenance/windows/{window['id']}")
    assert_error(again, 404, "not_found", detail=f"box bench-1 has no window {window['id']}")


async def test_a_window_must_end_after_it_starts_and_in_the_future(
    api: httpx.AsyncClient, make_box: Callable[..., Awaitable[Box]]
) -> None:
    await make_box("bench-1")
    url = "/api/boxes/bench-1/maintenance/windows"
    backwards = await api.post(url, json={"starts_at": iso(60), "ends_at": iso(30), "reason": "r"})
    assert_error(backwards, 422, "invalid_input", detail="must be after starts_at", field="body.ends_at")
    past = await api.post(url, json={"starts_at": iso(-60), "ends_at": iso(-30), "reason": "r"})
    assert_error(past, 422, "invalid_input", detail="ends_at is in the past", field="body.ends_at")
    naive = await api.post(
        url, json={"starts_at": "2030-01-01T00:00:00", "ends_at": "2030-01-02T00:00:00", "reason": "r"}
    )
    assert_error(naive, 422, "invalid_input", detail="with a timezone", field="body.starts_at")


async def test_a_window_id_out_of_range_is_422_not_a_database_error(
    api: httpx.AsyncClient, make_box: Callable[..., Awaitable[Box]]
) -> None:
    await make_box("bench-1")
    for window_id in (str(2**63), "0", "x"):
        resp = await api.delete(f"/api/boxes/bench-1/maintenance/windows/{window_id}")
        assert_error(resp, 422, "invalid_input", field="path.window_id")


async def test_patch_replaces_given_fields_keeps_the_rest_and_is_audited(
    api: httpx.AsyncClient, db: asyncpg.Connection, make_box: Callable[..., Awaitable[Box]]
) -> None:
    await make_box("bench-1", groups=("g",))
    resp = await api.patch("/api/boxes/bench-1", json={"capabilities": ["gpu", "usb"], "capacity": 3})
    assert resp.status_code == 200, resp.text
    box = resp.json()
    assert (box["name"], box["groups"], box["capabilities"], box["capacity"]) == ("bench-1", ["g"], ["gpu", "usb"], 3)
    assert box["status"] == "online"
    assert (await api.get("/api/boxes/bench-1")).json() == box
    action, name, detail = (await audit(db))[-1]
    assert (action, name) == ("box.update", "bench-1")
    assert detail == {"capabilities": {"from": [], "to": ["gpu", "usb"]}, "capacity": {"from": 1, "to": 3}}

    # null keeps a field; a change to nothing is no change (and not audited)
    same = await api.patch("/api/boxes/bench-1", json={"groups": None, "capacity": 3, "capabilities": ["usb", "gpu"]})
    assert same.status_code == 200 and same.json() == box
    assert (await api.patch("/api/boxes/bench-1", json={})).json() == box
    assert [a[0] for a in await audit(db)].count("box.update") == 1
    whole = await api.patch("/api/boxes/bench-1", json={"capacity": 4.0})  # a JSON Schema integer
    assert whole.status_code == 200 and whole.json()["capacity"] == 4
    cleared = await api.patch("/api/boxes/bench-1", json={"groups": []})
    assert cleared.status_code == 200 and cleared.json()["groups"] == []


async def test_patch_validates_its_body_like_register(
    api: httpx.AsyncClient, make_box: Callable[..., Awaitable[Box]]
) -> None:
    await make_box("bench-1")
    url = "/api/boxes/bench-1"
    for body, field in (
        ({"capacity": 0}, "body.capacity"),
        ({"capacity": -1}, "body.capacity"),
        ({"capacity": 1001}, "body.capacity"),
        ({"capacity": 2**63}, "body.capacity"),
        ({"capacity": "2"}, "body.capacity"),
        ({"capacity": 2.5}, "body.capacity"),
        ({"capacity": True}, "body.capacity"),
        ({"groups": ["bad name"]}, "body.groups.0"),
        ({"groups": ["g\x00"]}, "body.groups.0"),
        ({"groups": "g"}, "body.groups"),
        ({"groups": [f"g{i}" for i in range(65)]}, "body.groups"),
        ({"capabilities": ["a,b"]}, "body.capabilities.0"),
        ({"capabilities": ["gpu\x00"]}, "body.capabilities.0"),
        ({"name": "bench-2"}, "body.name"),  # a box is not renamed
        ({"node_token_hash": "x"}, "body.node_token_hash"),
    ):
        resp = await api.patch(url, json=body)  # NUL goes as the JSON escape \\u0000
        assert_error(resp, 422, "invalid_input", field=field)
    assert (await api.get(url)).json()["capacity"] == 1, "nothing was changed"


async def test_box_changes_need_a_user_token(
    api: httpx.AsyncClient, anon: httpx.AsyncClient, make_box: Callable[..., Awaitable[Box]]
) -> None:
    box = await make_box("bench-1")
    for client in (anon, box.agent):  # no token; a node token is not a user token
        assert_error(await client.patch("/api/boxes/bench-1", json={"capacity": 2}), 401, "unauthorized")
        assert_error(await client.delete("/api/boxes/bench-1"), 401, "unauthorized")
    assert (await api.get("/api/boxes/bench-1")).json()["capacity"] == 1


async def test_patch_that_adds_capacity_or_a_group_wakes_waiters(
    api: httpx.AsyncClient, app: FastAPI, db: asyncpg.Connection, make_box: Callable[..., Awaitable[Box]]
) -> None:
    await make_box("bench-1", groups=("h",))
    await make_box("bench-2")
    holder = (await api.post("/api/jobs", json={"script": "x", "box": "bench-1"})).json()["id"]
    named = (await api.post("/api/jobs", json={"script": "x", "box": "bench-1"})).json()["id"]
    grouped = (await api.post("/api/jobs", json={"script": "x", "box_group": "h"})).json()["id"]
    assert (await placement.acquire(db, holder)).box == "bench-1"
    assert (await placement.acquire(db, named)).wait_reason == placement.WAIT_BUSY
    assert (await placement.acquire(db, grouped)).wait_reason == placement.WAIT_BUSY

    assert (await api.patch("/api/boxes/bench-1", json={"capacity": 2})).status_code == 200
    assert await signals(app, named) == ["wake"], "more capacity wakes the head waiter"
    assert (await api.patch("/api/boxes/bench-2", json={"groups": ["h"]})).status_code == 200
    assert "wake" in await signals(app, grouped), "a box joining the group wakes the group's waiter"
    assert (await placement.acquire(db, grouped)).box == "bench-2"


async def test_patch_that_takes_a_capability_away_wakes_waiters_that_now_never_fit(
    api: httpx.AsyncClient, app: FastAPI, db: asyncpg.Connection, make_box: Callable[..., Awaitable[Box]]
) -> None:
    await make_box("bench-1")
    assert (await api.patch("/api/boxes/bench-1", json={"capabilities": ["gpu"]})).status_code == 200
    holder = (await api.post("/api/jobs", json={"script": "x", "box": "bench-1"})).json()["id"]
    waiter = (await api.post("/api/jobs", json={"script": "x", "box": "bench-1", "requires": ["gpu"]})).json()["id"]
    assert (await placement.acquire(db, holder)).box == "bench-1"
    assert (await placement.acquire(db, waiter)).wait_reason == placement.WAIT_BUSY

    assert (await api.patch("/api/boxes/bench-1", json={"capabilities": []})).status_code == 200
    assert await signals(app, waiter) == ["wake"]
    assert (await placement.acquire(db, waiter)).unschedulable_reason == "box bench-1 lacks capabilities ['gpu']"


async def test_delete_is_409_while_a_lease_holds_the_box(
    api: httpx.AsyncClient, db: asyncpg.Connection, make_box: Callable[..., Awaitable[Box]]
) -> None:
    await make_box("bench-1")
    job = (await api.post("/api/jobs", json={"script": "x", "box": "bench-1"})).json()["id"]
    assert (await placement.acquire(db, job)).box == "bench-1"
    resp = await api.delete("/api/boxes/bench-1")
    assert_error(resp, 409, "conflict", detail=f"box bench-1 is in use: 1 job(s) hold a lease on it ({job})")
    assert (await api.get("/api/boxes/bench-1")).status_code == 200
    assert "box.delete" not in [a[0] for a in await audit(db)]


async def test_delete_wakes_waiters_to_end_unschedulable_keeps_history_and_kills_the_token(
    api: httpx.AsyncClient, app: FastAPI, db: asyncpg.Connection, make_box: Callable[..., Awaitable[Box]]
) -> None:
    box = await make_box("bench-1", groups=("g",))
    ran = (await api.post("/api/jobs", json={"script": "x", "box_group": "g"})).json()["id"]
    assert (await placement.acquire(db, ran)).box == "bench-1"
    await placement.finish(db, ran, JobState.FAILED, error="done")
    assert (await api.put("/api/boxes/bench-1/maintenance", json={"on": True})).status_code == 200
    named = (await api.post("/api/jobs", json={"script": "x", "box": "bench-1"})).json()["id"]
    grouped = (await api.post("/api/jobs", json={"script": "x", "box_group": "g"})).json()["id"]
    for job in (named, grouped):
        assert (await placement.acquire(db, job)).wait_reason == placement.WAIT_MAINTENANCE

    gone = await api.delete("/api/boxes/bench-1")
    assert gone.status_code == 204 and gone.content == b""
    assert_error(await api.get("/api/boxes/bench-1"), 404, "not_found")
    assert await signals(app, named) == ["wake"] and await signals(app, grouped) == ["wake"]
    # what each woken workflow's next placement answers (no worker runs here to act on it)
    assert (await placement.acquire(db, named)).unschedulable_reason == "box bench-1 was deleted"
    assert (await placement.acquire(db, grouped)).unschedulable_reason == (
        "group g has no boxes (box bench-1 was deleted)"
    )
    action, name, detail = (await audit(db))[-1]
    assert (action, name) == ("box.delete", "bench-1")
    assert detail == {"groups": ["g"], "capabilities": [], "capacity": 1, "waiting_jobs": 2}
    # the job that ran there still shows the box; its node token no longer works
    assert (await api.get(f"/api/jobs/{ran}")).json()["box"] == "bench-1"
    assert [j["id"] for j in (await api.get("/api/jobs", params={"box": "bench-1"})).json()["data"]][-1] == ran
    beat = await box.agent.post("/api/agent/heartbeat", json={"agent_version": "test"})
    assert_error(beat, 401, "unauthorized")
    assert_error(await api.delete("/api/boxes/bench-1"), 404, "not_found")
    # the name is free again
    assert (await api.post("/api/boxes", json={"name": "bench-1"})).status_code == 201
    assert (await api.get(f"/api/jobs/{ran}")).json()["box"] == "bench-1"
