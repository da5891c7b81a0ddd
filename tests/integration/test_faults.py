"""Fault tests on a whole stack of real processes (issue 3): kill -9 an agent or the control
worker, restart Temporal and Postgres, drain an agent with SIGTERM, all while a job runs.

Each test starts its own stack (`fault_stack`, short timeouts: run_job heartbeat timeout 4 s, a box
offline after 3 s of silence, the reaper every 3 s), so a fault in one test cannot leak into the
next. Job scripts hold at a "gate" (a file the test creates) so the test decides when a job may
finish, and they record their pids and runs in files under tmp_path so the test can check
processes by pid and count how often a script started.
"""

from __future__ import annotations

import os
import signal
import time
from datetime import datetime
from pathlib import Path

import httpx
import pytest

from boxrun.activities.dispatch import DispatchActivities
from boxrun.temporal import connect
from tests.conftest import pid_alive, wait_for
from tests.integration.faultstack import FAST, FaultStack, fault_stack
from tests.integration.jobs import replay, submit, wait_terminal

pytestmark = pytest.mark.e2e

RUN_JOB = DispatchActivities.run_job.__name__  # its activity name (activity.defn names it so)

HEARTBEAT_TIMEOUT_S = float(FAST["BOXRUN_ACTIVITY_HEARTBEAT_TIMEOUT_S"])
# The bound for "box heartbeat lost": heartbeat_timeout + a small margin.
HEARTBEAT_LOSS_MARGIN_S = 6.0

# A job that records that it started (one line per run), writes its own pid and, optionally, the pid
# of a child process, prints `started`, waits for the gate file, then optionally writes an artifact.
GATED = """
import os, subprocess, sys, time
RUNS, PIDS, GATE, CHILD, ARTIFACT = {runs!r}, {pids!r}, {gate!r}, {child!r}, {artifact!r}
with open(RUNS, "a") as fh:
    fh.write(f"{{os.getpid()}}\\n")
pids = [os.getpid()]
if CHILD:
    pids.append(subprocess.Popen(["sleep", "120"]).pid)
with open(PIDS + ".tmp", "w") as fh:
    fh.write(" ".join(map(str, pids)))
os.replace(PIDS + ".tmp", PIDS)
print("started", flush=True)
deadline = time.monotonic() + 120
while not os.path.exists(GATE):
    if time.monotonic() > deadline:
        print("gate never opened", file=sys.stderr)
        sys.exit(7)
    time.sleep(0.02)
if ARTIFACT:
    with open(os.path.join(os.environ["BOXRUN_ARTIFACTS_DIR"], "result.txt"), "w") as fh:
        fh.write("ok\\n")
print("finished", flush=True)
"""

# A job that prints numbered lines (and copies each one to a transcript file) while it waits for the
# gate, so lines are produced during an outage; the transcript is exactly what it printed.
TICKER = """
import os, sys, time
TRANSCRIPT, GATE = {transcript!r}, {gate!r}
out = open(TRANSCRIPT, "a", buffering=1)
def say(text, stream=sys.stdout):
    print(text, file=stream, flush=True)
    out.write(text + "\\n")
for i in range(20):
    say(f"before {{i}}")
say("warming up", sys.stderr)
deadline = time.monotonic() + 120
k = 0
while not os.path.exists(GATE) and time.monotonic() < deadline:
    say(f"tick {{k}}")
    k += 1
    time.sleep(0.02)
for i in range(20):
    say(f"after {{i}}")
"""


class Gated:
    """Files of one gated job under tmp_path."""

    def __init__(self, tmp_path: Path, tag: str) -> None:
        self.runs = tmp_path / f"{tag}.runs"
        self.pids = tmp_path / f"{tag}.pids"
        self.gate = tmp_path / f"{tag}.gate"

    def script(self, *, child: bool = False, artifact: bool = False) -> str:
        return GATED.format(
            runs=str(self.runs), pids=str(self.pids), gate=str(self.gate), child=child, artifact=artifact
        )

    def open(self) -> None:
        self.gate.touch()

    def run_count(self) -> int:
        return len(self.runs.read_text().splitlines()) if self.runs.exists() else 0

    def pid_list(self) -> list[int]:
        return [int(p) for p in self.pids.read_text().split()] if self.pids.exists() else []


def kill_leftovers(pids: list[int]) -> None:
    """Test hygiene only (after the assertions): no process of ours outlives the test."""
    for pid in pids:
        if pid_alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


async def job(api: httpx.AsyncClient, job_id: str) -> dict:
    resp = await api.get(f"/api/jobs/{job_id}")
    assert resp.status_code == 200, resp.text
    return resp.json()


async def states(api: httpx.AsyncClient, job_id: str) -> list[str]:
    return [e["to_state"] for e in (await api.get(f"/api/jobs/{job_id}/events")).json()["data"]]


async def queue(api: httpx.AsyncClient, box: str = "local-1") -> dict:
    resp = await api.get(f"/api/boxes/{box}/queue")
    assert resp.status_code == 200, resp.text
    return resp.json()


async def box_info(api: httpx.AsyncClient, box: str = "local-1") -> dict:
    resp = await api.get(f"/api/boxes/{box}")
    assert resp.status_code == 200, resp.text
    return resp.json()


async def wait_running(api: httpx.AsyncClient, job_id: str, gated: Gated, timeout: float = 30) -> dict:
    """The job is `running` and its script is past its start (pids written)."""

    async def ready():
        got = await job(api, job_id)
        return got if got["state"] == "running" and gated.pid_list() else None

    return await wait_for(ready, timeout=timeout, interval=0.05, what=f"job {job_id} running")


async def wait_log_line(api: httpx.AsyncClient, job_id: str, text: str, timeout: float = 30) -> list[dict]:
    async def seen():
        lines = await replay(api, job_id)
        return lines if any(line["text"] == text for line in lines) else None

    return await wait_for(seen, timeout=timeout, interval=0.05, what=f"log line {text!r} of job {job_id}")


async def run_job_attempts(fs: FaultStack, job_id: str) -> list[int]:
    """The attempt number of every run_job activity started in the job's workflow history."""
    client = await connect(fs.endpoints["temporal_address"])
    history = await client.get_workflow_handle(job_id).fetch_history()
    scheduled = {
        e.event_id
        for e in history.events
        if e.HasField("activity_task_scheduled_event_attributes")
        and e.activity_task_scheduled_event_attributes.activity_type.name == RUN_JOB
    }
    return [
        e.activity_task_started_event_attributes.attempt
        for e in history.events
        if e.HasField("activity_task_started_event_attributes")
        and e.activity_task_started_event_attributes.scheduled_event_id in scheduled
    ]


async def last_heartbeat(fs: FaultStack, job_id: str) -> float:
    """When the job's pending run_job activity last heartbeated to Temporal (epoch s; 0 if never)."""
    client = await connect(fs.endpoints["temporal_address"])
    desc = await client.get_workflow_handle(job_id).describe()
    times = [
        a.last_heartbeat_time.seconds + a.last_heartbeat_time.nanos / 1e9
        for a in desc.raw_description.pending_activities
        if a.activity_type.name == RUN_JOB
    ]
    return max(times, default=0.0)


def ts(value: str) -> float:
    return datetime.fromisoformat(value).timestamp()


def assert_contiguous(lines: list[dict]) -> None:
    assert [line["seq"] for line in lines] == list(range(1, len(lines) + 1)), "log seqs must be 1..N, no gap/dup"


# ------------------------------------------------------------------ 1. kill -9 the agent


async def test_agent_killed_mid_job_fails_it_frees_the_box_and_the_next_jobs_run_after_restart(tmp_path):
    a = Gated(tmp_path, "a")
    async with fault_stack(tmp_path, boxes=1) as fs, fs.api() as api:
        try:
            first = await submit(api, a.script(child=True))
            await wait_running(api, first["id"], a)
            job_pid, child_pid = a.pid_list()
            assert pid_alive(job_pid) and pid_alive(child_pid)
            # queued on the same box before the kill: waits, the box is busy
            before = await submit(api, "print('second job ran')")
            await wait_for(lambda: _waiting(api, before["id"]), what="second job waiting for local-1")

            agent_pid = fs.child("agent-local-1").pid
            fs.kill("agent-local-1")
            killed_at, killed_mono = time.time(), time.monotonic()
            assert not pid_alive(agent_pid)
            after = await submit(api, "print('third job ran')")  # queued after the kill

            done = await wait_terminal(api, first["id"], timeout=HEARTBEAT_TIMEOUT_S + HEARTBEAT_LOSS_MARGIN_S + 5)
            noticed = time.monotonic() - killed_mono
            assert (done["state"], done["error"]) == ("failed", "box heartbeat lost"), done
            server_delay = ts(done["finished_at"]) - killed_at
            print(
                f"\nheartbeat loss: failed {server_delay:.2f}s after the kill (seen by the test after {noticed:.2f}s)"
            )
            bound = HEARTBEAT_TIMEOUT_S + HEARTBEAT_LOSS_MARGIN_S
            assert server_delay < bound and noticed < bound, (server_delay, noticed)
            assert await states(api, first["id"]) == ["queued", "dispatching", "running", "failed"]

            # the lease is freed with the terminal transition (same transaction)
            leases = (await queue(api))["leases"]
            assert all(lease["job_id"] != first["id"] for lease in leases), leases
            assert leases == []

            # the job does not run on without its agent: its process and its child are gone
            await wait_for(
                lambda: not pid_alive(job_pid) and not pid_alive(child_pid),
                timeout=2,
                what=f"the orphaned job process {job_pid} and its child {child_pid} to be gone",
            )

            # while the agent is down nothing is dispatched onto the dead box
            async def b_offline():
                q = await queue(api)
                return [w for w in q["waiting"] if w["job_id"] == before["id"] and w["waiting_reason"] == "offline"]

            await wait_for(b_offline, timeout=10, what="second job waiting with reason offline")
            assert (await job(api, after["id"]))["state"] == "waiting_for_box"
            assert (await box_info(api))["status"] == "offline"

            restarted_mono = time.monotonic()
            fs.start("agent-local-1")
            second = await wait_terminal(api, before["id"], timeout=30)
            third = await wait_terminal(api, after["id"], timeout=30)
            print(f"after the restart: queued jobs done within {time.monotonic() - restarted_mono:.2f}s")
            assert second["state"] == "completed" and third["state"] == "completed", (second, third)
            assert second["box"] == third["box"] == "local-1"
            assert ts(second["finished_at"]) <= ts(third["started_at"]), "FIFO on a box of capacity 1"
            assert [line["text"] for line in await replay(api, before["id"])] == ["second job ran"]
            assert [line["text"] for line in await replay(api, after["id"])] == ["third job ran"]
            # the failed job was never dispatched again
            assert a.run_count() == 1
            assert (await job(api, first["id"]))["state"] == "failed"
            assert await run_job_attempts(fs, first["id"]) == [1]
        finally:
            kill_leftovers(a.pid_list())


async def _waiting(api: httpx.AsyncClient, job_id: str) -> bool:
    return (await job(api, job_id))["state"] == "waiting_for_box"


# ------------------------------------------------------------------ 2. kill -9 the control worker


async def test_control_worker_killed_mid_job_the_job_finishes_once(tmp_path):
    a = Gated(tmp_path, "a")
    async with fault_stack(tmp_path, boxes=1) as fs, fs.api() as api:
        try:
            submitted = await submit(api, a.script(artifact=True))
            await wait_running(api, submitted["id"], a)
            assert a.run_count() == 1

            fs.kill("worker")
            # the job finishes on the box while no control worker runs: the box's result (through
            # the API, which needs no worker) waits in Temporal; its lines and manifest are stored
            a.open()
            await wait_log_line(api, submitted["id"], "finished")
            assert (await job(api, submitted["id"]))["state"] in ("running", "uploading_artifacts")

            restarted = time.monotonic()
            fs.start("worker")
            done = await wait_terminal(api, submitted["id"], timeout=60)
            print(f"\njob ended {time.monotonic() - restarted:.2f}s after the worker restart")
            assert (done["state"], done["exit_code"], done["error"]) == ("completed", 0, None), done
            assert await states(api, submitted["id"]) == [
                "queued",
                "dispatching",
                "running",
                "uploading_artifacts",
                "completed",
            ]
            assert a.run_count() == 1, "the script must run exactly once"
            assert await run_job_attempts(fs, submitted["id"]) == [1]

            lines = await replay(api, submitted["id"])
            assert_contiguous(lines)
            assert [line["text"] for line in lines] == ["started", "finished"]
            arts = (await api.get(f"/api/jobs/{submitted['id']}/artifacts")).json()["data"]
            assert [(x["path"], x["size"]) for x in arts] == [("result.txt", 3)]
            assert (await queue(api))["leases"] == []
        finally:
            kill_leftovers(a.pid_list())


# ------------------------------------------------------------------ 3. restart Temporal


async def test_temporal_restart_mid_job_jobs_finish_with_complete_logs(tmp_path):
    # x finishes while Temporal is down (its result must be delivered after the restart);
    # y is released only after Temporal is back.
    x, y = Gated(tmp_path, "x"), Gated(tmp_path, "y")
    async with fault_stack(tmp_path, boxes=2) as fs, fs.api() as api:
        try:
            jx = await submit(api, x.script(), box="local-1")
            jy = await submit(api, y.script(), box="local-2")
            await wait_running(api, jx["id"], x)
            await wait_running(api, jy["id"], y)
            await wait_log_line(api, jx["id"], "started")
            await wait_log_line(api, jy["id"], "started")

            stopped = time.monotonic()
            fs.stop("temporal")
            x.open()
            await wait_log_line(api, jx["id"], "finished")  # the API and Postgres still take logs
            fs.start("temporal")
            y.open()
            done_x = await wait_terminal(api, jx["id"], timeout=60)
            done_y = await wait_terminal(api, jy["id"], timeout=60)
            print(f"\nboth jobs ended {time.monotonic() - stopped:.2f}s after the Temporal stop")
            for done in (done_x, done_y):
                assert (done["state"], done["exit_code"], done["error"]) == ("completed", 0, None), done
                assert await states(api, done["id"]) == ["queued", "dispatching", "running", "completed"]
                lines = await replay(api, done["id"])
                assert_contiguous(lines)
                assert [line["text"] for line in lines] == ["started", "finished"]
                assert await run_job_attempts(fs, done["id"]) == [1]
            assert x.run_count() == 1 and y.run_count() == 1
            assert (await queue(api, "local-1"))["leases"] == [] and (await queue(api, "local-2"))["leases"] == []

            # and the restarted server takes new work
            after = await submit(api, "print('after the restart')")
            assert (await wait_terminal(api, after["id"], timeout=30))["state"] == "completed"
        finally:
            kill_leftovers(x.pid_list() + y.pid_list())


# ------------------------------------------------------------------ 4. restart Postgres


async def test_postgres_restart_mid_job_the_job_finishes_with_every_line_once(tmp_path):
    transcript, gate = tmp_path / "transcript.txt", tmp_path / "ticker.gate"
    script = TICKER.format(transcript=str(transcript), gate=str(gate))

    def printed() -> list[str]:
        return transcript.read_text().splitlines() if transcript.exists() else []

    async with fault_stack(tmp_path, boxes=1) as fs, fs.api() as api:
        submitted = await submit(api, script)
        await wait_log_line(api, submitted["id"], "warming up")
        assert (await job(api, submitted["id"]))["state"] == "running"

        fs.stop("postgres")
        at_stop = len(printed())
        # lines keep coming while Postgres is down; the agent must hold them until they are taken
        wait_for_lines = at_stop + 25
        await wait_for(lambda: len(printed()) >= wait_for_lines, timeout=20, what="ticks while Postgres is down")
        restarted = time.monotonic()
        fs.start("postgres")
        await wait_for(
            lambda: _lines_after(api, submitted["id"], at_stop + 1),
            timeout=60,
            what="log lines printed during the outage to reach Postgres",
        )
        gate.touch()
        done = await wait_terminal(api, submitted["id"], timeout=60)
        print(
            f"\njob ended {time.monotonic() - restarted:.2f}s after the Postgres restart; "
            f"{len(printed())} lines, {len(printed()) - at_stop} printed after the stop"
        )
        assert (done["state"], done["exit_code"], done["error"]) == ("completed", 0, None), done
        assert await states(api, submitted["id"]) == ["queued", "dispatching", "running", "completed"]

        lines = await replay(api, submitted["id"])
        assert_contiguous(lines)
        assert [line["text"] for line in lines] == printed(), "the replay is exactly what the script printed"
        assert [line["stream"] for line in lines if line["text"] == "warming up"] == ["stderr"]
        assert (await queue(api))["leases"] == []


async def _lines_after(api: httpx.AsyncClient, job_id: str, count: int) -> bool:
    try:
        resp = await api.get(f"/api/jobs/{job_id}/logs", params={"after": count - 1, "limit": 1})
    except httpx.HTTPError:
        return False
    return resp.status_code == 200 and bool(resp.json()["data"])


# ------------------------------------------------------------------ 5. graceful agent stop (drain)


async def test_agent_sigterm_drains_the_running_job_finishes_and_new_jobs_wait(tmp_path):
    a = Gated(tmp_path, "a")
    # capacity 2: a second job would fit next to the running one, so only the drain holds it back
    async with fault_stack(tmp_path, boxes=1, capacity=2) as fs, fs.api() as api:
        try:
            running = await submit(api, a.script())
            await wait_running(api, running["id"], a)

            agent = fs.child("agent-local-1")
            agent.proc.send_signal(signal.SIGTERM)
            termed, termed_wall = time.monotonic(), time.time()

            async def draining():
                return (await box_info(api))["draining"]

            await wait_for(draining, timeout=10, what="local-1 to show draining")
            print(f"\ndraining shown {time.monotonic() - termed:.2f}s after SIGTERM")

            during = await submit(api, "print('submitted during the drain')")
            await wait_for(lambda: _waiting(api, during["id"]), timeout=10, what="job submitted during drain waiting")
            # the draining agent keeps heartbeating the running job to Temporal

            async def heartbeat_after_sigterm():
                return await last_heartbeat(fs, running["id"]) > termed_wall + 1

            await wait_for(
                heartbeat_after_sigterm,
                timeout=10,
                interval=0.1,
                what="a run_job heartbeat more than 1 s after SIGTERM",
            )
            assert (await job(api, running["id"]))["state"] == "running"
            assert (await job(api, during["id"]))["state"] == "waiting_for_box"
            assert agent.alive()

            a.open()
            done = await wait_terminal(api, running["id"], timeout=30)
            assert (done["state"], done["exit_code"], done["error"]) == ("completed", 0, None), done
            assert [line["text"] for line in await replay(api, running["id"])] == ["started", "finished"]
            await wait_for(lambda: not agent.alive(), timeout=15, what="the drained agent to exit")
            assert agent.proc.returncode == 0, fs.child("agent-local-1").log_tail()

            # the release woke the waiting job, but the box is draining/gone: it still waits
            assert (await job(api, during["id"]))["state"] == "waiting_for_box"
            assert await states(api, during["id"]) == ["queued", "waiting_for_box"]

            restarted = time.monotonic()
            fs.start("agent-local-1")
            later = await wait_terminal(api, during["id"], timeout=30)
            print(f"job submitted during the drain ended {time.monotonic() - restarted:.2f}s after the restart")
            assert (later["state"], later["box"]) == ("completed", "local-1"), later
            assert await states(api, during["id"]) == [
                "queued",
                "waiting_for_box",
                "dispatching",
                "running",
                "completed",
            ]
            assert (await box_info(api))["draining"] is False
            assert a.run_count() == 1
        finally:
            kill_leftovers(a.pid_list())
