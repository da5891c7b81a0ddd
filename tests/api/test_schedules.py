"""Schedules on the real parts: POST /api/schedules makes a Temporal Schedule on the test session's
dev server; the test triggers it through Temporal (ScheduleHandle.trigger) with a control worker
running in the test, and waits (with a deadline) for the run it makes; pause, unpause, delete."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest
from fastapi import FastAPI
from temporalio.client import ScheduleActionExecutionStartWorkflow, ScheduleActionStartWorkflow
from temporalio.service import RPCError, RPCStatusCode
from temporalio.worker import Worker

from boxrun.activities.control import ControlActivities
from boxrun.activities.dispatch import DispatchActivities
from boxrun.activities.pipeline import PipelineActivities
from boxrun.activities.schedules import ScheduleActivities
from boxrun.constants import CONTROL_TASK_QUEUE
from boxrun.services.identity import Role
from boxrun.workflows.job import JobWorkflow
from boxrun.workflows.pipeline import PipelineWorkflow
from boxrun.workflows.schedules import ScheduledRunWorkflow
from boxrun.workflows.step import StepWorkflow
from tests.api.helpers import assert_error
from tests.api.people_fixtures import add_org, add_user

TEMPLATE = {
    "params": {"board": {"type": "string"}, "n": {"type": "int", "default": 1}},
    "job": {"box": "sbox", "script": "nightly ${{ params.board }} x${{ params.n }}"},
}


@pytest.fixture
async def template(make_box: Callable[..., Any], api: httpx.AsyncClient) -> str:
    await make_box("sbox")
    resp = await api.put("/api/templates/nightly", json=TEMPLATE)
    assert resp.status_code == 201, resp.text
    return "nightly"


@pytest.fixture
async def control_worker(app: FastAPI) -> AsyncIterator[None]:
    """The control worker's workflows and activities in-process (as `boxrun worker` builds them)."""
    pool, settings, storage = app.state.pool, app.state.settings, app.state.storage
    control = ControlActivities(pool, storage, offline_after_s=settings.box_offline_after_s)
    dispatch = DispatchActivities(pool, claim_timeout_s=settings.dispatch_timeout_s)
    pipeline = PipelineActivities(pool, settings)
    schedules = ScheduleActivities(pool, storage, settings)
    async with Worker(
        app.state.temporal,
        task_queue=CONTROL_TASK_QUEUE,
        workflows=[JobWorkflow, PipelineWorkflow, StepWorkflow, ScheduledRunWorkflow],
        activities=[*control.all(), *dispatch.all(), *pipeline.all(), *schedules.all()],
    ):
        yield


async def wait_for_jobs(
    db: asyncpg.Connection, owner: str, count: int, deadline_s: float = 30.0
) -> list[asyncpg.Record]:
    """The jobs `owner` has once there are `count` of them, each with its `template.run` audit row
    (written after the submission), or what there is at the deadline."""
    end = time.monotonic() + deadline_s
    while True:
        rows = await db.fetch("SELECT id::text, spec, owner FROM jobs WHERE owner = $1 ORDER BY created_at", owner)
        audited = await db.fetchval(
            "SELECT count(*) FROM audit_log WHERE action = 'template.run' AND actor = $1", owner
        )
        if (len(rows) >= count and audited >= count) or time.monotonic() > end:
            return list(rows)
        await asyncio.sleep(0.2)


async def test_a_schedule_runs_the_template_when_triggered(
    api: httpx.AsyncClient, app: FastAPI, db: asyncpg.Connection, template: str, control_worker: None
) -> None:
    resp = await api.post("/api/schedules", json={"template": template, "params": {"board": "b3"}, "cron": "0 3 * * *"})
    assert resp.status_code == 201, resp.text
    s = resp.json()
    assert s["template"] == "nightly" and s["cron"] == "0 3 * * *" and not s["paused"] and s["version"] is None
    assert s["temporal_schedule_id"] == f"boxrun-schedule-{s['id']}" and s["owner"] == f"schedule:{s['id']}"
    handle = app.state.temporal.get_schedule_handle(s["temporal_schedule_id"])
    described = await handle.describe()
    action = described.schedule.action
    assert isinstance(action, ScheduleActionStartWorkflow)
    assert action.workflow == "ScheduledRunWorkflow" and action.task_queue == CONTROL_TASK_QUEUE

    await handle.trigger()
    (job,) = await wait_for_jobs(db, s["owner"], 1)
    assert job["spec"]["script"] == "nightly b3 x1"
    assert job["spec"]["template"] == {"name": "nightly", "version": 1}
    audit = await db.fetchrow("SELECT actor, detail FROM audit_log WHERE action = 'template.run'")
    assert audit is not None and audit["actor"] == s["owner"] and audit["detail"]["via"] == f"schedule:{s['id']}"

    # the run's workflow ends; the next run (its workflow id carries the time to the second, so
    # not within the same second) takes the new version of the template (version null: the latest)
    (first_run,) = (await handle.describe()).info.recent_actions
    assert isinstance(first_run.action, ScheduleActionExecutionStartWorkflow)
    done = await app.state.temporal.get_workflow_handle(first_run.action.workflow_id).result()
    assert done["run_id"] == job["id"] and done["kind"] == "job" and done["created"] is True
    await asyncio.sleep(1.1)
    v2 = {**TEMPLATE, "job": {**TEMPLATE["job"], "script": "v2 ${{ params.board }}"}}  # type: ignore[dict-item]
    assert (await api.put("/api/templates/nightly", json=v2)).status_code == 200
    await handle.trigger()
    jobs = await wait_for_jobs(db, s["owner"], 2)
    assert [j["spec"]["script"] for j in jobs] == ["nightly b3 x1", "v2 b3"]

    listed = (await api.get("/api/schedules")).json()["data"]
    assert [x["id"] for x in listed] == [s["id"]]
    assert listed[0]["next_runs"] is None  # the list does not ask Temporal
    one = (await api.get(f"/api/schedules/{s['id']}")).json()
    assert {k: v for k, v in one.items() if k != "next_runs"} == {k: v for k, v in s.items() if k != "next_runs"}
    # the next runs as Temporal has them: 03:00 UTC on five days in a row
    runs = [datetime.fromisoformat(t) for t in one["next_runs"]]
    assert len(runs) == 5 and all((r.hour, r.minute, r.second) == (3, 0, 0) for r in runs)
    assert [b - a for a, b in itertools.pairwise(runs)] == [timedelta(days=1)] * 4


async def test_pause_unpause_delete(
    api: httpx.AsyncClient, app: FastAPI, db: asyncpg.Connection, template: str
) -> None:
    s = (
        await api.post("/api/schedules", json={"template": template, "params": {"board": "b"}, "cron": "@daily"})
    ).json()
    handle = app.state.temporal.get_schedule_handle(s["temporal_schedule_id"])
    paused = await api.post(f"/api/schedules/{s['id']}/pause")
    assert paused.status_code == 200 and paused.json()["paused"] is True
    assert (await handle.describe()).schedule.state.paused
    unpaused = await api.post(f"/api/schedules/{s['id']}/unpause")
    assert unpaused.status_code == 200 and unpaused.json()["paused"] is False
    assert not (await handle.describe()).schedule.state.paused
    # a pause made in Temporal's Web UI (here: its client) shows in GET
    await handle.pause(note="from the Web UI")
    assert (await api.get(f"/api/schedules/{s['id']}")).json()["paused"] is True
    await handle.unpause()
    # a template with a schedule is not deleted from under it
    assert_error(await api.delete("/api/templates/nightly"), 409, "conflict")
    assert (await api.delete(f"/api/schedules/{s['id']}")).status_code == 204
    with pytest.raises(RPCError) as err:
        await handle.describe()
    assert err.value.status == RPCStatusCode.NOT_FOUND
    assert_error(await api.get(f"/api/schedules/{s['id']}"), 404, "not_found")
    assert_error(await api.delete(f"/api/schedules/{s['id']}"), 404, "not_found")
    actions = [
        r["action"] for r in await db.fetch("SELECT action FROM audit_log WHERE action LIKE 'schedule.%' ORDER BY id")
    ]
    assert actions == ["schedule.create", "schedule.pause", "schedule.unpause", "schedule.delete"]
    assert (await api.delete("/api/templates/nightly")).status_code == 204


async def test_bad_schedules_are_422_with_the_reason(
    api: httpx.AsyncClient, db: asyncpg.Connection, template: str
) -> None:
    ok = {"template": template, "params": {"board": "b"}, "cron": "0 3 * * *"}
    cases: list[tuple[dict[str, Any], str]] = [
        ({**ok, "cron": "not a cron"}, "body.cron"),
        ({**ok, "cron": "61 * * * *"}, "body.cron"),
        ({**ok, "cron": ""}, "body.cron"),
        ({**ok, "cron": "0 3 * * *\x00"}, "body.cron"),
        ({**ok, "params": {}}, "body.params.board"),
        ({**ok, "params": {"board": "b", "n": "2"}}, "body.params.n"),
        ({**ok, "params": {"board": "b", "x": 1}}, "body.params.x"),
        ({**ok, "template": "nope"}, "body.template"),
        ({**ok, "version": 7}, "body.version"),
        ({**ok, "extra": 1}, "body.extra"),
    ]
    for body, field in cases:
        err = assert_error(await api.post("/api/schedules", json=body), 422, "invalid_input")
        assert err["errors"][0]["field"] == field, (body, err)
    assert await db.fetchval("SELECT count(*) FROM schedules") == 0
    for bad in ("nope", "00000000-0000-0000-0000-000000000000"):
        assert_error(await api.get(f"/api/schedules/{bad}"), 404, "not_found")


async def test_roles_and_orgs(
    api: httpx.AsyncClient, db: asyncpg.Connection, as_token: Callable[[str], httpx.AsyncClient], template: str
) -> None:
    viewer = as_token((await add_user(db, "vic", "default", Role.VIEWER)).token)
    op = as_token((await add_user(db, "olga", "default", Role.OPERATOR)).token)
    op2 = as_token((await add_user(db, "otto", "default", Role.OPERATOR)).token)
    body = {"template": template, "params": {"board": "b"}, "cron": "0 3 * * *"}
    assert_error(await viewer.post("/api/schedules", json=body), 403, "forbidden")
    s = (await op.post("/api/schedules", json=body)).json()
    assert s["created_by"] == "olga"
    assert (await viewer.get(f"/api/schedules/{s['id']}")).status_code == 200
    assert_error(await op2.post(f"/api/schedules/{s['id']}/pause"), 403, "forbidden")
    assert_error(await op2.delete(f"/api/schedules/{s['id']}"), 403, "forbidden")
    assert (await api.post(f"/api/schedules/{s['id']}/pause")).status_code == 200  # an admin may
    await add_org(db, "beta")
    other = as_token((await add_user(db, "bea", "beta", Role.ADMIN)).token)
    assert_error(await other.get(f"/api/schedules/{s['id']}"), 404, "not_found")
    assert_error(await other.delete(f"/api/schedules/{s['id']}"), 404, "not_found")
    assert (await other.get("/api/schedules")).json()["data"] == []
    assert_error(await other.post("/api/schedules", json=body), 422, "invalid_input", field="body.template")
