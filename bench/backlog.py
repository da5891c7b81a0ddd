"""Backlog of issue 15: many jobs waiting for 2 boxes. Submission and list latency as the backlog
grows, what the control plane does while they wait (wake-ups/s, CPU), memory over time, and the
drain: its rate and its order (FIFO within priority), next to a bare one-activity workflow.

    python -m bench.backlog [--jobs 10000] [--concurrency 8] [--idle-s 60] [--drain-s 120]
                            [--ref-jobs 100] [--steady-rate 10] [--steady-s 30] [--json] [--keep] [--quick]

One private `DevStack` with 2 boxes of capacity 1, default settings; every process on this machine.

1. bare: 50 runs of the bare one-activity workflow (bench.latency.bench_bare), one at a time.
2. reference drain: --ref-jobs trivial group jobs submitted at once, run to the end: jobs/s with
   a small backlog (the rate the big backlog's drain is compared with).
3. backlog: both boxes are taken by gate jobs (they wait for a file); then --jobs jobs
   `{"box_group": "local", "script": "pass"}` are POSTed, --concurrency at once, every 10th with
   priority 5 (the rest 0). Each POST's round trip is a sample, reported per tenth of the backlog
   (does it grow with the backlog?). All along, a probe times `GET /api/jobs` (the first page of
   50, newest first) every 0.25 s, one at a time.
4. idle: once every job is `waiting_for_box` and the worker has caught up (at most 2 workflow
   tasks in 6 s; the settle time is reported), --idle-s seconds of nothing. Wake-ups are read from
   the control worker's Prometheus metrics (temporal_*_execution_latency counts: workflow tasks,
   acquire_box runs as activity or local activity) before and after; CPU seconds of each process
   tree from /proc. A waiting job has no periodic re-check, so both should be ~0 apart from the
   reaper's sweep (one workflow every 15 s).
5. steady: while the backlog still waits, new submissions arrive at a steady --steady-rate a
   second (open loop: each POST is sent on its tick, whether or not the one before was answered)
   for --steady-s seconds, each one timed; they join the backlog. This is the goal's "submissions
   stay p99 <= 100 ms while 10,000 wait" at an arrival rate (10/s: the scale simulation's bursts of
   100k jobs a day, 1M a day on average), where step 3 is the saturation figure (as many POSTs as
   --concurrency clients can send, so its latency is --concurrency / throughput).
6. drain: the gate file appears, the boxes free up, and the backlog drains for --drain-s seconds
   (or to the end). Rate = jobs ended / time from the gates' release to the last end in the
   window. Order: from job_events, the `dispatching` times of the drained jobs against the order
   (priority desc, created_at, id); a job counts as overtaking when it was dispatched while a job
   before it in that order was still waiting.
Memory: PSS (proportional set size) of the API, worker, Temporal and Postgres process trees every 5 s
through 2-6.

--quick (CI): 40 jobs, 5 s idle, 2 s of steady submissions at 5/s, drained to the end, 10 reference jobs, 3 bare runs; exits 1 on any
problem (a refused, failed or stalled job, or a job overtaken). Percentiles are nearest-rank.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections import Counter
from pathlib import Path

import asyncpg
import httpx

from bench.common import (
    TERMINAL,
    ProductProblem,
    bench_parser,
    cpu_by_pid_tree,
    hard_exit,
    header,
    job_event_rows,
    memory_mib,
    run_parts,
)
from bench.latency import bench_bare
from bench.lifecycle import Api, log, pct, private_stack
from boxrun.errors import BoxrunError

GATE_SCRIPT = "import os, time\nwhile not os.path.exists({gate!r}):\n    time.sleep(0.05)\n"
LIVE_STATES = ("queued", "waiting_for_box", "dispatching", "running", "uploading_artifacts")
QUICK = {
    "jobs": 40,
    "idle_s": 5.0,
    "drain_s": 300.0,
    "ref_jobs": 10,
    "concurrency": 4,
    "steady_rate": 5.0,
    "steady_s": 2.0,
}
HIGH = 5  # every 10th job's priority
CONTROL = ("api", "worker", "temporal", "postgres")


async def worker_counts(url: str) -> dict[str, float]:
    """Counts of workflow tasks and acquire_box runs so far, from the worker's /metrics."""
    async with httpx.AsyncClient(timeout=10) as client:
        text = (await client.get(url)).text
    out = {"workflow_tasks": 0.0, "acquire_box": 0.0}
    for line in text.splitlines():
        if not line.startswith("temporal_") or "_count{" not in line:
            continue
        name, _, rest = line.partition("{")
        labels, _, value = rest.rpartition("} ")
        if name == "temporal_workflow_task_execution_latency_count":
            out["workflow_tasks"] += float(value)
        elif (
            name
            in (
                "temporal_activity_execution_latency_count",
                "temporal_local_activity_execution_latency_count",
            )
            and 'activity_type="acquire_box"' in labels
        ):
            out["acquire_box"] += float(value)
    return out


class Sampler:
    """Memory (PSS) of the control plane's processes every `every` s, and GET /api/jobs timed every 0.25 s."""

    def __init__(self, stack, api: Api, every: float = 5.0) -> None:
        self.pids = {c.name: c.pid for c in stack.children if c.name in CONTROL}
        self.api, self.every = api, every
        self.phase = "start"
        self.rss: list[dict] = []
        self.list_ms: dict[str, list[float]] = {}
        self.t0 = time.time()
        self.tasks: list[asyncio.Task] = []

    def start(self) -> None:
        self.tasks = [asyncio.create_task(self._rss()), asyncio.create_task(self._list())]

    async def stop(self) -> None:
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    async def _rss(self) -> None:
        while True:
            self.rss.append(
                {"t": round(time.time() - self.t0, 1), "phase": self.phase}
                | {n: memory_mib(p) for n, p in self.pids.items()}
            )
            await asyncio.sleep(self.every)

    async def _list(self) -> None:
        while True:
            t = time.perf_counter()
            await self.api.client.list_jobs()
            self.list_ms.setdefault(self.phase, []).append((time.perf_counter() - t) * 1000)
            await asyncio.sleep(0.25)


async def settle(metrics_url: str, timeout: float, quiet_s: float = 6.0) -> float:
    """Wait until the worker has run no more than 2 workflow tasks in `quiet_s` (the reaper's
    sweep may run one); returns how long that took."""
    t0 = time.monotonic()
    seen = [(t0, (await worker_counts(metrics_url))["workflow_tasks"])]
    while time.monotonic() - t0 < timeout:
        await asyncio.sleep(1.0)
        now = time.monotonic()
        seen.append((now, (await worker_counts(metrics_url))["workflow_tasks"]))
        old = [n for t, n in seen if now - t >= quiet_s]
        if old and seen[-1][1] - old[-1] <= 2:
            return round(now - t0, 1)
    raise ProductProblem(f"the worker still ran workflow tasks {timeout:.0f}s after every job was waiting")


def cpu_of(stack) -> dict[str, float]:
    return cpu_by_pid_tree(("agents" if c.name.startswith("agent-") else c.name, c.pid) for c in stack.children)


async def wait_counts(api: Api, want: int, states: set[str], timeout: float, what: str) -> float:
    """Wait until `want` jobs are in `states` (summed); returns when."""
    deadline = time.monotonic() + timeout
    while True:
        n = sum([await api.count(s) for s in states])
        if n >= want:
            return time.time()
        if time.monotonic() > deadline:
            raise ProductProblem(f"{what}: {n} of {want} after {timeout:.0f}s")
        await asyncio.sleep(0.5)


async def reference(api: Api, n: int) -> dict:
    """n trivial group jobs at once on the idle boxes: jobs/s with a small backlog."""
    t0 = time.time()
    ids = await asyncio.gather(*(api.submit({"box_group": "local", "script": "pass"}) for _ in range(n)))
    ends = []
    for job_id in ids:
        job = await api.wait_state(job_id, TERMINAL, timeout=600)
        if job.state != "completed":
            raise ProductProblem(f"reference job did not complete: {await api.evidence(job_id)}")
        ends.append(job.finished_at.timestamp() if job.finished_at else time.time())
    return {"jobs": n, "window_s": round(max(ends) - t0, 2), "jobs_per_s": round(n / (max(ends) - t0), 2)}


async def steady(
    api: Api, args: argparse.Namespace, submitted: dict[str, tuple[int, int]], refused: list[str], first_index: int
) -> dict:
    """POSTs sent at --steady-rate a second for --steady-s seconds (open loop), each timed."""
    n = max(1, round(args.steady_rate * args.steady_s))
    ms: list[float] = []
    t0 = time.perf_counter()

    async def one(k: int) -> None:
        await asyncio.sleep(max(0.0, t0 + k / args.steady_rate - time.perf_counter()))
        t = time.perf_counter()
        try:
            job = await api.client.submit(box_group="local", script="pass")
        except BoxrunError as exc:
            refused.append(f"{type(exc).__name__}: {exc}")
            return
        ms.append((time.perf_counter() - t) * 1000)
        submitted[job.id] = (0, first_index + k)

    waiting = await api.count("waiting_for_box")
    await asyncio.gather(*(one(k) for k in range(n)))
    span = time.perf_counter() - t0
    return {
        "waiting_before": waiting,
        "sent": n,
        "accepted": len(ms),
        "window_s": round(span, 1),
        "per_s": round(len(ms) / span, 2),
        "post_ms": pct(ms),
    }


def drain_order(events: list[dict], rank: dict[str, int]) -> dict:
    """Jobs dispatched while a job ahead of them (priority, then submission) still waited."""
    dispatched = sorted(
        (e["at"], e["job_id"]) for e in events if e["to_state"] == "dispatching" and e["job_id"] in rank
    )
    done: set[int] = set()
    nxt, overtook, examples = 0, 0, []
    for _, job_id in dispatched:
        r = rank[job_id]
        if r != nxt:
            overtook += 1
            if len(examples) < 5:
                examples.append(f"{job_id} (rank {r}) dispatched while rank {nxt} waited")
        done.add(r)
        while nxt in done:
            nxt += 1
    return {"dispatched": len(dispatched), "overtaking": overtook, "examples": examples}


async def run(args: argparse.Namespace, root: Path) -> dict:
    if args.quick:
        for k, v in QUICK.items():
            setattr(args, k, v)
    work = root / "work"
    work.mkdir()
    work.chmod(0o1777)  # the gate jobs run as the boxes' slot users
    gate = work / "gate"
    result: dict = {
        "errors": {},
        "settings": {
            k: getattr(args, k) for k in ("jobs", "concurrency", "idle_s", "drain_s", "steady_rate", "steady_s")
        },
    }
    async with private_stack(root, "backlog", boxes=2) as (stack, endpoints):
        api = Api(endpoints, max_connections=args.concurrency + 10)
        db_url = stack.child("api").env["BOXRUN_DATABASE_URL"]
        metrics_url = endpoints["worker_metrics_url"]
        sampler = Sampler(stack, api)
        try:
            bare = await bench_bare(
                endpoints["temporal_address"], 3 if args.quick else 50, 1 if args.quick else 3, True
            )
            result["bare_workflow_ms"] = pct(bare, 1000)
            result["reference"] = await reference(api, args.ref_jobs)
            log(f"reference: {result['reference']}")
            sampler.start()

            # 3. the boxes taken, then the backlog submitted
            sampler.phase = "submitting"
            holders = [
                await api.submit({"box": f"local-{i}", "script": GATE_SCRIPT.format(gate=str(gate))}) for i in (1, 2)
            ]
            for h in holders:
                await api.wait_state(h, {"running"}, timeout=120)
            sem = asyncio.Semaphore(args.concurrency)
            post_ms: list[tuple[int, float]] = []
            submitted: dict[str, tuple[int, int]] = {}  # job id -> (priority, submit index)
            refused: list[str] = []

            async def one(i: int) -> None:
                prio = HIGH if i % 10 == 0 else 0
                async with sem:
                    t = time.perf_counter()
                    try:
                        job = await api.client.submit(box_group="local", script="pass", priority=prio)
                    except BoxrunError as exc:
                        refused.append(f"{type(exc).__name__}: {exc}")
                        return
                    post_ms.append((i, (time.perf_counter() - t) * 1000))
                    submitted[job.id] = (prio, i)

            t_sub = time.time()
            await asyncio.gather(*(one(i) for i in range(args.jobs)))
            submit_s = time.time() - t_sub
            log(
                f"submitted {len(submitted)} in {submit_s:.0f}s ({len(submitted) / submit_s:.1f}/s), refused {len(refused)}"
            )
            tenth = max(1, args.jobs // 10)
            result["submit"] = {
                "accepted": len(submitted),
                "refused": refused[:5],
                "refused_n": len(refused),
                "window_s": round(submit_s, 1),
                "per_s": round(len(submitted) / submit_s, 1),
                "post_ms": pct([ms for _, ms in post_ms]),
                "post_ms_by_tenth": [
                    pct([ms for i, ms in post_ms if k * tenth <= i < (k + 1) * tenth]) for k in range(10)
                ],
            }
            await wait_counts(api, len(submitted), {"waiting_for_box"}, 1200, "jobs waiting")

            # 4. idle, once the worker has caught up: a job is `waiting_for_box` in Postgres when
            # its acquire_box commits, before the workflow task that records it has run
            sampler.phase = "settling"
            result["settle_s"] = await settle(metrics_url, timeout=600)
            sampler.phase = "idle"
            c0, m0, w0 = cpu_of(stack), await worker_counts(metrics_url), time.time()
            await asyncio.sleep(args.idle_s)
            c1, m1, w1 = cpu_of(stack), await worker_counts(metrics_url), time.time()
            span = w1 - w0
            result["idle"] = {
                "window_s": round(span, 1),
                "waiting": await api.count("waiting_for_box"),
                "workflow_tasks_per_s": round((m1["workflow_tasks"] - m0["workflow_tasks"]) / span, 3),
                "acquire_box_per_s": round((m1["acquire_box"] - m0["acquire_box"]) / span, 3),
                "cpu_share_of_one_core": {k: round((c1.get(k, 0) - c0.get(k, 0)) / span, 4) for k in c1},
            }
            log(f"idle: {result['idle']}")

            # 5. steady submissions while the backlog waits
            sampler.phase = "steady"
            result["steady"] = await steady(api, args, submitted, refused, first_index=args.jobs)
            log(f"steady: {result['steady']}")

            # 6. drain
            sampler.phase = "draining"
            base = await api.count("completed")
            t_gate = time.time()
            gate.touch()
            deadline = t_gate + args.drain_s
            while time.time() < deadline:
                await asyncio.sleep(1.0)
                # every live state: a job between them (dispatching, uploading) is not drained yet
                if all([await api.count(state) == 0 for state in LIVE_STATES]):
                    break
            done = await api.count("completed") - base - 2  # less the two gate jobs
            failed = await api.count("failed")
            ids = list(submitted)
            events = await job_event_rows(db_url, ids)
            ends = [e["at"] for e in events if e["to_state"] in TERMINAL]
            # rank by (priority desc, created_at, id), as placement orders waiters (concurrent
            # POSTs commit in their own order, which is the order that counts)
            conn = await asyncpg.connect(db_url)
            try:
                rows = await conn.fetch(
                    "SELECT id::text AS id FROM jobs WHERE id = ANY($1::uuid[]) ORDER BY priority DESC, created_at, id",
                    ids,
                )
            finally:
                await conn.close()
            rank = {r["id"]: k for k, r in enumerate(rows)}
            window = (max(ends) - t_gate) if ends else float("nan")
            result["drain"] = {
                "ended": len(ends),
                # how the drained jobs ended, from their own terminal events (the counts below are
                # whole-stack deltas read a moment apart)
                "ended_as": dict(Counter(e["to_state"] for e in events if e["to_state"] in TERMINAL)),
                "completed": done,
                "failed": failed,
                "window_s": round(window, 1),
                "jobs_per_s": round(len(ends) / window, 2) if ends else None,
                "vs_reference": round(len(ends) / window / result["reference"]["jobs_per_s"], 2) if ends else None,
                "all_drained": len(ends) == len(submitted),
                "order": drain_order(events, rank),
            }
            log(f"drain: {result['drain']}")
        finally:
            await sampler.stop()
            await api.close()
    rss = sampler.rss
    result["memory_mib"] = {
        name: {
            "first": rss[0][name],
            "peak": max(s[name] for s in rss),
            "last": rss[-1][name],
            "by_phase_peak": {
                ph: max(s[name] for s in rss if s["phase"] == ph) for ph in dict.fromkeys(s["phase"] for s in rss)
            },
        }
        for name in (rss[0] if rss else {})
        if name not in ("t", "phase")
    }
    result["memory_pss_series"] = rss
    result["list_ms"] = {ph: pct(v) for ph, v in sampler.list_ms.items()}
    result["list_ms_all"] = pct([x for v in sampler.list_ms.values() for x in v])
    d = result.get("drain", {})
    problems = []
    if result.get("submit", {}).get("refused_n"):
        problems.append(f"refused: {result['submit']['refused']}")
    st = result.get("steady", {})
    if st and st["accepted"] < st["sent"]:
        problems.append(f"steady submissions refused: {refused[-5:]}")
    if set(d.get("ended_as", {})) - {"completed"}:
        problems.append(f"drained jobs that did not complete: {d['ended_as']}")
    if d.get("failed"):
        problems.append(f"{d['failed']} failed")
    if d.get("order", {}).get("overtaking"):
        problems.append(f"drain order: {d['order']}")
    if args.quick and not d.get("all_drained"):
        problems.append("the backlog did not drain")
    if problems:
        result["errors"]["backlog"] = "; ".join(problems)
    return result


def render(r: dict) -> str:
    lines = [
        *header(r),
        f"bare one-activity workflow (ms): {r.get('bare_workflow_ms')}",
        f"reference (small backlog): {r.get('reference')}",
    ]
    s = r.get("submit")
    if s:
        lines += [
            f"submit: {s['accepted']} accepted ({s['refused_n']} refused) in {s['window_s']} s = {s['per_s']}/s; "
            f"POST ms {s['post_ms']}",
            "   POST p50/p99 by tenth of the backlog: "
            + ", ".join(f"{t.get('p50')}/{t.get('p99')}" for t in s["post_ms_by_tenth"]),
        ]
    lines.append(f"GET /api/jobs ms by phase: {r.get('list_ms')}; all {r.get('list_ms_all')}")
    if r.get("idle"):
        lines.append(f"settled {r.get('settle_s')} s after every job was waiting; idle: {r['idle']}")
    if r.get("steady"):
        lines.append(f"steady submissions while the backlog waits: {r['steady']}")
    if r.get("drain"):
        lines.append(f"drain: {r['drain']}")
    for name, v in r.get("memory_mib", {}).items():
        lines.append(
            f"RSS {name} MiB: first {v['first']} peak {v['peak']} last {v['last']}; peak by phase {v['by_phase_peak']}"
        )
    for part, err in r.get("errors", {}).items():
        lines.append(f"ERROR in {part}: {err}")
    lines.append(f"total bench time {r['total_s']} s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser("backlog", __doc__, quick="CI smoke run: 40 jobs, drained to the end")
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=8, help="POSTs in flight at once (default 8)")
    parser.add_argument("--idle-s", type=float, default=60.0, help="how long the backlog waits untouched")
    parser.add_argument("--drain-s", type=float, default=120.0, help="how long the drain is measured (or to the end)")
    parser.add_argument("--ref-jobs", type=int, default=100, help="jobs of the small-backlog reference drain")
    parser.add_argument("--steady-rate", type=float, default=10.0, help="POSTs a second while the backlog waits")
    parser.add_argument("--steady-s", type=float, default=30.0, help="how long those steady POSTs go on")
    args = parser.parse_args(argv)
    return run_parts("boxrun-bench-backlog-", args, run, render, lambda result: bool(result["errors"]))


if __name__ == "__main__":
    hard_exit(main())
