"""Live followers over API replicas (issue 15): N SSE followers of one chatty job, spread over 2 `boxrun api`.

    python -m bench.followers [--followers 1000] [--replicas 2] [--interval-ms 10] [--seconds 20]
                              [--drain-s 300] [--json] [--keep] [--quick]

One private in-process `DevStack` (`boxrun.dev.stack`, one box `local-1`, every port picked free,
data in a temporary directory), stopped at the end even on error. The bench starts --replicas - 1
more `boxrun api` processes against the same Postgres, Temporal and S3: the stack's API's own
command and environment with another API port and metrics port (so nothing but the port differs;
they stop with the stack).

One job prints `L <i> <time.time()>` every --interval-ms for --seconds (bench.logs.fanout_script:
it first waits for a "go" file, so every follower is connected before its first line). The job's
box sends its lines to the stack's first API only: every other replica serves its followers from
what it hears through Postgres, the way a follower on another replica does in production.

Followers: --followers / --replicas on each replica, SSE (`GET /api/jobs/{id}/logs/stream`) over
raw asyncio streams (bench.logs.RawFollower: HTTP/1.1, chunked decoding, a minimal SSE parser;
here with a regex instead of JSON decoding for the log events).
Each replica's followers live in their own client process (`python -m bench.followers --client`,
so that the client side does not share one core: 100,000 events/s is more than one Python process
parses). A client process reports "connected" once every follower has its first event; then the
bench touches "go". Per line and follower: latency = the time.time() when a read returned the
bytes completing the event - the printed time (one host clock). Checks (exit 1 if any fails):
every follower got every line, seqs in order without a gap, and `done`.

CPU per delivered line = CPU seconds of each API replica (its /proc stat) from "go" until every
follower has `done`, divided by the lines it delivered (lines x its followers). Next to it, a bare
one-activity Temporal workflow measured in the same run (bench.latency.bench_bare) and the load
average.

--quick (CI): 2 replicas x 5 followers, 1 s of lines every 20 ms; fails on any lost line.
Percentiles by nearest rank (value at 1-based rank ceil(p/100*n)).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
import time
import traceback
from array import array
from pathlib import Path
from urllib.parse import urlsplit

from bench.common import (
    TERMINAL,
    ProductProblem,
    bench_parser,
    client_for,
    hard_exit,
    keyed_report,
    loadavg,
    run_parts,
    submit,
    wait_state,
)
from bench.latency import bench_bare
from bench.lifecycle import private_stack
from bench.logs import CpuMeter, RawFollower, fanout_script, job_body, log, mib, pct, status_kb
from boxrun.dev.procs import Child, free_ports, spawn

WAVE = 50
LOG_EVENT = re.compile(rb'id: (\d+)\nevent: log\ndata: [^\n]*?"text": ?"L \d+ ([0-9.]+)')


class FastFollower(RawFollower):
    """bench.logs.RawFollower with a cheaper parser for this job's lines: a `log` event is
    `id: <seq>` + `event: log` + `data: {... "text": "L <i> <printed>" ...}`; one regex pass over
    every whole event received takes its seq and printed time (no JSON decoding, no split per
    event: a client process parses 50,000 events/s on a shared core). `done` is decoded in full."""

    def _parse(self, now: float) -> None:
        buf = self._events
        end = buf.rfind(b"\n\n")
        if end < 0:
            return
        chunk = bytes(buf[: end + 2])
        del buf[: end + 2]
        if b"data: " in chunk:
            self.first_event.set()
        last, printed_at, latency = self.last_seq, self.printed, self.latency
        for found in LOG_EVENT.finditer(chunk):
            seq, printed = int(found[1]), float(found[2])
            printed_at.append(printed)
            latency.append(now - printed)
            if seq != last + 1:
                self.out_of_order += 1
            last = seq
        self.last_seq = last
        done = chunk.find(b"event: done\ndata: ")
        if done >= 0:
            self.done = json.loads(chunk[done + 18 : chunk.index(b"\n", done + 18)])
            self.done_at = now


# --------------------------------------------------------------------------- the client process


async def client_main(url: str, path: str, token: str, count: int, lines: int, out: Path, drain_s: float) -> None:
    """--client: `count` followers of `path` on `url`; prints "connected" when all have their first
    event, then waits for every `done` (or drain_s after stdin closes) and writes its results."""
    u = urlsplit(url)
    flw = [FastFollower(u.hostname or "127.0.0.1", u.port or 80, path, token, keep_split=False) for _ in range(count)]
    tasks: list[asyncio.Task] = []
    for k in range(0, count, WAVE):  # in waves, so the accept queue never overflows
        wave = flw[k : k + WAVE]
        tasks += [asyncio.create_task(f.run()) for f in wave]
        await asyncio.wait_for(asyncio.gather(*(f.first_event.wait() for f in wave)), 120)
    print("connected", flush=True)
    _, pending = await asyncio.wait(tasks, timeout=drain_s)
    for t in pending:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    lat = array("d")
    for f in flw:
        lat.extend(f.latency)
    with (out.with_suffix(".lat")).open("wb") as fh:
        lat.tofile(fh)
    summary = {
        "followers": count,
        "complete": sum(1 for f in flw if f.done is not None and f.last_seq == lines and not f.out_of_order),
        "out_of_order": sum(f.out_of_order for f in flw),
        "lowest_last_seq": min((f.last_seq for f in flw), default=0),
        "errors": sorted({f.error for f in flw if f.error})[:5],
        "done_at": [f.done_at for f in flw if f.done_at is not None],
        "cpu_s": sum(os.times()[:2]),
    }
    out.write_text(json.dumps(summary))


# --------------------------------------------------------------------------- replicas


def start_replica(stack, index: int) -> tuple[Child, str]:
    """Another `boxrun api` on the stack's Postgres, Temporal and S3: the first API's argv and
    environment, another API port and metrics port."""
    first = stack.child("api")
    ports = free_ports(["api", "metrics"], taken=stack.ports.values())
    env = dict(first.env)
    env |= {
        "BOXRUN_API_PORT": str(ports["api"]),
        "BOXRUN_API_URL": f"http://127.0.0.1:{ports['api']}",
        "BOXRUN_API_METRICS_PORT": str(ports["metrics"]),
    }
    child = spawn(f"api-{index}", first.argv, stack.log_dir, env=env, base_env=first.base_env)
    stack.children.append(child)
    return child, env["BOXRUN_API_URL"]


async def wait_healthy(child: Child, url: str, token: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    async with client_for({"api_url": url, "token": token}, timeout=2) as client:
        while True:
            if not child.alive():
                raise ProductProblem(f"{child.name} exited: {child.log_tail(20)}")
            try:
                await client.health()
                return
            except Exception:  # not up yet
                if time.monotonic() > deadline:
                    raise ProductProblem(f"{child.name} not healthy after {timeout:.0f}s") from None
                await asyncio.sleep(0.2)


# --------------------------------------------------------------------------- the run


async def run(args: argparse.Namespace, root: Path) -> dict:
    if args.quick:
        args.followers, args.replicas, args.interval_ms, args.seconds, args.drain_s = 10, 2, 20.0, 1.0, 60.0
    work = root / "work"
    work.mkdir()
    work.chmod(0o1777)  # the job may run as a slot user (agent as root): it reads "go" here
    result: dict = {
        "errors": {},
        "params": {
            "followers": args.followers,
            "replicas": args.replicas,
            "interval_ms": args.interval_ms,
            "seconds": args.seconds,
        },
    }
    clients: list[asyncio.subprocess.Process] = []
    async with private_stack(root, "followers", boxes=1) as (stack, endpoints):
        try:
            bare = await bench_bare(endpoints["temporal_address"], 10 if args.quick else 30, 2, True)
            result["bare_workflow_ms"] = pct(bare)
            replicas = [(stack.child("api"), endpoints["api_url"])]
            for i in range(2, args.replicas + 1):
                replicas.append(start_replica(stack, i))
            for child, url in replicas[1:]:
                await wait_healthy(child, url, endpoints["token"])
            interval_s = args.interval_ms / 1000
            lines = int(args.seconds / interval_s)
            go = work / "go"
            async with client_for(endpoints) as client:
                job_id = await submit(client, job_body(fanout_script(go, args.seconds, interval_s)))
                path = f"/api/jobs/{job_id}/logs/stream"
                per = args.followers // args.replicas
                rss0 = {c.name: mib(status_kb(c.pid, "VmRSS")) for c, _ in replicas}
                t_connect = time.perf_counter()
                for k, (_child, url) in enumerate(replicas):
                    clients.append(
                        await asyncio.create_subprocess_exec(
                            sys.executable,
                            "-m",
                            "bench.followers",
                            "--client",
                            url,
                            path,
                            str(per),
                            str(lines),
                            str(work / f"client-{k}.json"),
                            str(args.drain_s + args.seconds + 60),
                            stdout=asyncio.subprocess.PIPE,
                            stdin=asyncio.subprocess.DEVNULL,
                            env={**os.environ, "BENCH_TOKEN": endpoints["token"]},
                        )
                    )
                for proc in clients:
                    assert proc.stdout is not None
                    said = await asyncio.wait_for(proc.stdout.readline(), 300)
                    if said.strip() != b"connected":
                        raise ProductProblem(f"a follower client did not connect (said {said!r}, rc {proc.returncode})")
                connect_s = time.perf_counter() - t_connect
                rss1 = {c.name: mib(status_kb(c.pid, "VmRSS")) for c, _ in replicas}
                await wait_state(client, job_id, {"running"}, 60)
                load0 = loadavg()
                cpu = CpuMeter(stack)
                cpu.start()
                log(f"{per} followers on each of {len(replicas)} replicas connected in {connect_s:.1f}s; go")
                go.touch()
                job = await wait_state(client, job_id, TERMINAL, args.seconds + 300, interval=0.1)
                t_end = job.finished_at.timestamp() if job.finished_at else time.time()
                for proc in clients:
                    await asyncio.wait_for(proc.wait(), args.drain_s + args.seconds + 120)
                used = cpu.stop()
                load1 = loadavg()
            lat = array("d")
            per_replica = {}
            problems = []
            if job.state != "completed" or job.log_lines != lines:
                problems.append(f"job {job_id} ended {job.state} with {job.log_lines} lines (expected {lines})")
            for k, (child, _url) in enumerate(replicas):
                out = work / f"client-{k}.json"
                if not out.exists():
                    problems.append(f"client {k} wrote no results (rc {clients[k].returncode})")
                    continue
                s = json.loads(out.read_text())
                part = array("d")
                with out.with_suffix(".lat").open("rb") as fh:
                    part.frombytes(fh.read())
                lat.extend(part)
                api_cpu = used["ours_cpu_s"].get(child.name, 0.0)
                delivered = lines * s["complete"]
                per_replica[child.name] = {
                    "followers": s["followers"],
                    "complete": s["complete"],
                    "print_to_client_ms": pct(part),
                    "job_end_to_done_ms": pct([d - t_end for d in s["done_at"]]),
                    "api_cpu_s": api_cpu,
                    "api_cpu_us_per_delivered_line": round(api_cpu / delivered * 1e6, 1) if delivered else None,
                    "client_cpu_s": round(s["cpu_s"], 1),
                    "api_rss_mib": {"before": rss0[child.name], "connected": rss1[child.name]},
                }
                if s["complete"] != s["followers"] or s["out_of_order"]:
                    problems.append(
                        f"{child.name}: {s['followers'] - s['complete']} of {s['followers']} followers missed lines "
                        f"or `done` ({s['out_of_order']} gaps/out of order; lowest last seq {s['lowest_last_seq']}; "
                        f"errors {s['errors'] or 'none'})"
                    )
            api_total = sum(v["api_cpu_s"] for v in per_replica.values())
            delivered = lines * sum(v["complete"] for v in per_replica.values())
            result.update(
                {
                    "job": job_id,
                    "lines": lines,
                    "followers_total": per * len(replicas),
                    "connect_all_s": round(connect_s, 1),
                    "print_to_client_ms": pct(lat),
                    "per_replica": per_replica,
                    "api_cpu_us_per_delivered_line": round(api_total / delivered * 1e6, 1) if delivered else None,
                    "cpu": used,
                    "load_start": load0,
                    "load_end": load1,
                }
            )
            if problems:
                result["errors"]["followers"] = "; ".join(problems)
        except Exception as exc:
            traceback.print_exc()
            result["errors"]["run"] = f"{type(exc).__name__}: {exc}"
        finally:
            for proc in clients:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
    return result


def render(r: dict) -> str:
    keys = (
        "params",
        "bare_workflow_ms",
        "lines",
        "followers_total",
        "connect_all_s",
        "print_to_client_ms",
        "api_cpu_us_per_delivered_line",
        "per_replica",
        "cpu",
        "load_start",
        "load_end",
    )
    return keyed_report("boxrun followers over API replicas (bench/followers.py)", r, keys)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--client"]:
        url, path, count, lines, out, drain = argv[1:7]
        asyncio.run(client_main(url, path, os.environ["BENCH_TOKEN"], int(count), int(lines), Path(out), float(drain)))
        return 0
    parser = bench_parser("followers", __doc__)
    parser.add_argument("--followers", type=int, default=1000)
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--interval-ms", type=float, default=10.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--drain-s", type=float, default=300.0)
    args = parser.parse_args(argv)
    return run_parts("boxrun-bench-followers-", args, run, render, lambda r: bool(r["errors"]))


if __name__ == "__main__":
    hard_exit(main())
