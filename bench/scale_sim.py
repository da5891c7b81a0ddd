"""Scale simulation of issue 15: 1,000 simulated boxes, a 100k-jobs/day arrival pattern, per-job costs.

    python -m bench.scale_sim [--boxes 1000] [--jobs-per-day 100000] [--minutes 10] [--burst-factor 10]
                              [--burst-every-s 120] [--burst-s 10] [--job-s 5] [--idle-s 30]
                              [--bare 20] [--seed 15] [--json] [--keep] [--quick]

One private in-process `DevStack` (`boxrun.dev.stack`: Postgres, the Temporal dev server,
SeaweedFS, one `boxrun api`, one `boxrun worker`, one real agent `local-1` that takes no part),
every port picked free, data in a temporary directory, stopped at the end even on error.

1. bare: --bare runs of a bare one-activity Temporal workflow against the stack's Temporal
   (`bench.latency.bench_bare`), the reference every figure is read against.
2. fleet: --boxes boxes registered in group `sim` (capacity 1) and driven by `bench.simagents`
   (one asyncio process in the bench, the real agent protocol: session, heartbeat every 5 s,
   long-polls, claim, progress every second, one log batch, result; no process is started).
3. idle: --idle-s with every simulated agent connected and no job: CPU seconds per stack process
   (with its descendants, /proc) = the fixed cost of the fleet.
4. arrivals: for --minutes, jobs `{"box_group": "sim", "script": "pass"}` arrive as a Poisson
   process of rate --jobs-per-day / 86 400 per second, multiplied by --burst-factor for --burst-s
   out of every --burst-every-s (the first burst starts at --burst-every-s / 2). Each arrival is
   one POST /api/jobs from its own task (the submit call's latency is recorded). A simulated job
   "runs" --job-s seconds (progress every second), writes one log line, reports exit 0. Then the
   bench waits until every job is terminal (drain).
5. figures over the arrivals + drain window:
   - control-plane CPU seconds per job for api, worker, temporal, postgres, s3 (each with its
     descendants, /proc/<pid>/stat utime+stime+cutime+cstime), minus nothing: the idle fleet's cost
     is reported beside it (per second) so the two can be separated;
   - Postgres per job: `pg_stat_database` deltas of xact_commit and tup_inserted + tup_updated +
     tup_deleted for the app database, and WAL bytes (pg_current_wal_lsn);
   - Temporal per job: history events, workflow tasks, activity tasks (scheduled), local
     activities (markers), signals, timers, summed over every workflow execution started in the
     window (`list_workflows`, then each history) divided by the jobs;
   - latency: created_at -> started_at (the claim) and created_at -> finished_at of every job
     (server instants), all jobs and the ones submitted inside a burst; POST /api/jobs latency;
   - failures: jobs not `completed` (must be 0), simulated agents that stopped, claims refused.

--quick (CI): 20 boxes, 40 s of arrivals at 72,000 jobs/day (~0.8/s; x3 in one 8 s burst), 1 s jobs; it fails on any failed job or stopped agent; its figures mean little.

Percentiles by nearest rank (value at 1-based rank ceil(p/100*n)). Every instant is the host clock.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
import traceback
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg

from bench.common import (
    TERMINAL,
    ProductProblem,
    bench_parser,
    cpu_by_pid_tree,
    hard_exit,
    keyed_report,
    loadavg,
    run_parts,
)
from bench.latency import bench_bare
from bench.lifecycle import Api, log, pct, private_stack
from bench.simagents import Fleet, SimAgent, SimProblem
from boxrun.errors import BoxrunError
from boxrun.temporal import connect

GROUP = "sim"
PG_COUNTERS = "select xact_commit, tup_inserted + tup_updated + tup_deleted as tup_written, (pg_current_wal_lsn() - '0/0'::pg_lsn)::bigint as wal"


def arrivals(args: argparse.Namespace, rng: random.Random) -> list[tuple[float, bool]]:
    """(offset in seconds, inside a burst) of every arrival: a Poisson process whose rate is
    multiplied by burst_factor during the bursts (thinning of the peak-rate process)."""
    base = args.jobs_per_day / 86_400
    peak = base * args.burst_factor
    span = args.minutes * 60
    out, t = [], 0.0
    while True:
        t += rng.expovariate(peak)
        if t >= span:
            return out
        burst = (t + args.burst_every_s / 2) % args.burst_every_s < args.burst_s
        if burst or rng.random() < base / peak:
            out.append((t, burst))


async def pg_counters(db_url: str) -> dict:
    conn = await asyncpg.connect(db_url)
    try:
        row = await conn.fetchrow(f"{PG_COUNTERS}, * from pg_stat_database where datname = current_database()")
        return {"xact_commit": row["xact_commit"], "tup_written": row["tup_written"], "wal": row["wal"]}
    finally:
        await conn.close()


async def temporal_counts(temporal, since: float) -> dict:
    """Event counts over every workflow execution started after `since` (epoch seconds)."""
    kinds: Counter[str] = Counter()
    workflows: Counter[str] = Counter()
    iso = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(since - 1))
    async for wf in temporal.list_workflows(f'StartTime >= "{iso}"'):
        workflows[wf.workflow_type] += 1
        history = await temporal.get_workflow_handle(wf.id, run_id=wf.run_id).fetch_history()
        for event in history.events:
            kinds["events"] += 1
            name = event.WhichOneof("attributes") or ""
            if name == "workflow_task_scheduled_event_attributes":
                kinds["workflow_tasks"] += 1
            elif name == "activity_task_scheduled_event_attributes":
                kinds["activities"] += 1
            elif name == "marker_recorded_event_attributes":
                kinds["local_activities"] += 1
            elif name == "workflow_execution_signaled_event_attributes":
                kinds["signals"] += 1
            elif name == "timer_started_event_attributes":
                kinds["timers"] += 1
            elif name == "start_child_workflow_execution_initiated_event_attributes":
                kinds["child_workflows"] += 1
    return {"workflows": dict(workflows), **kinds}


def cpu_snapshot(stack) -> dict[str, float]:
    return cpu_by_pid_tree((c.name, c.pid) for c in stack.children)


def cpu_delta(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    return {k: round(b[k] - a.get(k, 0.0), 2) for k in b}


async def submit_all(api: Api, plan: list[tuple[float, bool]]) -> tuple[list[dict], list[str]]:
    """Submit every planned arrival at its instant; (submitted jobs, refusals)."""
    submitted: list[dict] = []
    refused: list[str] = []
    t0 = time.monotonic()

    async def one(offset: float, burst: bool) -> None:
        await asyncio.sleep(max(0.0, t0 + offset - time.monotonic()))
        s = time.perf_counter()
        try:
            job_id = await api.submit({"box_group": GROUP, "script": "pass", "timeout_s": 600})
        except ProductProblem as exc:
            refused.append(str(exc))
            return
        submitted.append({"id": job_id, "burst": burst, "submit_s": time.perf_counter() - s})

    await asyncio.gather(*(one(offset, burst) for offset, burst in plan))
    return submitted, refused


async def wait_drained(api: Api, n: int, timeout: float) -> None:
    """Until `n` jobs are terminal (the per-state counts of GET /api/jobs: a few calls a second,
    not one per job; the stack holds no other job)."""
    deadline = time.monotonic() + timeout
    while (done := sum([await api.count(state) for state in sorted(TERMINAL)])) < n:
        if time.monotonic() > deadline:
            raise ProductProblem(f"{n - done} of {n} jobs not terminal {timeout:.0f}s after the last arrival")
        await asyncio.sleep(1.0)


async def run(args: argparse.Namespace, root: Path) -> dict:
    if args.quick:
        args.boxes, args.minutes, args.jobs_per_day, args.burst_factor = 20, 40 / 60, 72_000, 3
        args.burst_every_s, args.burst_s, args.job_s, args.idle_s, args.bare = 40, 8, 1.0, 3, 3
    result: dict = {"errors": {}, "params": {k: v for k, v in vars(args).items() if k not in ("json", "keep")}}
    plan = arrivals(args, random.Random(args.seed))
    result["planned_jobs"] = len(plan)
    result["planned_in_bursts"] = sum(1 for _, b in plan if b)
    async with private_stack(root, "scale", boxes=1) as (stack, endpoints):
        api = Api(endpoints, max_connections=200)
        temporal = await connect(endpoints["temporal_address"])
        db_url = stack.child("api").env["BOXRUN_DATABASE_URL"]
        fleet: Fleet | None = None
        try:
            bare = await bench_bare(endpoints["temporal_address"], args.bare, 2, True)
            result["bare_workflow_ms"] = pct(bare, 1000)
            url = urlsplit(endpoints["api_url"])
            agents = []
            for i in range(args.boxes):
                created = await api.client.register_box(name=f"sim-{i:04d}", groups=[GROUP], capacity=1)
                agents.append(
                    SimAgent(
                        url.hostname or "127.0.0.1", url.port or 80, created.node_token, run_jobs=True, job_s=args.job_s
                    )
                )
            fleet = Fleet(agents)
            result["fleet_connect_s"] = round(await fleet.start(), 1)
            log(f"{args.boxes} simulated boxes connected in {result['fleet_connect_s']}s; idle window {args.idle_s}s")
            await asyncio.sleep(2)
            pg_idle0, c0, t0 = await pg_counters(db_url), cpu_snapshot(stack), time.monotonic()
            await asyncio.sleep(args.idle_s)
            idle = cpu_delta(c0, cpu_snapshot(stack))
            idle_span = time.monotonic() - t0
            await asyncio.sleep(1.5)  # the statistics collector publishes at most every second
            pg_idle1 = await pg_counters(db_url)
            pg_idle = {k: (pg_idle1[k] - pg_idle0[k]) / (idle_span + 1.5) for k in pg_idle0}
            result["idle_postgres_per_s"] = {k: round(v, 1) for k, v in pg_idle.items()}
            result["idle_cpu_s_per_s"] = {k: round(v / idle_span, 3) for k, v in idle.items()}
            fleet.check()

            log(f"arrivals: {len(plan)} jobs over {args.minutes:g} min (load {loadavg()}): announce-worthy load")
            result["load_before_arrivals"] = loadavg()
            pg0, c0, t_start = await pg_counters(db_url), cpu_snapshot(stack), time.time()
            submitted, refused = await submit_all(api, plan)
            arrivals_end = time.time()
            try:
                await wait_drained(api, len(submitted), 600)
            except (ProductProblem, BoxrunError) as exc:  # still report what was measured
                result["errors"]["drain"] = f"{type(exc).__name__}: {exc}"
            t_end = time.time()
            await asyncio.sleep(1.5)  # the statistics collector publishes at most every second
            cpu = cpu_delta(c0, cpu_snapshot(stack))
            pg1 = await pg_counters(db_url)
            result["load_after_drain"] = loadavg()
            fleet.check()
            n = len(submitted)
            jobs = [await api.job(s["id"]) for s in submitted]
            states = Counter(str(j.state) for j in jobs)
            result["failure_reasons"] = dict(Counter(str(j.error) for j in jobs if str(j.state) != "completed"))
            burst_of = {s["id"]: s["burst"] for s in submitted}
            start, finish, start_b, finish_b = [], [], [], []
            for j in jobs:
                if j.started_at and j.finished_at:
                    a, b = (j.started_at - j.created_at).total_seconds(), (j.finished_at - j.created_at).total_seconds()
                    start.append(a)
                    finish.append(b)
                    if burst_of[j.id]:
                        start_b.append(a)
                        finish_b.append(b)
            tc = await temporal_counts(temporal, t_start)
            span = t_end - t_start
            per_job_cpu = {k: round(v / max(n, 1), 4) for k, v in cpu.items()}
            idle_share = {k: round(result["idle_cpu_s_per_s"].get(k, 0) * span / max(n, 1), 4) for k in cpu}
            result.update(
                {
                    "jobs_submitted": n,
                    "submit_refused": len(refused),
                    "states": dict(states),
                    "arrivals_s": round(arrivals_end - t_start, 1),
                    "drain_after_arrivals_s": round(t_end - arrivals_end, 1),
                    "window_s": round(span, 1),
                    "mean_rate_jobs_per_s": round(n / (arrivals_end - t_start), 2),
                    "cpu_s_window": cpu,
                    "cpu_s_per_job": per_job_cpu,
                    "cpu_s_per_job_of_it_idle_fleet": idle_share,
                    "postgres_per_job": {
                        "xact_commit": round((pg1["xact_commit"] - pg0["xact_commit"]) / max(n, 1), 1),
                        "tuples_written": round((pg1["tup_written"] - pg0["tup_written"]) / max(n, 1), 1),
                        "wal_kib": round((pg1["wal"] - pg0["wal"]) / 1024 / max(n, 1), 1),
                    },
                    # the same less what the idle fleet (heartbeats, long-polls) costs over the window
                    "postgres_per_job_net_of_idle_fleet": {
                        "xact_commit": round(
                            (pg1["xact_commit"] - pg0["xact_commit"] - pg_idle["xact_commit"] * span) / max(n, 1), 1
                        ),
                        "tuples_written": round(
                            (pg1["tup_written"] - pg0["tup_written"] - pg_idle["tup_written"] * span) / max(n, 1), 1
                        ),
                        "wal_kib": round((pg1["wal"] - pg0["wal"] - pg_idle["wal"] * span) / 1024 / max(n, 1), 1),
                    },
                    "temporal_window": tc,
                    "temporal_per_job": {
                        k: round(v / max(n, 1), 2) for k, v in tc.items() if k != "workflows" and isinstance(v, int)
                    },
                    "submit_call_ms": pct([s["submit_s"] for s in submitted], 1000),
                    "created_to_started_ms": pct(start, 1000),
                    "created_to_finished_ms": pct(finish, 1000),
                    "burst_created_to_started_ms": pct(start_b, 1000),
                    "burst_created_to_finished_ms": pct(finish_b, 1000),
                    "fleet": fleet.totals(),
                }
            )
            failed = n - states.get("completed", 0)
            if fleet.totals()["job_errors"]:
                result["errors"]["agents"] = f"simulated agents refused: {fleet.totals()['first_job_error']}"
            if failed or refused:
                result["errors"]["jobs"] = f"{failed} of {n} jobs not completed {dict(states)}; {len(refused)} refused"
                if refused:
                    result["errors"]["refused_first"] = refused[0]
        except (ProductProblem, SimProblem, BoxrunError, OSError, asyncpg.PostgresError) as exc:
            traceback.print_exc()
            result["errors"]["run"] = f"{type(exc).__name__}: {exc}"
        finally:
            if fleet is not None:
                await fleet.stop()
            await api.close()
    return result


def render(r: dict) -> str:
    keys = (
        "params",
        "planned_jobs",
        "planned_in_bursts",
        "bare_workflow_ms",
        "fleet_connect_s",
        "idle_cpu_s_per_s",
        "idle_postgres_per_s",
        "jobs_submitted",
        "states",
        "failure_reasons",
        "arrivals_s",
        "drain_after_arrivals_s",
        "mean_rate_jobs_per_s",
        "cpu_s_window",
        "cpu_s_per_job",
        "cpu_s_per_job_of_it_idle_fleet",
        "postgres_per_job",
        "postgres_per_job_net_of_idle_fleet",
        "temporal_window",
        "temporal_per_job",
        "submit_call_ms",
        "created_to_started_ms",
        "created_to_finished_ms",
        "burst_created_to_started_ms",
        "burst_created_to_finished_ms",
        "fleet",
        "load_before_arrivals",
        "load_after_drain",
    )
    return keyed_report("boxrun scale simulation (bench/scale_sim.py)", r, keys)


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser("scale_sim", __doc__)
    parser.add_argument("--boxes", type=int, default=1000)
    parser.add_argument("--jobs-per-day", type=float, default=100_000)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--burst-factor", type=float, default=10.0)
    parser.add_argument("--burst-every-s", type=float, default=120.0)
    parser.add_argument("--burst-s", type=float, default=10.0)
    parser.add_argument("--job-s", type=float, default=5.0, help="how long a simulated job runs")
    parser.add_argument("--idle-s", type=float, default=30.0, help="idle-fleet window before the arrivals")
    parser.add_argument("--bare", type=int, default=20)
    parser.add_argument("--seed", type=int, default=15)
    args = parser.parse_args(argv)
    return run_parts("boxrun-bench-scale-", args, run, render, lambda r: bool(r["errors"]))


if __name__ == "__main__":
    hard_exit(main())
