"""The offer at submission, in-process: a job submitted while a box is free is leased and offered to
it by the submission itself, before its workflow exists (no worker runs here, so no run_job ever
adopts these offers unless a test does it with offer_dispatch, as run_job would). The other API
tests run with it off (tests/api/conftest.py); the whole-stack tests run with the default (on)."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import asyncpg
import httpx
import pytest
from fastapi import FastAPI
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from boxrun.activities.control import STILL_RUNNING, ControlActivities
from boxrun.activities.dispatch import DispatchActivities
from boxrun.constants import JobState
from boxrun.db import Q
from boxrun.messages import FinishInput, RunJobInput
from boxrun.temporal import connect
from tests.api.helpers import Box, assert_error
from tests.api.test_agent import session


@pytest.fixture(autouse=True)
def offer_at_submission(app: FastAPI) -> None:
    app.state.settings = app.state.settings.model_copy(update={"offer_at_submission": True})


async def submit(api: httpx.AsyncClient, **spec: Any) -> str:
    resp = await api.post("/api/jobs", json={"script": "echo hi", **spec})
    assert resp.status_code == 201, resp.text
    return str(resp.json()["id"])


async def dispatch_row(db: asyncpg.Connection, job: str) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await db.fetchrow("SELECT * FROM dispatches WHERE job_id = $1", uuid.UUID(job))
    return row


async def adopt(db: asyncpg.Connection, job: str, box: str, token: bytes = b"run-job-token") -> asyncpg.Record:
    """What run_job does first: offer the job with its task token (adopting the earlier offer)."""
    box_id = await db.fetchval("SELECT id FROM boxes WHERE name = $1", box)
    row: asyncpg.Record | None = await db.fetchrow(Q.offer_dispatch, job, box_id, token, 60.0, None, datetime.now(UTC))
    assert row is not None, "run_job may always adopt the offer made at submission"
    return row


async def test_a_job_for_a_free_box_is_offered_by_its_submission(
    api: httpx.AsyncClient, db: asyncpg.Connection, make_box: Callable[..., Awaitable[Box]]
) -> None:
    box = await make_box("bench-1")
    headers = await session(box)
    job = await submit(api, box="bench-1")
    assert (await api.get(f"/api/jobs/{job}")).json()["state"] == "dispatching", "leased by the POST itself"
    row = await dispatch_row(db, job)
    assert row is not None and row["task_token"] is None and row["claimed_at"] is None
    events = await box.agent.get("/api/agent/events", params={"wait": 5}, headers=headers)
    assert events.json() == {"events": [{"kind": "offer", "job_id": job}]}
    claim = await box.agent.post(f"/api/agent/jobs/{job}/claim", headers=headers)
    assert claim.status_code == 200, claim.text
    assert claim.json()["bundle"]["script"] == "echo hi"
    assert (await api.get(f"/api/jobs/{job}")).json()["state"] == "running"
    # a group job is placed the same way
    await make_box("bench-2", groups=("rig",))
    in_group = await submit(api, box_group="rig")
    assert (await api.get(f"/api/jobs/{in_group}")).json()["state"] == "dispatching"


async def test_jobs_the_submission_does_not_offer_are_left_to_their_workflow(
    api: httpx.AsyncClient, app: FastAPI, db: asyncpg.Connection, make_box: Callable[..., Awaitable[Box]]
) -> None:
    await make_box("bench-1")
    await make_box("asleep", live=False)
    await make_box("vault")
    first = await submit(api, box="bench-1")
    busy = await submit(api, box="bench-1")  # capacity 1, taken by `first`
    offline = await submit(api, box="asleep")
    assert (await api.get(f"/api/jobs/{first}")).json()["state"] == "dispatching"
    # no box free: nothing is written (not even the wait: that is the workflow's to record, so a
    # job whose workflow never starts is found `queued` by the reaper)
    for job in (busy, offline):
        got = (await api.get(f"/api/jobs/{job}")).json()
        assert (got["state"], got["waiting_reason"]) == ("queued", None)
        events = (await api.get(f"/api/jobs/{job}/events")).json()["data"]
        assert [e["to_state"] for e in events] == ["queued"]
    assert (await api.put("/api/secrets/TOKEN", json={"value": "v"})).status_code == 204
    secret = await submit(api, box="vault", env={"T": "${{ secrets.TOKEN }}"})
    assert (await api.get(f"/api/jobs/{secret}")).json()["state"] == "queued", "not even placed"
    # a later job for that box is not placed by its POST while one before it waits to be
    behind = await submit(api, box="vault")
    assert (await api.get(f"/api/jobs/{behind}")).json()["state"] == "queued"
    assert (
        await db.fetchval("SELECT count(*) FROM leases WHERE box_id = (SELECT id FROM boxes WHERE name = 'vault')") == 0
    )
    for job in (busy, offline, secret, behind):
        assert await dispatch_row(db, job) is None
    app.state.settings = app.state.settings.model_copy(update={"offer_at_submission": False})
    await make_box("bench-2")
    off = await submit(api, box="bench-2")
    assert (await api.get(f"/api/jobs/{off}")).json()["state"] == "queued", "offer_at_submission off"


async def test_before_run_job_adopts_it_nothing_is_relayed_and_the_result_waits_in_the_row(
    api: httpx.AsyncClient, db: asyncpg.Connection, make_box: Callable[..., Awaitable[Box]]
) -> None:
    """No task token yet: a progress report relays no heartbeat (there is no activity to relay
    to), the result is kept (not ended: the workflow decides), and run_job's adoption returns it."""
    box = await make_box("bench-1")
    headers = await session(box)
    job = await submit(api, box="bench-1")
    assert (await box.agent.post(f"/api/agent/jobs/{job}/claim", headers=headers)).status_code == 200
    beat = await box.agent.post(f"/api/agent/jobs/{job}/progress", json={"log_seq": 0, "pid": 4242})
    assert beat.status_code == 200, beat.text
    row = await dispatch_row(db, job)
    assert row is not None and row["relayed_at"] is None and row["last_heartbeat_at"] is not None
    result = await box.agent.post(f"/api/agent/jobs/{job}/result", json={"exit_code": 0, "log_seq": 0})
    assert result.status_code == 204, result.text
    assert (await api.get(f"/api/jobs/{job}")).json()["state"] == "running", "ended by the workflow, not here"
    assert await db.fetchval("SELECT released_at IS NULL FROM leases WHERE job_id = $1", uuid.UUID(job))
    again = await box.agent.post(f"/api/agent/jobs/{job}/result", json={"exit_code": 3, "log_seq": 0})
    assert again.status_code == 204, "a repeated result is a no-op"
    adopted = await adopt(db, job, "bench-1")
    assert adopted["early_result"]["result"]["exit_code"] == 0
    assert adopted["claimed_at"] is not None


async def test_a_cancelled_run_before_the_adoption_is_kept_as_a_cancellation(
    api: httpx.AsyncClient, db: asyncpg.Connection, make_box: Callable[..., Awaitable[Box]]
) -> None:
    box = await make_box("bench-1")
    job = await submit(api, box="bench-1")
    assert (await box.agent.post(f"/api/agent/jobs/{job}/claim", headers=await session(box))).status_code == 200
    body = {"exit_code": -15, "log_seq": 0, "cancelled": True}
    assert (await box.agent.post(f"/api/agent/jobs/{job}/result", json=body)).status_code == 204
    adopted = await adopt(db, job, "bench-1")
    assert adopted["early_result"] == {"failure": {"message": "cancelled", "type": "JobCancelled"}}


async def test_once_adopted_the_offer_is_run_jobs_and_an_unclaimed_one_is_open_again(
    api: httpx.AsyncClient, db: asyncpg.Connection, make_box: Callable[..., Awaitable[Box]]
) -> None:
    box = await make_box("bench-1")
    headers = await session(box)
    job = await submit(api, box="bench-1")
    await db.execute("UPDATE dispatches SET claim_deadline = now() - interval '1 s' WHERE job_id = $1", uuid.UUID(job))
    adopted = await adopt(db, job, "bench-1")
    assert adopted["claimed_at"] is None and adopted["early_result"] is None
    assert adopted["claim_deadline"] > datetime.now(UTC), "a fresh claim deadline with the adoption"
    row = await dispatch_row(db, job)
    assert row is not None and row["task_token"] == b"run-job-token"
    assert (await box.agent.post(f"/api/agent/jobs/{job}/claim", headers=headers)).status_code == 200
    # a second run_job of the same job (scheduled later) adopts a claimed offer; another box never
    other = await make_box("bench-2")
    other_id = await db.fetchval("SELECT id FROM boxes WHERE name = $1", other.name)
    stolen = await db.fetchrow(Q.offer_dispatch, job, other_id, b"elsewhere", 60.0, None, datetime.now(UTC))
    assert stolen is not None and stolen["claimed_at"] is not None  # adopted by token order, box kept
    row = await dispatch_row(db, job)
    assert row is not None and row["box_id"] != other_id


async def test_finish_waits_while_the_box_runs_a_job_no_run_job_follows(
    api: httpx.AsyncClient, app: FastAPI, db: asyncpg.Connection, make_box: Callable[..., Awaitable[Box]]
) -> None:
    """The workflow was cancelled before its run_job adopted the offer: finish_job pushes the
    cancel to the box and refuses (retryably) while the process lives; the box's end lets it free
    the lease."""
    box = await make_box("bench-1")
    headers = await session(box)
    job = await submit(api, box="bench-1")
    assert (await box.agent.post(f"/api/agent/jobs/{job}/claim", headers=headers)).status_code == 200
    control = ControlActivities(app.state.pool, app.state.storage)
    done = FinishInput(job_id=job, to_state=JobState.CANCELLED, error="cancelled", error_kind="cancelled")
    with pytest.raises(ApplicationError) as refused:
        await control.finish_job(done)
    assert refused.value.type == STILL_RUNNING and not refused.value.non_retryable
    assert (await api.get(f"/api/jobs/{job}")).json()["state"] == "running"
    assert await db.fetchval("SELECT released_at IS NULL FROM leases WHERE job_id = $1", uuid.UUID(job))
    events = await box.agent.get("/api/agent/events", params={"wait": 0}, headers=headers)
    assert events.json() == {"events": [{"kind": "cancel", "job_id": job}]}, "the cancel is pushed to the box"
    body = {"exit_code": -15, "log_seq": 0, "cancelled": True}
    assert (await box.agent.post(f"/api/agent/jobs/{job}/result", json=body)).status_code == 204
    ended = await control.finish_job(done)
    assert ended.state == JobState.CANCELLED and ended.released


async def test_finish_does_not_wait_for_a_job_its_box_no_longer_reports(
    api: httpx.AsyncClient, app: FastAPI, db: asyncpg.Connection, make_box: Callable[..., Awaitable[Box]]
) -> None:
    box = await make_box("bench-1")
    job = await submit(api, box="bench-1")
    assert (await box.agent.post(f"/api/agent/jobs/{job}/claim", headers=await session(box))).status_code == 200
    # the box is live (its agent reports), but no progress for this job came for an hour: an agent
    # that restarted killed it and reports nothing more of it
    await db.execute(
        "UPDATE dispatches SET last_heartbeat_at = now() - interval '1 hour' WHERE job_id = $1", uuid.UUID(job)
    )
    control = ControlActivities(app.state.pool, app.state.storage)
    ended = await control.finish_job(FinishInput(job_id=job, to_state=JobState.FAILED, error="box heartbeat lost"))
    assert ended.state == JobState.FAILED and ended.released


async def test_a_failed_workflow_start_withdraws_the_offer_unless_the_box_claimed_it(
    api: httpx.AsyncClient, app: FastAPI, db: asyncpg.Connection, make_box: Callable[..., Awaitable[Box]]
) -> None:
    box = await make_box("bench-1")
    headers = await session(box)
    good = app.state.temporal
    refusing = await connect(app.state.settings.temporal_address, namespace=f"missing-{uuid.uuid4().hex[:8]}")

    class ClaimsThenRefuses:
        """A Temporal client (mock) whose start_workflow lets the box claim the offer first, then
        fails as the real refusal (an unknown namespace) does."""

        def __getattr__(self, name: str) -> Any:
            return getattr(good, name)

        async def start_workflow(self, *args: Any, **kwargs: Any) -> Any:
            job = kwargs["id"]
            assert (await box.agent.post(f"/api/agent/jobs/{job}/claim", headers=headers)).status_code == 200
            return await refusing.start_workflow(*args, **kwargs)

    app.state.temporal = refusing
    try:
        resp = await api.post("/api/jobs", json={"script": "x", "box": "bench-1"})
    finally:
        app.state.temporal = good
    assert_error(resp, 503, "unavailable", detail="workflow engine is unavailable")
    assert await db.fetchval("SELECT count(*) FROM jobs") == 0, "job, lease and offer withdrawn"
    assert await db.fetchval("SELECT count(*) FROM leases") == 0
    # the box took it before the start failed: accepted, running, for the reaper to start its workflow
    app.state.temporal = ClaimsThenRefuses()
    try:
        kept = await api.post("/api/jobs", json={"script": "x", "box": "bench-1"})
    finally:
        app.state.temporal = good
    assert kept.status_code == 201, kept.text
    job = kept.json()["id"]
    assert (await api.get(f"/api/jobs/{job}")).json()["state"] == "running"
    stale = [str(r["id"]) for r in await db.fetch(Q.stale_queued_jobs, 0.0)]
    assert job in stale, "the reaper's look for jobs without a workflow finds it"
    # a cancel now cannot reach a workflow: the box is told, and the job is not ended under it
    cancel = await api.post(f"/api/jobs/{job}/cancel")
    assert cancel.status_code == 202, cancel.text
    assert cancel.json()["state"] == "running"
    row = await dispatch_row(db, job)
    assert row is not None and row["cancel_requested_at"] is not None


async def test_finish_closes_an_offer_the_box_has_not_claimed(
    api: httpx.AsyncClient, app: FastAPI, db: asyncpg.Connection, make_box: Callable[..., Awaitable[Box]]
) -> None:
    """A workflow ended before its run_job adopted an unclaimed offer (cancelled from the Temporal
    UI, say: no API cancel came first): the offer closes with the job's end, so the box can no
    longer claim it, nor keep seeing it."""
    box = await make_box("bench-1")
    headers = await session(box)
    job = await submit(api, box="bench-1")
    control = ControlActivities(app.state.pool, app.state.storage)
    ended = await control.finish_job(FinishInput(job_id=job, to_state=JobState.CANCELLED, error="cancelled"))
    assert ended.state == JobState.CANCELLED and ended.released
    assert (await box.agent.get("/api/agent/events", params={"wait": 0}, headers=headers)).json() == {"events": []}
    refused = await box.agent.post(f"/api/agent/jobs/{job}/claim", headers=headers)
    assert_error(refused, 409, "conflict")


async def test_a_lost_run_job_before_the_adoption_lets_the_workflow_offer_again(
    api: httpx.AsyncClient, db: asyncpg.Connection, make_box: Callable[..., Awaitable[Box]]
) -> None:
    """run_job died (its worker killed) before writing its token: withdraw_dispatch says the job
    may be offered again, claimed or not, and the next run_job adopts it; the box keeps running it."""
    await make_box("bench-1")
    unclaimed = await submit(api, box="bench-1")
    assert await db.fetchval(Q.withdraw_dispatch, unclaimed) is True
    adopted = await adopt(db, unclaimed, "bench-1")
    assert adopted["expired_at"] is None and adopted["claimed_at"] is None, "open again for the box"
    other = await make_box("bench-2")
    claimed = await submit(api, box="bench-2")
    assert (await other.agent.post(f"/api/agent/jobs/{claimed}/claim", headers=await session(other))).status_code == 200
    assert await db.fetchval(Q.withdraw_dispatch, claimed) is True, "claimed, but no run_job ever held it"
    row = await dispatch_row(db, claimed)
    assert row is not None and row["expired_at"] is None and row["claimed_at"] is not None
    assert (await adopt(db, claimed, "bench-2"))["claimed_at"] is not None


async def test_run_job_returns_or_raises_what_the_box_reported_before_it(
    api: httpx.AsyncClient, app: FastAPI, db: asyncpg.Connection, make_box: Callable[..., Awaitable[Box]]
) -> None:
    box = await make_box("bench-1")
    headers = await session(box)
    acts = DispatchActivities(app.state.pool, claim_timeout_s=60)
    env = ActivityEnvironment(client=app.state.temporal)
    done = await submit(api, box="bench-1")
    assert (await box.agent.post(f"/api/agent/jobs/{done}/claim", headers=headers)).status_code == 200
    body = {"exit_code": 0, "log_seq": 0}
    assert (await box.agent.post(f"/api/agent/jobs/{done}/result", json=body)).status_code == 204
    result = await env.run(acts.run_job, RunJobInput(job_id=done, box="bench-1"))
    assert (result.exit_code, result.timed_out, result.error, result.artifacts) == (0, False, None, 0)

    other = await make_box("bench-2")  # bench-1 stays leased to `done` (no workflow ends it here)
    cancelled = await submit(api, box="bench-2")
    assert (
        await other.agent.post(f"/api/agent/jobs/{cancelled}/claim", headers=await session(other))
    ).status_code == 200
    body = {"exit_code": -15, "log_seq": 0, "cancelled": True}
    assert (await other.agent.post(f"/api/agent/jobs/{cancelled}/result", json=body)).status_code == 204
    with pytest.raises(ApplicationError) as raised:
        await env.run(acts.run_job, RunJobInput(job_id=cancelled, box="bench-2"))
    assert (raised.value.type, raised.value.non_retryable) == ("JobCancelled", True)


async def test_a_secret_gone_at_the_claim_of_an_unadopted_offer_is_kept_for_run_job(
    api: httpx.AsyncClient, db: asyncpg.Connection, make_box: Callable[..., Awaitable[Box]]
) -> None:
    """Jobs referring to secrets are not offered at submission; should one be (its spec changed
    under it here, by hand), the claim fails it the same way: the reason kept for run_job."""
    box = await make_box("bench-1")
    job = await submit(api, box="bench-1")
    await db.execute(
        "UPDATE jobs SET spec = jsonb_set(spec, '{env}', $2::jsonb) WHERE id = $1",
        uuid.UUID(job),
        {"T": "${{ secrets.GONE }}"},
    )
    refused = await box.agent.post(f"/api/agent/jobs/{job}/claim", headers=await session(box))
    assert_error(refused, 409, "conflict", detail="GONE")
    row = await dispatch_row(db, job)
    assert row is not None and row["early_result"]["failure"]["type"] == "SecretUnavailable"
    assert "GONE" in row["early_result"]["failure"]["message"]


async def test_a_cancel_without_a_workflow_frees_the_lease_of_an_unclaimed_offer(
    api: httpx.AsyncClient, app: FastAPI, db: asyncpg.Connection, make_box: Callable[..., Awaitable[Box]]
) -> None:
    """The API died between the offer and the workflow's start: the cancel finds no workflow (here:
    a client of a namespace that has none of them) and ends the job itself, closing the offer and
    freeing its lease."""
    box = await make_box("bench-1")
    headers = await session(box)
    job = await submit(api, box="bench-1")
    good = app.state.temporal
    app.state.temporal = await connect(app.state.settings.temporal_address, namespace=f"missing-{uuid.uuid4().hex[:8]}")
    try:
        resp = await api.post(f"/api/jobs/{job}/cancel")
    finally:
        app.state.temporal = good
    assert resp.status_code == 202 and resp.json()["state"] == "cancelled", resp.text
    assert await db.fetchval("SELECT released_at IS NOT NULL FROM leases WHERE job_id = $1", uuid.UUID(job))
    assert_error(await box.agent.post(f"/api/agent/jobs/{job}/claim", headers=headers), 409, "conflict")


async def test_a_failed_workflow_start_leaves_nothing_when_no_box_was_free(
    api: httpx.AsyncClient, app: FastAPI, db: asyncpg.Connection, make_box: Callable[..., Awaitable[Box]]
) -> None:
    await make_box("bench-1")
    first = await submit(api, box="bench-1")  # takes the box
    good = app.state.temporal
    app.state.temporal = await connect(app.state.settings.temporal_address, namespace=f"missing-{uuid.uuid4().hex[:8]}")
    try:
        resp = await api.post("/api/jobs", json={"script": "x", "box": "bench-1"})
    finally:
        app.state.temporal = good
    assert_error(resp, 503, "unavailable", detail="workflow engine is unavailable")
    assert [str(r["id"]) for r in await db.fetch("SELECT id FROM jobs")] == [first], "no job left waiting forever"
