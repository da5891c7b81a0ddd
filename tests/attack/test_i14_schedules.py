"""Attacks on schedules (issue 14) as a hostile user would make them: crons that fire every second
or smuggle a time zone or a second line, params the template refuses, ids of another org or of
no shape at all, roles that must not change another's schedule, a template deleted while a
schedule is being made for it, and a template deleted behind a schedule's back. Each test fails
when its defence is missing (docs/templates.md, "Schedules")."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import asyncpg
import httpx
import pytest
from fastapi import FastAPI
from temporalio.client import WorkflowFailureError
from temporalio.service import RPCError

from boxrun.services.identity import Role
from tests.api.helpers import assert_error
from tests.api.people_fixtures import add_org, add_user
from tests.api.test_schedules import control_worker  # noqa: F401 (fixture: the control worker with schedules)

# the `template` fixture (template `nightly` on box sbox) of the in-process schedule tests
from tests.api.test_schedules import template as template

OK = {"template": "nightly", "params": {"board": "b"}, "cron": "0 3 * * *"}


async def temporal_schedules(app: FastAPI) -> list[str]:
    return [s.id async for s in await app.state.temporal.list_schedules()]


async def post_json(api: httpx.AsyncClient, body: dict[str, Any]) -> httpx.Response:
    """POST /api/schedules with `body` as JSON escaped to ASCII (a lone surrogate as `\\ud800`)."""
    return await api.post(
        "/api/schedules", content=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )


BAD_CRONS = [
    "* * * * * * *",  # 7 fields: a seconds field (every second)
    "*/1 * * * * * *",
    "0 0 3 * * * 2030",
    "* * * * * *",  # 6 fields: a year
    "0 3 * * * *",
    "@every 1s",  # an interval: every second
    "@every 5s",
    "@EVERY 1s",
    "CRON_TZ=Asia/Tokyo 0 3 * * *",  # a time zone: the docs say UTC
    "TZ=Asia/Tokyo 0 3 * * *",
    "CRON_TZ=Nowhere/Never 0 3 * * *",
    "0 3 * * * # a comment",
    "0 3 * * *\n* * * * *",  # a second line
    "0 3 * * *\t",
    " 0 3 * * *",
    "0 3 * * * ",
    "*" + " *" * 99,  # 100 fields
    "1," * 99 + "1 * * * *",  # long, but five fields: Temporal's to judge (ok or 422, never more)
    "x" * 201,  # over the length limit
    "0 3 * * *\x00",
    "0 3 * * \ud800",
    "",
]


@pytest.mark.parametrize("cron", BAD_CRONS, ids=range(len(BAD_CRONS)))
async def test_crons_that_are_not_five_utc_fields_are_422(
    api: httpx.AsyncClient, app: FastAPI, db: asyncpg.Connection, template: str, cron: str
) -> None:
    before = await temporal_schedules(app)
    resp = await post_json(api, {**OK, "cron": cron})
    if cron.startswith("1,1,") and resp.status_code == 201:  # a legal five-field cron
        assert (await api.delete(f"/api/schedules/{resp.json()['id']}")).status_code == 204
        return
    assert_error(resp, 422, "invalid_input", field="body.cron")
    assert await db.fetchval("SELECT count(*) FROM schedules") == 0
    assert await temporal_schedules(app) == before  # no Temporal Schedule made either


@pytest.mark.parametrize("cron", ["0 3 * * *", "*/15 * * * *", "0 3 * * 1-5", "0 3 1 JAN *", "@hourly", "@daily"])
async def test_five_field_crons_and_macros_are_taken(api: httpx.AsyncClient, template: str, cron: str) -> None:
    resp = await api.post("/api/schedules", json={**OK, "cron": cron})
    assert resp.status_code == 201, resp.text


BAD_PARAMS: list[tuple[dict[str, Any], str]] = [
    ({}, "body.params.board"),
    ({"board": "b", "n": "1"}, "body.params.n"),
    ({"board": "b", "n": True}, "body.params.n"),
    ({"board": "b", "n": 2**63}, "body.params.n"),
    ({"board": "${{ secrets.DB }}"}, "body.params.board"),
    ({"board": "a\x00"}, "body.params.board"),
    ({"board": "b", "other": 1}, "body.params.other"),
    ({"board": "b", "\ud800": 1}, "body.params"),
]


@pytest.mark.parametrize(("params", "field"), BAD_PARAMS)
async def test_params_are_refused_when_made(
    api: httpx.AsyncClient, db: asyncpg.Connection, template: str, params: dict[str, Any], field: str
) -> None:
    assert_error(await post_json(api, {**OK, "params": params}), 422, "invalid_input", field=field)
    assert await db.fetchval("SELECT count(*) FROM schedules") == 0


async def test_ids_of_another_org_or_of_no_shape_are_404(
    api: httpx.AsyncClient, db: asyncpg.Connection, as_token: Callable[[str], httpx.AsyncClient], template: str
) -> None:
    s = (await api.post("/api/schedules", json=OK)).json()
    await add_org(db, "beta")
    beta = as_token((await add_user(db, "bea", "beta", Role.ADMIN)).token)
    answers = set()
    for sid in (s["id"], "00000000-0000-0000-0000-000000000000"):
        for resp in (
            await beta.get(f"/api/schedules/{sid}"),
            await beta.post(f"/api/schedules/{sid}/pause"),
            await beta.post(f"/api/schedules/{sid}/unpause"),
            await beta.delete(f"/api/schedules/{sid}"),
        ):
            answers.add(assert_error(resp, 404, "not_found")["detail"].replace(sid, "ID"))
    assert len(answers) == 1, answers
    assert (await api.get(f"/api/schedules/{s['id']}")).json()["paused"] is False  # untouched
    for sid in ("nope", "1", "x" * 5000, "%00", "%ED%A0%80", "{" + s["id"] + "}", "urn:uuid:" + s["id"], s["id"] + "0"):
        for resp in (await beta.get(f"/api/schedules/{sid}"), await beta.delete(f"/api/schedules/{sid}")):
            assert resp.status_code in (404, 422), (sid, resp.text)
    # beta cannot aim a schedule at default's template either
    assert_error(await beta.post("/api/schedules", json=OK), 422, "invalid_input", field="body.template")


async def test_a_viewer_and_another_operator(
    api: httpx.AsyncClient, db: asyncpg.Connection, as_token: Callable[[str], httpx.AsyncClient], template: str
) -> None:
    viewer = as_token((await add_user(db, "vic", "default", Role.VIEWER)).token)
    olga = as_token((await add_user(db, "olga", "default", Role.OPERATOR)).token)
    otto = as_token((await add_user(db, "otto", "default", Role.OPERATOR)).token)
    assert_error(await viewer.post("/api/schedules", json=OK), 403, "forbidden")
    s = (await olga.post("/api/schedules", json=OK)).json()
    for client in (viewer, otto):
        assert_error(await client.post(f"/api/schedules/{s['id']}/pause"), 403, "forbidden")
        assert_error(await client.post(f"/api/schedules/{s['id']}/unpause"), 403, "forbidden")
        assert_error(await client.delete(f"/api/schedules/{s['id']}"), 403, "forbidden")
    # nor may otto delete the template under it (olga's), nor olga (a schedule uses it)
    assert_error(await otto.delete("/api/templates/nightly"), 403, "forbidden")
    assert_error(await api.delete("/api/templates/nightly"), 409, "conflict")
    assert (await api.get(f"/api/schedules/{s['id']}")).json()["paused"] is False
    assert (await olga.delete(f"/api/schedules/{s['id']}")).status_code == 204


async def test_a_template_deleted_while_a_schedule_is_made_for_it(
    api: httpx.AsyncClient, app: FastAPI, db: asyncpg.Connection, template: str
) -> None:
    """The DELETE holds the template's row (its FOR UPDATE) while the schedule is being made: the
    schedule waits, then answers 422, and leaves no Temporal Schedule (not a foreign-key 500)."""
    before = await temporal_schedules(app)
    async with app.state.pool.acquire() as deleter, deleter.transaction():
        await deleter.execute("SELECT * FROM templates WHERE name = 'nightly' FOR UPDATE")
        made = asyncio.create_task(api.post("/api/schedules", json=OK))
        await asyncio.sleep(1.0)  # the create has loaded the template and waits on the row
        assert not made.done()
        await deleter.execute("DELETE FROM templates WHERE name = 'nightly'")
    resp = await made
    assert_error(resp, 422, "invalid_input", field="body.template")
    assert await db.fetchval("SELECT count(*) FROM schedules") == 0
    assert await temporal_schedules(app) == before


@pytest.mark.usefixtures("control_worker")
async def test_a_template_deleted_behind_a_schedules_back(
    api: httpx.AsyncClient, app: FastAPI, db: asyncpg.Connection, template: str
) -> None:
    """The template's row goes by hand (the schedule row cascades): the Temporal Schedule still
    fires; its run fails non-retryable, makes nothing, and no route answers 500."""
    s = (await api.post("/api/schedules", json=OK)).json()
    handle = app.state.temporal.get_schedule_handle(s["temporal_schedule_id"])
    try:
        await db.execute("DELETE FROM templates WHERE name = 'nightly'")
        assert_error(await api.get(f"/api/schedules/{s['id']}"), 404, "not_found")
        assert (await api.get("/api/schedules")).json()["data"] == []
        await handle.trigger()
        run_id = None
        for _ in range(100):
            actions = (await handle.describe()).info.recent_actions
            if actions:
                run_id = actions[0].action.workflow_id  # type: ignore[attr-defined]
                break
            await asyncio.sleep(0.1)
        assert run_id is not None
        with pytest.raises(WorkflowFailureError) as failed:
            await asyncio.wait_for(app.state.temporal.get_workflow_handle(run_id).result(), 30)
        assert "no longer exists" in str(failed.value.cause.cause) or "no longer exists" in str(failed.value.cause)
        assert await db.fetchval("SELECT count(*) FROM jobs") == 0
        assert_error(await api.delete(f"/api/schedules/{s['id']}"), 404, "not_found")
    finally:
        try:
            await handle.delete()
        except RPCError:
            pass


async def test_a_param_value_with_a_lone_surrogate_is_422_not_500(
    api: httpx.AsyncClient, db: asyncpg.Connection, template: str
) -> None:
    """The schedule keeps its params in Postgres (jsonb): a value UTF-8 cannot encode is refused
    with the param's name, as a run refuses it."""
    resp = await post_json(api, {**OK, "params": {"board": "a\ud800b"}})
    assert_error(resp, 422, "invalid_input", field="body.params.board")
    assert await db.fetchval("SELECT count(*) FROM schedules") == 0
