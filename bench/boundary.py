"""The box boundary of issue 9: dispatch, cancel -> SIGTERM, agent RSS, one API with many idle agents.

    python -m bench.boundary [--jobs 30] [--cancel-jobs 20] [--idle-agents 1000] [--idle-window-s 30]
                             [--profile-idle] [--json] [--keep] [--quick]

One private in-process `DevStack` (`boxrun.dev.stack`, 1 box `local-1` of capacity 1, every port
picked free, data in a temporary directory), stopped at the end even on error. Parts, in order:

1. dispatch: --jobs sequential jobs `{"box": "local-1", "script": "import time; print(repr(time.time()))"}`.
   - dispatch = the instant the script's first line executed (the time it prints) minus the
     `ActivityTaskScheduled` event time of `run_job` in the job's Temporal history (the workflow
     asked for the box's work -> the user's code runs: offer, long-poll wake-up, claim, bundle,
     workspace, process start);
   - submit -> completed = perf_counter from just before POST /api/jobs to the first
     GET /api/jobs/{id} (every 5 ms) answering `completed`;
   - next to N runs of a bare one-activity Temporal workflow against the same dev server
     (`bench.latency.bench_bare`, sandboxed, in-process worker).
2. cancel -> SIGTERM: `bench.lifecycle.bench_cancel` (a job that records when SIGTERM reaches it;
   the cancel is POSTed at a random 0.2-0.7 s after it is ready; sample = SIGTERM instant - the
   instant just before the POST).
3. agent RSS: VmRSS of the `boxrun agent` process after the stack has idled 5 s (and its peak, VmHWM).
4. idle agents (issue 15's "one API process with 1,000 connected agents"): --idle-agents boxes are
   registered (group `sim`, so they take no real job) and driven by `bench.simagents` (one asyncio
   process, the real agent protocol: session, one long-poll `GET /api/agent/events?wait=25` after
   another, a heartbeat at start and in any 5 s without a poll in flight: the API renews a held
   poll's box itself). With all of them connected: the API process's
   RSS and its CPU seconds over --idle-window-s (from /proc/<pid>/stat), long-polls answered and
   heartbeats per second, every simulated box still `online` afterwards, and the dispatch part
   again with --jobs // 3 jobs, to show dispatch latency is unchanged. --profile-idle: py-spy
   (50 Hz, idle frames left out) on the API during the window, the functions where its time went.

--quick (CI) runs every part tiny (3 jobs, 1 cancel, 20 idle agents, 3 s window) and fails on any
problem: it checks the bench and what it measures work; its figures mean little.

Server and job instants share the host clock. Percentiles by nearest rank (value at 1-based rank
ceil(p/100*n)).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
import traceback
from pathlib import Path
from urllib.parse import urlsplit

from bench.common import TERMINAL, ProductProblem, Profiler, bench_parser, hard_exit, keyed_report, run_parts
from bench.latency import bench_bare
from bench.lifecycle import Api, bench_cancel, log, pct, private_stack
from bench.simagents import Fleet, SimAgent, SimProblem
from boxrun.temporal import connect

DISPATCH_SCRIPT = "import time; print(repr(time.time()))"
TICK = 100  # os.sysconf("SC_CLK_TCK") on Linux


def proc_status(pid: int, key: str) -> int:
    """A /proc/<pid>/status field in KiB (VmRSS, VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise ProductProblem(f"process {pid} has no {key}")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


# --------------------------------------------------------------------------- 1. dispatch


async def scheduled_at(temporal, job_id: str) -> float:
    """When the workflow scheduled run_job (the ActivityTaskScheduled event's time)."""
    history = await temporal.get_workflow_handle(job_id).fetch_history()
    for event in history.events:
        attrs = event.activity_task_scheduled_event_attributes
        if event.HasField("activity_task_scheduled_event_attributes") and attrs.activity_type.name == "run_job":
            return event.event_time.ToDatetime().timestamp()
    raise ProductProblem(f"job {job_id}: no run_job in its history")


async def bench_dispatch(api: Api, temporal, jobs: int, warmup: int) -> dict:
    dispatch, submit_done = [], []
    for i in range(warmup + jobs):
        t0 = time.perf_counter()
        job_id = await api.submit({"box": "local-1", "script": DISPATCH_SCRIPT, "timeout_s": 60})
        while (job := await api.job(job_id)).state not in TERMINAL:
            await asyncio.sleep(0.005)
        elapsed = time.perf_counter() - t0
        if job.state != "completed":
            raise ProductProblem(f"dispatch job ended {job.state}; {await api.evidence(job_id)}")
        lines = (await api.client.log_page(job_id, after=0, limit=10)).data
        printed = float(next(ln.text for ln in lines if ln.stream == "stdout"))
        if i < warmup:
            continue
        dispatch.append(printed - await scheduled_at(temporal, job_id))
        submit_done.append(elapsed)
    return {"dispatch_ms": pct(dispatch, 1000), "submit_to_completed_ms": pct(submit_done, 1000)}


# --------------------------------------------------------------------------- 4. idle agents


async def bench_idle_agents(
    stack, api: Api, temporal, count: int, window_s: float, jobs: int, profile_dir: Path | None = None
) -> dict:
    api_pid = stack.child("api").pid
    rss_before = proc_status(api_pid, "VmRSS")
    url = urlsplit(stack.endpoints["api_url"])
    agents = []
    for i in range(count):
        created = await api.client.register_box(name=f"sim-{i:04d}", groups=["sim"], capacity=1)
        agents.append(SimAgent(url.hostname or "127.0.0.1", url.port or 80, created.node_token))
    fleet = Fleet(agents)
    try:
        connected_s = await fleet.start()
        log(f"idle agents: {count} connected in {connected_s:.1f}s")
        await asyncio.sleep(2)  # let the last sessions settle into their long-polls
        spy = Profiler({"api": api_pid}, profile_dir) if profile_dir is not None else None
        cpu0, t0 = cpu_seconds(api_pid), time.perf_counter()
        before = fleet.totals()
        await asyncio.sleep(window_s)
        cpu = cpu_seconds(api_pid) - cpu0
        span = time.perf_counter() - t0
        after = fleet.totals()
        profile = spy.stop()["api"] if spy is not None else None
        rss_idle = proc_status(api_pid, "VmRSS")
        with_agents = await bench_dispatch(api, temporal, jobs, 1)
        fleet.check()
        boxes = (await api.client.list_boxes()).data
        online = sum(1 for b in boxes if b.name.startswith("sim-") and b.status == "online")
        if online != count:
            raise ProductProblem(f"only {online} of {count} simulated boxes online after the window")
    except SimProblem as exc:
        raise ProductProblem(str(exc)) from exc
    finally:
        await fleet.stop()
    return {
        "agents": count,
        "connect_all_s": round(connected_s, 1),
        "api_rss_mib_before": round(rss_before / 1024, 1),
        "api_rss_mib_with_agents": round(rss_idle / 1024, 1),
        "api_cpu_s_per_s_idle": round(cpu / span, 3),
        "long_polls_answered_per_s": round((after["polls"] - before["polls"]) / span, 1),
        "heartbeats_per_s": round((after["heartbeats"] - before["heartbeats"]) / span, 1),
        "boxes_online": online,
        "window_s": round(span, 1),
        "dispatch_with_agents": with_agents,
        **({"api_profile": profile} if profile is not None else {}),
    }


# --------------------------------------------------------------------------- main


async def run(args: argparse.Namespace, root: Path) -> dict:
    quick = args.quick
    jobs, cancels = (3, 1) if quick else (args.jobs, args.cancel_jobs)
    idle, window = (20, 3.0) if quick else (args.idle_agents, args.idle_window_s)
    work = root / "work"
    work.mkdir()
    work.chmod(0o1777)  # jobs may run as the box's slot users (agent as root): they write here too
    result: dict = {"errors": {}}
    async with private_stack(root, "boundary", boxes=1) as (stack, endpoints):
        api = Api(endpoints)
        temporal = await connect(endpoints["temporal_address"])
        try:
            result["dispatch"] = await bench_dispatch(api, temporal, jobs, 1 if quick else 3)
            bare = await bench_bare(endpoints["temporal_address"], jobs, 1 if quick else 3, True)
            result["bare_workflow_ms"] = pct(bare, 1000)
            log(
                f"dispatch p50 {result['dispatch']['dispatch_ms'].get('p50')} ms, bare {result['bare_workflow_ms']['p50']} ms"
            )
            result["cancel"] = await bench_cancel(api, "local-1", cancels, 0 if quick else 2, work, random.Random(3))
            await asyncio.sleep(5)
            agent_pid = stack.child("agent-local-1").pid
            result["agent_rss_mib"] = {
                "idle": round(proc_status(agent_pid, "VmRSS") / 1024, 1),
                "peak": round(proc_status(agent_pid, "VmHWM") / 1024, 1),
            }
            result["idle_agents"] = await bench_idle_agents(
                stack, api, temporal, idle, window, max(3, jobs // 3), root if args.profile_idle else None
            )
        except Exception as exc:
            traceback.print_exc()
            result["errors"]["run"] = f"{type(exc).__name__}: {exc}"
        finally:
            await api.close()
    if result.get("cancel", {}).get("problems"):
        result["errors"]["cancel"] = "; ".join(result["cancel"]["problems"])
    return result


def render(r: dict) -> str:
    keys = ("dispatch", "bare_workflow_ms", "agent_rss_mib", "idle_agents")
    cancel = [f"cancel -> SIGTERM ms: {json.dumps(r['cancel']['cancel_to_sigterm_ms'])}"] if "cancel" in r else []
    return keyed_report("boxrun box boundary (bench/boundary.py)", r, keys, *cancel)


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser("boundary", __doc__)
    parser.add_argument("--jobs", type=int, default=30)
    parser.add_argument("--cancel-jobs", type=int, default=20)
    parser.add_argument("--idle-agents", type=int, default=1000)
    parser.add_argument("--idle-window-s", type=float, default=30.0)
    parser.add_argument(
        "--profile-idle", action="store_true", help="py-spy the API during the idle window (its CPU includes py-spy's)"
    )
    args = parser.parse_args(argv)
    return run_parts("boxrun-bench-boundary-", args, run, render, lambda r: bool(r["errors"]))


if __name__ == "__main__":
    hard_exit(main())
