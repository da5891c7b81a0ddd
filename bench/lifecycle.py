"""Lifecycle figures of issue 3: heartbeat loss, cancel, lease hand-off, throughput over 20 boxes.

    python -m bench.lifecycle [--parts heartbeat,cancel,handoff,throughput] [--heartbeat-samples 5]
                              [--short-heartbeat-s 5] [--cancel-jobs 30] [--handoff-pairs 30]
                              [--throughput-jobs 1000] [--throughput-boxes 20] [--concurrency 50]
                              [--throughput-target group|named] [--throughput-deadline-s 300]
                              [--json] [--keep] [--quick]

Each part runs on a private in-process `DevStack` (`boxrun.dev.stack`, every port picked free, data in
a temporary directory), stopped at the end even on error. Stacks, in order:

A. 2 boxes of capacity 1, DEFAULT settings (run_job heartbeat timeout 15 s):
   - cancel -> SIGTERM on the box (local-1): a job installs a SIGTERM handler that writes
     time.time() to a file and exits, then touches a "ready" file. After a random 0.2-0.7 s (so the
     cancel lands at a random phase of the agent's 0.5 s heartbeat) the bench takes time.time() and
     POSTs /api/jobs/{id}/cancel. Sample = SIGTERM timestamp - that instant. Also: cancel -> the
     `cancelled` transition (job_events.at) and the POST round trip.
   - lease hand-off (local-1): job A (`time.sleep(0.3)`) then job B (`pass`) on the same box.
     Hand-off = B's `dispatching` event time - A's terminal event time (the terminal transition and
     the lease release are one transaction). Also A terminal -> B `running`. If B got the box
     before A (FIFO inverted: counted and shown), the pair is measured the other way round. Pairs
     where the second job never went through `waiting_for_box` (placed after the first ended) are
     not hand-offs and are counted apart; overlapping leases would be reported as OVERBOOKED.
   - heartbeat loss (local-2): a job sleeps; once it is `running` (+1 s) the bench takes time.time()
     and SIGKILLs the box's agent. Sample = the `failed` event time - kill instant, and the first
     GET /api/jobs/{id} (polled every 50 ms) answering a terminal state - kill instant. Also
     checked: error "box heartbeat lost", the box's lease freed, the script's pid gone. Then the
     agent is started again and the bench waits for the box to report online before the next one.
B. 1 box, BOXRUN_ACTIVITY_HEARTBEAT_TIMEOUT_S=--short-heartbeat-s (default 5; 0 skips): heartbeat
   loss again, to show the figure follows the setting.
C. --throughput-boxes (20) boxes of capacity 1, default settings: --throughput-jobs (1000) jobs
   `{"box_group": "local", "script": "pass"}` submitted as fast as --concurrency (50) concurrent
   POSTs allow; a poller counts completed/failed every second until all are terminal. jobs/s =
   terminal jobs / (last finished_at - first POST start). Latency = finished_at - the client's
   instant just before its POST (jobs still not terminal after --throughput-deadline-s are
   reported, not waited for). 20 uncounted warm-up jobs first. CPU seconds per process (the
   process and its descendants, from /proc) are sampled around the run. --throughput-target named
   submits `{"box": "local-K"}` round robin instead, which leaves group placement out.

--quick (CI) runs every part once on one stack of 2 boxes with BOXRUN_ACTIVITY_HEARTBEAT_TIMEOUT_S=3
(cancel 1 job, hand-off 1 pair, heartbeat loss 1 sample, throughput 10 jobs 5 at a time) and fails
on any problem: it checks that the bench and the behaviour it measures work; its figures mean little.

Server times are job_events.at / jobs.*_at (Postgres clock_timestamp()); the bench, Postgres and the
agents share the host clock, so client and server instants can be subtracted. Percentiles use the
nearest-rank method (value at 1-based rank ceil(p/100*n)).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import time
import traceback
from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path

from bench.common import (
    TERMINAL,
    ProductProblem,
    client_for,
    cpu_by_pid_tree,
    evidence,
    hard_exit,
    loadavg,
    machine,
    pid_alive,
    run_parts,
    submit,
    wait_state,
)
from bench.latency import nearest_rank
from boxrun.dev.stack import DevStack, StackOptions, resolve_ports
from boxrun.errors import BoxrunError
from boxrun.schemas import BoxPublic, JobPublic, JobsPublic

PARTS = ("cancel", "handoff", "heartbeat", "throughput")
DEFAULT_HEARTBEAT_TIMEOUT_S = 15.0  # boxrun.settings.Settings.activity_heartbeat_timeout_s
HEARTBEAT_LOST = "box heartbeat lost"
QUICK_ENV = {"BOXRUN_ACTIVITY_HEARTBEAT_TIMEOUT_S": "3"}

# A job that records when SIGTERM reaches it (and exits at once), after saying it is ready.
ON_SIGTERM = """
import os, signal, time
READY, OUT = {ready!r}, {out!r}
def on_term(signum, frame):
    t = time.time()
    with open(OUT + ".tmp", "w") as fh:
        fh.write(repr(t))
    os.replace(OUT + ".tmp", OUT)
    os._exit(0)
signal.signal(signal.SIGTERM, on_term)
open(READY, "w").close()
time.sleep(600)
"""

# A long job that writes its pid first.
LONG = """
import os, time
with open({pidfile!r} + ".tmp", "w") as fh:
    fh.write(str(os.getpid()))
os.replace({pidfile!r} + ".tmp", {pidfile!r})
time.sleep(600)
"""


# --------------------------------------------------------------------------- small helpers


def ts(value: datetime | None) -> float | None:
    return value.timestamp() if value else None


def pct(values: list[float], scale: float = 1.0, digits: int = 1) -> dict:
    """n, p50, p90, p99, max, mean (nearest rank), values multiplied by scale."""
    if not values:
        return {"n": 0}
    v = sorted(x * scale for x in values)
    out = {"n": len(v)}
    for p in (50, 90, 99):
        out[f"p{p}"] = round(nearest_rank(v, p), digits)
    out["min"] = round(v[0], digits)
    out["max"] = round(v[-1], digits)
    out["mean"] = round(statistics.fmean(v), digits)
    return out


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class Api:
    """The product's client on a stack, with the few reads the parts share."""

    def __init__(self, endpoints: dict, max_connections: int = 100) -> None:
        self.client = client_for(endpoints, max_connections=max_connections)

    async def close(self) -> None:
        await self.client.aclose()

    async def submit(self, body: dict) -> str:
        return await submit(self.client, body)

    async def job(self, job_id: str) -> JobPublic:
        return await self.client.get(job_id)

    async def event_times(self, job_id: str) -> dict[str, float]:
        return {str(e.to_state): e.at.timestamp() for e in (await self.client.events(job_id)).data}

    async def evidence(self, job_id: str) -> str:
        return await evidence(self.client, job_id)

    async def wait_state(self, job_id: str, states: set[str], timeout: float, interval: float = 0.05) -> JobPublic:
        return await wait_state(self.client, job_id, states, timeout, interval)

    async def box(self, name: str) -> BoxPublic:
        return await self.client.get_box(name)

    async def leases(self, name: str) -> list[str]:
        """The job ids holding a lease on the box."""
        return [lease.job_id for lease in (await self.client.box_queue(name)).leases]

    async def count(self, state: str) -> int:
        return (await self.client.list_jobs(state=state, limit=1)).count


async def wait_file(path: Path, timeout: float, interval: float = 0.01) -> bool:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(interval)
    return True


@asynccontextmanager
async def private_stack(
    root: Path, name: str, *, boxes: int, env: dict[str, str] | None = None
) -> AsyncIterator[tuple[DevStack, dict]]:
    stack = DevStack(
        StackOptions(data_dir=root / name, boxes=boxes, capacity=1, env=env), resolve_ports(None, auto=True)
    )
    t0 = time.perf_counter()
    try:
        endpoints = await stack.start()
        log(f"stack {name}: {boxes} box(es), env {env or 'default'}, ready in {time.perf_counter() - t0:.1f}s")
        yield stack, endpoints
    except BaseException:
        for child in stack.children:
            if child.name in ("api", "worker") or not child.alive():
                print(f"--- {child.name} log tail ---\n{child.log_tail(20)}", file=sys.stderr)
        raise
    finally:
        t1 = time.perf_counter()
        stack.stop()
        log(f"stack {name} stopped in {time.perf_counter() - t1:.1f}s")


# --------------------------------------------------------------------------- 1. heartbeat loss


async def wait_online_since(api: Api, box: str, since: float, timeout: float = 60) -> float:
    """Wait for a liveness report made after `since`; returns when it was seen."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = await api.box(box)
        seen = ts(info.last_seen_at)
        if info.status == "online" and seen is not None and seen >= since:
            return time.time()
        await asyncio.sleep(0.05)
    raise ProductProblem(f"box {box} not online {timeout:.0f}s after its agent restarted: {await api.box(box)}")


async def bench_heartbeat(stack: DevStack, api: Api, box: str, samples: int, work: Path, tag: str) -> list[dict]:
    child = stack.child(f"agent-{box}")
    out = []
    for i in range(samples):
        pidfile = work / f"{tag}-hb-{i}.pid"
        job_id = await api.submit({"box": box, "script": LONG.format(pidfile=str(pidfile)), "timeout_s": 600})
        await api.wait_state(job_id, {"running"}, timeout=90)
        if not await wait_file(pidfile, 30):
            raise ProductProblem(f"script never wrote its pid; {await api.evidence(job_id)}")
        script_pid = int(pidfile.read_text())
        await asyncio.sleep(1.0)
        t_kill = time.time()
        child.proc.kill()
        child.proc.wait(30)
        seen = None
        deadline = time.monotonic() + 180
        while seen is None:
            job = await api.job(job_id)
            if job.state in TERMINAL:
                seen = time.time()
                break
            if time.monotonic() > deadline:
                raise ProductProblem(f"job not terminal 180 s after its agent was killed; {await api.evidence(job_id)}")
            await asyncio.sleep(0.05)
        at = await api.event_times(job_id)
        leases = await api.leases(box)
        sample = {
            "kill_to_failed_event_s": round(at[job.state] - t_kill, 3),
            "kill_to_api_seen_s": round(seen - t_kill, 3),
            "state": str(job.state),
            "error": job.error,
            "lease_freed": job_id not in leases,
            "script_pid_gone_at_failure": not pid_alive(script_pid),
        }
        if job.state != "failed" or job.error != HEARTBEAT_LOST:
            sample["problem"] = await api.evidence(job_id)
        t_respawn = time.time()
        child.respawn()
        online = await wait_online_since(api, box, t_respawn)
        sample["respawn_to_online_s"] = round(online - t_respawn, 2)
        out.append(sample)
        log(
            f"heartbeat[{tag}] {i + 1}/{samples}: kill -> failed event {sample['kill_to_failed_event_s']:.2f}s, "
            f"seen {sample['kill_to_api_seen_s']:.2f}s ({job.state}: {job.error})"
        )
    return out


def heartbeat_summary(samples: list[dict], timeout_s: float) -> dict:
    ev = [s["kill_to_failed_event_s"] for s in samples]
    seen = [s["kill_to_api_seen_s"] for s in samples]
    return {
        "heartbeat_timeout_s": timeout_s,
        "n": len(samples),
        "event_s": {"min": min(ev), "median": round(statistics.median(ev), 2), "max": max(ev)},
        "seen_s": {"min": min(seen), "median": round(statistics.median(seen), 2), "max": max(seen)},
        "all_failed_heartbeat_lost": all(s["state"] == "failed" and s["error"] == HEARTBEAT_LOST for s in samples),
        "all_leases_freed": all(s["lease_freed"] for s in samples),
        "all_script_pids_gone": all(s["script_pid_gone_at_failure"] for s in samples),
        "respawn_to_online_median_s": round(statistics.median(s["respawn_to_online_s"] for s in samples), 2),
        "samples": samples,
    }


# --------------------------------------------------------------------------- 2. cancel -> SIGTERM


async def bench_cancel(api: Api, box: str, jobs: int, warmup: int, work: Path, rng: random.Random) -> dict:
    sig, cancelled, post_rt, problems = [], [], [], []
    for i in range(warmup + jobs):
        ready, outf = work / f"cancel-{i}.ready", work / f"cancel-{i}.sigterm"
        job_id = await api.submit(
            {"box": box, "script": ON_SIGTERM.format(ready=str(ready), out=str(outf)), "timeout_s": 600}
        )
        if not await wait_file(ready, 60):
            raise ProductProblem(f"cancel job never became ready; {await api.evidence(job_id)}")
        await asyncio.sleep(0.2 + rng.random() * 0.5)
        t0 = time.time()
        try:
            await api.client.cancel(job_id)
        except BoxrunError as exc:
            raise ProductProblem(f"cancel refused: {type(exc).__name__}: {exc}") from exc
        t_resp = time.time()
        got = await wait_file(outf, 30, interval=0.02)
        job = await api.wait_state(job_id, TERMINAL, timeout=60)
        if not got or job.state != "cancelled":
            problems.append(f"no SIGTERM file={not got}; {await api.evidence(job_id)}")
            continue
        if i < warmup:
            continue
        t_sig = float(outf.read_text())
        at = await api.event_times(job_id)
        sig.append(t_sig - t0)
        cancelled.append(at["cancelled"] - t0)
        post_rt.append(t_resp - t0)
    if sig:
        log(f"cancel: {len(sig)} samples, SIGTERM p50 {statistics.median(sig) * 1000:.0f} ms")
    return {
        "cancel_to_sigterm_ms": pct(sig, 1000),
        "cancel_to_cancelled_event_ms": pct(cancelled, 1000),
        "cancel_post_round_trip_ms": pct(post_rt, 1000),
        "problems": problems,
        "samples_ms": [round(x * 1000, 1) for x in sig],
    }


# --------------------------------------------------------------------------- 3. lease hand-off


async def bench_handoff(api: Api, box: str, pairs: int, warmup: int) -> dict:
    handoff, to_running, not_waited, problems, inverted = [], [], 0, [], []
    for i in range(warmup + pairs):
        a = await api.submit({"box": box, "script": "import time\ntime.sleep(0.3)"})
        b = await api.submit({"box": box, "script": "pass"})
        ja = await api.wait_state(a, TERMINAL, timeout=60)
        jb = await api.wait_state(b, TERMINAL, timeout=60)
        if ja.state != "completed" or jb.state != "completed":
            problems.append(f"{await api.evidence(a)} | {await api.evidence(b)}")
            continue
        if i < warmup:
            continue
        ea, eb = await api.event_times(a), await api.event_times(b)
        # `first` got the box first; normally A (submitted first), but record when B overtook A
        first, second = (ea, eb) if ea["dispatching"] <= eb["dispatching"] else (eb, ea)
        if first is eb:
            inverted.append(f"B placed before A: {await api.evidence(a)} | {await api.evidence(b)}")
        if second["dispatching"] < first["completed"]:  # both held the capacity-1 box at once
            problems.append(f"OVERBOOKED: {await api.evidence(a)} | {await api.evidence(b)}")
            continue
        if "waiting_for_box" not in second:  # placed after the other had ended: no hand-off
            not_waited += 1
            continue
        handoff.append(second["dispatching"] - first["completed"])
        to_running.append(second["running"] - first["completed"])
    if handoff:
        log(f"handoff: {len(handoff)} pairs, p50 {statistics.median(handoff) * 1000:.0f} ms")
    return {
        "handoff_ms": pct(handoff, 1000),
        "a_terminal_to_b_running_ms": pct(to_running, 1000),
        "pairs_where_b_did_not_wait": not_waited,
        "problems": problems,
        "pairs_b_before_a": len(inverted),
        "b_before_a": inverted,
        "samples_ms": [round(x * 1000, 1) for x in handoff],
    }


# --------------------------------------------------------------------------- 4. throughput


def cpu_by_child(stack: DevStack) -> dict[str, float]:
    """CPU seconds of each stack child's process tree; agents summed into one entry."""
    return cpu_by_pid_tree(("agents" if c.name.startswith("agent-") else c.name, c.pid) for c in stack.children)


async def bench_throughput(
    stack: DevStack, api: Api, n: int, concurrency: int, boxes: int, deadline_s: float, target: str
) -> dict:
    # warm-up: one trivial job per box, not counted
    warm = [await api.submit({"box_group": "local", "script": "pass"}) for _ in range(boxes)]
    for job_id in warm:
        await api.wait_state(job_id, TERMINAL, timeout=120)
    base = {s: await api.count(s) for s in ("completed", "failed")}

    sem = asyncio.Semaphore(concurrency)
    submitted: dict[str, float] = {}
    post_s: list[float] = []
    refused: Counter = Counter()

    def body(i: int) -> dict:
        if target == "named":  # round robin over the boxes by name: no group placement
            return {"box": f"local-{i % boxes + 1}", "script": "pass"}
        return {"box_group": "local", "script": "pass"}

    async def one(i: int) -> None:
        async with sem:
            t0 = time.time()
            try:
                job = await api.client.submit(**body(i))
            except BoxrunError as exc:
                refused[f"{type(exc).__name__} {exc.reason[:120]}"] += 1
                return
            submitted[job.id] = t0
            post_s.append(time.time() - t0)

    load0, cpu0, wall0 = loadavg(), cpu_by_child(stack), time.time()
    timeline: list[dict] = []
    submit_task = asyncio.gather(*(one(i) for i in range(n)))
    submit_done_at = None
    last_progress, last_done = time.monotonic(), -1
    stalled = None
    while True:
        await asyncio.sleep(1.0)
        if submit_done_at is None and submit_task.done():
            submit_done_at = time.time()
        done_c = await api.count("completed") - base["completed"]
        done_f = await api.count("failed") - base["failed"]
        waiting = await api.count("waiting_for_box")
        running = await api.count("running")
        timeline.append(
            {
                "t": round(time.time() - wall0, 1),
                "completed": done_c,
                "failed": done_f,
                "waiting": waiting,
                "running": running,
                "submitted": len(submitted),
            }
        )
        if len(timeline) % 10 == 0:
            log(
                f"throughput t={timeline[-1]['t']:.0f}s submitted {len(submitted)} completed {done_c} "
                f"failed {done_f} waiting {waiting} running {running} load {loadavg()[0]}"
            )
        if submit_task.done() and done_c + done_f >= len(submitted):
            break
        if done_c + done_f != last_done:
            last_done, last_progress = done_c + done_f, time.monotonic()
        elif time.monotonic() - last_progress > 60:
            stalled = f"no job ended for 60 s at completed={done_c} failed={done_f} of {len(submitted)}"
            break
        if time.time() - wall0 > deadline_s:
            stalled = (
                f"not all terminal after {deadline_s:.0f}s: completed={done_c} failed={done_f} of {len(submitted)}"
            )
            break
    await submit_task
    if submit_done_at is None:
        submit_done_at = time.time()
    wall1 = time.time()
    cpu1, load1 = cpu_by_child(stack), loadavg()

    # every job of the run, from the list endpoint (newest first, 500 a page)
    rows: dict[str, JobPublic] = {}
    offset = 0
    while True:
        page: JobsPublic = await api.client.list_jobs(limit=500, offset=offset)
        rows.update({r.id: r for r in page.data if r.id in submitted})
        if len(page.data) < 500:
            break
        offset += 500
    states = Counter(str(r.state) for r in rows.values())
    errors = Counter(r.error for r in rows.values() if r.state in TERMINAL - {"completed"})
    # every row below has finished_at (ended), started_at where filtered on it
    ended = [r for r in rows.values() if r.state in TERMINAL and r.finished_at]
    first_post = min(submitted.values())
    last_end = max(r.finished_at.timestamp() for r in ended if r.finished_at)
    latency = [r.finished_at.timestamp() - submitted[r.id] for r in ended if r.state == "completed" and r.finished_at]
    queue_wait = [r.started_at.timestamp() - r.created_at.timestamp() for r in ended if r.started_at]
    run = [r.finished_at.timestamp() - r.started_at.timestamp() for r in ended if r.started_at and r.finished_at]
    ends = sorted(r.finished_at.timestamp() for r in ended if r.finished_at)
    k10, k90 = int(len(ends) * 0.1), int(len(ends) * 0.9) - 1
    steady = (k90 - k10) / (ends[k90] - ends[k10]) if k90 > k10 and ends[k90] > ends[k10] else None

    # per box: how many jobs, and the most that were ever running at once (capacity is 1)
    per_box: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for r in ended:
        if r.started_at and r.finished_at:
            per_box[str(r.box)].append((r.started_at.timestamp(), r.finished_at.timestamp()))
    max_overlap = 0
    for intervals in per_box.values():
        edges = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
        cur = 0
        for _, d in edges:
            cur += d
            max_overlap = max(max_overlap, cur)
    counts = [len(v) for v in per_box.values()]
    busy = sum(e - s for v in per_box.values() for s, e in v)
    window = last_end - first_post
    cpu = {k: round(cpu1.get(k, 0) - cpu0.get(k, 0), 1) for k in cpu1}
    log(f"throughput: {len(ended)} ended in {window:.1f}s = {len(ended) / window:.1f} jobs/s")
    return {
        "jobs": n,
        "accepted": len(submitted),
        "refused": dict(refused),
        "states": dict(states),
        "errors": {str(k): v for k, v in errors.items()},
        "stalled": stalled,
        "window_s": round(window, 2),
        "jobs_per_s": round(len(ended) / window, 2),
        "completed_per_s": round(states.get("completed", 0) / window, 2),
        "steady_jobs_per_s_10_90": round(steady, 2) if steady else None,
        "submit_phase_s": round(submit_done_at - first_post, 2),
        "post_round_trip_ms": pct(post_s, 1000),
        "submit_to_completed_ms": pct(latency, 1000, 0),
        "created_to_running_ms": pct(queue_wait, 1000, 0),
        "running_to_end_ms": pct(run, 1000, 0),
        "target": target,
        "boxes_used": len(per_box),
        "jobs_per_box_min_max": [min(counts), max(counts)] if counts else None,
        "jobs_per_box": dict(sorted(((b, len(v)) for b, v in per_box.items()), key=lambda kv: -kv[1])),
        "mean_jobs_running": round(busy / window, 2),
        "running_count_per_s_median": statistics.median(p["running"] for p in timeline) if timeline else None,
        "max_running_at_once_on_one_box": max_overlap,
        "cpu_seconds": dict(sorted(cpu.items(), key=lambda kv: -kv[1])),
        "cpu_capacity_seconds": round((wall1 - wall0) * machine()["nproc"], 1),
        "loadavg_start": load0,
        "loadavg_end": load1,
        "timeline": timeline,
    }


# --------------------------------------------------------------------------- output


def render(r: dict) -> str:
    m = r["machine"]
    lines = [
        f"machine: {m['nproc']} CPU(s), {m['cpu_model']}, Linux {m['kernel']}, Python {m['python']}, "
        f"temporalio {m['temporalio']}; box python {r['box_python']}",
        f"load avg: {m['loadavg_at_start']} at start, {m['loadavg_at_end']} at end",
        "",
    ]
    cols = ["n", "p50", "p90", "p99", "min", "max", "mean"]

    def table(title: str, rows: list[tuple[str, dict]]) -> None:
        w = max(len(name) for name, _ in rows) + 2
        lines.append(f"{title:<{w}}" + "".join(f"{c:>9}" for c in cols))
        for name, s in rows:
            lines.append(f"{name:<{w}}" + "".join(f"{s.get(c, '-'):>9}" for c in cols))
        lines.append("")

    for key, label in (("heartbeat_default", "default settings"), ("heartbeat_short", "short timeout")):
        h = r.get(key)
        if not h:
            continue
        lines.append(
            f"1. heartbeat loss, {label} (BOXRUN_ACTIVITY_HEARTBEAT_TIMEOUT_S={h['heartbeat_timeout_s']:g}), "
            f"kill -9 agent -> job failed, seconds:"
        )
        lines.append("   sample   kill->failed event   kill->API shows it   state/error")
        for i, s in enumerate(h["samples"], 1):
            lines.append(
                f"   {i:>6}   {s['kill_to_failed_event_s']:>18.2f}   {s['kill_to_api_seen_s']:>18.2f}   "
                f"{s['state']}: {s['error']}"
            )
        lines.append(
            f"   median {h['event_s']['median']:>18.2f}   {h['seen_s']['median']:>18.2f}   "
            f"(min {h['event_s']['min']:.2f} max {h['event_s']['max']:.2f}); all 'box heartbeat lost': "
            f"{h['all_failed_heartbeat_lost']}, leases freed: {h['all_leases_freed']}, script pids gone: "
            f"{h['all_script_pids_gone']}; agent restart -> online median {h['respawn_to_online_median_s']}s"
        )
        lines.append("")
    if r.get("cancel"):
        c = r["cancel"]
        table(
            f"2. cancel (ms, {'quick stack' if 'quick' in r.get('settings', {}) else 'default settings'})",
            [
                ("POST cancel -> SIGTERM in script", c["cancel_to_sigterm_ms"]),
                ("POST cancel -> `cancelled` event", c["cancel_to_cancelled_event_ms"]),
                ("POST cancel round trip", c["cancel_post_round_trip_ms"]),
            ],
        )
        if c["problems"]:
            lines += ["   problems:"] + [f"   - {p}" for p in c["problems"]] + [""]
    if r.get("handoff"):
        h = r["handoff"]
        table(
            "3. lease hand-off on 1 box (ms)",
            [
                ("A terminal -> B dispatching", h["handoff_ms"]),
                ("A terminal -> B running", h["a_terminal_to_b_running_ms"]),
            ],
        )
        lines.append(
            f"   pairs where the second job never waited (placed after the first ended; excluded): "
            f"{h['pairs_where_b_did_not_wait']}; pairs where B got the box before A (FIFO "
            f"inverted; hand-off measured the other way round): {h['pairs_b_before_a']}"
        )
        lines += [f"   - {x}" for x in h["b_before_a"]]
        if h["problems"]:
            lines += ["   problems:"] + [f"   - {p}" for p in h["problems"]]
        lines.append("")
    if r.get("throughput"):
        t = r["throughput"]
        lines.append(
            f"4. throughput ({t['target']} target): {t['accepted']}/{t['jobs']} accepted, "
            f"states {t['states']}, refused {t['refused']}"
        )
        lines.append(
            f"   {t['jobs_per_s']} jobs/s over {t['window_s']} s (first POST -> last finished_at); "
            f"steady 10%-90% of ends: {t['steady_jobs_per_s_10_90']} jobs/s; "
            f"submit phase {t['submit_phase_s']} s"
        )
        lines.append(
            f"   boxes used {t['boxes_used']}, jobs per box {t['jobs_per_box_min_max']}, most running at once "
            f"on one box {t['max_running_at_once_on_one_box']}; "
            f"load avg {t['loadavg_start']} -> {t['loadavg_end']}"
        )
        lines.append(
            f"   mean jobs in `running` (sum of running->end / window) {t['mean_jobs_running']}, "
            "median of the "
            f"per-second `running` count {t['running_count_per_s_median']}; jobs per box {t['jobs_per_box']}"
        )
        lines.append(
            "   per 10 s (t: completed/waiting/running): "
            + ", ".join(f"{p['t']:.0f}: {p['completed']}/{p['waiting']}/{p['running']}" for p in t["timeline"][9::10])
        )
        if t["errors"]:
            lines.append(f"   errors: {t['errors']}")
        if t["stalled"]:
            lines.append(f"   STALLED: {t['stalled']}")
        lines.append("")
        table(
            "   within the run (ms)",
            [
                ("POST round trip", t["post_round_trip_ms"]),
                ("submit -> completed", t["submit_to_completed_ms"]),
                ("created -> running", t["created_to_running_ms"]),
                ("running -> terminal", t["running_to_end_ms"]),
            ],
        )
        lines.append(f"   CPU seconds during the run (capacity {t['cpu_capacity_seconds']}): {t['cpu_seconds']}")
        lines.append("")
    for part, err in r.get("errors", {}).items():
        lines.append(f"ERROR in {part}: {err}")
    lines.append(f"total bench time {r['total_s']} s")
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


async def run_quick(args: argparse.Namespace, root: Path) -> dict:
    """--quick: every part once, on one stack of 2 boxes with a 3 s run_job heartbeat timeout."""
    work = root / "work"
    work.mkdir()
    work.chmod(0o1777)  # jobs may run as the box's slot users (agent as root): they write here too
    parts = set(args.parts.split(","))
    result: dict = {"errors": {}, "settings": {"quick": f"one stack, 2 boxes, {QUICK_ENV}"}}

    async def part(name: str, coro) -> None:
        try:
            result[name] = await coro
        except Exception as exc:
            traceback.print_exc()
            result["errors"][name] = f"{type(exc).__name__}: {exc}"

    async with private_stack(root, "quick", boxes=2, env=QUICK_ENV) as (stack, endpoints):
        api = Api(endpoints)
        try:
            if "cancel" in parts:
                await part("cancel", bench_cancel(api, "local-1", 1, 0, work, random.Random(3)))
            if "handoff" in parts:
                await part("handoff", bench_handoff(api, "local-1", 1, 0))
            if "heartbeat" in parts:

                async def hb() -> dict:
                    samples = await bench_heartbeat(stack, api, "local-2", 1, work, "quick")
                    return heartbeat_summary(samples, float(QUICK_ENV["BOXRUN_ACTIVITY_HEARTBEAT_TIMEOUT_S"]))

                await part("heartbeat_short", hb())
            if "throughput" in parts:
                await part("throughput", bench_throughput(stack, api, 10, 5, 2, 60, args.throughput_target))
        finally:
            await api.close()
    problems = [p for key in ("cancel", "handoff") for p in result.get(key, {}).get("problems", [])]
    hb = result.get("heartbeat_short")
    if hb and not (hb["all_failed_heartbeat_lost"] and hb["all_leases_freed"] and hb["all_script_pids_gone"]):
        problems.append(f"heartbeat loss: {hb['samples']}")
    tp = result.get("throughput")
    if tp and (tp["stalled"] or tp["states"].get("completed", 0) != tp["jobs"]):
        problems.append(f"throughput: states {tp['states']}, stalled {tp['stalled']}")
    if problems:
        result["errors"]["quick"] = "; ".join(problems)
    return result


async def run(args: argparse.Namespace, root: Path) -> dict:
    if args.quick:
        return await run_quick(args, root)
    parts = set(args.parts.split(","))
    work = root / "work"
    work.mkdir()
    work.chmod(0o1777)  # jobs may run as the box's slot users (agent as root): they write here too
    rng = random.Random(3)
    result: dict = {
        "errors": {},
        "settings": {
            "stack A/C": "defaults (heartbeat timeout 15 s, agent activity heartbeat 0.5 s, box offline after 15 s, "
            "wait poll 30 s)",
            "stack B": f"BOXRUN_ACTIVITY_HEARTBEAT_TIMEOUT_S={args.short_heartbeat_s:g}, rest default",
        },
    }

    async def part(name: str, coro) -> None:
        try:
            result[name] = await coro
        except Exception as exc:
            traceback.print_exc()
            result["errors"][name] = f"{type(exc).__name__}: {exc}"

    if parts & {"cancel", "handoff", "heartbeat"}:
        async with private_stack(root, "a", boxes=2) as (stack, endpoints):
            api = Api(endpoints)
            try:
                if "cancel" in parts:
                    await part("cancel", bench_cancel(api, "local-1", args.cancel_jobs, 2, work, rng))
                if "handoff" in parts:
                    await part("handoff", bench_handoff(api, "local-1", args.handoff_pairs, 2))
                if "heartbeat" in parts:

                    async def hb() -> dict:
                        return heartbeat_summary(
                            await bench_heartbeat(stack, api, "local-2", args.heartbeat_samples, work, "default"),
                            DEFAULT_HEARTBEAT_TIMEOUT_S,
                        )

                    await part("heartbeat_default", hb())
            finally:
                await api.close()
    if "heartbeat" in parts and args.short_heartbeat_s > 0:
        env = {"BOXRUN_ACTIVITY_HEARTBEAT_TIMEOUT_S": f"{args.short_heartbeat_s:g}"}
        async with private_stack(root, "b", boxes=1, env=env) as (stack, endpoints):
            api = Api(endpoints)
            try:

                async def hb_short() -> dict:
                    return heartbeat_summary(
                        await bench_heartbeat(stack, api, "local-1", args.heartbeat_samples, work, "short"),
                        args.short_heartbeat_s,
                    )

                await part("heartbeat_short", hb_short())
            finally:
                await api.close()
    if "throughput" in parts:
        async with private_stack(root, "c", boxes=args.throughput_boxes) as (stack, endpoints):
            api = Api(endpoints, max_connections=args.concurrency + 10)
            try:
                await part(
                    "throughput",
                    bench_throughput(
                        stack,
                        api,
                        args.throughput_jobs,
                        args.concurrency,
                        args.throughput_boxes,
                        args.throughput_deadline_s,
                        args.throughput_target,
                    ),
                )
            finally:
                await api.close()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.lifecycle", description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    parser.add_argument("--heartbeat-samples", type=int, default=5)
    parser.add_argument(
        "--short-heartbeat-s",
        type=float,
        default=5.0,
        help="heartbeat loss again with this run_job heartbeat timeout (0: skip)",
    )
    parser.add_argument("--cancel-jobs", type=int, default=30)
    parser.add_argument("--handoff-pairs", type=int, default=30)
    parser.add_argument("--throughput-jobs", type=int, default=1000)
    parser.add_argument("--throughput-boxes", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=50, help="POSTs in flight at once (default 50)")
    parser.add_argument(
        "--throughput-deadline-s",
        type=float,
        default=300,
        help="stop waiting for the throughput run after this long (default 300)",
    )
    parser.add_argument(
        "--throughput-target",
        choices=["group", "named"],
        default="group",
        help="group: box_group 'local' (default); named: round robin over local-1..N by name",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the tables")
    parser.add_argument("--keep", action="store_true", help="keep the stacks' data dir (printed) afterwards")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="CI smoke run: every part once on one 2-box stack (3 s heartbeat timeout, 10 throughput jobs)",
    )
    args = parser.parse_args(argv)
    unknown = set(args.parts.split(",")) - set(PARTS)
    if unknown:
        parser.error(f"unknown parts: {sorted(unknown)}")

    return run_parts("boxrun-bench-lifecycle-", args, run, render, lambda result: bool(result["errors"]))


if __name__ == "__main__":
    hard_exit(main())
