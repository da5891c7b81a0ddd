"""Throughput of issue 15: trivial jobs over many boxes, group and named placement in one run,
next to a bare one-activity Temporal workflow; CPU per job per process, history events per job,
overbooking from job_events, and (--profile) where the control plane's time goes.

    python -m bench.throughput [--jobs 1000] [--boxes 20] [--concurrency 50] [--targets group,named]
                               [--deadline-s 600] [--history-sample 60] [--profile-jobs 300]
                               [--json] [--keep] [--quick]

One private `DevStack` (`boxrun dev`, ports picked free, data in a temporary directory) with
--boxes boxes of capacity 1, default settings; every process on this machine. In order:

1. bare: --jobs runs of the bare one-activity workflow (bench/bare_workflow.py, sandboxed worker in
   this process, a fresh task queue) against the stack's Temporal, --concurrency at once:
   workflows/s (first start -> last result), and the history events of a sample of them.
2. for each --targets entry, `bench.lifecycle.bench_throughput` (20 uncounted warm-up jobs, then
   --jobs jobs `{"script": "pass"}` POSTed --concurrency at once, to `box_group: local` (group) or
   round robin `box: local-K` (named); jobs/s = ended jobs / (first POST -> last finished_at);
   CPU seconds of each process tree from /proc around the run). Then, from Postgres and Temporal:
   - overbooking: each job's hold on its box from job_events (`dispatching` -> terminal event,
     same transactions as the lease's grant and release), swept per box: the most jobs ever on one
     box at once must be 1;
   - CPU-s per job: each process tree's CPU seconds / jobs;
   - history events per job: the Temporal histories of --history-sample jobs (evenly spread over
     the run), with the mean count of each event type, split by whether the job was woken by a
     `wake` signal (it waited) or not.
3. --profile-jobs > 0: one more group run of that many jobs with py-spy sampling the API and the
   control worker (50 Hz, non-blocking, idle frames left out): the functions most often on top of
   the stack (self) and anywhere on it (inclusive). Its figures are not the measured ones (py-spy
   costs CPU too); Temporal (Go) and Postgres are not profiled, their CPU share is in step 2.

--quick (CI): 2 boxes, 10 jobs 5 at a time, both targets, 5 bare runs, 4 histories, no profile;
exits 1 on any problem (a failed or refused job, a stall, overbooking). Figures mean little then.
Percentiles are nearest-rank.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import traceback
import uuid
from pathlib import Path

import asyncpg
from temporalio.worker import Worker

from bench.bare_workflow import BareWorkflow, echo
from bench.common import (
    Profiler,
    bench_parser,
    hard_exit,
    header,
    history_event_counts,
    job_event_rows,
    lease_intervals,
    overbooking,
    run_parts,
)
from bench.lifecycle import Api, bench_throughput, log, private_stack
from boxrun.temporal import connect

QUICK = {"jobs": 10, "boxes": 2, "concurrency": 5, "history_sample": 4, "profile_jobs": 0, "bare": 5}


async def bare_throughput(address: str, n: int, concurrency: int, sample: int) -> dict:
    """n bare workflows, `concurrency` at once, on an in-process sandboxed worker."""
    client = await connect(address)
    queue = f"bench-bare-{uuid.uuid4()}"
    sem = asyncio.Semaphore(concurrency)
    ids: list[str] = []

    async def one(i: int) -> None:
        async with sem:
            wf_id = f"bench-bare-{uuid.uuid4()}"
            out = await client.execute_workflow(BareWorkflow.run, f"p{i}", id=wf_id, task_queue=queue)
            if out != f"p{i}":
                raise RuntimeError(f"BareWorkflow returned {out!r}")
            ids.append(wf_id)

    async with Worker(client, task_queue=queue, workflows=[BareWorkflow], activities=[echo]):
        await asyncio.gather(*(one(i) for i in range(min(n, 10))))  # warm-up, not counted
        ids.clear()
        t0 = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(n)))
        took = time.perf_counter() - t0
    step = max(1, len(ids) // max(1, sample))
    return {
        "workflows": n,
        "window_s": round(took, 2),
        "workflows_per_s": round(n / took, 2),
        "history": await history_event_counts(client, ids[::step][:sample]),
    }


async def measured_jobs(db_url: str, since: float, warmup: int) -> list[str]:
    """The jobs one bench_throughput call submitted after its warm-up: every job created since
    `since`, in creation order, less the first `warmup` (the warm-up jobs end before the measured
    ones are submitted)."""
    conn = await asyncpg.connect(db_url)
    try:
        rows = await conn.fetch(
            "SELECT id::text FROM jobs WHERE created_at >= to_timestamp($1) ORDER BY created_at, id", since
        )
    finally:
        await conn.close()
    return [r["id"] for r in rows][warmup:]


async def one_target(stack, api: Api, temporal, db_url: str, args: argparse.Namespace, target: str, n: int) -> dict:
    since = time.time()
    r = await bench_throughput(stack, api, n, args.concurrency, args.boxes, args.deadline_s, target)
    ids = await measured_jobs(db_url, since, args.boxes)
    if len(ids) != r["accepted"]:
        r["problem"] = f"found {len(ids)} jobs of the run in Postgres, the bench had {r['accepted']} accepted"
    intervals = lease_intervals(await job_event_rows(db_url, ids))
    r["overbooking"] = overbooking(intervals)
    r["cpu_s_per_job"] = {k: round(v / n, 4) for k, v in r["cpu_seconds"].items()}
    r["cpu_s_per_job_total"] = round(sum(r["cpu_seconds"].values()) / n, 4)
    step = max(1, len(ids) // max(1, args.history_sample))
    r["history"] = await history_event_counts(temporal, ids[::step][: args.history_sample])
    return r


async def run(args: argparse.Namespace, root: Path) -> dict:
    if args.quick:
        for k, v in QUICK.items():
            setattr(args, k, v)
    result: dict = {"errors": {}, "settings": {"boxes": args.boxes, "jobs": args.jobs, "concurrency": args.concurrency}}
    async with private_stack(root, "tput", boxes=args.boxes) as (stack, endpoints):
        api = Api(endpoints, max_connections=args.concurrency + 10)
        db_url = stack.child("api").env["BOXRUN_DATABASE_URL"]
        temporal = await connect(endpoints["temporal_address"])
        try:
            try:
                result["bare"] = await bare_throughput(
                    endpoints["temporal_address"],
                    getattr(args, "bare", args.jobs),
                    args.concurrency,
                    args.history_sample,
                )
                log(f"bare: {result['bare']['workflows_per_s']} workflows/s")
            except Exception as exc:
                traceback.print_exc()
                result["errors"]["bare"] = f"{type(exc).__name__}: {exc}"
            for target in args.targets.split(","):
                try:
                    result[target] = await one_target(stack, api, temporal, db_url, args, target, args.jobs)
                except Exception as exc:
                    traceback.print_exc()
                    result["errors"][target] = f"{type(exc).__name__}: {exc}"
            if args.profile_jobs > 0:
                prof = Profiler({"api": stack.child("api").pid, "worker": stack.child("worker").pid}, root)
                try:
                    result["profiled_group"] = await one_target(
                        stack, api, temporal, db_url, args, "group", args.profile_jobs
                    )
                finally:
                    result["profile"] = prof.stop()
        finally:
            await api.close()
    if "group" in result and "named" in result:
        result["group_over_named"] = round(result["group"]["jobs_per_s"] / result["named"]["jobs_per_s"], 3)
    for target in ("group", "named", "profiled_group"):
        r = result.get(target)
        if not r:
            continue
        problems = []
        if r["stalled"]:
            problems.append(f"stalled: {r['stalled']}")
        if r["states"].get("completed", 0) != r["jobs"] or r["refused"]:
            problems.append(f"states {r['states']}, refused {r['refused']}, errors {r['errors']}")
        if r["overbooking"]["overbooked_boxes"]:
            problems.append(f"OVERBOOKED: {r['overbooking']}")
        if r.get("problem"):
            problems.append(r["problem"])
        if problems:
            result["errors"][f"{target} problems"] = "; ".join(problems)
    return result


def render(r: dict) -> str:
    lines = [
        *header(r),
        "",
    ]
    b = r.get("bare")
    if b:
        h = b["history"]["all"]
        lines.append(
            f"bare one-activity workflow: {b['workflows_per_s']} workflows/s ({b['workflows']} in {b['window_s']} s), "
            f"history events median {h.get('median')} (n={h.get('n')})"
        )
    for target in ("group", "named", "profiled_group"):
        t = r.get(target)
        if not t:
            continue
        h = t["history"]
        lines += [
            "",
            f"{target}: {t['jobs_per_s']} jobs/s over {t['window_s']} s (first POST -> last end), steady 10-90 % "
            f"{t['steady_jobs_per_s_10_90']} jobs/s; states {t['states']}, refused {t['refused']}, "
            f"stalled {t['stalled']}",
            f"   overbooking (job_events): most jobs on one box at once {t['overbooking']['max_at_once_on_one_box']}, "
            f"overbooked boxes {t['overbooking']['overbooked_boxes']}; boxes used {t['boxes_used']}, "
            f"jobs per box {t['jobs_per_box_min_max']}, mean running {t['mean_jobs_running']}",
            f"   POST p50/p99 {t['post_round_trip_ms'].get('p50')}/{t['post_round_trip_ms'].get('p99')} ms, "
            f"submit -> completed p50/p99 {t['submit_to_completed_ms'].get('p50')}/"
            f"{t['submit_to_completed_ms'].get('p99')} ms; load {t['loadavg_start']} -> {t['loadavg_end']}",
            f"   CPU-s per job {t['cpu_s_per_job']} (total {t['cpu_s_per_job_total']}; machine capacity "
            f"{t['cpu_capacity_seconds']} CPU-s over the run, used {round(sum(t['cpu_seconds'].values()), 1)})",
            f"   history events per job: all {h['all']}; woken by a signal {h['woken_by_signal']}; "
            f"never signalled {h['never_signalled']}",
            f"   mean events by type: {h['mean_by_type']}",
        ]
    if "group_over_named" in r:
        lines += ["", f"group / named jobs/s: {r['group_over_named']}"]
    for name, p in r.get("profile", {}).items():
        lines += ["", f"py-spy {name} ({p['samples']} samples): top self"]
        lines += [f"   {pct:5.1f} %  {fn}" for fn, pct in p["self_pct"]]
        lines += ["  top inclusive"] + [f"   {pct:5.1f} %  {fn}" for fn, pct in p["inclusive_pct"]]
    for part, err in r.get("errors", {}).items():
        lines.append(f"ERROR in {part}: {err}")
    lines.append(f"total bench time {r['total_s']} s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser("throughput", __doc__, quick="CI smoke run: 2 boxes, 10 jobs per target, no profile")
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--boxes", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=50, help="POSTs in flight at once (default 50)")
    parser.add_argument("--targets", default="group,named", help="comma-separated: group, named (default both)")
    parser.add_argument("--deadline-s", type=float, default=600, help="stop waiting for a run after this long")
    parser.add_argument("--history-sample", type=int, default=60, help="Temporal histories read per run")
    parser.add_argument("--profile-jobs", type=int, default=300, help="a py-spy profiled group run of N jobs (0: none)")
    args = parser.parse_args(argv)
    if set(args.targets.split(",")) - {"group", "named"}:
        parser.error("--targets takes group and/or named")
    return run_parts("boxrun-bench-throughput-", args, run, render, lambda result: bool(result["errors"]))


if __name__ == "__main__":
    hard_exit(main())
