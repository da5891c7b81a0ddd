"""Attacks on box holds and same-box placement (issue 14) as a hostile user would make them: another
org's held box, a viewer or an operator deleting a held box, an admin deleting it while held,
`same_box_as` at a step that is no ancestor (also filled in by a template param), and `keep_box`
on a box restricted to other users (also once the pipeline holds it). Each test fails when its
defence is missing (docs/pipelines.md, "same_box_as", "keep_box"; docs/access.md)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import asyncpg
import httpx
import pytest
from fastapi import FastAPI

from boxrun.constants import JobState
from boxrun.placement import acquire
from boxrun.services.identity import Role
from tests.api.helpers import assert_error
from tests.api.people_fixtures import add_org, add_user
from tests.api.test_box_holds import attempt, end, flash_test, queue, submit


@pytest.fixture
async def bench(make_box: Callable[..., Any]) -> str:
    await make_box("bench1", groups=("benches",))
    return "bench1"


async def held(api: httpx.AsyncClient, app: FastAPI, db: asyncpg.Connection) -> str:
    """A pipeline whose flash step ran on bench1 and ended: the pipeline holds bench1."""
    pid = await submit(api, flash_test())
    flash = await attempt(db, app, pid, "flash")
    assert (await acquire(db, flash)).box == "bench1"
    await end(db, flash, JobState.COMPLETED)
    assert len((await queue(api))["holds"]) == 1
    return pid


async def test_another_orgs_held_box_is_404_and_its_holds_never_shown(
    api: httpx.AsyncClient,
    app: FastAPI,
    db: asyncpg.Connection,
    as_token: Callable[[str], httpx.AsyncClient],
    bench: str,
) -> None:
    pid = await held(api, app, db)
    await add_org(db, "beta")
    beta = as_token((await add_user(db, "bea", "beta", Role.ADMIN)).token)
    for path in ("/api/boxes/bench1/queue", "/api/boxes/bench1", "/api/boxes/nope/queue"):
        body = assert_error(await beta.get(path), 404, "not_found")
        assert pid not in body["detail"]
    assert_error(await beta.delete("/api/boxes/bench1"), 404, "not_found")
    assert_error(await beta.get(f"/api/pipelines/{pid}"), 404, "not_found")
    # beta's pipeline naming default's box: the 422 of a box that does not exist, no hold taken
    resp = await beta.post("/api/pipelines", json=flash_test())
    assert_error(resp, 422, "invalid_input")
    assert await db.fetchval("SELECT count(*) FROM box_holds") == 1
    assert (await api.get("/api/boxes/bench1")).status_code == 200  # still there


async def test_only_an_admin_may_try_to_delete_a_held_box_and_gets_409(
    api: httpx.AsyncClient,
    app: FastAPI,
    db: asyncpg.Connection,
    as_token: Callable[[str], httpx.AsyncClient],
    bench: str,
) -> None:
    pid = await held(api, app, db)
    viewer = as_token((await add_user(db, "vic", "default", Role.VIEWER)).token)
    op = as_token((await add_user(db, "opa", "default", Role.OPERATOR)).token)
    assert_error(await viewer.delete("/api/boxes/bench1"), 403, "forbidden")
    assert_error(await op.delete("/api/boxes/bench1"), 403, "forbidden")
    assert_error(await api.delete("/api/boxes/bench1"), 409, "conflict", detail=f"pipeline {pid}")
    # the viewer sees the queue with the hold (every role reads), but cannot release it
    q = (await viewer.get("/api/boxes/bench1/queue")).json()
    assert [h["pipeline_id"] for h in q["holds"]] == [pid]
    assert await db.fetchval("SELECT count(*) FROM box_holds WHERE released_at IS NULL") == 1
    assert await db.fetchval("SELECT count(*) FROM boxes WHERE name = 'bench1'") == 1


BAD_PINS: list[tuple[str, str]] = [
    ("b", "pinned to itself"),
    ("z", "unknown step"),
    ("c", "not an ancestor"),  # a step, but not one b needs
    ("a[x=1]", ""),  # a matrix form of a step without a matrix
]


@pytest.mark.parametrize(("pin", "words"), BAD_PINS)
async def test_same_box_as_filled_in_by_a_param_is_checked_at_run(
    api: httpx.AsyncClient, db: asyncpg.Connection, bench: str, pin: str, words: str
) -> None:
    """A template's `same_box_as` may come from a param: the rendered value is checked as a
    submission's (422), never placed on an arbitrary step's box."""
    body = {
        "params": {"pin": {"type": "string", "default": "a"}},
        "pipeline": {
            "steps": {
                "a": {"box": "bench1", "keep_box": True, "script": "true"},
                "c": {"box": "bench1", "script": "true"},
                "b": {"needs": ["a"], "same_box_as": "${{ params.pin }}", "script": "true"},
            }
        },
    }
    resp = await api.put("/api/templates/pin", json=body)
    assert resp.status_code == 201, resp.text
    ran = await api.post("/api/templates/pin/run", json={"params": {"pin": pin}})
    err = assert_error(ran, 422, "invalid_input")
    assert words in err["detail"], err
    assert err["errors"][0]["field"].startswith("body.params"), err
    assert await db.fetchval("SELECT count(*) FROM pipelines") == 0


async def test_keep_box_on_a_box_restricted_to_others(
    api: httpx.AsyncClient,
    app: FastAPI,
    db: asyncpg.Connection,
    as_token: Callable[[str], httpx.AsyncClient],
    bench: str,
) -> None:
    """otto is not on bench1's allowed_users: his keep_box pipeline is the 422 of an unknown box;
    olga's (listed) runs and holds it; once she is taken off the list her pinned step is no
    longer placed on the box the pipeline still holds (unschedulable, nothing runs there)."""
    olga_p = await add_user(db, "olga", "default", Role.OPERATOR)
    otto = as_token((await add_user(db, "otto", "default", Role.OPERATOR)).token)
    olga = as_token(olga_p.token)
    resp = await api.patch("/api/boxes/bench1", json={"allowed_users": ["olga"]})
    assert resp.status_code == 200, resp.text
    err = assert_error(await otto.post("/api/pipelines", json=flash_test()), 422, "invalid_input")
    assert "does not exist" in err["detail"]
    # through a group: the group's only box is closed to otto
    group = flash_test()
    group["steps"]["flash"] = {"box_group": "benches", "keep_box": True, "script": "true"}
    pid_otto = await submit(otto, group)
    job = await attempt(db, app, pid_otto, "flash")
    result = await acquire(db, job)
    assert result.box is None and result.unschedulable_reason and "allowed_users" in result.unschedulable_reason
    assert await db.fetchval("SELECT count(*) FROM box_holds") == 0
    # olga's pipeline takes the hold; then the admin closes the box to her
    pid = await submit(olga, flash_test())
    flash = await attempt(db, app, pid, "flash")
    assert (await acquire(db, flash)).box == "bench1"
    await end(db, flash, JobState.COMPLETED)
    assert [h["pipeline_id"] for h in (await queue(api))["holds"]] == [pid]
    resp = await api.patch("/api/boxes/bench1", json={"allowed_users": []})
    assert resp.status_code == 200, resp.text
    # to otto the box, its queue and the hold on it do not exist
    for path in ("/api/boxes/bench1", "/api/boxes/bench1/queue"):
        assert_error(await otto.get(path), 404, "not_found")
    test = await attempt(db, app, pid, "test")
    placed = await acquire(db, test)
    assert placed.box is None, placed
    assert await db.fetchval("SELECT count(*) FROM leases WHERE job_id = $1", test) == 0
