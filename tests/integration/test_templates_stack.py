"""Templates, CI triggers and schedules on a whole real stack (Temporal dev server, PostgreSQL, S3,
API, control worker, one agent running real processes on box `local-1`, capacity 1): a queued
template run keeps the version it was made from while the template is edited; a GitHub-signed
and a GitLab-token trigger run the template on the box (bad signature 401, replay the same run);
a schedule's run, fired through Temporal (not waited for), runs on the box."""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from boxrun.temporal import connect as temporal_connect
from tests.conftest import wait_for
from tests.integration.faultstack import FaultStack, fault_stack
from tests.integration.jobs import replay, submit, wait_terminal

pytestmark = pytest.mark.e2e

BOX = "local-1"
# Holds the box until $GATE exists (at most 120 s).
HOLD = """
import os, pathlib, time
gate = pathlib.Path(os.environ["GATE"])
deadline = time.monotonic() + 120
while not gate.exists() and time.monotonic() < deadline:
    time.sleep(0.05)
raise SystemExit(0 if gate.exists() else 1)
"""
CI = {
    "description": "build and test a commit",
    "params": {
        "ref": {"type": "string"},
        "sha": {"type": "string"},
        "repo": {"type": "string"},
        "event": {"type": "string", "required": False},
    },
    "job": {
        "box": BOX,
        "script": "print('ci ${{ params.repo }} ${{ params.ref }} ${{ params.sha }} ${{ params.event }}')",
    },
}
PUSH = {
    "ref": "refs/heads/main",
    "after": "0123456789abcdef0123456789abcdef01234567",
    "repository": {"full_name": "acme/fw"},
    "pusher": {"name": "octo"},
}
GITLAB_PUSH = {
    "object_kind": "push",
    "ref": "refs/heads/dev",
    "checkout_sha": "2222222222222222222222222222222222222222",
    "user_username": "gl-user",
    "project": {"path_with_namespace": "acme/fw"},
}


@pytest.fixture(scope="module")
async def fs(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[FaultStack]:
    async with fault_stack(tmp_path_factory.mktemp("templates") / "dev", boxes=1, capacity=1) as stack:
        yield stack


@pytest.fixture
async def api(fs: FaultStack) -> AsyncIterator[httpx.AsyncClient]:
    async with fs.api() as client:
        yield client


async def put(api: httpx.AsyncClient, name: str, body: dict[str, Any]) -> dict[str, Any]:
    resp = await api.put(f"/api/templates/{name}", json=body)
    assert resp.status_code in (200, 201), resp.text
    out: dict[str, Any] = resp.json()
    return out


async def printed(api: httpx.AsyncClient, job_id: str) -> list[str]:
    return [line["text"] for line in await replay(api, job_id) if line["stream"] == "stdout"]


async def test_a_queued_run_keeps_its_version(api: httpx.AsyncClient, tmp_path: Path) -> None:
    body: dict[str, Any] = {
        "params": {"board": {"type": "choice", "choices": ["b1", "b2"]}},
        "job": {"box": BOX, "script": "print('v1 flashing ${{ params.board }}')"},
    }
    assert (await put(api, "flash", body))["version"] == 1
    gate = tmp_path / "gate"
    holder = await submit(api, HOLD, env={"GATE": str(gate)}, timeout_s=120)
    try:
        await _queued_run_keeps_its_version(api, body, holder["id"], gate)
    finally:
        gate.write_text("go")  # never leave the box held for the next test


async def _queued_run_keeps_its_version(api: httpx.AsyncClient, body: dict[str, Any], holder: str, gate: Path) -> None:
    await wait_for(lambda: _state_is(api, holder, "running"), timeout=60, interval=0.1, what="the holder to run")
    # the box is busy: the template run queues
    resp = await api.post("/api/templates/flash/run", json={"params": {"board": "b2"}})
    assert resp.status_code == 201, resp.text
    run = resp.json()
    assert run["kind"] == "job" and run["job"]["template"] == {"name": "flash", "version": 1}
    # bad params: 422 naming the param, nothing made
    bad = await api.post("/api/templates/flash/run", json={"params": {"board": "b9"}})
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "body.params.board", bad.text
    # the template changes while the run waits
    body["job"] = {"box": BOX, "script": "print('v2 erasing ${{ params.board }}')"}
    assert (await put(api, "flash", body))["version"] == 2
    assert (await api.get(f"/api/jobs/{run['job']['id']}")).json()["state"] in ("queued", "waiting_for_box")
    gate.write_text("go")
    assert (await wait_terminal(api, holder, 90))["state"] == "completed"
    done = await wait_terminal(api, run["job"]["id"], 90)
    assert done["state"] == "completed" and done["template"] == {"name": "flash", "version": 1}
    assert await printed(api, done["id"]) == ["v1 flashing b2"]
    # a run made now takes version 2
    again = (await api.post("/api/templates/flash/run", json={"params": {"board": "b1"}})).json()["job"]
    assert again["template"] == {"name": "flash", "version": 2}
    assert await printed(api, (await wait_terminal(api, again["id"], 90))["id"]) == ["v2 erasing b1"]


async def _state_is(api: httpx.AsyncClient, job_id: str, state: str) -> bool:
    return bool((await api.get(f"/api/jobs/{job_id}")).json()["state"] == state)


async def test_signed_triggers_in_both_forms(api: httpx.AsyncClient, fs: FaultStack) -> None:
    secret = (await put(api, "ci", CI))["trigger_secret"]
    assert secret and secret == (await api.get("/api/templates/ci")).json()["trigger_secret"]
    url = fs.endpoints["api_url"] + "/api/templates/ci/trigger"
    raw = json.dumps(PUSH).encode()
    delivery = str(uuid.uuid4())

    def github(key: str) -> dict[str, str]:
        sig = "sha256=" + hmac.new(key.encode(), raw, hashlib.sha256).hexdigest()
        return {
            "X-Hub-Signature-256": sig,
            "X-GitHub-Delivery": delivery,
            "X-GitHub-Event": "push",
            "Content-Type": "application/json",
        }

    async with httpx.AsyncClient(timeout=30) as ci:  # no token: the signature is the credential
        forged = await ci.post(url, content=raw, headers=github("tgsec_" + "0" * 43))
        assert forged.status_code == 401, forged.text
        first = await ci.post(url, content=raw, headers=github(secret))
        assert first.status_code == 201, first.text
        job = first.json()["job"]
        assert job["owner"] == "trigger:ci" and job["template"] == {"name": "ci", "version": 1}
        replayed = await ci.post(url, content=raw, headers=github(secret))
        assert replayed.status_code == 200 and replayed.json()["job"]["id"] == job["id"], replayed.text
        tampered = await ci.post(url, content=raw.replace(b"main", b"evil"), headers=github(secret))
        assert tampered.status_code == 401, tampered.text

        gitlab = {
            "X-Gitlab-Token": secret,
            "X-Gitlab-Event-UUID": str(uuid.uuid4()),
            "X-Gitlab-Event": "Push Hook",
            "Content-Type": "application/json",
        }
        wrong = await ci.post(url, json=GITLAB_PUSH, headers={**gitlab, "X-Gitlab-Token": secret[:-1] + "x"})
        assert wrong.status_code == 401, wrong.text
        lab = await ci.post(url, json=GITLAB_PUSH, headers=gitlab)
        assert lab.status_code == 201, lab.text
        lab_job = lab.json()["job"]
        again = await ci.post(url, json=GITLAB_PUSH, headers=gitlab)
        assert again.status_code == 200 and again.json()["job"]["id"] == lab_job["id"]

    assert (await wait_terminal(api, job["id"], 90))["state"] == "completed"
    assert await printed(api, job["id"]) == ["ci acme/fw refs/heads/main 0123456789abcdef0123456789abcdef01234567 push"]
    assert (await wait_terminal(api, lab_job["id"], 90))["state"] == "completed"
    assert await printed(api, lab_job["id"]) == [
        "ci acme/fw refs/heads/dev 2222222222222222222222222222222222222222 Push Hook"
    ]
    listed = (await api.get("/api/jobs", params={"owner": "trigger:ci"})).json()
    assert listed["count"] == 2


async def test_a_schedule_fired_through_temporal_runs_on_the_box(api: httpx.AsyncClient, fs: FaultStack) -> None:
    await put(
        api,
        "nightly",
        {
            "params": {"suite": {"type": "string"}},
            "job": {"box": BOX, "script": "print('nightly ${{ params.suite }}')"},
        },
    )
    resp = await api.post(
        "/api/schedules", json={"template": "nightly", "params": {"suite": "smoke"}, "cron": "0 3 * * *"}
    )
    assert resp.status_code == 201, resp.text
    s = resp.json()
    shown = (await api.get(f"/api/schedules/{s['id']}")).json()
    assert len(shown["next_runs"]) == 5 and shown["paused"] is False
    temporal = await temporal_connect(fs.endpoints["temporal_address"])
    await temporal.get_schedule_handle(s["temporal_schedule_id"]).trigger()

    async def made() -> dict[str, Any] | None:
        page = (await api.get("/api/jobs", params={"owner": s["owner"]})).json()["data"]
        return page[0] if page else None

    job = await wait_for(made, timeout=60, interval=0.2, what="the scheduled run's job")
    assert job["template"] == {"name": "nightly", "version": 1}
    assert (await wait_terminal(api, job["id"], 90))["state"] == "completed"
    assert await printed(api, job["id"]) == ["nightly smoke"]
    paused = await api.post(f"/api/schedules/{s['id']}/pause")
    assert paused.status_code == 200 and paused.json()["paused"] is True
    assert (await api.get(f"/api/schedules/{s['id']}")).json()["paused"] is True
    assert (await api.delete(f"/api/schedules/{s['id']}")).status_code == 204
    assert (await api.get("/api/schedules")).json()["data"] == []
