"""/api/agent in-process: session, liveness, offers, the claim rule, logs and artifacts, as agents call them."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import asyncpg
import httpx
from fastapi import FastAPI

from boxrun import logbatch, placement
from boxrun.constants import JobState
from boxrun.db import Q
from boxrun.services import dispatch
from boxrun.services.identity import NodeBox
from tests.api.helpers import Box, assert_error
from tests.conftest import wait_for

BATCH = {"content-type": logbatch.MEDIA_TYPE}


def batch(first_seq: int, *lines: str) -> bytes:
    data = "".join(f"{line}\n" for line in lines).encode()
    return logbatch.encode(first_seq, [(len(lines), "stdout", time.time())], data)


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


async def offered_job(
    api: httpx.AsyncClient, db: asyncpg.Connection, box: str, *, claim_s: float = 60, env: dict | None = None
) -> str:
    """A placed job offered to `box` as run_job offers it (the task token here is not Temporal's:
    relaying a heartbeat with it fails, which the claim tolerates)."""
    resp = await api.post("/api/jobs", json={"script": "echo hi", "box": box, "env": env or {}})
    assert resp.status_code == 201, resp.text
    job_id = str(resp.json()["id"])
    assert (await placement.acquire(db, job_id)).box == box
    box_id = await db.fetchval("SELECT id FROM boxes WHERE name = $1", box)
    # run_job offers with the submission's request id (boxrun.propagation carries it there)
    request_id = resp.headers["x-request-id"]
    await db.fetchrow(Q.offer_dispatch, job_id, box_id, b"not-a-task-token", claim_s, request_id, datetime.now(UTC))
    return job_id


async def session(box: Box) -> dict[str, str]:
    resp = await box.agent.post("/api/agent/session", json={"agent_version": "t", "slots": 1})
    assert resp.status_code == 201, resp.text
    return {"X-Boxrun-Session": resp.json()["session"]}


async def test_me_names_the_box_of_the_token(make_box: Callable[..., Awaitable[Box]]) -> None:
    box = await make_box("bench-1")
    resp = await box.agent.get("/api/agent/me")
    assert resp.status_code == 200, resp.text
    assert resp.json()["box"] == "bench-1" and resp.json()["capacity"] == 1


async def test_one_live_agent_per_box(db: asyncpg.Connection, make_box: Callable[..., Awaitable[Box]]) -> None:
    box = await make_box("bench-1", live=False)
    first = await session(box)
    await box.agent.post("/api/agent/heartbeat", json={"agent_version": "t"}, headers=first)
    second = await box.agent.post("/api/agent/session", json={"agent_version": "t", "slots": 1})
    assert_error(second, 409, "conflict", detail="box bench-1 already has a live agent")
    # the same installation restarting names its previous session and takes over at once
    again = await box.agent.post(
        "/api/agent/session",
        json={"agent_version": "t", "slots": 1, "previous_session": first["X-Boxrun-Session"]},
    )
    assert again.status_code == 201, again.text
    stale = await box.agent.get("/api/agent/events", params={"wait": 0}, headers=first)
    assert_error(stale, 409, "conflict", detail="another agent took over")
    seen = await box.agent.post("/api/agent/heartbeat", json={"agent_version": "new"}, headers=again_headers(again))
    assert seen.status_code == 200, seen.text
    beat = await box.agent.post("/api/agent/heartbeat", json={"agent_version": "stale"}, headers=first)
    assert_error(beat, 409, "conflict", detail="another agent took over")
    garbled = await box.agent.post(
        "/api/agent/heartbeat", json={"agent_version": "stale"}, headers={"X-Boxrun-Session": "not-a-session"}
    )
    assert_error(garbled, 409, "conflict")
    live = again.json()["session"]
    for spelling in (live.upper(), "{" + live + "}", "urn:uuid:" + live):  # the live session, spelt otherwise
        odd = await box.agent.post(
            "/api/agent/heartbeat", json={"agent_version": "odd"}, headers={"X-Boxrun-Session": spelling}
        )
        assert_error(odd, 409, "conflict")
    # a refused report changed nothing: the live agent's report stands
    assert seen.json()["agent_version"] == "new"
    assert await db.fetchval("SELECT agent_version FROM boxes WHERE name = 'bench-1'") == "new"


def again_headers(answer: httpx.Response) -> dict[str, str]:
    return {"X-Boxrun-Session": answer.json()["session"]}


async def test_claim_returns_the_bundle_once_and_the_job_runs(
    api: httpx.AsyncClient, db: asyncpg.Connection, make_box: Callable[..., Awaitable[Box]]
) -> None:
    box = await make_box("bench-1")
    headers = await session(box)
    job = await offered_job(api, db, "bench-1", env={"DB_PASSWORD": "s3cret"})
    events = await box.agent.get("/api/agent/events", params={"wait": 5}, headers=headers)
    assert events.json() == {"events": [{"kind": "offer", "job_id": job}]}, "a pending offer answers at once"
    resp = await box.agent.post(f"/api/agent/jobs/{job}/claim", headers=headers)
    assert resp.status_code == 200, resp.text
    assert resp.json() == {
        "job_id": job,
        "bundle": {
            "script": "echo hi",
            "env": {"DB_PASSWORD": "s3cret"},
            "files": [],
            "timeout_s": 3600,
            "cancel_grace_s": 10.0,
            "mask": [],  # no secret referenced (tests/api/test_secrets.py)
            "request_id": await db.fetchval("SELECT request_id FROM dispatches WHERE job_id = $1", job),
        },
    }
    assert (await api.get(f"/api/jobs/{job}")).json()["state"] == "running"
    again = await box.agent.post(f"/api/agent/jobs/{job}/claim", headers=headers)
    assert_error(again, 409, "conflict", detail="already claimed")
    bundle = await box.agent.get(f"/api/agent/jobs/{job}/bundle")
    assert bundle.status_code == 200 and bundle.json()["env"] == {"DB_PASSWORD": "s3cret"}
    assert (await box.agent.get("/api/agent/events", params={"wait": 0}, headers=headers)).json() == {"events": []}


async def test_another_boxs_job_does_not_exist_for_this_token(
    api: httpx.AsyncClient, db: asyncpg.Connection, make_box: Callable[..., Awaitable[Box]]
) -> None:
    a = await make_box("bench-a")
    b = await make_box("bench-b")
    a_session = await session(a)
    on_b = await offered_job(api, db, "bench-b")
    for job_id in (str(uuid.uuid4()), "not-a-uuid", on_b):
        assert_error(await a.agent.post(f"/api/agent/jobs/{job_id}/claim", headers=a_session), 404, "not_found")
    assert (await b.agent.post(f"/api/agent/jobs/{on_b}/claim", headers=await session(b))).status_code == 200
    # claimed by B: for A's token it still does not exist, whatever A asks
    assert_error(await a.agent.get(f"/api/agent/jobs/{on_b}/bundle"), 404, "not_found")
    assert_error(await a.agent.post(f"/api/agent/jobs/{on_b}/progress", json={"log_seq": 0}), 404, "not_found")
    assert_error(
        await a.agent.post(f"/api/agent/jobs/{on_b}/logs", content=batch(1, "forged"), headers=BATCH), 404, "not_found"
    )
    assert_error(await a.agent.post(f"/api/agent/jobs/{on_b}/artifacts", json={"entries": []}), 404, "not_found")
    assert_error(await a.agent.post(f"/api/agent/jobs/{on_b}/result", json={"exit_code": 0}), 404, "not_found")
    assert (await a.agent.get("/api/agent/events", params={"wait": 0}, headers=a_session)).json() == {"events": []}


async def test_claim_after_the_deadline_or_a_cancel_is_409(
    api: httpx.AsyncClient, db: asyncpg.Connection, make_box: Callable[..., Awaitable[Box]]
) -> None:
    box = await make_box("bench-1")
    headers = await session(box)
    late = await offered_job(api, db, "bench-1", claim_s=0)
    assert_error(
        await box.agent.post(f"/api/agent/jobs/{late}/claim", headers=headers), 409, "conflict", detail="deadline"
    )
    await placement.finish(db, late, JobState.FAILED, error="x")
    cancelled = await offered_job(api, db, "bench-1")
    await dispatch.request_cancel(db, cancelled)
    refused = await box.agent.post(f"/api/agent/jobs/{cancelled}/claim", headers=headers)
    assert_error(refused, 409, "conflict", detail="cancelled")


async def test_events_long_poll_wakes_on_notify(
    app: FastAPI, api: httpx.AsyncClient, db: asyncpg.Connection, make_box: Callable[..., Awaitable[Box]]
) -> None:
    box = await make_box("bench-1")
    headers = await session(box)
    started = time.monotonic()
    empty = await box.agent.get("/api/agent/events", params={"wait": 0.3}, headers=headers)
    assert empty.json() == {"events": []} and time.monotonic() - started >= 0.3
    poll = asyncio.create_task(box.agent.get("/api/agent/events", params={"wait": 20}, headers=headers))
    await wait_for(lambda: app.state.dispatch_hub.waiting_boxes == 1, what="the long-poll to wait")
    job = await offered_job(api, db, "bench-1")
    await dispatch.notify(db, await db.fetchval("SELECT id FROM boxes WHERE name = 'bench-1'"), job, "offer")
    got = await asyncio.wait_for(poll, 5)
    assert got.json() == {"events": [{"kind": "offer", "job_id": job}]}
    assert time.monotonic() - started < 10


async def test_a_held_long_poll_is_the_boxs_liveness(
    app: FastAPI, api: httpx.AsyncClient, db: asyncpg.Connection, make_box: Callable[..., Awaitable[Box]]
) -> None:
    held = app.state.held_polls
    await held.stop()  # this test runs the rounds itself
    box = await make_box("bench-1", live=False)
    job = (await api.post("/api/jobs", json={"script": "x", "box": "bench-1"})).json()["id"]
    assert (await placement.acquire(db, job)).wait_reason == placement.WAIT_OFFLINE
    me = await box.agent.get("/api/agent/me")
    assert me.json()["poll_renews_liveness"] is True
    headers = await session(box)
    # the session's report has lapsed (say the API was away): the box is offline again
    await db.execute("UPDATE boxes SET last_seen_at = now() - interval '1 hour' WHERE name = 'bench-1'")
    # a poll answered at once was never held: it renews nothing
    assert (await box.agent.get("/api/agent/events", params={"wait": 0}, headers=headers)).status_code == 200
    assert await held.renew() == 0
    poll = asyncio.create_task(box.agent.get("/api/agent/events", params={"wait": 20}, headers=headers))
    await wait_for(lambda: held.held_boxes == 1, what="the long-poll to be held")
    # no heartbeat was sent: the held poll alone brings the box online, and wakes its waiting job
    assert await held.renew() == 1
    assert (await api.get("/api/boxes/bench-1")).json()["status"] == "online"
    handle = app.state.temporal.get_workflow_handle(job)

    async def woken() -> bool:
        history = await handle.fetch_history()
        return "wake" in [e.workflow_execution_signaled_event_attributes.signal_name for e in history.events]

    await wait_for(woken, what="the waiting job's wake-up")
    assert await held.renew() == 1  # still held: renewed at every round
    poll.cancel()  # the agent goes away
    await asyncio.gather(poll, return_exceptions=True)
    await wait_for(lambda: held.held_boxes == 0, what="the hold to end with its request")
    seen = await db.fetchval("SELECT last_seen_at FROM boxes WHERE name = 'bench-1'")
    assert await held.renew() == 0  # a poll that ended owes nothing: a dead agent's box lapses
    assert await db.fetchval("SELECT last_seen_at FROM boxes WHERE name = 'bench-1'") == seen
    # a poll of a session that is not the box's live one renews nothing
    box_id = await db.fetchval("SELECT id FROM boxes WHERE name = 'bench-1'")
    await db.execute("UPDATE boxes SET last_seen_at = now() - interval '1 hour' WHERE id = $1", box_id)
    with held.hold(box_id, uuid.uuid4()):
        assert await held.renew() == 0
    assert (await api.get("/api/boxes/bench-1")).json()["status"] == "offline"


async def test_the_bundle_names_the_submission_request_id(
    api: httpx.AsyncClient, db: asyncpg.Connection, make_box: Callable[..., Awaitable[Box]]
) -> None:
    box = await make_box("bench-rid")
    job = await offered_job(api, db, box.name)
    submitted = await db.fetchval("SELECT request_id FROM dispatches WHERE job_id = $1", job)
    assert submitted and len(submitted) == 32  # the id the API made for the POST
    claimed = await box.agent.post(f"/api/agent/jobs/{job}/claim", headers=await session(box))
    assert claimed.status_code == 200, claimed.text
    assert claimed.json()["bundle"]["request_id"] == submitted
    again = await box.agent.get(f"/api/agent/jobs/{job}/bundle")
    assert again.json()["request_id"] == submitted


async def claimed_job(api: httpx.AsyncClient, db: asyncpg.Connection, box: Box) -> str:
    job = await offered_job(api, db, box.name)
    resp = await box.agent.post(f"/api/agent/jobs/{job}/claim", headers=await session(box))
    assert resp.status_code == 200, resp.text
    return job


async def test_log_ingest_stores_lines_idempotently_and_they_read_back(
    api: httpx.AsyncClient, db: asyncpg.Connection, make_box: Callable[..., Awaitable[Box]]
) -> None:
    box = await make_box("bench-1")
    job = await claimed_job(api, db, box)
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


async def test_log_ingest_refusals_404_409_413_422(
    api: httpx.AsyncClient, db: asyncpg.Connection, make_box: Callable[..., Awaitable[Box]]
) -> None:
    a = await make_box("bench-a")
    b = await make_box("bench-b")
    on_a = await claimed_job(api, db, a)
    on_b = await claimed_job(api, db, b)
    good = batch(1, "x")

    for job_id in (str(uuid.uuid4()), "nope", on_b):
        resp = await a.agent.post(f"/api/agent/jobs/{job_id}/logs", content=good, headers=BATCH)
        assert_error(resp, 404, "not_found", detail="not found")

    url = f"/api/agent/jobs/{on_a}/logs"
    gap = await a.agent.post(url, content=batch(5, "five"), headers=BATCH)
    assert_error(gap, 409, "conflict", detail="send from seq 1")

    for body, why in (
        (b"no header line", "one-line JSON header"),
        (b'{"first_seq": 0, "runs": []}\n', "invalid header"),
        (logbatch.encode(1, [(2, "stdout", 1.0)], b"one\n"), "the runs count 2 lines"),
        (logbatch.encode(1, [(1, "stdout", 1.0)], b"\xff\n"), "not valid UTF-8"),
        (logbatch.encode(1, [(1, "system", 1.0)], b"boxrun: forged\n"), "system stream"),
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


async def test_after_the_end_only_a_contiguous_tail_within_the_grace_is_taken(
    app: FastAPI, api: httpx.AsyncClient, db: asyncpg.Connection, make_box: Callable[..., Awaitable[Box]]
) -> None:
    box = await make_box("bench-1")
    job = await claimed_job(api, db, box)
    url = f"/api/agent/jobs/{job}/logs"
    assert (await box.agent.post(url, content=batch(1, "one"), headers=BATCH)).status_code == 200
    await placement.finish(db, job, JobState.FAILED, error="box heartbeat lost")
    tail = await box.agent.post(url, content=batch(2, "why it failed"), headers=BATCH)
    assert tail.status_code == 200 and tail.json() == {"stored_through": 2}, "the buffered tail explains the failure"
    gap = await box.agent.post(url, content=batch(5, "not contiguous"), headers=BATCH)
    assert_error(gap, 409, "conflict", detail="send from seq 3")
    app.state.settings = app.state.settings.model_copy(update={"log_tail_grace_s": 0})
    late = await box.agent.post(url, content=batch(3, "too late"), headers=BATCH)
    assert_error(late, 409, "conflict", detail="its log is closed")
    assert (await api.get(f"/api/jobs/{job}")).json()["log_lines"] == 2


async def test_manifest_refuses_names_the_store_cannot_take_and_presigns_the_rest(
    api: httpx.AsyncClient, db: asyncpg.Connection, make_box: Callable[..., Awaitable[Box]]
) -> None:
    box = await make_box("bench-1")
    job = await claimed_job(api, db, box)
    sha = "ab" * 32
    names = ["good/result.json", "bad\r\nname", "x" * 1025, "../escape", "é" * 600]
    resp = await box.agent.post(
        f"/api/agent/jobs/{job}/artifacts",
        json={"entries": [{"path": n, "size": 2, "sha256": sha} for n in names], "done": True},
    )
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert [t["path"] for t in body["targets"]] == ["good/result.json"]
    assert body["targets"][0]["headers"]["Content-Length"] == "2"
    assert {r["path"]: r["reason"] for r in body["refused"]} == {
        "bad\r\nname": "control characters",
        "x" * 1025: "over 1024 bytes",
        "../escape": "path '../escape' must stay inside the workspace (no '..')",
        "é" * 600: "over 1024 bytes",
    }
    assert (await api.get(f"/api/jobs/{job}")).json()["state"] == "uploading_artifacts"
    rows = await db.fetch("SELECT path, status FROM artifact_manifest WHERE job_id = $1 ORDER BY path", job)
    assert sorted(r["status"] for r in rows) == ["pending", "refused", "refused", "refused", "refused"]


async def test_manifest_past_the_cap_is_413_with_the_reason(
    app: FastAPI, api: httpx.AsyncClient, db: asyncpg.Connection, make_box: Callable[..., Awaitable[Box]]
) -> None:
    box = await make_box("bench-1")
    job = await claimed_job(api, db, box)
    app.state.settings = app.state.settings.model_copy(update={"max_artifacts_per_job": 2})
    entries = [{"path": f"f{i}", "size": 1, "sha256": "ab" * 32} for i in range(3)]
    resp = await box.agent.post(f"/api/agent/jobs/{job}/artifacts", json={"entries": entries})
    assert_error(resp, 413, "too_large", detail="too many artifacts: a job may keep at most 2")


async def node_box(db: asyncpg.Connection, box: Box) -> NodeBox:
    row = await db.fetchrow("SELECT id, name, org_id FROM boxes WHERE name = $1", box.name)
    return NodeBox(id=row["id"], name=row["name"], org_id=row["org_id"])


async def test_a_result_temporal_did_not_take_ends_nothing(
    api: httpx.AsyncClient, db: asyncpg.Connection, make_box: Callable[..., Awaitable[Box]]
) -> None:
    """The API records a clean end only after Temporal took the result: here the task token is
    not Temporal's, so the result is refused (503, the agent retries) and the job stays running
    with its lease."""
    box = await make_box("bench-1")
    job = await claimed_job(api, db, box)
    resp = await box.agent.post(f"/api/agent/jobs/{job}/result", json={"exit_code": 0, "log_seq": 0})
    assert resp.status_code == 503, resp.text
    assert (await api.get(f"/api/jobs/{job}")).json()["state"] == "running"
    assert await db.fetchval("SELECT released_at IS NULL FROM leases WHERE job_id = $1", uuid.UUID(job))


async def test_a_clean_end_completes_the_job_frees_its_box_and_names_its_waiters(
    api: httpx.AsyncClient, db: asyncpg.Connection, make_box: Callable[..., Awaitable[Box]]
) -> None:
    box = await make_box("bench-1")
    job = await claimed_job(api, db, box)
    waiting = (await api.post("/api/jobs", json={"script": "x", "box": "bench-1"})).json()["id"]
    assert (await placement.acquire(db, waiting)).box is None
    ended = await dispatch.end_clean_exit(db, job, await node_box(db, box))
    assert ended is not None and ended.released and ended.wake_job_ids == [waiting]
    got = (await api.get(f"/api/jobs/{job}")).json()
    assert (got["state"], got["exit_code"]) == ("completed", 0)
    [end] = [e for e in (await api.get(f"/api/jobs/{job}/events")).json()["data"] if e["to_state"] == "completed"]
    assert end["detail"] == {"box": "bench-1", "via": "result", "exit_code": 0}
    # the workflow's finish_job afterwards absorbs: the state stays, nothing is freed twice
    again = await placement.finish(db, job, JobState.COMPLETED, exit_code=0)
    assert (again.state, again.released, again.wake_job_ids) == (JobState.COMPLETED, False, [])


async def test_a_clean_end_leaves_an_ended_or_unclaimed_job_alone(
    api: httpx.AsyncClient, db: asyncpg.Connection, make_box: Callable[..., Awaitable[Box]]
) -> None:
    box = await make_box("bench-1")
    cancelled = await claimed_job(api, db, box)
    await placement.finish(db, cancelled, JobState.CANCELLED, error="cancelled")
    kept = await dispatch.end_clean_exit(db, cancelled, await node_box(db, box))
    assert kept is not None and kept.state == JobState.CANCELLED, "terminal states absorb"
    assert (await api.get(f"/api/jobs/{cancelled}")).json()["state"] == "cancelled"

    offered = await offered_job(api, db, box.name)  # dispatching, never claimed
    assert await dispatch.end_clean_exit(db, offered, await node_box(db, box)) is None
    assert (await api.get(f"/api/jobs/{offered}")).json()["state"] == "dispatching"
    assert await db.fetchval("SELECT released_at IS NULL FROM leases WHERE job_id = $1", uuid.UUID(offered))
