"""Box access: PATCH /api/boxes/{name} {"allowed_users": [...] | null}. To a viewer or operator
it leaves out, the box does not exist (not listed; GET, queue, maintenance 404; a submission
naming it is the same 422 as an unknown box); org admins see and use every box of their org; and
group placement never picks it for a job whose owner it leaves out (decided in SQL, against the
owner as they are at placement time)."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import httpx
import pytest
from fastapi import FastAPI

from boxrun import placement
from boxrun.constants import DEFAULT_ORG
from boxrun.db import Q
from boxrun.services.identity import Role
from tests.api.helpers import Box, assert_error
from tests.api.people_fixtures import Person, add_org, add_user
from tests.api.test_access import client


@pytest.fixture
async def people(db: asyncpg.Connection) -> dict[str, Person]:
    """Users of org `default` (whose admin is the `api` client's bootstrap user)."""
    return {
        "viewer": await add_user(db, "vic", DEFAULT_ORG, Role.VIEWER),
        "operator": await add_user(db, "olga", DEFAULT_ORG, Role.OPERATOR),
        "allowed": await add_user(db, "otto", DEFAULT_ORG, Role.OPERATOR),
        "admin2": await add_user(db, "ada", DEFAULT_ORG, Role.ADMIN),
    }


async def restrict(api: httpx.AsyncClient, box: str, users: list[str] | None) -> dict[str, Any]:
    resp = await api.patch(f"/api/boxes/{box}", json={"allowed_users": users})
    assert resp.status_code == 200, resp.text
    body: dict[str, Any] = resp.json()
    return body


async def test_patch_sets_and_clears_allowed_users_and_audits_it(
    api: httpx.AsyncClient, db: asyncpg.Connection, make_box: Callable[..., Awaitable[Box]], people: dict[str, Person]
) -> None:
    await make_box("lab-1")
    assert (await api.get("/api/boxes/lab-1")).json()["allowed_users"] is None
    body = await restrict(api, "lab-1", ["otto", "olga", "otto"])
    assert body["allowed_users"] == ["olga", "otto"]  # sorted, each once
    # a PATCH without the field keeps the list
    resp = await api.patch("/api/boxes/lab-1", json={"capacity": 2})
    assert resp.json()["allowed_users"] == ["olga", "otto"] and resp.json()["capacity"] == 2
    assert (await restrict(api, "lab-1", None))["allowed_users"] is None
    assert (await restrict(api, "lab-1", []))["allowed_users"] == []  # admins only
    rows = await db.fetch("SELECT detail FROM audit_log WHERE action = 'box.update' AND box = 'lab-1' ORDER BY id")
    changes = [r["detail"].get("allowed_users") for r in rows]
    assert changes == [
        {"from": None, "to": ["olga", "otto"]},
        None,  # the capacity change
        {"from": ["olga", "otto"], "to": None},
        {"from": None, "to": []},
    ]


async def test_allowed_users_must_be_users_of_the_org(
    api: httpx.AsyncClient, db: asyncpg.Connection, make_box: Callable[..., Awaitable[Box]], people: dict[str, Person]
) -> None:
    await make_box("lab-1")
    await add_org(db, "other")
    await add_user(db, "stranger", "other", Role.OPERATOR)
    for name in ("nobody", "stranger"):
        resp = await api.patch("/api/boxes/lab-1", json={"allowed_users": ["otto", name]})
        assert_error(resp, 422, "invalid_input", detail=repr(name), field="allowed_users")
    resp = await api.patch("/api/boxes/lab-1", json={"allowed_users": ["Not A Name"]})
    assert_error(resp, 422, "invalid_input")
    assert (await api.get("/api/boxes/lab-1")).json()["allowed_users"] is None  # nothing changed


async def test_a_box_not_allowing_a_user_does_not_exist_for_them(
    app: FastAPI, api: httpx.AsyncClient, make_box: Callable[..., Awaitable[Box]], people: dict[str, Person]
) -> None:
    await make_box("lab-1")
    await make_box("lab-open")
    await restrict(api, "lab-1", ["otto"])
    for who in ("viewer", "operator"):
        async with client(app, people[who].token) as c:
            assert [b["name"] for b in (await c.get("/api/boxes")).json()["data"]] == ["lab-open"]
            for suffix in ("", "/queue", "/maintenance"):
                hidden = await c.get(f"/api/boxes/lab-1{suffix}")
                unknown = await c.get(f"/api/boxes/lab-9{suffix}")
                assert_error(hidden, 404, "not_found")
                assert hidden.json()["detail"] == unknown.json()["detail"].replace("lab-9", "lab-1")
    for who in ("allowed", "admin2"):  # named in the list; an org admin always
        async with client(app, people[who].token) as c:
            assert [b["name"] for b in (await c.get("/api/boxes")).json()["data"]] == ["lab-1", "lab-open"]
            assert (await c.get("/api/boxes/lab-1/queue")).status_code == 200
    # null opens it to the whole org again
    await restrict(api, "lab-1", None)
    async with client(app, people["viewer"].token) as c:
        assert (await c.get("/api/boxes/lab-1")).status_code == 200


async def test_submitting_to_a_box_not_allowing_you_is_the_unknown_box_422(
    app: FastAPI, api: httpx.AsyncClient, make_box: Callable[..., Awaitable[Box]], people: dict[str, Person]
) -> None:
    await make_box("lab-1")
    await restrict(api, "lab-1", ["otto"])
    async with client(app, people["operator"].token) as olga:
        hidden = await olga.post("/api/jobs", json={"box": "lab-1", "script": "echo"})
        unknown = await olga.post("/api/jobs", json={"box": "lab-9", "script": "echo"})
    assert_error(hidden, 422, "invalid_input", detail="box 'lab-1' does not exist", field="box")
    assert hidden.json()["detail"] == unknown.json()["detail"].replace("lab-9", "lab-1")
    for who in ("allowed", "admin2"):
        async with client(app, people[who].token) as c:
            resp = await c.post("/api/jobs", json={"box": "lab-1", "script": "echo"})
            assert resp.status_code == 201, resp.text
            assert resp.json()["owner"] == people[who].name


async def add_job(conn: asyncpg.Connection, owner: str, *, group: str | None = None, box: str | None = None) -> str:
    job_id = str(uuid.uuid4())
    await conn.execute(
        Q.insert_job, job_id, DEFAULT_ORG, owner, box, group, [], {"script": "x"}, "h", 60, False, 0, None, 10, None
    )
    await conn.execute(Q.insert_first_event, DEFAULT_ORG, job_id, {"owner": owner})
    return job_id


async def test_group_placement_never_picks_a_box_that_leaves_the_owner_out(
    api: httpx.AsyncClient, db: asyncpg.Connection, make_box: Callable[..., Awaitable[Box]], people: dict[str, Person]
) -> None:
    await make_box("lab-1", groups=("g",))
    await restrict(api, "lab-1", ["otto"])
    # the only box of the group is closed to olga: her job can never be placed, and says why
    result = await placement.acquire(db, await add_job(db, "olga", group="g"))
    assert result.box is None and result.unschedulable_reason == "group g has no box open to olga (allowed_users)"
    # the same for a job naming the box (it was open when she submitted, closed since)
    result = await placement.acquire(db, await add_job(db, "olga", box="lab-1"))
    assert result.unschedulable_reason == "box lab-1 is not open to olga (allowed_users)"
    # otto is named; ada is an org admin; both get it
    assert (await placement.acquire(db, await add_job(db, "otto", group="g"))).box == "lab-1"
    await api.patch("/api/boxes/lab-1", json={"capacity": 3})
    assert (await placement.acquire(db, await add_job(db, "ada", group="g"))).box == "lab-1"


async def test_placement_takes_an_open_box_or_waits_never_the_closed_one(
    api: httpx.AsyncClient, db: asyncpg.Connection, make_box: Callable[..., Awaitable[Box]], people: dict[str, Person]
) -> None:
    await make_box("lab-closed", groups=("g",))
    await make_box("lab-open", groups=("g",))
    await restrict(api, "lab-closed", ["otto"])
    first = await add_job(db, "olga", group="g")
    assert (await placement.acquire(db, first)).box == "lab-open"
    # lab-open is full now; lab-closed is free, yet olga's next job waits
    waiting = await add_job(db, "olga", group="g")
    result = await placement.acquire(db, waiting)
    assert result.box is None and result.wait_reason == placement.WAIT_BUSY
    # olga's older waiting job holds back nobody from a box it may never use: otto takes lab-closed
    assert (await placement.acquire(db, await add_job(db, "otto", group="g"))).box == "lab-closed"
    # and it is not in lab-closed's queue, nor woken for it
    closed_id = await db.fetchval("SELECT id FROM boxes WHERE name = 'lab-closed'")
    assert [str(r["id"]) for r in await db.fetch(Q.box_waiters, closed_id)] == []
    assert waiting in [str(r["id"]) for r in await db.fetch(Q.box_waiters, await _box_id(db, "lab-open"))]


async def _box_id(db: asyncpg.Connection, name: str) -> int:
    box_id: int = await db.fetchval("SELECT id FROM boxes WHERE name = $1", name)
    return box_id


async def test_placement_checks_the_owner_as_they_are_now(
    api: httpx.AsyncClient, db: asyncpg.Connection, make_box: Callable[..., Awaitable[Box]], people: dict[str, Person]
) -> None:
    await make_box("lab-1", groups=("g",))
    await restrict(api, "lab-1", ["otto"])
    job = await add_job(db, "olga", group="g")
    await db.execute("UPDATE users SET role = 'admin' WHERE name = 'olga'")  # promoted since she submitted
    assert (await placement.acquire(db, job)).box == "lab-1"
    job2 = await add_job(db, "otto", group="g")
    await restrict(api, "lab-1", ["olga"])  # otto taken off the list after submitting
    assert (await placement.acquire(db, job2)).unschedulable_reason is not None
