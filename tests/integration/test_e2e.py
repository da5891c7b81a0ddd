"""End to end through a `boxrun dev` stack: real Temporal, PostgreSQL, S3 API, agents and scripts."""

from __future__ import annotations

import base64
import hashlib
import json
import time
import uuid

import httpx
import pytest

from boxrun.client import DoneEvent, LogEvent, read_events
from tests.integration.jobs import replay, submit, wait_terminal

pytestmark = pytest.mark.e2e

PRINTER = """
import hashlib, os, sys
for i in range(20):
    print(f"out {i}")
    print(f"err {i}", file=sys.stderr)
data = hashlib.sha256(b"seed").digest() * 4096 + bytes(range(256))
os.makedirs(os.path.join(os.environ["BOXRUN_ARTIFACTS_DIR"], "nested"))
with open(os.path.join(os.environ["BOXRUN_ARTIFACTS_DIR"], "nested", "blob.bin"), "wb") as fh:
    fh.write(data)
print("done", os.environ["BOXRUN_JOB_ID"], os.environ["GREETING"], open("cfg/settings.txt").read().strip())
"""
ARTIFACT = hashlib.sha256(b"seed").digest() * 4096 + bytes(range(256))


async def states(api: httpx.AsyncClient, job_id: str) -> list[str]:
    events = (await api.get(f"/api/jobs/{job_id}/events")).json()["data"]
    return [e["to_state"] for e in events]


async def test_job_completes_with_ordered_logs_and_a_verified_artifact(api):
    job = await submit(api, PRINTER, env={"GREETING": "hi"}, files={"cfg/settings.txt": "fast=1\n"})
    # local-1 is free: leased and offered by the POST itself, perhaps claimed already (the offer at submission)
    assert job["state"] in ("dispatching", "running") and job["box"] == "local-1" and job["timeout_s"] == 3600
    done = await wait_terminal(api, job["id"])
    assert done["state"] == "completed", done
    assert done["exit_code"] == 0 and done["error"] is None
    assert done["created_at"] <= done["started_at"] <= done["finished_at"]
    assert done["temporal_ui_url"].endswith(f"/namespaces/default/workflows/{job['id']}")

    lines = await replay(api, job["id"])
    expected = [(s, t) for i in range(20) for s, t in (("stdout", f"out {i}"), ("stderr", f"err {i}"))]
    expected.append(("stdout", f"done {job['id']} hi fast=1"))
    assert [line["seq"] for line in lines] == list(range(1, len(expected) + 1))
    assert [(line["stream"], line["text"]) for line in lines] == expected

    arts = (await api.get(f"/api/jobs/{job['id']}/artifacts")).json()["data"]
    assert arts == [{"path": "nested/blob.bin", "size": len(ARTIFACT), "sha256": hashlib.sha256(ARTIFACT).hexdigest()}]
    redirect = await api.get(f"/api/jobs/{job['id']}/artifacts/nested/blob.bin")
    assert redirect.status_code == 307
    async with httpx.AsyncClient() as anon:  # the presigned URL needs no boxrun token
        body = (await anon.get(redirect.headers["location"])).content
    assert body == ARTIFACT and hashlib.sha256(body).hexdigest() == arts[0]["sha256"]

    assert await states(api, job["id"]) == ["queued", "dispatching", "running", "uploading_artifacts", "completed"]


async def test_exit_code_3_fails_the_job(api):
    job = await submit(api, "import sys\nprint('failing on purpose')\nsys.exit(3)\n", box="local-2")
    done = await wait_terminal(api, job["id"])
    assert (done["state"], done["exit_code"], done["error"]) == ("failed", 3, "exit code 3")
    assert done["box"] == "local-2"
    assert await states(api, job["id"]) == ["queued", "dispatching", "running", "failed"]
    assert [line["text"] for line in await replay(api, job["id"])] == ["failing on purpose"]


async def test_sse_streams_lines_with_seq_ids_then_done(api, client):
    job = await submit(api, "import time\nfor i in range(5):\n    print(i, flush=True)\n    time.sleep(0.05)\n")
    seen, final = [], None
    started = time.monotonic()
    async for ev in client.follow(job["id"]):
        if isinstance(ev, LogEvent):
            seen.append(ev.line.text)
        elif isinstance(ev, DoneEvent):
            final = ev.state
    assert seen == ["0", "1", "2", "3", "4"] and final == "completed"
    # woken by NOTIFY, not by the 20 s keepalive tick: the whole follow takes far less than one tick
    assert time.monotonic() - started < 10
    # a follower that resumes after seq 4 (the line "3") gets exactly the rest, then done again
    resumed = [ev async for ev in client.follow(job["id"], after=4)]
    assert [ev.line.text for ev in resumed if isinstance(ev, LogEvent)] == ["4"]
    assert isinstance(resumed[-1], DoneEvent)
    # browsers resume with the Last-Event-ID header; each line's event id is its seq
    async with api.stream("GET", f"/api/jobs/{job['id']}/logs/stream", headers={"Last-Event-ID": "4"}) as resp:
        body = (await resp.aread()).decode()
        raw = [ev async for ev in read_events(httpx.Response(200, content=body.encode()))]
    assert [(ev.id, ev.data["seq"]) for ev in raw if ev.event == "log"] == [("5", 5)]
    assert "id: 4\n" not in body and "id: 5\n" in body and "event: done" in body


async def test_temporal_web_ui_lists_the_job_with_its_state(api, endpoints):
    job = await submit(api, "print('ui')")
    await wait_terminal(api, job["id"])
    query = f'WorkflowId="{job["id"]}" AND JobState="completed"'
    async with httpx.AsyncClient(base_url=endpoints["temporal_ui_url"], timeout=10) as ui:
        assert (await ui.get("/")).status_code == 200
        listed = (await ui.get("/api/v1/namespaces/default/workflows", params={"query": query})).json()
    [execution] = listed["executions"]
    fields = execution["searchAttributes"]["indexedFields"]
    decode = lambda f: json.loads(base64.b64decode(fields[f]["data"]))  # noqa: E731
    assert (decode("JobState"), decode("BoxId"), decode("Owner")) == ("completed", "local-1", "admin")


async def test_group_placement_and_unschedulable(api):
    placed = await submit(api, "print('anywhere')", box=None, box_group="local", requires=["python3"])
    assert (await wait_terminal(api, placed["id"]))["box"] in ("local-1", "local-2")
    never = await submit(api, "print('never')", box=None, box_group="local", requires=["fpga"])
    done = await wait_terminal(api, never["id"])
    assert done["state"] == "unschedulable" and "fpga" in done["error"]
    assert await states(api, never["id"]) == ["queued", "unschedulable"]


async def test_list_filters_and_count(api):
    job = await submit(api, "print('listed')", box="local-2")
    await wait_terminal(api, job["id"])
    page = (await api.get("/api/jobs", params={"box": "local-2", "state": "completed", "limit": 1})).json()
    assert page["count"] >= 1 and len(page["data"]) == 1
    assert all(j["box"] == "local-2" and j["state"] == "completed" for j in page["data"])
    none = (await api.get("/api/jobs", params={"box": "no-such-box"})).json()
    assert none == {"data": [], "count": 0, "next_cursor": None}


async def test_idempotency_key_returns_the_first_job(api):
    key = f"ci-{uuid.uuid4()}"
    first = await submit(api, "print('once')", idempotency_key=key)
    again = await api.post("/api/jobs", json={"box": "local-1", "script": "print('once')", "idempotency_key": key})
    assert again.status_code == 200 and again.json()["id"] == first["id"]
    other = await api.post("/api/jobs", json={"box": "local-1", "script": "print('else')", "idempotency_key": key})
    assert other.status_code == 409 and key in other.json()["detail"]


@pytest.mark.parametrize(
    "body, status, needle",
    [
        ({"script": "print(1)"}, 422, "exactly one of 'box' or 'box_group'"),
        ({"box": "local-1"}, 422, "script"),
        ({"box": "no-such-box", "script": "x"}, 422, "box 'no-such-box' does not exist"),
        ({"box": "local-1", "script": "x", "files": {"../escape": "x"}}, 422, "inside the workspace"),
        ({"box": "local-1", "script": "x", "files": {"/abs": "x"}}, 422, "relative"),
        ({"box": "local-1", "script": "x", "env": {"BOXRUN_JOB_ID": "x"}}, 422, "reserved"),
        ({"box": "local-1", "script": "x", "timeout_s": -1}, 422, "timeout_s"),
        ({"box": "local-1", "script": "x", "timeout_s": "soon"}, 422, "timeout_s"),
        ({"box": "local-1", "script": "x", "lock": "maybe"}, 422, "lock"),
        ({"box": "local-1", "script": "x", "bogus": 1}, 422, "bogus"),
        ({"box": "local 1", "script": "x"}, 422, "box"),
    ],
)
async def test_bad_submissions_get_a_4xx_with_a_reason_and_write_nothing(api, body, status, needle):
    before = (await api.get("/api/jobs", params={"limit": 1})).json()["count"]
    resp = await api.post("/api/jobs", json=body)
    assert resp.status_code == status
    assert needle in json.dumps(resp.json())
    assert (await api.get("/api/jobs", params={"limit": 1})).json()["count"] == before


async def test_malformed_json_and_wrong_content_are_422(api):
    resp = await api.post("/api/jobs", content=b"{not json", headers={"Content-Type": "application/json"})
    assert resp.status_code == 422
    resp = await api.post("/api/jobs", json=["a", "list"])
    assert resp.status_code == 422


async def test_auth_and_unknown_ids(api, endpoints):
    async with httpx.AsyncClient(base_url=endpoints["api_url"]) as anon:
        assert (await anon.get("/api/jobs")).status_code == 401
        bad = await anon.get("/api/jobs", headers={"Authorization": "Bearer nope"})
        assert bad.status_code == 401 and bad.json()["detail"] == "invalid token"
    missing = str(uuid.uuid4())
    for path in (
        f"/api/jobs/{missing}",
        f"/api/jobs/{missing}/logs",
        f"/api/jobs/{missing}/artifacts",
        "/api/jobs/not-a-uuid",
        f"/api/jobs/{missing}/artifacts/x.txt",
    ):
        resp = await api.get(path)
        assert resp.status_code == 404 and "not found" in resp.json()["detail"], path


async def test_health_and_boxes(api):
    assert (await api.get("/api/health")).json()["status"] == "ok"
    boxes = (await api.get("/api/boxes")).json()
    # other tests of the session register boxes of their own (no agent): only the stack's are asserted
    local = {b["name"]: b for b in boxes["data"] if b["name"].startswith("local-")}
    assert {name: b["status"] for name, b in local.items()} == {"local-1": "online", "local-2": "online"}
    assert local["local-1"]["capabilities"] == ["python3", "local"]
