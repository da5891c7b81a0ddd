"""Transcripts on the real stack: exact, ordered, never lost across API and Postgres restarts."""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import subprocess
import sys

import pytest
import websockets
from websockets.exceptions import InvalidStatus

from boxrun.client import BoxrunClient, LogEvent
from tests.conftest import wait_for
from tests.integration.faultstack import fault_stack
from tests.integration.jobs import archive, has_lines, replay, submit, wait_terminal

pytestmark = pytest.mark.e2e

N_LINES = 100_000
INTERLEAVED = f"""
import sys
out, err = sys.stdout.write, sys.stderr.write
for i in range({N_LINES}):
    if i % 3 == 2:
        err(f"err {{i}}\\n")
    else:
        out(f"out {{i}} " + "x" * (i % 40) + "\\n")
"""


def expected_interleaved() -> list[tuple[str, str]]:
    return [("stderr", f"err {i}") if i % 3 == 2 else ("stdout", f"out {i} " + "x" * (i % 40)) for i in range(N_LINES)]


@pytest.fixture(scope="module")
async def fs(tmp_path_factory):
    # The restart test keeps the API away for its restart time, which on a loaded 2-core machine can
    # pass the fault stack's 4 s heartbeat timeout: these tests are about logs, so the default bound.
    env = {"BOXRUN_SSE_KEEPALIVE_S": "0.3", "BOXRUN_ACTIVITY_HEARTBEAT_TIMEOUT_S": "15"}
    async with fault_stack(tmp_path_factory.mktemp("logs") / "dev", boxes=2, env=env) as stack:
        yield stack


@pytest.fixture
async def api(fs):
    async with fs.api() as client:
        yield client


def check_exact(lines: list[dict], expected: list[tuple[str, str]]) -> None:
    assert [line["seq"] for line in lines] == list(range(1, len(expected) + 1)), "contiguous, no gap, no duplicate"
    assert [(line["stream"], line["text"]) for line in lines] == expected


async def test_100k_interleaved_lines_replay_exactly_and_the_archive_matches(api):
    job = await submit(api, INTERLEAVED)
    done = await wait_terminal(api, job["id"], timeout=180)
    assert done["state"] == "completed" and done["log_lines"] == N_LINES
    lines = await replay(api, job["id"], page=10_000)
    check_exact(lines, expected_interleaved())

    archived = await wait_for(lambda: archive(api, job["id"]), timeout=30, what="transcript archive")
    rows = [json.loads(r) for r in gzip.decompress(archived).decode().splitlines()]
    assert rows == lines, "the archive in S3 equals the replay"


async def test_a_3_mib_line_is_cut_to_1_mib_with_a_notice(api):
    script = "import sys\nprint('before')\nsys.stdout.write('z' * (3 * 1024 * 1024) + '\\n')\nprint('after')\n"
    job = await submit(api, script)
    assert (await wait_terminal(api, job["id"], timeout=60))["state"] == "completed"
    lines = await replay(api, job["id"])
    assert [line["text"][:6] for line in lines] == ["before", "zzzzzz", "after"]
    cut = lines[1]["text"]
    assert cut.startswith("z" * (1 << 20)) and cut[1 << 20 :].startswith(" [boxrun: line truncated at 1 MiB")
    assert f"{2 * (1 << 20)} more bytes dropped" in cut


async def test_output_stream_carries_structured_results(api):
    script = "import boxrun_job\nprint('measuring')\nboxrun_job.emit({'voltage': 3.3, 'ok': True})\n"
    job = await submit(api, script)
    await wait_terminal(api, job["id"])
    lines = await replay(api, job["id"])
    assert [(line["stream"], line["text"]) for line in lines] == [
        ("stdout", "measuring"),
        ("output", '{"voltage":3.3,"ok":true}'),
    ]


async def test_sse_and_websocket_give_the_same_events_with_keepalive_and_resume(api, fs):
    script = "import time\nfor i in range(4):\n    print(f'tick {i}', flush=True)\n    time.sleep(0.4)\n"
    job = await submit(api, script)
    sse = []
    async with api.stream("GET", f"/api/jobs/{job['id']}/logs/stream") as resp:
        raw = (await resp.aread()).decode()
    for block in raw.split("\n\n"):
        if block.startswith(":"):
            sse.append(("keepalive", None))
        elif block.strip():
            fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
            sse.append((fields.get("event"), json.loads(fields["data"])))
    assert ("keepalive", None) in sse, "idle streams send keepalive comments"
    states = [d["state"] for e, d in sse if e == "state"]
    assert states[-1] == "completed" and "running" in states
    assert [d["text"] for e, d in sse if e == "log"] == [f"tick {i}" for i in range(4)]
    assert sse[-1] == ("done", {"state": "completed", "last_seq": 4})

    ws_url = fs.endpoints["api_url"].replace("http", "ws") + f"/api/jobs/{job['id']}/logs/ws"
    async with websockets.connect(
        f"{ws_url}?after=2", additional_headers={"Authorization": f"Bearer {fs.endpoints['token']}"}
    ) as ws:
        events = [json.loads(m) async for m in ws]
    assert [e["data"]["text"] for e in events if e["event"] == "log"] == ["tick 2", "tick 3"]
    assert [e["id"] for e in events if e["event"] == "log"] == [3, 4]
    assert events[-1]["event"] == "done" and events[-1]["data"]["state"] == "completed"
    with pytest.raises(InvalidStatus):
        async with websockets.connect(ws_url):  # no token
            pass


async def test_cli_prints_streams_apart_and_exits_with_the_outcome(api, fs):
    job = await submit(api, "import sys\nprint('to out')\nprint('to err', file=sys.stderr)\nsys.exit(3)\n")
    env = {**os.environ, "BOXRUN_API_URL": fs.endpoints["api_url"], "BOXRUN_API_TOKEN": fs.endpoints["token"]}
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "boxrun.cli", "logs", job["id"], "--follow"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 3
    assert done.stdout.splitlines() == ["to out"] and done.stderr.splitlines() == ["to err"]


async def _follow_all(client: BoxrunClient, job_id: str) -> list[dict]:
    return [
        ev.line.model_dump(mode="json") async for ev in client.follow(job_id, retry_s=0.2) if isinstance(ev, LogEvent)
    ]


CHATTY = """
import sys, time
for i in range(60):
    print(f"line {i}", flush=True)
    print(f"warn {i}", file=sys.stderr, flush=True)
    time.sleep(0.1)
"""
CHATTY_EXPECTED = [s for i in range(60) for s in (("stdout", f"line {i}"), ("stderr", f"warn {i}"))]


@pytest.mark.parametrize("part", ["api", "postgres"])
async def test_restart_mid_job_loses_and_duplicates_nothing(api, fs, part):
    job = await submit(api, CHATTY, box="local-2")
    async with BoxrunClient(fs.endpoints["api_url"], fs.endpoints["token"]) as client:
        follower = asyncio.create_task(_follow_all(client, job["id"]))
        await wait_for(lambda: has_lines(api, job["id"], 20), timeout=30, what="the job to print")
        if part == "api":
            fs.kill("api")  # SIGKILL: no graceful anything
        else:
            fs.stop("postgres")
        await asyncio.sleep(1.0)  # the outage itself: the job keeps printing meanwhile
        fs.start(part)
        seen = await asyncio.wait_for(follower, 120)
    done = await wait_terminal(api, job["id"], timeout=120)
    assert done["state"] == "completed"
    check_exact(await replay(api, job["id"]), CHATTY_EXPECTED)
    check_exact(seen, CHATTY_EXPECTED)  # the follower resumed exactly where it was


async def test_log_ingest_refuses_bad_batches_with_a_reason(api):
    from boxrun import logbatch

    job = await submit(api, "print('placed elsewhere')", box="local-1")
    resp = await api.post("/api/boxes", json={"name": "ingest-probe"})
    assert resp.status_code == 201, resp.text
    probe = {"Authorization": f"Bearer {resp.json()['node_token']}", "content-type": logbatch.MEDIA_TYPE}
    url = f"/api/agent/jobs/{job['id']}/logs"
    good = logbatch.encode(1, [(1, "stdout", 1.0)], b"hi\n")
    cases = [
        (b"no header", 422, "one-line JSON header"),
        (logbatch.encode(1, [(2, "stdout", 1.0)], b"one\n"), 422, "the data holds 1"),
        (logbatch.encode(1, [(1, "stdout", 1.0)], b"\xff\n"), 422, "not valid UTF-8"),
        (logbatch.encode(1, [(1, "pty", 1.0)], b"x\n"), 422, "runs.0.1"),
        (good + b"x" * (16 << 20), 413, "at most"),
        (logbatch.encode(1, [(1, "system", 1.0)], b"boxrun: forged\n"), 422, "written by the control plane only"),
        (good, 404, "not found"),  # another box's job does not exist for this token
    ]
    for body, code, reason in cases:
        resp = await api.post(url, content=body, headers=probe)
        assert resp.status_code == code and reason in resp.json()["detail"], (code, resp.text[:300])
    resp = await api.post("/api/agent/jobs/00000000-0000-4000-8000-000000000000/logs", content=good, headers=probe)
    assert resp.status_code == 404
    await wait_terminal(api, job["id"], timeout=60)
    assert [line["text"] for line in await replay(api, job["id"])] == ["placed elsewhere"], "nothing half-written"


async def test_cursors_outside_the_seq_range_are_refused_with_a_reason(api, fs):
    job = await submit(api, "print('one')", box="local-1")
    base = f"/api/jobs/{job['id']}/logs"
    for path, params, headers in [
        (base, {"after": 2**63}, {}),
        (f"{base}/stream", {"after": 2**63}, {}),
        (f"{base}/stream", {"after": -1}, {}),
        (f"{base}/stream", {}, {"Last-Event-ID": "99999999999999999999"}),
        (f"{base}/stream", {}, {"Last-Event-ID": "²".encode()}),
        (f"{base}/stream", {}, {"Last-Event-ID": "abc"}),
    ]:
        resp = await api.get(path, params=params, headers=headers)
        assert resp.status_code == 422 and resp.json()["detail"], (path, params, headers, resp.text[:200])
    url = fs.endpoints["api_url"].replace("http", "ws", 1) + f"{base}/ws?after=-1"
    with pytest.raises(InvalidStatus):
        async with websockets.connect(url, additional_headers={"Authorization": f"Bearer {fs.endpoints['token']}"}):
            pass
    await wait_terminal(api, job["id"], timeout=60)
    async with BoxrunClient(fs.endpoints["api_url"], fs.endpoints["token"]) as client:  # the stream still serves
        assert [line["text"] for line in await _follow_all(client, job["id"])] == ["one"]
