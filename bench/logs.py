"""Log figures of issue 4: line latency print -> SSE client, ingest throughput, 500 SSE followers.

    python -m bench.logs [--parts latency,throughput,fanout] [--latency-lines 500]
                         [--latency-interval-ms 20] [--throughput-lines 2000000] [--line-bytes 100]
                         [--followers 500] [--fanout-interval-ms 10] [--fanout-s 20] [--fanout-drain-s 600]
                         [--wait-load 1.5] [--wait-load-max-s 600] [--stack-env KEY=VALUE]
                         [--verify-all] [--json] [--keep] [--quick]

Each part runs on its own private in-process `DevStack` (`boxrun.dev.stack`, one box `local-1`,
every port picked free, data in a temporary directory), stopped at the end even on error. Before
each stack starts, the bench waits (up to --wait-load-max-s) for the 1-minute load average to drop
below --wait-load, and records the load either way. Every job waits for a "go" file (the bench and
the box share the filesystem) so that followers are connected and peak-RSS counters are reset
before the first line is printed.

1. latency: a job prints `L <i> <time.time()>` every --latency-interval-ms (default 20 ms, 500
   lines), once with print(..., flush=True) and once with a plain print (the bootstrap's flusher
   pushes buffered output within 5 ms). One SSE follower (BoxrunClient.follow, the product's own
   client), connected before the job starts, takes time.time() when it has parsed
   each `event: log`. Sample = receive time - printed time. Split with the line's `ts` (the agent's
   read time): print -> agent read, agent read -> client. The first 10 lines are warm-up.
2. throughput: a job writes --throughput-lines lines of --line-bytes bytes (newline included:
   9-digit counter, a space, 89 characters cycling through 1024 random strings so Postgres cannot
   compress them away) with sys.stdout.write as fast as it can. MB/s = bytes printed / (finished_at
   - started_at) of GET /api/jobs/{id} (the `running` and terminal transitions; MB = 10^6 bytes).
   The job records when it started and stopped writing (a file), the bench polls log_lines every
   0.25 s (the stored-lines curve) and checks the agent's spill file. Peak RSS is VmHWM of the API
   and agent processes, reset (clear_refs 5) right before "go". Checks: log_lines == the lines
   printed, and the first, last and 20 random pages of the replay hold exactly the expected text
   (--verify-all: every line).
3. fanout: --followers (default 500; a comma list runs several sizes in turn on one stack) SSE
   followers of one job that prints a line every --fanout-interval-ms (10 ms) for --fanout-s
   (20 s). Followers are raw asyncio streams in this process (HTTP/1.1, chunked decoding, a minimal
   SSE parser: httpx costs several times more CPU per event and the client shares the machine's two
   cores with the API). All are connected and have their first event before "go". Latency = the
   time.time() when a read returned the bytes completing the event - printed time, over every line
   of every follower. API peak RSS = VmHWM reset before the followers connect.

--quick (CI) runs every part on one shared stack with tiny sizes (30 latency lines, 20 000 lines
of ingest, 5 followers for 1 s) and fails on any problem: it checks that the bench and the
behaviour it measures work; its figures mean little.

Every part also records CPU seconds per stack process (with its descendants) and for the whole
machine (/proc/stat), so the share used by other work on the host is visible. Percentiles use the
nearest-rank method (value at 1-based rank ceil(p/100*n)).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import string
import sys
import time
import traceback
from array import array
from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from urllib.parse import urlsplit

from bench.common import (
    TERMINAL,
    ProductProblem,
    client_for,
    cpu_by_pid_tree,
    hard_exit,
    loadavg,
    run_parts,
    submit,
    wait_state,
)
from bench.latency import nearest_rank
from boxrun.client import BoxrunClient, DoneEvent, DroppedEvent, LogEvent, StateEvent
from boxrun.dev.stack import DevStack, StackOptions, resolve_ports
from boxrun.schemas import LogLinePublic

BOX = "local-1"
PARTS = ("latency", "throughput", "fanout")
WARMUP_LINES = 10
POOL_SEED = 20261122
POOL_SIZE = 1024  # power of two: the job indexes it with i & (POOL_SIZE - 1)
# --quick: every part on one shared stack, sizes that exercise each step but measure little
QUICK = {
    "latency_lines": 30,
    "latency_interval_ms": 10.0,
    "throughput_lines": 20_000,
    "throughput_deadline_s": 120.0,
    "followers": "5",
    "fanout_s": 1.0,
    "fanout_interval_ms": 20.0,
    "fanout_drain_s": 60.0,
    "wait_load_max_s": 0.0,
}


def log(msg: str) -> None:
    print(f"[bench.logs {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def wait_for_quiet(limit: float, max_s: float) -> dict:
    """Poll the 1-minute load average until it is below `limit` (or `max_s` passed)."""
    t0 = time.monotonic()
    first = loadavg()
    announced = False
    while loadavg()[0] >= limit and time.monotonic() - t0 < max_s:
        if not announced:
            log(f"load average {first} >= {limit}: waiting up to {max_s:.0f}s for it to drop")
            announced = True
        time.sleep(5)
    now = loadavg()
    return {
        "limit": limit,
        "at_first_look": first,
        "when_started": now,
        "waited_s": round(time.monotonic() - t0, 1),
        "quiet": now[0] < limit,
    }


def pct(values: list[float] | array, scale: float = 1000.0) -> dict:
    """p50/p90/p99/max/mean (nearest rank) of seconds, in ms by default."""
    if not len(values):
        return {"n": 0}
    s = sorted(values)
    out = {"n": len(s)}
    for p in (50, 90, 99):
        out[f"p{p}"] = round(nearest_rank(s, p) * scale, 1)
    out["max"] = round(s[-1] * scale, 1)
    out["mean"] = round(statistics.fmean(s) * scale, 1)
    return out


def ts(value: str | None) -> float | None:
    return None if value is None else datetime.fromisoformat(value).timestamp()


# --------------------------------------------------------------------------- process facts


def status_kb(pid: int, field: str) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def reset_peak_rss(pid: int) -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0: echo 5 > /proc/PID/clear_refs)."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def mib(kb: int | None) -> float | None:
    return None if kb is None else round(kb / 1024, 1)


class CpuMeter:
    """CPU seconds per stack child (with its descendants) and for the whole machine between
    start() and stop(). A descendant that exits in between is counted through its parent's
    cutime/cstime (so the job's process shows up under the agent once reaped)."""

    def __init__(self, stack: DevStack) -> None:
        self.stack = stack
        self.tick = os.sysconf("SC_CLK_TCK")

    def _machine(self) -> tuple[float, float, float]:
        f = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        user, nice, system, idle, iowait, irq, softirq, steal = (f + [0] * 8)[:8]
        return (user + nice + system + irq + softirq) / self.tick, steal / self.tick, time.monotonic()

    def _by_child(self) -> dict[str, float]:
        return cpu_by_pid_tree((c.name, c.pid) for c in self.stack.children)

    def start(self) -> None:
        self._c0, self._m0 = self._by_child(), self._machine()

    def stop(self) -> dict:
        c1, m1 = self._by_child(), self._machine()
        wall = m1[2] - self._m0[2]
        ours = {k: round(v - self._c0.get(k, 0.0), 1) for k, v in c1.items()}
        busy = m1[0] - self._m0[0]
        return {
            "wall_s": round(wall, 1),
            "capacity_cpu_s": round(wall * (os.cpu_count() or 1), 1),
            "machine_busy_cpu_s": round(busy, 1),
            "steal_cpu_s": round(m1[1] - self._m0[1], 1),
            "ours_cpu_s": dict(sorted(ours.items(), key=lambda kv: -kv[1])),
            "others_cpu_s": round(busy - sum(ours.values()), 1),
        }


# --------------------------------------------------------------------------- the stack


@asynccontextmanager
async def private_stack(root: Path, name: str, args: argparse.Namespace) -> AsyncIterator[tuple[DevStack, dict, dict]]:
    quiet = await asyncio.to_thread(wait_for_quiet, args.wait_load, args.wait_load_max_s)
    env = dict(kv.split("=", 1) for kv in args.stack_env) or None
    stack = DevStack(StackOptions(data_dir=root / name, boxes=1, capacity=1, env=env), resolve_ports(None, auto=True))
    t0 = time.perf_counter()
    try:
        endpoints = await stack.start()
        log(f"stack {name}: ready in {time.perf_counter() - t0:.1f}s (load {loadavg()}; extra env {env})")
        yield stack, endpoints, quiet
    except BaseException:
        for child in stack.children:
            if child.name in ("api", "worker", f"agent-{BOX}") or not child.alive():
                print(f"--- {child.name} log tail ---\n{child.log_tail(20)}", file=sys.stderr)
        raise
    finally:
        t1 = time.perf_counter()
        stack.stop()
        log(f"stack {name} stopped in {time.perf_counter() - t1:.1f}s")


@asynccontextmanager
async def stack_for(root: Path, name: str, args: argparse.Namespace) -> AsyncIterator[tuple[DevStack, dict, dict]]:
    """The part's own private stack, or (--quick) the one stack all parts share."""
    if args.shared_stack is not None:
        yield args.shared_stack
    else:
        async with private_stack(root, name, args) as started:
            yield started


def job_body(script: str) -> dict:
    return {"box": BOX, "script": script, "timeout_s": 900}


def go_wait(go: Path) -> str:
    return f"import os, time\nwhile not os.path.exists({str(go)!r}):\n    time.sleep(0.005)\n"


# --------------------------------------------------------------------------- 1. line latency


def latency_script(go: Path, lines: int, interval_s: float, flush: bool) -> str:
    return (
        go_wait(go)
        + f"""
t0 = time.time()
for i in range({lines}):
    print(f"L {{i}} {{time.time():.6f}}", flush={flush})
    delay = t0 + (i + 1) * {interval_s} - time.time()
    if delay > 0:
        time.sleep(delay)
"""
    )


async def latency_run(endpoints: dict, work: Path, lines: int, interval_s: float, flush: bool) -> dict:
    go = work / f"go-latency-{'flush' if flush else 'plain'}"
    async with client_for(endpoints) as client:
        job_id = await submit(client, job_body(latency_script(go, lines, interval_s, flush)))
        total, to_agent, from_agent = [], [], []
        seqs: list[int] = []
        done: DoneEvent | None = None
        dropped: list[DroppedEvent] = []
        async for ev in client.follow(job_id):
            if isinstance(ev, StateEvent) and ev.state == "running" and not go.exists():
                go.touch()  # the follower is subscribed and the process is up: start printing
            elif isinstance(ev, LogEvent):
                now = time.time()
                _, i, printed = ev.line.text.split()
                read_at = ev.line.ts.timestamp()
                seqs.append(ev.line.seq)
                if int(i) >= WARMUP_LINES:
                    total.append(now - float(printed))
                    to_agent.append(read_at - float(printed))
                    from_agent.append(now - read_at)
            elif isinstance(ev, DroppedEvent):
                dropped.append(ev)
            elif isinstance(ev, DoneEvent):
                done = ev
        job = await client.get(job_id)
    problems = []
    if done is None or done.state != "completed":
        problems.append(f"job {job_id} ended {done}")
    if dropped:
        problems.append(f"the follower was dropped and resumed {len(dropped)} time(s): {dropped[0].reason}")
    if seqs != list(range(1, lines + 1)):
        problems.append(f"follower got {len(seqs)} lines, expected seqs 1..{lines}")
    if job.log_lines != lines:
        problems.append(f"log_lines {job.log_lines} != {lines}")
    return {
        "flush": flush,
        "job": job_id,
        "print_to_client_ms": pct(total),
        "print_to_agent_read_ms": pct(to_agent),
        "agent_read_to_client_ms": pct(from_agent),
        "problems": problems,
    }


async def bench_latency(root: Path, args: argparse.Namespace) -> dict:
    work = root / "latency-work"
    work.mkdir()
    work.chmod(0o1777)  # jobs may run as the box's slot users (agent as root): they write here too
    async with stack_for(root, "latency", args) as (stack, endpoints, quiet):
        load0 = loadavg()
        cpu = CpuMeter(stack)
        cpu.start()
        runs = []
        for flush in (True, False):
            log(f"latency: {args.latency_lines} lines every {args.latency_interval_ms} ms, flush={flush}")
            runs.append(await latency_run(endpoints, work, args.latency_lines, args.latency_interval_ms / 1000, flush))
        return {
            "quiet_wait": quiet,
            "load_start": load0,
            "load_end": loadavg(),
            "cpu": cpu.stop(),
            "lines": args.latency_lines,
            "interval_ms": args.latency_interval_ms,
            "warmup_lines": WARMUP_LINES,
            "runs": runs,
        }


# --------------------------------------------------------------------------- 2. ingest throughput


def line_pool(width: int) -> list[str]:
    rnd = random.Random(POOL_SEED)
    alphabet = string.ascii_letters + string.digits
    return ["".join(rnd.choices(alphabet, k=width)) for _ in range(POOL_SIZE)]


def throughput_script(go: Path, stamps: Path, lines: int, line_bytes: int) -> str:
    return (
        go_wait(go)
        + f"""
import random, string, sys
rnd = random.Random({POOL_SEED})
alphabet = string.ascii_letters + string.digits
pool = ["".join(rnd.choices(alphabet, k={line_bytes - 11})) for _ in range({POOL_SIZE})]
w = sys.stdout.write
t0 = time.time()
for i in range({lines}):
    w(f"{{i:09d}} {{pool[i & {POOL_SIZE - 1}]}}\\n")
sys.stdout.flush()
t1 = time.time()
cpu = sum(os.times()[:2])  # this process: the loop plus the bootstrap's framing and flusher thread
with open({str(stamps)!r}, "w") as fh:
    fh.write(f"{{t0}} {{t1}} {{cpu}}")
"""
    )


async def verify_throughput(client: BoxrunClient, job_id: str, lines: int, line_bytes: int, full: bool) -> list[str]:
    pool = line_pool(line_bytes - 11)
    problems: list[str] = []

    def check(page: list[LogLinePublic], after: int) -> None:
        for k, line in enumerate(page):
            seq = after + 1 + k
            want = f"{seq - 1:09d} {pool[(seq - 1) & (POOL_SIZE - 1)]}"
            if line.seq != seq or line.text != want or line.stream != "stdout":
                problems.append(f"seq {seq}: got {line.seq} {line.stream} {line.text[:40]!r}")
                return

    async def page(after: int, limit: int) -> None:
        got = (await client.log_page(job_id, after=after, limit=limit)).data
        if len(got) != min(limit, lines - after):
            problems.append(f"page after {after}: {len(got)} lines, expected {min(limit, lines - after)}")
        check(got, after)

    if full:
        for after in range(0, lines, 10_000):
            await page(after, 10_000)
            if problems:
                break
    else:
        rnd = random.Random(1)
        starts = [0, max(0, lines - 100)] + [rnd.randrange(0, max(1, lines - 100)) for _ in range(20)]
        for after in starts:
            await page(after, 100)
    return problems


async def bench_throughput(root: Path, args: argparse.Namespace) -> dict:
    work = root / "throughput-work"
    work.mkdir()
    work.chmod(0o1777)  # jobs may run as the box's slot users (agent as root): they write here too
    go, stamps = work / "go", work / "stamps"
    lines, line_bytes = args.throughput_lines, args.line_bytes
    async with stack_for(root, "throughput", args) as (stack, endpoints, quiet):
        api, agent = stack.child("api").pid, stack.child(f"agent-{BOX}").pid
        async with client_for(endpoints) as client:
            job_id = await submit(client, job_body(throughput_script(go, stamps, lines, line_bytes)))
            await wait_state(client, job_id, {"running"}, 60)
            spill = Path(endpoints["data_dir"]) / "boxes" / BOX / "jobs" / job_id / "logs.spill"
            rss0 = {"api": mib(status_kb(api, "VmRSS")), "agent": mib(status_kb(agent, "VmRSS"))}
            reset = reset_peak_rss(api) and reset_peak_rss(agent)
            load0 = loadavg()
            cpu = CpuMeter(stack)
            cpu.start()
            log(f"throughput: {lines} lines of {line_bytes} bytes ({lines * line_bytes / 1e6:.0f} MB)")
            go.touch()
            curve: list[tuple[float, int]] = []
            spill_max = 0
            deadline = time.monotonic() + args.throughput_deadline_s
            while True:
                job = await client.get(job_id)
                curve.append((time.time(), job.log_lines))
                try:
                    spill_max = max(spill_max, spill.stat().st_size)
                except OSError:
                    pass
                if job.state in TERMINAL:
                    break
                if time.monotonic() > deadline:
                    raise ProductProblem(
                        f"job {job_id} still {job.state} with {job.log_lines} lines stored "
                        f"after {args.throughput_deadline_s:.0f}s"
                    )
                await asyncio.sleep(0.25)
            cpu_used = cpu.stop()
            load1 = loadavg()
            peak = {"api": mib(status_kb(api, "VmHWM")), "agent": mib(status_kb(agent, "VmHWM"))}
            rss1 = {"api": mib(status_kb(api, "VmRSS")), "agent": mib(status_kb(agent, "VmRSS"))}
            problems = []
            if job.state != "completed":
                problems.append(f"job ended {job.state}: {job.error}")
            if job.log_lines != lines:
                problems.append(f"log_lines {job.log_lines} != {lines} printed")
            first = (await client.log_page(job_id, after=0, limit=1)).data
            t_verify = time.perf_counter()
            problems += await verify_throughput(client, job_id, lines, line_bytes, args.verify_all)
            verify_s = time.perf_counter() - t_verify
    if job.started_at is None or job.finished_at is None:
        raise ProductProblem(f"job {job_id} ended {job.state} without start and end times: {job.error}")
    started, finished = job.started_at.timestamp(), job.finished_at.timestamp()
    t0, t1, job_cpu = (float(x) for x in stamps.read_text().split())
    nbytes = lines * line_bytes
    first_read = first[0].ts.timestamp() if first else None
    all_stored = next((t for t, n in curve if n >= lines), None)
    # the steady rate: stored lines between 10% and 90% of the total, from the polled curve
    lo = next(((t, n) for t, n in curve if n >= lines * 0.1), None)
    hi = next(((t, n) for t, n in curve if n >= lines * 0.9), None)
    steady = (hi[1] - lo[1]) / (hi[0] - lo[0]) if lo and hi and hi[0] > lo[0] else None
    window = finished - started
    return {
        "quiet_wait": quiet,
        "load_start": load0,
        "load_end": load1,
        "cpu": cpu_used,
        "job": job_id,
        "lines": lines,
        "line_bytes": line_bytes,
        "mb": round(nbytes / 1e6, 1),
        "running_to_terminal_s": round(window, 2),
        "mb_per_s": round(nbytes / 1e6 / window, 1),
        "lines_per_s": round(lines / window),
        "first_line_read_to_terminal_s": round(finished - first_read, 2) if first_read else None,
        "producer_s": round(t1 - t0, 2),
        "producer_mb_per_s": round(nbytes / 1e6 / (t1 - t0), 1),
        "job_process_cpu_s": round(job_cpu, 1),  # part of the agent's figure in "cpu" (a reaped child)
        "go_to_all_stored_s": round(all_stored - t0, 2) if all_stored else None,
        "steady_stored_lines_per_s": round(steady) if steady else None,
        "steady_stored_mb_per_s": round(steady * line_bytes / 1e6, 1) if steady else None,
        "spill_file_max_mb": round(spill_max / 1e6, 1),
        "rss_before_mib": rss0,
        "peak_rss_mib": peak,
        "rss_after_mib": rss1,
        "peak_reset": reset,
        "archive": job.log_archive.model_dump() if job.log_archive else None,
        "verified": "every line" if args.verify_all else "first, last and 20 random pages of 100 lines",
        "verify_s": round(verify_s, 1),
        "problems": problems,
        "curve": [(round(t - t0, 2), n) for t, n in curve],
    }


# --------------------------------------------------------------------------- 3. many followers


class RawFollower:
    """One SSE follower over a raw asyncio stream: HTTP/1.1 GET, chunked decoding, events split
    on blank lines. Records (printed time, latency) of every `log` event."""

    def __init__(self, host: str, port: int, path: str, token: str, keep_split: bool) -> None:
        self.host, self.port, self.path, self.token = host, port, path, token
        self.first_event = asyncio.Event()
        self.printed = array("d")
        self.latency = array("d")
        self.to_agent = array("d") if keep_split else None
        self.last_seq = 0
        self.out_of_order = 0
        self.done: dict | None = None
        self.done_at: float | None = None
        self.error: str | None = None
        self._raw = bytearray()
        self._left = 0  # bytes left in the current chunk
        self._events = bytearray()

    async def run(self) -> None:
        writer = None
        try:
            reader, writer = await asyncio.open_connection(self.host, self.port, limit=1 << 20)
            writer.write(
                f"GET {self.path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                f"Authorization: Bearer {self.token}\r\nAccept: text/event-stream\r\n\r\n".encode()
            )
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            if status != 200:
                raise RuntimeError(f"HTTP {status}: {head[:200]!r}")
            chunked = b"transfer-encoding: chunked" in head.lower()
            while self.done is None:
                data = await reader.read(1 << 16)
                if not data:
                    raise RuntimeError(f"connection closed after seq {self.last_seq} without `done`")
                now = time.time()
                if chunked:
                    self._raw += data
                    self._events += self._dechunk()
                else:
                    self._events += data
                self._parse(now)
        except Exception as exc:  # recorded: the summary counts followers that failed
            self.error = f"{type(exc).__name__}: {exc}"
            self.first_event.set()
        finally:
            if writer is not None:
                writer.close()

    def _dechunk(self) -> bytes:
        out = bytearray()
        raw = self._raw
        while True:
            if self._left == 0:
                j = raw.find(b"\r\n")
                if j < 0:
                    break
                size_line = bytes(raw[:j])
                del raw[: j + 2]
                if not size_line:
                    continue  # the CRLF that ends a chunk's data
                size = int(size_line.split(b";")[0], 16)
                if size == 0:
                    break
                self._left = size
            take = min(self._left, len(raw))
            out += raw[:take]
            del raw[:take]
            self._left -= take
            if self._left:
                break
        return bytes(out)

    def _parse(self, now: float) -> None:
        buf = self._events
        pos = 0
        while (end := buf.find(b"\n\n", pos)) >= 0:
            block = bytes(buf[pos:end])
            pos = end + 2
            event, data = b"message", b""
            for line in block.split(b"\n"):
                if line.startswith(b"event: "):
                    event = line[7:]
                elif line.startswith(b"data: "):
                    data = line[6:]
            if not data:
                continue  # keepalive comment
            self.first_event.set()
            if event == b"log":
                d = json.loads(data)
                printed = float(d["text"].split()[2])
                self.printed.append(printed)
                self.latency.append(now - printed)
                if self.to_agent is not None:
                    self.to_agent.append(ts(d["ts"]) - printed)
                if d["seq"] != self.last_seq + 1:
                    self.out_of_order += 1
                self.last_seq = d["seq"]
            elif event == b"done":
                self.done = json.loads(data)
                self.done_at = now
                break
        del buf[:pos]


def fanout_script(go: Path, seconds: float, interval_s: float) -> str:
    return (
        go_wait(go)
        + f"""
n = int({seconds} / {interval_s})
t0 = time.time()
for i in range(n):
    print(f"L {{i}} {{time.time():.6f}}", flush=True)
    delay = t0 + (i + 1) * {interval_s} - time.time()
    if delay > 0:
        time.sleep(delay)
"""
    )


async def fanout_run(stack: DevStack, endpoints: dict, work: Path, followers: int, args: argparse.Namespace) -> dict:
    go = work / f"go-fanout-{followers}"
    interval_s = args.fanout_interval_ms / 1000
    lines = int(args.fanout_s / interval_s)
    api = stack.child("api").pid
    url = urlsplit(endpoints["api_url"])
    async with client_for(endpoints) as client:
        job_id = await submit(client, job_body(fanout_script(go, args.fanout_s, interval_s)))
        rss0 = mib(status_kb(api, "VmRSS"))
        reset = reset_peak_rss(api)
        path = f"/api/jobs/{job_id}/logs/stream"
        flw = [
            RawFollower(url.hostname, url.port, path, endpoints["token"], keep_split=(k == 0)) for k in range(followers)
        ]
        tasks: list[asyncio.Task] = []
        t_connect = time.perf_counter()
        for k in range(0, followers, 50):  # open in waves of 50 so the accept queue never overflows
            wave = flw[k : k + 50]
            tasks += [asyncio.create_task(f.run()) for f in wave]
            await asyncio.wait_for(asyncio.gather(*(f.first_event.wait() for f in wave)), 120)
        connect_s = time.perf_counter() - t_connect
        failed_early = [f.error for f in flw if f.error]
        rss_connected = mib(status_kb(api, "VmRSS"))
        await wait_state(client, job_id, {"running"}, 60)
        load0 = loadavg()
        cpu = CpuMeter(stack)
        cpu.start()
        log(
            f"fanout: {followers} followers connected in {connect_s:.1f}s; {lines} lines every "
            f"{args.fanout_interval_ms} ms"
        )
        go.touch()
        t_go = time.time()
        job = await wait_state(client, job_id, TERMINAL, args.fanout_s + 300, interval=0.1)
        t_end = job.finished_at.timestamp() if job.finished_at else time.time()
        pending = [t for t in tasks if not t.done()]
        if pending:
            await asyncio.wait(pending, timeout=args.fanout_drain_s)
        cpu_used = cpu.stop()
        load1 = loadavg()
        peak = mib(status_kb(api, "VmHWM"))
        for t in tasks:
            if not t.done():
                t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    lat = array("d")
    for f in flw:
        lat.extend(f.latency)
    complete = [f for f in flw if f.done is not None and f.last_seq == lines and not f.out_of_order]
    done_lag = [f.done_at - t_end for f in flw if f.done_at is not None]
    per_follower_p50 = sorted(nearest_rank(sorted(f.latency), 50) for f in flw if len(f.latency))
    # latency over the run: print-time buckets of 2 s, all followers together
    buckets: dict[int, array] = defaultdict(lambda: array("d"))
    for f in flw:
        for printed, v in zip(f.printed, f.latency):
            buckets[int((printed - t_go) // 2)].append(v)
    over_time = [
        {"printed_s": f"{2 * b}-{2 * b + 2}", **{k: v for k, v in pct(buckets[b]).items() if k != "mean"}}
        for b in sorted(buckets)
        if b >= 0
    ]
    problems = []
    if job.state != "completed" or job.log_lines != lines:
        problems.append(f"job {job_id} ended {job.state} with {job.log_lines} lines (expected {lines})")
    if len(complete) != followers:
        errors = sorted({f.error for f in flw if f.error})[:5]
        problems.append(
            f"{followers - len(complete)} of {followers} followers did not get every line and `done` "
            f"within {args.fanout_drain_s:.0f}s of the job's end; errors: {errors or 'none'}; "
            f"lowest last seq {min(f.last_seq for f in flw)}"
        )
    return {
        "followers": followers,
        "job": job_id,
        "lines": lines,
        "interval_ms": args.fanout_interval_ms,
        "load_start": load0,
        "load_end": load1,
        "cpu": cpu_used,
        "connect_all_s": round(connect_s, 1),
        "failed_to_connect": len(failed_early),
        "print_to_client_ms": pct(lat),
        "print_to_agent_read_ms_follower0": pct(flw[0].to_agent) if followers else None,
        "per_follower_p50_ms": {
            "min": round(per_follower_p50[0] * 1000, 1),
            "max": round(per_follower_p50[-1] * 1000, 1),
        }
        if per_follower_p50
        else None,
        "job_end_to_done_ms": pct(done_lag),
        "followers_complete": len(complete),
        "over_time_ms": over_time,
        "api_rss_mib": {
            "before_followers": rss0,
            "followers_connected": rss_connected,
            "peak": peak,
            "peak_reset": reset,
        },
        "problems": problems,
    }


async def bench_fanout(root: Path, args: argparse.Namespace) -> dict:
    work = root / "fanout-work"
    work.mkdir()
    work.chmod(0o1777)  # jobs may run as the box's slot users (agent as root): they write here too
    sizes = [int(x) for x in str(args.followers).split(",")]
    async with stack_for(root, "fanout", args) as (stack, endpoints, quiet):
        runs = []
        for n in sizes:
            runs.append(await fanout_run(stack, endpoints, work, n, args))
        return {"quiet_wait": quiet, "client": "raw asyncio streams in the bench process", "runs": runs}


# --------------------------------------------------------------------------- output


def render(result: dict) -> str:
    m = result["machine"]
    out = [
        f"machine: {m['nproc']} CPU(s), {m['cpu_model']}, Linux {m['kernel']}, Python {m['python']}, "
        f"temporalio {m['temporalio']}; box runs jobs with {result['box_python']}",
        f"load avg: {m['loadavg_at_start']} at start, {m['loadavg_at_end']} at end; total {result['total_s']}s; "
        f"extra stack env: {result['stack_env'] or 'none'}",
    ]

    def cpu_line(c: dict) -> str:
        top = ", ".join(f"{k} {v}" for k, v in c["ours_cpu_s"].items() if v >= 0.1)
        return (
            f"   CPU s over {c['wall_s']} s (capacity {c['capacity_cpu_s']}): "
            f"machine busy {c['machine_busy_cpu_s']} "
            f"(steal {c['steal_cpu_s']}), others {c['others_cpu_s']}; ours: {top}"
        )

    def row(name: str, s: dict) -> str:
        if not s or not s.get("n"):
            return f"   {name:<34} (no samples)"
        return f"   {name:<34}" + "".join(f"{s[k]:>9}" for k in ("n", "p50", "p90", "p99", "max", "mean"))

    header = f"   {'(ms)':<34}" + "".join(f"{k:>9}" for k in ("n", "p50", "p90", "p99", "max", "mean"))
    if "latency" in result:
        r = result["latency"]
        out += [
            "",
            f"1. line latency, {r['lines']} lines every {r['interval_ms']} ms, 1 SSE follower (BoxrunClient.follow), "
            f"first {r['warmup_lines']} lines not counted; load {r['quiet_wait']['when_started']} at stack "
            f"start (waited {r['quiet_wait']['waited_s']}s), {r['load_start']} -> {r['load_end']}",
            header,
        ]
        for run in r["runs"]:
            tag = "flush=True" if run["flush"] else "plain print"
            out.append(row(f"print -> client ({tag})", run["print_to_client_ms"]))
            out.append(row("  print -> agent read", run["print_to_agent_read_ms"]))
            out.append(row("  agent read -> client", run["agent_read_to_client_ms"]))
            out += [f"   PROBLEM: {p}" for p in run["problems"]]
        out.append(cpu_line(r["cpu"]))
    if "throughput" in result:
        r = result["throughput"]
        out += [
            "",
            f"2. ingest, {r['lines']} lines x {r['line_bytes']} B = {r['mb']} MB as fast as possible; load "
            f"{r['quiet_wait']['when_started']} at stack start (waited {r['quiet_wait']['waited_s']}s), "
            f"{r['load_start']} -> {r['load_end']}",
            f"   running -> {('completed' if not r['problems'] else 'end')}: {r['running_to_terminal_s']} s = "
            f"{r['mb_per_s']} MB/s, {r['lines_per_s']} lines/s",
            f"   producer wrote everything in {r['producer_s']} s ({r['producer_mb_per_s']} MB/s, "
            f"{r.get('job_process_cpu_s')} CPU s, counted in the agent's CPU below); all stored "
            f"{r['go_to_all_stored_s']} s after it started; steady stored rate {r['steady_stored_mb_per_s']} MB/s "
            f"({r['steady_stored_lines_per_s']} lines/s)",
            f"   agent spill file max {r['spill_file_max_mb']} MB",
            f"   RSS MiB before {r['rss_before_mib']}, peak {r['peak_rss_mib']}, after {r['rss_after_mib']}",
            f"   verified: {r['verified']} ({r['verify_s']} s); archive {r['archive']}",
            cpu_line(r["cpu"]),
        ]
        out += [f"   PROBLEM: {p}" for p in r["problems"]]
    if "fanout" in result:
        r = result["fanout"]
        out += [
            "",
            f"3. fan-out, SSE followers = {r['client']}; load {r['quiet_wait']['when_started']} at stack start "
            f"(waited {r['quiet_wait']['waited_s']}s)",
        ]
        for run in r["runs"]:
            out += [
                f"   {run['followers']} followers, {run['lines']} lines every {run['interval_ms']} ms; "
                f"connected in "
                f"{run['connect_all_s']} s; load {run['load_start']} -> {run['load_end']}",
                header,
                row("print -> client, all followers", run["print_to_client_ms"]),
                row("  print -> agent read (follower 0)", run["print_to_agent_read_ms_follower0"]),
                row("job finished -> follower `done`", run["job_end_to_done_ms"]),
                f"   per-follower p50 range {run['per_follower_p50_ms']} ms; complete followers "
                f"{run['followers_complete']}/{run['followers']}",
                f"   API RSS MiB {run['api_rss_mib']}",
                "   p50/p99 by print time: "
                + "; ".join(f"{b['printed_s']}s {b['p50']}/{b['p99']}" for b in run["over_time_ms"]),
                cpu_line(run["cpu"]),
            ]
            out += [f"   PROBLEM: {p}" for p in run["problems"]]
    if result["errors"]:
        out += ["", "errors:"] + [f"   {e}" for e in result["errors"]]
    return "\n".join(out)


# --------------------------------------------------------------------------- main


async def run(args: argparse.Namespace, root: Path) -> dict:
    result: dict = {"errors": [], "stack_env": args.stack_env}
    benches = {"latency": bench_latency, "throughput": bench_throughput, "fanout": bench_fanout}
    args.shared_stack = None
    if args.quick:
        async with private_stack(root, "quick", args) as shared:
            args.shared_stack = shared
            await run_each(args, root, result, benches)
    else:
        await run_each(args, root, result, benches)
    return result


async def run_each(args: argparse.Namespace, root: Path, result: dict, benches: dict) -> None:
    for part in args.parts.split(","):
        try:
            result[part] = await benches[part](root, args)
        except ProductProblem as exc:
            result["errors"].append(f"{part}: {exc}")
            log(f"{part}: PRODUCT PROBLEM: {exc}")
        except Exception as exc:
            traceback.print_exc()
            result["errors"].append(f"{part}: {type(exc).__name__}: {exc}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.logs", description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    parser.add_argument("--latency-lines", type=int, default=500)
    parser.add_argument("--latency-interval-ms", type=float, default=20)
    parser.add_argument("--throughput-lines", type=int, default=2_000_000)
    parser.add_argument("--line-bytes", type=int, default=100, help="bytes per line, newline included (>= 12)")
    parser.add_argument("--throughput-deadline-s", type=float, default=600)
    parser.add_argument("--followers", default="500", help="SSE followers; a comma list runs each size in turn")
    parser.add_argument("--fanout-interval-ms", type=float, default=10)
    parser.add_argument("--fanout-s", type=float, default=20)
    parser.add_argument(
        "--fanout-drain-s",
        type=float,
        default=600,
        help="how long after the job ends followers may take to get everything",
    )
    parser.add_argument("--wait-load", type=float, default=1.5, help="wait for the 1-min load average below this")
    parser.add_argument(
        "--wait-load-max-s", type=float, default=600, help="... but at most this long (then run anyway)"
    )
    parser.add_argument(
        "--stack-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment for api, worker and agent (e.g. BOXRUN_SSE_KEEPALIVE_S=2); repeatable",
    )
    parser.add_argument("--verify-all", action="store_true", help="throughput: replay and compare every line")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the tables")
    parser.add_argument("--keep", action="store_true", help="keep the stacks' data dir (printed) afterwards")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="CI smoke run: every part on one stack with tiny sizes (overrides the sizes above)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)
    unknown = set(args.parts.split(",")) - set(PARTS)
    if unknown:
        parser.error(f"unknown parts: {sorted(unknown)}")
    if args.line_bytes < 12:
        parser.error("--line-bytes must be >= 12")

    return run_parts(
        "boxrun-bench-logs-", args, run, render, lambda result: bool(result["errors"]) or any_problems(result)
    )


def any_problems(result: dict) -> bool:
    runs = result.get("latency", {}).get("runs", []) + result.get("fanout", {}).get("runs", [])
    return bool(result.get("throughput", {}).get("problems")) or any(r["problems"] for r in runs)


if __name__ == "__main__":
    hard_exit(main())
