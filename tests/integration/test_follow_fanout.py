"""Many SSE followers of one job in one API process, on the real stack: each gets every line exactly
once, in order, then `done`, whether it follows live, joins late with an old Last-Event-ID, or
starts behind the job's shared tail and reads Postgres until it reaches it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from boxrun.client import read_events
from tests.conftest import wait_for
from tests.integration.faultstack import fault_stack
from tests.integration.jobs import has_lines, submit, wait_terminal

pytestmark = pytest.mark.e2e

FOLLOWERS = 50
N_LINES = 1500


@pytest.fixture(scope="module")
async def fs(tmp_path_factory):
    async with fault_stack(tmp_path_factory.mktemp("fanout") / "dev", boxes=1) as stack:
        yield stack


@pytest.fixture
async def api(fs):
    limits = httpx.Limits(max_connections=FOLLOWERS + 10)
    async with httpx.AsyncClient(
        base_url=fs.endpoints["api_url"],
        timeout=30,
        limits=limits,
        headers={"Authorization": f"Bearer {fs.endpoints['token']}"},
    ) as client:
        yield client


def wait_file(path: Path) -> str:
    return f"while not os.path.exists({str(path)!r}):\n    time.sleep(0.005)\n"


class Follower:
    """One SSE client (httpx and the product's reader), recording every event."""

    def __init__(self, api: httpx.AsyncClient, job_id: str, last_event_id: int | None = None) -> None:
        self.api, self.job_id, self.last_event_id = api, job_id, last_event_id
        self.events: list[tuple[str, dict]] = []
        self.first = asyncio.Event()
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        headers = {} if self.last_event_id is None else {"Last-Event-ID": str(self.last_event_id)}
        async with self.api.stream(
            "GET", f"/api/jobs/{self.job_id}/logs/stream", headers=headers, timeout=httpx.Timeout(30, read=None)
        ) as resp:
            assert resp.status_code == 200
            assert resp.headers["content-type"].startswith("text/event-stream")
            assert resp.headers["cache-control"] == "no-cache" and resp.headers["x-accel-buffering"] == "no"
            async for ev in read_events(resp):
                if ev.event == "log":
                    assert ev.id == str(ev.data["seq"])
                self.events.append((ev.event, ev.data))
                self.first.set()
                if ev.event == "done":
                    return

    def logs(self) -> list[dict]:
        return [data for event, data in self.events if event == "log"]

    def last_seq(self) -> int:
        logs = self.logs()
        return logs[-1]["seq"] if logs else 0


def check(f: Follower, expected: list[tuple[str, str]], *, after: int = 0) -> None:
    logs = f.logs()
    assert [line["seq"] for line in logs] == list(range(after + 1, len(expected) + 1)), (
        "every line exactly once, in order"
    )
    assert [(line["stream"], line["text"]) for line in logs] == expected[after:]
    states = [data["state"] for event, data in f.events if event == "state"]
    assert states[-1] == "completed" and len(states) == len(set(states)), "each state once"
    assert f.events[-1] == ("done", {"state": "completed", "last_seq": len(expected)})
    assert [event for event, _ in f.events].count("done") == 1


FANOUT = """
import os, sys, time
{wait}
for i in range({n}):
    if i % 7 == 3:
        print(f"err {{i}}", file=sys.stderr, flush=True)
    else:
        print(f"out {{i}} " + "x" * (i % 50), flush=True)
    if i % 10 == 9:
        time.sleep(0.01)
"""


def fanout_expected() -> list[tuple[str, str]]:
    return [("stderr", f"err {i}") if i % 7 == 3 else ("stdout", f"out {i} " + "x" * (i % 50)) for i in range(N_LINES)]


async def test_50_live_followers_and_a_late_one_get_every_line_once_in_order_then_done(api, private_tmp):
    go = private_tmp / "go"
    job = await submit(api, FANOUT.format(wait=wait_file(go), n=N_LINES))
    followers = [Follower(api, job["id"]) for _ in range(FOLLOWERS)]
    await asyncio.wait_for(asyncio.gather(*(f.first.wait() for f in followers)), 60)  # each has its first state
    go.touch()
    await wait_for(lambda: has_lines(api, job["id"], 600), timeout=60, what="the job to print 600 lines")
    late = Follower(api, job["id"], last_event_id=100)
    await asyncio.wait_for(asyncio.gather(*(f.task for f in [*followers, late])), 120)
    assert (await wait_terminal(api, job["id"]))["log_lines"] == N_LINES
    expected = fanout_expected()
    for f in followers:
        check(f, expected)
        assert [data["state"] for event, data in f.events if event == "state"][0] != "completed"
    check(late, expected, after=100)


BIG = """
import os, sys, time
for i in range({n}):
    print(f"{{i:05d}} " + "y" * 2000)
sys.stdout.flush()
{wait}
for i in range({n}, {n} + 100):
    print(f"{{i:05d}} tail", flush=True)
"""
BIG_N = 3000  # ~6 MB: more than the tail's ring holds


async def test_a_follower_behind_the_tail_reads_postgres_then_joins_it(api, private_tmp):
    go = private_tmp / "go-big"
    job = await submit(api, BIG.format(n=BIG_N, wait=wait_file(go)))
    expected = [("stdout", f"{i:05d} " + "y" * 2000) for i in range(BIG_N)] + [
        ("stdout", f"{i:05d} tail") for i in range(BIG_N, BIG_N + 100)
    ]
    await wait_for(lambda: has_lines(api, job["id"], BIG_N), timeout=120, what=f"{BIG_N} lines stored")
    ahead = Follower(api, job["id"], last_event_id=BIG_N)  # the job's tail in the API starts here
    await asyncio.wait_for(ahead.first.wait(), 30)
    behind = Follower(api, job["id"], last_event_id=100)  # before the tail: pages from Postgres first
    await wait_for(
        lambda: behind.last_seq() == BIG_N or behind.task.done(),
        timeout=120,
        what="the follower from seq 100 to catch up",
    )
    assert not behind.task.done(), behind.task
    go.touch()
    await asyncio.wait_for(asyncio.gather(ahead.task, behind.task), 120)
    check(ahead, expected, after=BIG_N)
    check(behind, expected, after=100)
