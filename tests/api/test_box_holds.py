"""Placement across pipeline steps in-process: `same_box_as` and `keep_box` (422s naming the
field), and a pipeline's box hold on the real Postgres and Temporal: taken as the keep_box step's
lease ends, refusing a competing job, admitting the pinned step (even ahead of the competitor
in FIFO order), shown by the box queue, 409 on box delete, released by the pipeline's release
(or its end) with the competitor woken. No worker runs: the engine's own Postgres side
(prepare_attempt, acquire, finish, release_pipeline_holds) is called as the activities would."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import asyncpg
import httpx
import pytest
from fastapi import FastAPI

from boxrun.constants import JobState, PipelineState
from boxrun.db import Q
from boxrun.messages import ReleaseResult
from boxrun.placement import acquire, finish, release_holds
from boxrun.services.pipelines import end_rows, prepare_attempt, release_pipeline_holds
from boxrun.transitions import transition
from tests.api.helpers import assert_error


@pytest.fixture
async def bench(make_box: Callable[..., Any]) -> str:
    await make_box("bench1", groups=("benches",))
    return "bench1"


def flash_test(box: str = "bench1") -> dict[str, Any]:
    """flash (keep_box) -> test (same_box_as: flash) -> poweroff (same_box_as: test)."""
    return {
        "name": "bench",
        "steps": {
            "flash": {"box": box, "keep_box": True, "script": "echo flash"},
            "test": {"needs": ["flash"], "same_box_as": "flash", "script": "echo test"},
            "poweroff": {"needs": ["test"], "same_box_as": "test", "when": "always", "script": "echo off"},
        },
    }


async def submit(api: httpx.AsyncClient, body: dict[str, Any]) -> str:
    resp = await api.post("/api/pipelines", json=body)
    assert resp.status_code == 201, resp.text
    pid: str = resp.json()["id"]
    return pid


async def attempt(db: asyncpg.Connection, app: FastAPI, pid: str, step: str, n: int = 1) -> str:
    prepared = await prepare_attempt(db, app.state.settings, pid, step, n)
    assert prepared.job is not None, prepared
    return prepared.job_id


async def queue(api: httpx.AsyncClient, box: str = "bench1") -> dict[str, Any]:
    resp = await api.get(f"/api/boxes/{box}/queue")
    assert resp.status_code == 200, resp.text
    out: dict[str, Any] = resp.json()
    return out


async def end(db: asyncpg.Connection, job_id: str, state: JobState) -> ReleaseResult:
    """The placed job runs (as its box reports) and ends in `state` (finish_job's transaction)."""
    if state != JobState.CANCELLED:
        async with db.transaction():
            await transition(db, job_id, JobState.RUNNING)
    return await finish(db, job_id, state, exit_code=0 if state == JobState.COMPLETED else 1)


# ---------------------------------------------------------------- the definition


def _steps(**steps: dict[str, Any]) -> dict[str, Any]:
    return {"steps": {name: {"box_group": "g", "script": "true", **body} for name, body in steps.items()}}


BAD: list[tuple[str, dict[str, Any], str, str]] = [
    ("not an ancestor", _steps(a={}, b={"same_box_as": "a"}), "body.steps.b.same_box_as", "not an ancestor of 'b'"),
    ("unknown step", _steps(a={}, b={"needs": ["a"], "same_box_as": "z"}), "body.steps.b.same_box_as", "unknown step"),
    ("itself", _steps(a={}, b={"needs": ["a"], "same_box_as": "b"}), "body.steps.b.same_box_as", "pinned to itself"),
    (
        "a whole matrix step",
        _steps(a={"matrix": {"v": [1, 2]}}, b={"needs": ["a"], "same_box_as": "a"}),
        "body.steps.b.same_box_as",
        "is a matrix step: name one of its steps",
    ),
    (
        "another box",
        {
            "steps": {
                "a": {"box": "bench1", "script": "true"},
                "b": {"needs": ["a"], "box": "bench2", "same_box_as": "a", "script": "true"},
            }
        },
        "body.steps.b.box",
        "leave box and box_group out, or give that step's (box 'bench1')",
    ),
    (
        "another group",
        _steps(a={}, b={"needs": ["a"], "box_group": "h", "same_box_as": "a"}),
        "body.steps.b.box_group",
        "give that step's (box_group 'g')",
    ),
    ("not a string", _steps(a={}, b={"needs": ["a"], "same_box_as": 3}), "body.steps.b.same_box_as", "valid string"),
    ("keep_box not a boolean", _steps(a={"keep_box": "yes"}), "body.steps.a.keep_box", "valid boolean"),
]


@pytest.mark.parametrize(("case", "body", "field", "words"), BAD, ids=[c[0] for c in BAD])
async def test_bad_placement_keys_are_422_naming_the_field(
    api: httpx.AsyncClient, db: asyncpg.Connection, case: str, body: dict[str, Any], field: str, words: str
) -> None:
    resp = await api.post("/api/pipelines", json=body)
    assert_error(resp, 422, "invalid_input", detail=words, field=field)
    assert await db.fetchval("SELECT count(*) FROM pipelines") == 0, case


async def test_a_matrix_step_pins_each_combination_to_its_own(api: httpx.AsyncClient, db: asyncpg.Connection) -> None:
    """With a matrix, same_box_as names one combination, usually through the matrix value: each
    test[board=X] runs where flash[board=X] ran; its box/box_group may be left out."""
    body = {
        "steps": {
            "flash": {"box_group": "g", "matrix": {"board": ["f4", "h7"]}, "keep_box": True, "script": "true"},
            "test": {
                "needs": ["flash"],
                "matrix": {"board": ["f4", "h7"]},
                "same_box_as": "flash[board=${{ matrix.board }}]",
                "script": "true",
            },
        }
    }
    pid = await submit(api, body)
    rows = await db.fetch("SELECT name, spec FROM pipeline_steps WHERE pipeline_id = $1 ORDER BY position", pid)
    specs = {r["name"]: r["spec"] for r in rows}
    assert specs["test[board=h7]"]["same_box_as"] == "flash[board=h7]"
    assert specs["test[board=f4]"]["same_box_as"] == "flash[board=f4]"
    assert specs["flash[board=f4]"]["keep_box"] is True and specs["test[board=f4]"]["keep_box"] is False
    # the pinned step took the ancestor's target (its attempts are then placed on the very box)
    assert specs["test[board=f4]"]["job"]["box_group"] == "g" and specs["test[board=f4]"]["job"]["box"] is None


# ---------------------------------------------------------------- the hold


async def test_a_hold_keeps_the_box_for_the_pinned_step_then_wakes_the_competitor(
    api: httpx.AsyncClient, app: FastAPI, db: asyncpg.Connection, bench: str
) -> None:
    pid = await submit(api, flash_test())
    flash = await attempt(db, app, pid, "flash")
    assert (await acquire(db, flash)).box == "bench1"
    # a competing job queued while flash runs waits behind it
    resp = await api.post("/api/jobs", json={"box": "bench1", "script": "echo other"})
    assert resp.status_code == 201, resp.text
    other = resp.json()["id"]
    assert (await acquire(db, other)).wait_reason == "busy"
    # flash ends: its lease goes, the pipeline's hold comes in the same transaction, and the
    # competitor is not named to wake (the hold refuses it)
    done = await end(db, flash, JobState.COMPLETED)
    assert done.released and done.wake_job_ids == []
    q = await queue(api)
    assert q["leases"] == [] and [w["job_id"] for w in q["waiting"]] == [other]
    (hold,) = q["holds"]
    assert hold["pipeline_id"] == pid and hold["step"] == "flash" and hold["steps"] == ["flash", "test"]
    assert hold["job_id"] == flash and hold["since"]
    # the competitor, though first in line, still waits; the box cannot be deleted
    assert (await acquire(db, other)).wait_reason == "busy"
    assert_error(
        await api.delete("/api/boxes/bench1"),
        409,
        "conflict",
        detail=f"held between pipeline steps by pipeline {pid} (step flash)",
    )
    # the pinned step is placed on the held box, ahead of the competitor waiting longer
    test = await attempt(db, app, pid, "test")
    row = await db.fetchrow("SELECT box_name, box_group FROM jobs WHERE id = $1", test)
    assert (row["box_name"], row["box_group"]) == ("bench1", None)
    assert (await acquire(db, test)).box == "bench1"
    assert (await end(db, test, JobState.COMPLETED)).wake_job_ids == []
    assert (await db.fetchval("SELECT state FROM jobs WHERE id = $1", other)) == "waiting_for_box"
    # every step pinned to flash ended: the workflow releases the hold; the competitor is woken
    woken = await release_pipeline_holds(db, app.state.temporal, pid, "flash", by="pipeline")
    assert woken == [other]
    assert (await queue(api))["holds"] == []
    assert await release_pipeline_holds(db, app.state.temporal, pid, "flash", by="pipeline") == []  # idempotent
    released = await db.fetchrow("SELECT released_at, released_by FROM box_holds WHERE pipeline_id = $1", pid)
    assert released["released_at"] is not None and released["released_by"] == "pipeline"
    assert (await acquire(db, other)).box == "bench1"


async def test_a_retry_of_the_kept_step_and_of_a_pinned_step_stays_on_the_held_box(
    api: httpx.AsyncClient, app: FastAPI, db: asyncpg.Connection, make_box: Callable[..., Any]
) -> None:
    """flash targets a group of two benches; once it ran on one, its retries and its pinned
    steps' attempts are placed on that one box (never the other bench of the group)."""
    await make_box("bench1", groups=("benches",))
    await make_box("bench2", groups=("benches",))
    body = flash_test()
    body["steps"]["flash"] = {"box_group": "benches", "keep_box": True, "script": "true"}
    pid = await submit(api, body)
    first = await attempt(db, app, pid, "flash")
    ran_on = (await acquire(db, first)).box
    assert ran_on in ("bench1", "bench2")
    await end(db, first, JobState.FAILED)  # a failed attempt takes the hold too
    second = await attempt(db, app, pid, "flash", 2)
    assert await db.fetchval("SELECT box_name FROM jobs WHERE id = $1", second) == ran_on
    assert (await acquire(db, second)).box == ran_on
    await end(db, second, JobState.COMPLETED)
    assert await db.fetchval("SELECT count(*) FROM box_holds WHERE pipeline_id = $1", pid) == 1
    for n in (1, 2):
        test = await attempt(db, app, pid, "test", n)
        assert await db.fetchval("SELECT box_name FROM jobs WHERE id = $1", test) == ran_on
        assert (await acquire(db, test)).box == ran_on
        await end(db, test, JobState.FAILED)
    # a job of the same group is placed on the other bench meanwhile, never on the held one
    resp = await api.post("/api/jobs", json={"box_group": "benches", "script": "true"})
    other = resp.json()["id"]
    assert (await acquire(db, other)).box == ({"bench1", "bench2"} - {ran_on}).pop()


async def test_the_pipelines_end_releases_its_holds_and_wakes_the_waiters(
    api: httpx.AsyncClient, app: FastAPI, db: asyncpg.Connection, bench: str
) -> None:
    """A pipeline ended without its workflow (a cancel that found none, the reaper) releases
    its holds with it; the reaper's query finds no hold of an ended pipeline left."""
    pid = await submit(api, flash_test())
    flash = await attempt(db, app, pid, "flash")
    await acquire(db, flash)
    other = (await api.post("/api/jobs", json={"box": "bench1", "script": "true"})).json()["id"]
    await acquire(db, other)
    await end(db, flash, JobState.COMPLETED)
    assert len((await queue(api))["holds"]) == 1
    await end_rows(db, app.state.temporal, pid, PipelineState.CANCELLED, by="reaper")
    assert (await queue(api))["holds"] == []
    assert await db.fetchval("SELECT released_by FROM box_holds WHERE pipeline_id = $1", pid) == "reaper"
    assert await db.fetch(Q.holds_of_ended_pipelines) == []
    assert (await acquire(db, other)).box == "bench1"
    resp = await api.delete("/api/boxes/bench1")
    assert resp.status_code == 409 and "lease" in resp.text  # now only the competitor's lease stands in the way


async def test_no_hold_is_taken_once_the_pipeline_ended_and_the_reaper_finds_strays(
    api: httpx.AsyncClient, app: FastAPI, db: asyncpg.Connection, bench: str
) -> None:
    pid = await submit(api, flash_test())
    flash = await attempt(db, app, pid, "flash")
    await acquire(db, flash)
    await db.execute("UPDATE pipelines SET state = 'cancelled' WHERE id = $1", pid)
    await end(db, flash, JobState.CANCELLED)
    assert await db.fetchval("SELECT count(*) FROM box_holds") == 0
    # a hold left behind by a crash between the pipeline's end and its release
    await db.execute(
        "INSERT INTO box_holds (org_id, box_id, pipeline_id, step, steps)"
        " SELECT org_id, id, $1, 'flash', ARRAY['flash'] FROM boxes WHERE name = 'bench1'",
        pid,
    )
    assert [str(r["pipeline_id"]) for r in await db.fetch(Q.holds_of_ended_pipelines)] == [pid]


async def test_a_second_pipeline_does_not_take_a_hold_on_a_held_box(
    api: httpx.AsyncClient, app: FastAPI, db: asyncpg.Connection, make_box: Callable[..., Any]
) -> None:
    """Two keep_box steps ran side by side on a box of capacity 2: the first to end holds it;
    the other pipeline takes no hold (two would refuse each other's pinned steps), so its
    pinned step waits for the first pipeline to let go."""
    await make_box("bench1")
    await db.execute("UPDATE boxes SET capacity = 2 WHERE name = 'bench1'")
    one, two = await submit(api, flash_test()), await submit(api, flash_test())
    f1, f2 = await attempt(db, app, one, "flash"), await attempt(db, app, two, "flash")
    assert (await acquire(db, f1)).box == "bench1" and (await acquire(db, f2)).box == "bench1"
    await end(db, f1, JobState.COMPLETED)
    await end(db, f2, JobState.COMPLETED)
    assert [h["pipeline_id"] for h in (await queue(api))["holds"]] == [one]
    t2 = await attempt(db, app, two, "test")
    assert (await acquire(db, t2)).wait_reason == "busy"
    t1 = await attempt(db, app, one, "test")
    assert (await acquire(db, t1)).box == "bench1"
    await end(db, t1, JobState.COMPLETED)
    # t2's job has no workflow here (prepare_attempt only writes it): the waiter named is enough
    assert await release_holds(db, one, "flash", by="pipeline") == [t2]
    assert (await acquire(db, t2)).box == "bench1"


async def test_a_pinned_step_whose_ancestor_never_ran_fails_without_running(
    api: httpx.AsyncClient, app: FastAPI, db: asyncpg.Connection, bench: str
) -> None:
    """flash was skipped (its upstream failed); cleanup (when: always, same_box_as: flash) has no
    box to go to: its attempt is stored failed with the reason and never placed anywhere."""
    body = {
        "steps": {
            "gate": {"box": bench, "script": "exit 1"},
            "flash": {"needs": ["gate"], "box": bench, "keep_box": True, "script": "echo flash"},
            "cleanup": {"needs": ["flash"], "same_box_as": "flash", "when": "always", "script": "echo off"},
        }
    }
    pid = await submit(api, body)
    prepared = await prepare_attempt(db, app.state.settings, pid, "cleanup", 1)
    assert prepared.job is None and prepared.outcome is not None
    assert prepared.outcome.state == JobState.FAILED
    assert prepared.outcome.error == "same_box_as: step 'flash' never ran on a box (or that box was deleted)"
    row = await db.fetchrow("SELECT state, box_id, box_name FROM jobs WHERE id = $1::uuid", prepared.job_id)
    assert row is not None and (row["state"], row["box_id"]) == ("failed", None)
    assert (await queue(api))["holds"] == []
