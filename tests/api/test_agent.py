"""/api/agent in-process: liveness, the claim rule and log ingest, as box agents call them."""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable

import asyncpg
import httpx
from fastapi import FastAPI

from boxrun import logbatch, placement
from boxrun.constants import JobState
from boxrun.transitions import transition
from tests.api.helpers import Box, assert_error

BATCH = {"content-type": logbatch.MEDIA_TYPE}


def batch(first_seq: int, *lines: str) -> bytes:
    data = "".join(f"{line}\n" for line in lines).encode()
    return logbatch.encode(first_seq, [(len(lines), "stdout", time.time())], data)


async def placed_job(api: httpx.AsyncClient, db: asyncpg.Connection, box: str) -> str:
    """A job submitted for `box` and granted a lease on it (state dispatching), as placement does."""
    resp = await api.post("/api/jobs", json={"script": "echo hi", "box": box})
    assert resp.status_code == 201, resp.text
    job_id = str(resp.json()["id"])
    assert (await placement.acquire(db, job_id)).box == box
    return job_id


async def test_heartbeat_reports_the_box_online(
    api: httpx.AsyncClient, make_box: Callable[..., Awaitable[Box]]
) -> None:
    box = await make_box("bench-1", live=False)
    assert (await api.get("/api/boxes/bench-1")).json()["status"] == "offline"
    resp = await box.agent.post("/api/agent/heartbeat", json={"agent_version": "9.9", "draining": False})
    assert resp.status_code == 200, resp.text
    assert resp.json()["name"] == "bench-1" and resp.json()["status"] == "online"
    assert resp.json()["agent_version"] == "9.9"
    bad = await box.agent.post("/api/agent/heartbeat", json={"agent_version": "9.9", "extra": 1})
    assert_error(bad, 422, "invalid_input", field="body.extra")


async def test_a_box_coming_back_wakes_the_jobs_waiting_for_it(
    api: httpx.AsyncClient, app: FastAPI, db: asyncpg.Connection, make_box: Callable[..., Awaitable[Box]]
) -> None:
    box = await make_box("bench-1", live=False)
    job = (await api.post("/api/jobs", json={"script": "x", "box": "bench-1"})).json()["id"]
    assert (await placement.acquire(db, job)).wait_reason == placement.WAIT_OFFLINE
    await box.agent.post("/api/agent/heartbeat", json={"agent_version": "t"})
    history = await app.state.temporal.get_workflow_handle(job).fetch_history()
    names = [e.workflow_execution_signaled_event_attributes.signal_name for e in history.events]
    assert "wake" in names


async def test_claim_of_a_job_dispatching_to_this_box(
    api: httpx.AsyncClient, db: asyncpg.Connection, make_box: Callable[..., Awaitable[Box]]
) -> None:
    box = await make_box("bench-1")
    job = await placed_job(api, db, "bench-1")
    resp = await box.agent.post(f"/api/agent/jobs/{job}/claim")
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"job_id": job, "box": "bench-1"}


async def test_claim_refusals_404_403_409(
    api: httpx.AsyncClient, db: asyncpg.Connection, make_box: Callable[..., Awaitable[Box]]
) -> None:
    a = await make_box("bench-a")
    await make_box("bench-b")
    on_b = await placed_job(api, db, "bench-b")

    for job_id in (str(uuid.uuid4()), "not-a-uuid"):
        assert_error(await a.agent.post(f"/api/agent/jobs/{job_id}/claim"), 404, "not_found", detail="not found")

    forbidden = await a.agent.post(f"/api/agent/jobs/{on_b}/claim")
    assert_error(forbidden, 403, "forbidden", detail=f"job {on_b} is not placed on box bench-a")

    on_a = await placed_job(api, db, "bench-a")
    async with db.transaction():
        await transition(db, on_a, JobState.CANCELLED, error="cancelled")
    await placement.release(db, on_a)
    late = await a.agent.post(f"/api/agent/jobs/{on_a}/claim")
    assert_error(late, 409, "conflict", detail="is cancelled")

    queued = (await api.post("/api/jobs", json={"script": "x", "box": "bench-a"})).json()["id"]
    not_yet = await a.agent.post(f"/api/agent/jobs/{queued}/claim")
    assert_error(not_yet, 409, "conflict", detail=f"job {queued} is queued and not leased to bench-a")


async def test_log_ingest_stores_lines_idempotently_and_they_read_back(
    api: httpx.AsyncClient, db: asyncpg.Connection, make_box: Callable[..., Awaitable[Box]]
) -> None:
    box = await make_box("bench-1")
    job = await placed_job(api, db, "bench-1")
    url = f"/api/agent/jobs/{job}/logs"
    first = await box.agent.post(url, content=batch(1, "one", "two"), headers=BATCH)
    assert first.status_code == 200, first.text
    assert first.json() == {"stored_through": 2}
    resent = await box.agent.post(url, content=batch(1, "one", "two"), headers=BATCH)
    assert resent.json() == {"stored_through": 2}, "a resend is a no-op"
    more = await box.agent.post(url, content=batch(3, "three"), headers=BATCH)
    assert more.json() == {"stored_through": 3}

    logs = await api.get(f"/api/jobs/{job}/logs", params={"after": 1})
    assert logs.status_code == 200
    assert [(line["seq"], line["text"], line["stream"]) for line in logs.json()["data"]] == [
        (2, "two", "stdout"),
        (3, "three", "stdout"),
    ]


async def test_log_ingest_refusals_403_404_409_413_422(
    api: httpx.AsyncClient, db: asyncpg.Connection, make_box: Callable[..., Awaitable[Box]]
) -> None:
    a = await make_box("bench-a")
    await make_box("bench-b")
    on_a = await placed_job(api, db, "bench-a")
    on_b = await placed_job(api, db, "bench-b")
    good = batch(1, "x")

    for job_id in (str(uuid.uuid4()), "nope"):
        resp = await a.agent.post(f"/api/agent/jobs/{job_id}/logs", content=good, headers=BATCH)
        assert_error(resp, 404, "not_found", detail="not found")

    other = await a.agent.post(f"/api/agent/jobs/{on_b}/logs", content=good, headers=BATCH)
    assert_error(other, 403, "forbidden", detail=f"job {on_b} is not placed on box bench-a")

    url = f"/api/agent/jobs/{on_a}/logs"
    gap = await a.agent.post(url, content=batch(5, "five"), headers=BATCH)
    assert_error(gap, 409, "conflict", detail="send from seq 1")

    for body, why in (
        (b"no header line", "one-line JSON header"),
        (b'{"first_seq": 0, "runs": []}\n', "invalid header"),
        (logbatch.encode(1, [(2, "stdout", 1.0)], b"one\n"), "the runs count 2 lines"),
        (logbatch.encode(1, [(1, "stdout", 1.0)], b"\xff\n"), "not valid UTF-8"),
    ):
        bad = await a.agent.post(url, content=body, headers=BATCH)
        assert_error(bad, 422, "invalid_input", detail=why, field="body")

    huge = await a.agent.post(url, content=b"x" * ((16 << 20) + 1), headers=BATCH)
    assert_error(huge, 413, "too_large", detail="at most 16777216 bytes")

    async def chunks():  # no Content-Length: refused while reading, at the limit
        for _ in range(17):
            yield b"x" * (1 << 20)

    streamed = await a.agent.post(url, content=chunks(), headers=BATCH)
    assert_error(streamed, 413, "too_large")
    assert (await api.get(f"/api/jobs/{on_a}")).json()["log_lines"] == 0, "nothing stored"
