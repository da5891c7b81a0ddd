"""Several API replicas and control workers against one Temporal and one Postgres (issue 15,
"Outgrowing one machine"), on a whole stack of real processes: 2 `boxrun api` (api-1, api-2) and
2 `boxrun worker` (worker-1, worker-2), the Temporal dev server, Postgres, SeaweedFS and real
agents running real scripts.

- A job submitted to either replica finishes, and either replica answers for it.
- A follower (SSE and WebSocket) on one replica gets every line of a job whose box reports to the
  other: lines are stored by the replica that takes them and reach the other's followers through
  Postgres (NOTIFY, then a replay from the table), never through the replica's memory.
- An agent reaches the replicas through the production reverse proxy (deploy/proxy/Caddyfile in
  the real Caddy): SIGKILL the replica holding its long-poll while its job prints, and the agent
  goes on through the other; the job ends completed with its full transcript.
- SIGKILL a control worker while 100 short jobs run: every job ends completed exactly once (one
  `running` and one terminal event each, one run_job attempt, its script's side effect once).
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import re
import time
from functools import partial

import asyncpg
import httpx
import pytest
import websockets

from boxrun.client import read_events
from tests.conftest import wait_for
from tests.integration.faultstack import FaultStack, fault_stack
from tests.integration.jobs import replay, submit, wait_terminal
from tests.integration.test_faults import TICKER, assert_contiguous, run_job_attempts, states

pytestmark = pytest.mark.e2e

REPLICAS = ["api-1", "api-2"]
WORKERS = ["worker-1", "worker-2"]
TERMINAL = ("completed", "failed", "cancelled", "timed_out", "unschedulable")
# A job's states when it ran once and completed, leaving out a wait for its box (busy boxes).
ONCE = ["queued", "dispatching", "running", "completed"]


def moves(states: list[str]) -> list[str]:
    if states[1:2] == ["waiting_for_box"]:
        return [states[0], *states[2:]]
    return states


def replica_url(fs: FaultStack, name: str) -> str:
    return next(r["url"] for r in fs.endpoints["api_replicas"] if r["name"] == name)


def metrics_of(fs: FaultStack, kind: str, name: str) -> str:
    return next(r["metrics_url"] for r in fs.endpoints[kind] if r["name"] == name)


async def scrape(url: str, metric: str) -> float:
    """The sum of a Prometheus metric's samples (every label set) at `url`."""
    async with httpx.AsyncClient(timeout=10) as client:
        text = (await client.get(url)).text
    pattern = re.compile(rf"^{re.escape(metric)}(?:\{{[^}}]*\}})? (\S+)$", re.M)
    return sum(float(v) for v in pattern.findall(text))


# ------------------------------------------------------------------ (a) and (b): either replica

# Prints numbered lines on both streams once its gate opens (the followers are connected by then).
CHATTY = """
import os, sys, time
while not os.path.exists({gate!r}):
    time.sleep(0.01)
for i in range({n}):
    if i % 5 == 2:
        print(f"err {{i}}", file=sys.stderr, flush=True)
    else:
        print(f"out {{i}}", flush=True)
    if i % 20 == 19:
        time.sleep(0.01)
"""
CHATTY_LINES = 600


def chatty_expected() -> list[tuple[str, str]]:
    return [("stderr", f"err {i}") if i % 5 == 2 else ("stdout", f"out {i}") for i in range(CHATTY_LINES)]


async def follow_sse(url: str, token: str, job_id: str, opened: asyncio.Event) -> list[tuple[str, dict]]:
    events: list[tuple[str, dict]] = []
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {token}"}) as client:
        async with client.stream(
            "GET", f"/api/jobs/{job_id}/logs/stream", timeout=httpx.Timeout(30, read=None)
        ) as resp:
            assert resp.status_code == 200
            opened.set()
            async for ev in read_events(resp):
                events.append((ev.event, ev.data))
                if ev.event == "done":
                    return events
    return events


async def follow_ws(url: str, token: str, job_id: str, opened: asyncio.Event) -> list[tuple[str, dict]]:
    ws_url = url.replace("http", "ws", 1) + f"/api/jobs/{job_id}/logs/ws"
    events: list[tuple[str, dict]] = []
    async with websockets.connect(ws_url, additional_headers={"Authorization": f"Bearer {token}"}) as ws:
        opened.set()
        async for message in ws:
            event = json.loads(message)
            events.append((event["event"], event["data"]))
    return events


def check_followed(events: list[tuple[str, dict]], expected: list[tuple[str, str]], how: str) -> None:
    logs = [data for event, data in events if event == "log"]
    assert [line["seq"] for line in logs] == list(range(1, len(expected) + 1)), f"{how}: every line once, in order"
    assert [(line["stream"], line["text"]) for line in logs] == expected, how
    assert events[-1] == ("done", {"state": "completed", "last_seq": len(expected)}), (how, events[-1])


async def test_jobs_through_either_replica_finish_and_a_follower_on_the_other_sees_every_line(tmp_path):
    async with fault_stack(tmp_path, boxes=2, api_replicas=2, workers=2) as fs:
        token = fs.endpoints["token"]
        # without the proxy the agents are spread: local-1 reports to api-1, local-2 to api-2
        assert fs.child("agent-local-1").env["BOXRUN_API_URL"] == replica_url(fs, "api-1")
        assert fs.child("agent-local-2").env["BOXRUN_API_URL"] == replica_url(fs, "api-2")
        async with fs.api("api-1") as api_1, fs.api("api-2") as api_2:
            # (a) jobs submitted to either replica finish, on either box, and both replicas answer
            submitted = []
            for api in (api_1, api_2):
                for box in ("local-1", "local-2"):
                    for k in range(2):
                        submitted.append(await submit(api, f"print('via {api.base_url.port} on {box} #{k}')", box=box))
            for job in submitted:
                done = await wait_terminal(api_1, job["id"])
                assert (done["state"], done["exit_code"]) == ("completed", 0), done
                assert (await wait_terminal(api_2, job["id"]))["state"] == "completed"
                assert moves(await states(api_2, job["id"])) == ONCE

            # (b) a job on local-1 (its lines go to api-1), followed on api-2 by SSE and WebSocket;
            # and one on local-2 (lines to api-2) followed on api-1
            for box, reporter, other, other_api in (
                ("local-1", "api-1", "api-2", api_2),
                ("local-2", "api-2", "api-1", api_1),
            ):
                gate = tmp_path / f"{box}.gate"
                job = await submit(other_api, CHATTY.format(gate=str(gate), n=CHATTY_LINES), box=box)
                opened = [asyncio.Event(), asyncio.Event()]
                url = replica_url(fs, other)
                sse = asyncio.create_task(follow_sse(url, token, job["id"], opened[0]))
                ws = asyncio.create_task(follow_ws(url, token, job["id"], opened[1]))
                await asyncio.wait_for(asyncio.gather(*(o.wait() for o in opened)), 30)
                # both followers are on the other replica's process, none on the reporter's
                followers = metrics_of(fs, "api_replicas", other)
                await wait_for(partial(_at_least, followers, "boxrun_log_followers", 1), what=f"followers on {other}")
                reporting = metrics_of(fs, "api_replicas", reporter)
                await wait_for(partial(_none, reporting, "boxrun_log_followers"), what=f"no follower on {reporter}")
                lines_before = await scrape(metrics_of(fs, "api_replicas", other), "boxrun_log_ingest_lines_total")
                gate.touch()
                got_sse, got_ws = await asyncio.wait_for(asyncio.gather(sse, ws), 90)
                check_followed(got_sse, chatty_expected(), f"SSE on {other}, box reporting to {reporter}")
                check_followed(got_ws, chatty_expected(), f"WebSocket on {other}, box reporting to {reporter}")
                # the lines were taken by the reporter, not by the follower's replica
                assert (
                    await scrape(metrics_of(fs, "api_replicas", other), "boxrun_log_ingest_lines_total") == lines_before
                )
                stored = await replay(api_1, job["id"])
                assert [(line["stream"], line["text"]) for line in stored] == chatty_expected()


async def _at_least(url: str, metric: str, value: float) -> bool:
    return await scrape(url, metric) >= value


async def _none(url: str, metric: str) -> bool:
    """No sample above 0 (a stream just closed may take a moment to leave the gauge)."""
    return await scrape(url, metric) == 0


# ------------------------------------------------------------------ (c) an agent's replica dies


async def test_agent_behind_the_proxy_goes_on_through_the_other_replica_when_its_own_dies(tmp_path):
    transcript, gate = tmp_path / "transcript.txt", tmp_path / "ticker.gate"

    def printed() -> list[str]:
        return transcript.read_text().splitlines() if transcript.exists() else []

    async with fault_stack(tmp_path, boxes=1, api_replicas=2, workers=2, proxy=True) as fs:
        proxy_url = fs.endpoints["api_url"]
        assert proxy_url not in {replica_url(fs, n) for n in REPLICAS}
        assert fs.child("agent-local-1").env["BOXRUN_API_URL"] == proxy_url, "the agent knows only the proxy"
        agent_pid = fs.child("agent-local-1").pid
        async with fs.api() as api:
            job = await submit(api, TICKER.format(transcript=str(transcript), gate=str(gate)))
            await wait_for(lambda: len(printed()) > 40, what="the job ticking")

            # the replica holding the agent's long-poll for offers (the proxy picks one per request)
            async def holder() -> str | None:
                held = [
                    n for n in REPLICAS if await scrape(metrics_of(fs, "api_replicas", n), "boxrun_connected_agents")
                ]
                return held[0] if len(held) == 1 else None

            victim = await wait_for(holder, what="the replica holding the agent's long-poll")
            survivor = next(n for n in REPLICAS if n != victim)
            fs.kill(victim)  # SIGKILL: its open requests (long-poll, a log batch) break mid-way
            at_kill = len(printed())
            # the job keeps printing; its lines reach Postgres through the other replica
            await wait_for(lambda: len(printed()) >= at_kill + 40, what="ticks after the kill")
            await wait_for(
                lambda: _stored_at_least(api, job["id"], at_kill + 20),
                timeout=60,
                what="lines printed after the kill stored",
            )
            await wait_for(
                lambda: _at_least(metrics_of(fs, "api_replicas", survivor), "boxrun_connected_agents", 1),
                what=f"the agent polling {survivor}",
            )
            gate.touch()
            done = await wait_terminal(api, job["id"], timeout=60)
            assert (done["state"], done["exit_code"], done["error"]) == ("completed", 0, None), done
            assert await states(api, job["id"]) == ["queued", "dispatching", "running", "completed"]
            lines = await replay(api, job["id"])
            assert_contiguous(lines)
            assert [line["text"] for line in lines] == printed(), "the transcript is exactly what the script printed"
            assert await run_job_attempts(fs, job["id"]) == [1]

            # the same agent process (never restarted) takes the next job through the survivor
            assert fs.child("agent-local-1").pid == agent_pid and fs.child("agent-local-1").alive()
            after = await submit(api, "print('after the replica died')")
            done = await wait_terminal(api, after["id"], timeout=60)
            assert done["state"] == "completed", done
            assert [line["text"] for line in await replay(api, after["id"])] == ["after the replica died"]
            print(
                f"\nkilled {victim} (it held the agent's long-poll); {len(printed())} lines, {len(printed()) - at_kill} after the kill"
            )


async def _stored_at_least(api: httpx.AsyncClient, job_id: str, count: int) -> bool:
    resp = await api.get(f"/api/jobs/{job_id}/logs", params={"after": count - 1, "limit": 1})
    return resp.status_code == 200 and bool(resp.json()["data"])


# ------------------------------------------------------------------ (d) a control worker killed under load

JOBS = 100
KILL_AFTER = 30  # completed jobs before worker-1 is killed
# Appends the job's id to a file every job user can write (the side effect counted exactly once).
SIDE_EFFECT = """
import os
with open({path!r}, "a") as fh:
    fh.write(os.environ["BOXRUN_JOB_ID"] + "\\n")
print("done", os.environ["BOXRUN_JOB_ID"])
"""


async def test_a_control_worker_killed_under_load_loses_and_repeats_nothing(tmp_path):
    shared = tmp_path / "side"
    shared.mkdir()
    shared.chmod(0o777)  # the jobs run as the boxes' slot users when the tests run as root
    effects = shared / "ran.txt"
    effects.touch()
    effects.chmod(0o666)
    script = SIDE_EFFECT.format(path=str(effects))

    async with fault_stack(tmp_path, boxes=2, capacity=2, api_replicas=2, workers=2) as fs:
        async with fs.api("api-1") as api_1, fs.api("api-2") as api_2:
            apis = [api_1, api_2]

            def ran() -> list[str]:
                return effects.read_text().split()

            started = time.monotonic()
            # submitted through both replicas, onto the group of both boxes
            jobs = []
            for i in range(JOBS):
                jobs.append(await submit(apis[i % 2], script, box=None, box_group="local"))
            ids = [j["id"] for j in jobs]
            # worker-1 has been doing its share of the work when it is killed
            worker_1 = metrics_of(fs, "workers", "worker-1")
            await wait_for(lambda: len(ran()) >= KILL_AFTER, timeout=120, what=f"{KILL_AFTER} jobs run")
            # (the SDK's histogram; its name has a _seconds unit suffix in some SDK versions)
            tasks_on_1 = await scrape(worker_1, "temporal_workflow_task_execution_latency_count") + await scrape(
                worker_1, "temporal_workflow_task_execution_latency_seconds_count"
            )
            assert tasks_on_1 > 0, "worker-1 took its share of the workflow tasks before the kill"
            fs.kill("worker-1")
            killed_at = len(ran())

            db = await asyncpg.connect(fs.child("api-1").env["BOXRUN_DATABASE_URL"])
            try:

                async def ended() -> bool:
                    n = await db.fetchval(
                        "SELECT count(*) FROM jobs WHERE id = ANY($1::uuid[]) AND state::text = ANY($2::text[])",
                        ids,
                        list(TERMINAL),
                    )
                    return n == JOBS

                await wait_for(ended, timeout=300, interval=0.5, what=f"all {JOBS} jobs ended")
                elapsed = time.monotonic() - started
                rows = await db.fetch(
                    "SELECT id, state::text AS state, error FROM jobs WHERE id = ANY($1::uuid[])", ids
                )
                final = {str(r["id"]): r["state"] for r in rows}
                errors = {str(r["id"]): r["error"] for r in rows if r["state"] != "completed"}
                events = await db.fetch(
                    "SELECT job_id, to_state::text AS to_state FROM job_events WHERE job_id = ANY($1::uuid[]) ORDER BY id",
                    ids,
                )
            finally:
                await db.close()

            assert collections.Counter(final.values()) == {"completed": JOBS}, errors
            per_job: dict[str, list[str]] = collections.defaultdict(list)
            for e in events:
                per_job[str(e["job_id"])].append(e["to_state"])
            for job_id in ids:
                got = per_job[job_id]
                assert got.count("running") == 1 and sum(got.count(s) for s in TERMINAL) == 1, (job_id, got)
                assert moves(got) == ONCE, (job_id, got)
            counts = collections.Counter(ran())
            assert set(counts) == set(ids) and set(counts.values()) == {1}, {k: v for k, v in counts.items() if v != 1}
            for job_id in ids:
                # never retried; a run_job lost with worker-1 before the box claimed the job is
                # followed by a second one that offers it again (JobWorkflow._lost_before_claim)
                assert set(await run_job_attempts(fs, job_id)) == {1}, job_id
                assert [line["text"] for line in await replay(apis[0], job_id)] == [f"done {job_id}"]
            print(
                f"\n{JOBS} jobs over 2 API replicas and 2 control workers: worker-1 SIGKILLed after {killed_at} had run "
                f"(it had executed {tasks_on_1:.0f} workflow tasks); all completed once in {elapsed:.1f}s "
                f"(load average {os.getloadavg()[0]:.2f})"
            )
