"""Pipelines of issue 11: what the engine costs next to plain jobs and a bare Temporal workflow.

    python -m bench.pipelines [--linear-steps 10] [--rounds 3] [--wide-steps 200] [--boxes 20]
                              [--json] [--keep] [--quick]

One private in-process `DevStack` (`boxrun.dev.stack`, --boxes boxes `local-N` of capacity 1 in
group `local`, every port picked free, data in a temporary directory), stopped at the end even on
error. Every step and job runs the trivial script `pass` on group `local`. Parts, in order:

1. linear: a pipeline of --linear-steps steps, each `needs` the one before, against the same
   number of jobs submitted one after another by a client (POST /api/jobs, then GET /api/jobs/{id}
   every 20 ms until it is terminal, then the next). Both timed by perf_counter from just before
   the pipeline's creation / the first POST until the client sees the pipeline / the last job
   terminal; --rounds rounds of each, alternating, after one warm-up round of each. Reported: the
   times, the ratio pipeline / jobs (p50 over p50), and the engine's hand-off per step (from the
   rows: a step's job `started_at` minus the previous step's job `finished_at`).
2. wide: a pipeline of --wide-steps independent steps (a DAG of width --wide-steps: no `needs`)
   spread over the --boxes boxes by the scheduler, against as many flat jobs submitted by a client
   at once (at most 50 POSTs in flight). Throughput = steps (jobs) / seconds from just before the
   creation (the first POST) to the client seeing the pipeline (the last job) terminal, and the
   CPU seconds each stack process used meanwhile.
3. bare: N runs of a bare one-activity Temporal workflow against the same dev server
   (`bench.latency.bench_bare`, sandboxed, in-process worker): the floor any Temporal-driven
   step pays.

A pipeline is created over HTTP (POST /api/pipelines with the JSON definition) when the API has
the route, else by calling `boxrun.services.pipelines.create_pipeline` against the stack's
database and Temporal (what the route does, minus one HTTP round trip); its end is read from its
row (`pipelines.state`) every 20 ms.

--quick (CI) runs every part tiny (3 linear steps, 1 round, 10 wide steps over 2 boxes, 3 bare
runs) and fails on any problem; its figures mean little. Percentiles by nearest rank.
"""

from __future__ import annotations

import asyncio
import json
import time
import traceback
import uuid
from pathlib import Path
from typing import Any

import httpx

from bench.common import TERMINAL, ProductProblem, bench_parser, hard_exit, keyed_report, run_parts
from bench.latency import bench_bare
from bench.lifecycle import Api, cpu_by_child, log, pct, private_stack
from boxrun.constants import DEFAULT_ORG
from boxrun.db import connect
from boxrun.pipelines.definition import parse_definition
from boxrun.services.identity import Role, User
from boxrun.services.pipelines import create_pipeline
from boxrun.settings import Settings
from boxrun.storage import Storage
from boxrun.temporal import connect as temporal_connect

POLL_S = 0.02
STEP = {"box_group": "local", "script": "pass", "timeout_s": 120}
ADMIN = User(name="admin", org_id=DEFAULT_ORG, role=Role.ADMIN, platform_admin=True)


def linear_definition(n: int, tag: str) -> dict:
    steps: dict[str, dict] = {}
    for i in range(n):
        steps[f"s{i:03d}"] = {**STEP, **({"needs": [f"s{i - 1:03d}"]} if i else {})}
    return {"name": f"bench-linear-{tag}", "steps": steps}


def wide_definition(n: int, tag: str) -> dict:
    return {"name": f"bench-wide-{tag}", "steps": {f"w{i:03d}": dict(STEP) for i in range(n)}}


class Pipelines:
    """Creates pipelines (over HTTP if the API has the route, else through the service) and
    waits for their end in their rows."""

    def __init__(self, stack: Any, endpoints: dict) -> None:
        env = stack.child("api").env
        fields = {k.removeprefix("BOXRUN_").lower(): v for k, v in env.items() if k.startswith("BOXRUN_")}
        self.settings = Settings(**{k: v for k, v in fields.items() if k in Settings.model_fields})
        self.storage = Storage(self.settings)
        self.endpoints = endpoints
        self.http = httpx.AsyncClient(
            base_url=endpoints["api_url"], timeout=60, headers={"Authorization": f"Bearer {endpoints['token']}"}
        )
        self.via = ""

    async def open(self) -> None:
        self.conn = await connect(self.settings.database_url)
        self.temporal = await temporal_connect(self.endpoints["temporal_address"])
        probe = await self.http.get("/api/pipelines", params={"limit": 1})
        self.via = "http" if probe.status_code == 200 else "service"
        log(f"pipelines are created through the {self.via} (GET /api/pipelines answered {probe.status_code})")

    async def close(self) -> None:
        await self.http.aclose()
        await self.conn.close()

    async def create(self, definition: dict) -> str:
        raw = json.dumps(definition).encode()
        if self.via == "http":
            resp = await self.http.post("/api/pipelines", content=raw, headers={"Content-Type": "application/json"})
            if resp.status_code != 201:
                raise ProductProblem(f"POST /api/pipelines answered {resp.status_code}: {resp.text[:500]}")
            return str(resp.json()["id"])
        p = parse_definition(raw, "application/json")
        return await create_pipeline(self.conn, self.temporal, self.settings, ADMIN, p, storage=self.storage)

    async def wait_end(self, pid: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while True:
            state = await self.conn.fetchval("SELECT state FROM pipelines WHERE id = $1", uuid.UUID(pid))
            if state not in ("queued", "running"):
                return str(state)
            if time.monotonic() > deadline:
                raise ProductProblem(f"pipeline {pid} still {state} after {timeout:.0f}s; {await self.evidence(pid)}")
            await asyncio.sleep(POLL_S)

    async def evidence(self, pid: str) -> str:
        rows = await self.conn.fetch(
            "SELECT name, state, error FROM pipeline_steps WHERE pipeline_id = $1 AND state <> 'completed' "
            "ORDER BY position LIMIT 5",
            uuid.UUID(pid),
        )
        return "steps not completed: " + "; ".join(f"{r['name']}={r['state']} {r['error'] or ''}" for r in rows)

    async def run(self, definition: dict, timeout: float) -> float:
        """Seconds from just before the creation to the pipeline's end; ProductProblem unless completed."""
        t0 = time.perf_counter()
        pid = await self.create(definition)
        state = await self.wait_end(pid, timeout)
        elapsed = time.perf_counter() - t0
        if state != "completed":
            raise ProductProblem(f"pipeline {pid} ended {state}; {await self.evidence(pid)}")
        self.last = pid
        return elapsed

    async def handoffs(self, pid: str) -> list[float]:
        """Per linear step after the first: its job's start minus the previous step's job's end."""
        rows = await self.conn.fetch(
            "SELECT s.position, j.finished_at, j.started_at FROM pipeline_steps s JOIN jobs j ON j.id = s.job_id "
            "WHERE s.pipeline_id = $1 ORDER BY s.position",
            uuid.UUID(pid),
        )
        return [(b["started_at"] - a["finished_at"]).total_seconds() for a, b in zip(rows, rows[1:], strict=False)]


async def sequential_jobs(api: Api, n: int, timeout: float) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        job_id = await api.submit(STEP)
        deadline = time.monotonic() + timeout
        while (job := await api.job(job_id)).state not in TERMINAL:
            if time.monotonic() > deadline:
                raise ProductProblem(f"job not terminal after {timeout:.0f}s; {await api.evidence(job_id)}")
            await asyncio.sleep(POLL_S)
        if job.state != "completed":
            raise ProductProblem(f"job ended {job.state}; {await api.evidence(job_id)}")
    return time.perf_counter() - t0


async def flat_jobs(api: Api, n: int, timeout: float) -> float:
    sem = asyncio.Semaphore(50)

    async def post() -> str:
        async with sem:
            return await api.submit(STEP)

    t0 = time.perf_counter()
    ids = await asyncio.gather(*(post() for _ in range(n)))
    deadline = time.monotonic() + timeout
    pending = set(ids)
    while pending:
        if time.monotonic() > deadline:
            raise ProductProblem(f"{len(pending)} of {n} flat jobs not terminal after {timeout:.0f}s")
        for job_id in list(pending):
            job = await api.job(job_id)
            if job.state in TERMINAL:
                if job.state != "completed":
                    raise ProductProblem(f"flat job ended {job.state}; {await api.evidence(job_id)}")
                pending.discard(job_id)
        if pending:
            await asyncio.sleep(0.2)
    return time.perf_counter() - t0


def cpu_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: round(after[k] - before.get(k, 0.0), 1) for k in sorted(after)}


async def run(args: Any, root: Path) -> dict:  # argparse.Namespace
    quick = args.quick
    linear, rounds = (3, 1) if quick else (args.linear_steps, args.rounds)
    wide, boxes = (10, 2) if quick else (args.wide_steps, args.boxes)
    result: dict = {
        "errors": {},
        "params": {"linear_steps": linear, "rounds": rounds, "wide_steps": wide, "boxes": boxes},
    }
    async with private_stack(root, "pipelines", boxes=boxes) as (stack, endpoints):
        api = Api(endpoints)
        pipes = Pipelines(stack, endpoints)
        try:
            await pipes.open()
            result["created_through"] = pipes.via
            # 1. linear, after a warm-up round of each
            await pipes.run(linear_definition(linear, "warm"), 300)
            await sequential_jobs(api, linear, 120)
            p_times, j_times, hand = [], [], []
            for r in range(rounds):
                p_times.append(await pipes.run(linear_definition(linear, str(r)), 300))
                hand += await pipes.handoffs(pipes.last)
                j_times.append(await sequential_jobs(api, linear, 120))
                log(f"linear round {r + 1}: pipeline {p_times[-1]:.2f}s, jobs {j_times[-1]:.2f}s")
            lp, lj = pct(p_times, 1, 2), pct(j_times, 1, 2)
            result["linear"] = {
                "pipeline_s": lp,
                "sequential_jobs_s": lj,
                "ratio_p50": round(lp["p50"] / lj["p50"], 2),
                "per_step_overhead_ms": round((lp["p50"] - lj["p50"]) / linear * 1000, 1),
                "handoff_ms": pct(hand, 1000),
            }
            # 2. wide
            cpu0 = cpu_by_child(stack)
            wide_s = await pipes.run(wide_definition(wide, "w"), 900)
            cpu1 = cpu_by_child(stack)
            flat_s = await flat_jobs(api, wide, 900)
            cpu2 = cpu_by_child(stack)
            result["wide"] = {
                "pipeline_s": round(wide_s, 2),
                "pipeline_steps_per_s": round(wide / wide_s, 2),
                "flat_jobs_s": round(flat_s, 2),
                "flat_jobs_per_s": round(wide / flat_s, 2),
                "ratio_time": round(wide_s / flat_s, 2),
                "cpu_s_pipeline": cpu_delta(cpu0, cpu1),
                "cpu_s_flat": cpu_delta(cpu1, cpu2),
            }
            log(f"wide: pipeline {wide_s:.1f}s, flat {flat_s:.1f}s")
            # 3. bare
            runs = 3 if quick else 20
            bare = await bench_bare(endpoints["temporal_address"], runs, 1 if quick else 3, True)
            result["bare_workflow_ms"] = pct(bare, 1000)
        except Exception as exc:
            traceback.print_exc()
            result["errors"]["run"] = f"{type(exc).__name__}: {exc}"
        finally:
            await api.close()
            if pipes.via:
                await pipes.close()
    return result


def render(r: dict) -> str:
    return keyed_report(
        "boxrun pipelines (bench/pipelines.py)", r, ("params", "created_through", "linear", "wide", "bare_workflow_ms")
    )


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser("pipelines", __doc__)
    parser.add_argument("--linear-steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--wide-steps", type=int, default=200)
    parser.add_argument("--boxes", type=int, default=20)
    args = parser.parse_args(argv)
    return run_parts("boxrun-bench-pipelines-", args, run, render, lambda r: bool(r["errors"]))


if __name__ == "__main__":
    hard_exit(main())
