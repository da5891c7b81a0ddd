"""Placement at scale (issue 15): one group of many boxes, a backlog, agents' heartbeats meanwhile.

    python -m bench.placement [--boxes 1000] [--backlog 500] [--finished 50000] [--grants 200]
                              [--heartbeats-per-s 200] [--json] [--keep] [--quick]

One private `DevStack` (`boxrun.dev.stack`, its reaper sweeping once at start only, so it starts
no workflow for the bench's backlog); the bench uses its Postgres (the app database) and its Temporal, and calls the placement code itself (`boxrun.placement.acquire`, what the control
activity `acquire_box` runs), so the figures are placement's own, without workflow overhead.

1. bare: 20 runs of the bare one-activity Temporal workflow (bench.latency.bench_bare), the
   reference every figure is read against.
2. fleet: --boxes boxes in group `pbench` (capacity 1, each with a liveness report now),
   --finished jobs already `completed` (history every deployment accumulates) and a backlog of
   --backlog jobs `queued` for the group, in submission order.
3. grants: --grants placements of the backlog's head jobs, one after another on one connection
   (each one grants a box; the time of one `acquire` call, perf_counter), while heartbeats
   (`boxes.sql` box_report, the statement `POST /api/agent/heartbeat` runs) for random boxes of
   the group go out on 4 other connections at --heartbeats-per-s (1,000 agents at one report per
   5 s), each timed.
4. figures: acquire p50/p99/max (ms); heartbeat p50/p99/max (ms) during the grants; leases
   granted (must equal --grants, one per box at most: the bench fails otherwise).

--quick (CI): 30 boxes, a backlog of 20, 200 finished jobs, 10 grants, 20 heartbeats/s.

Percentiles by nearest rank. Every instant is the host clock.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
import uuid
from pathlib import Path

import asyncpg

from bench.common import bench_parser, hard_exit, header, run_parts
from bench.latency import bench_bare
from bench.lifecycle import log, pct, private_stack
from boxrun.constants import DEFAULT_ORG
from boxrun.db import Q, connect
from boxrun.placement import acquire
from boxrun.services.identity import hash_token

GROUP = "pbench"
QUICK = {"boxes": 30, "backlog": 20, "finished": 200, "grants": 10, "heartbeats_per_s": 20.0}


async def fleet(db: asyncpg.Connection, args: argparse.Namespace) -> tuple[list[int], list[str]]:
    """The boxes (live), the finished history and the queued backlog; returns box ids, backlog ids in order."""
    box_ids = []
    for i in range(args.boxes):
        row = await db.fetchrow(
            Q.insert_box, DEFAULT_ORG, f"p{i}", [GROUP], [], 1, hash_token(f"bench-{i}-{uuid.uuid4()}")
        )
        await db.fetchrow(Q.box_report, row["id"], "bench", 15.0, False, None)
        box_ids.append(row["id"])
    await db.execute(
        """INSERT INTO jobs (id, org_id, owner, box_group, requires, spec, spec_hash, timeout_s, state)
           SELECT gen_random_uuid(), $1, 'bench', $2, '{}', '{"script": "pass"}'::jsonb, 'h', 60, 'completed'
           FROM generate_series(1, $3)""",
        DEFAULT_ORG,
        GROUP,
        args.finished,
    )
    backlog = []
    for _ in range(args.backlog):
        job_id = str(uuid.uuid4())
        await db.execute(
            Q.insert_job,
            job_id,
            DEFAULT_ORG,
            "bench",
            None,
            GROUP,
            [],
            {"script": "pass"},
            "h",
            60,
            False,
            0,
            None,
            10,
            None,
        )
        await db.execute(Q.insert_first_event, DEFAULT_ORG, job_id, {})
        backlog.append(job_id)
    await db.execute("ANALYZE")
    return box_ids, backlog


async def heartbeats(db_url: str, box_ids: list[int], per_s: float, stop: asyncio.Event) -> list[float]:
    """box_report for random boxes at `per_s` over 4 connections until `stop`; each call's ms."""
    times: list[float] = []
    rng = random.Random(15)

    async def beat(conn: asyncpg.Connection) -> None:
        period = 4 / per_s
        nxt = time.perf_counter()
        while not stop.is_set():
            t = time.perf_counter()
            await conn.fetchrow(Q.box_report, rng.choice(box_ids), "bench", 15.0, False, None)
            times.append((time.perf_counter() - t) * 1000)
            nxt += period
            await asyncio.sleep(max(0.0, nxt - time.perf_counter()))

    conns = [await asyncpg.connect(db_url) for _ in range(4)]
    try:
        await asyncio.gather(*(beat(c) for c in conns))
    finally:
        await asyncio.gather(*(c.close() for c in conns))
    return times


async def run(args: argparse.Namespace, root: Path) -> dict:
    if args.quick:
        for k, v in QUICK.items():
            setattr(args, k, v)
    result: dict = {
        "errors": {},
        "settings": {k: getattr(args, k) for k in ("boxes", "backlog", "finished", "grants", "heartbeats_per_s")},
    }
    # the reaper starts a workflow for a job queued 30 s without one: the backlog here has none on
    # purpose (placement is called directly), so the reaper sweeps once at start and not again
    async with private_stack(root, "placement", boxes=1, env={"BOXRUN_REAPER_INTERVAL_S": "3600"}) as (
        stack,
        endpoints,
    ):
        db_url = stack.child("api").env["BOXRUN_DATABASE_URL"]
        bare = await bench_bare(endpoints["temporal_address"], 3 if args.quick else 20, 1 if args.quick else 3, True)
        result["bare_workflow_ms"] = pct(bare, 1000)
        db = await connect(db_url)
        try:
            box_ids, backlog = await fleet(db, args)
            log(f"fleet: {len(box_ids)} boxes, {len(backlog)} queued, {args.finished} finished")
            stop = asyncio.Event()
            beating = asyncio.create_task(heartbeats(db_url, box_ids, args.heartbeats_per_s, stop))
            grant_ms, granted = [], []
            try:
                for job_id in backlog[: args.grants]:
                    t = time.perf_counter()
                    got = await acquire(db, job_id)
                    grant_ms.append((time.perf_counter() - t) * 1000)
                    if got.box is None:
                        result["errors"]["grants"] = f"job {job_id} was not granted a box: {got}"
                        break
                    granted.append(got.box)
            finally:
                stop.set()
                beat_ms = await beating
            result["acquire_ms"] = pct(grant_ms)
            result["heartbeat_ms"] = pct(beat_ms)
            result["granted"] = len(granted)
            if len(set(granted)) != len(granted):
                result["errors"]["overbooked"] = "a box was granted twice"
            leases = await db.fetchval("SELECT count(*) FROM leases WHERE released_at IS NULL")
            result["active_leases"] = leases
        finally:
            await db.close()
    return result


def render(r: dict) -> str:
    s = r["settings"]
    lines = [
        "boxrun placement at scale (bench.placement)",
        *header(r),
        f"bare one-activity workflow ms: {r.get('bare_workflow_ms')}",
        f"group of {s['boxes']} boxes, backlog {s['backlog']} queued, {s['finished']} finished jobs; "
        f"{s['grants']} grants of the backlog's head, heartbeats at {s['heartbeats_per_s']}/s meanwhile",
        f"acquire (one placement) ms: {r.get('acquire_ms')}",
        f"heartbeat (box_report) ms during the grants: {r.get('heartbeat_ms')}",
        f"granted: {r.get('granted')} (active leases {r.get('active_leases')})",
    ]
    for part, err in r.get("errors", {}).items():
        lines.append(f"ERROR in {part}: {err}")
    lines.append(f"total bench time {r['total_s']} s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser("placement", __doc__, quick="CI smoke run: 30 boxes, 10 grants")
    parser.add_argument("--boxes", type=int, default=1000)
    parser.add_argument("--backlog", type=int, default=500)
    parser.add_argument("--finished", type=int, default=50_000)
    parser.add_argument("--grants", type=int, default=200)
    parser.add_argument("--heartbeats-per-s", type=float, default=200.0)
    args = parser.parse_args(argv)
    return run_parts("boxrun-bench-placement-", args, run, render, lambda result: bool(result["errors"]))


if __name__ == "__main__":
    hard_exit(main())
