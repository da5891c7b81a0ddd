"""Submit -> the script's first line and submit -> completed of a trivial boxrun job, next to a bare
one-activity Temporal workflow.

    python -m bench.latency [--jobs 50] [--warmup 3] [--gap-ms 250] [--observe sse|poll] [--unsandboxed]
                            [--agent-python PATH] [--local-control true|false] [--warm true|false]
                            [--offer-at-submission true|false]
                            [--json] [--quick]

Starts a private `boxrun dev --ports auto --boxes 1` stack in a temporary directory, then, one at a
time (latency, not throughput), each job submitted --gap-ms (250) after the previous job's workflow
closed (its transcript archived), so it meets an idle box and an idle control plane:

1. boxrun: N jobs `{"box": "local-1", "script": "import time; print(repr(time.time()))"}` through
   the HTTP API: the script's first line prints the instant it executes. Two figures per job:
   - submit -> first line: that printed instant minus the client's time.time() just before
     `POST /api/jobs` (client, server and box share the host clock);
   - submit -> completed: wall clock (time.perf_counter) from just before the POST to the moment
     the client learns the job is `completed`: with --observe sse (default) the `event: done` of
     `GET /api/jobs/{id}/logs/stream`, opened right after the POST returns; with --observe poll,
     the first `GET /api/jobs/{id}` answering a terminal state, polled every 5 ms.
2. bare: N runs of `BareWorkflow` (one activity that returns its input), with a Worker on a fresh
   task queue inside this process, against the same Temporal dev server; each sample times
   `client.execute_workflow(...)`. The workflow runs sandboxed, like JobWorkflow (--unsandboxed not).

Each boxrun sample is also split into phases by the server's transition timestamps (job_events,
Postgres clock_timestamp()), the `ActivityTaskScheduled` time of run_job in the job's Temporal
history and the printed first-line instant; the median of each phase is printed.

Warm-up runs (default 3) of each are not counted. --quick (CI) runs 3 of each after 1 warm-up: it
checks that the bench works (exit 1 on a job that does not complete or prints no first line), its
figures mean little. The stack is stopped at the end, even on error. Percentiles use the
nearest-rank method: the p-th percentile of n sorted samples is the sample at rank
ceil(p/100 * n) (1-based), so p99 of 50 samples is the 50th, i.e. the max.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import statistics
import sys
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC
from pathlib import Path
from typing import Any

from temporalio.client import Client
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from bench.bare_workflow import BareWorkflow, echo
from bench.common import box_python, client_for, hard_exit, run_parts
from boxrun.client import BoxrunClient, DoneEvent
from boxrun.constants import JobState
from boxrun.dev.procs import StartupError
from boxrun.temporal import connect

BOX = "local-1"
POLL_S = 0.005
QUICK = {"jobs": 3, "warmup": 1}  # --quick: every step once or twice, figures not meaningful
PERCENTILES = (50, 90, 99)


# --------------------------------------------------------------------------- the bare baseline


async def bench_bare(address: str, runs: int, warmup: int, sandboxed: bool) -> list[float]:
    client = await connect(address)
    queue = f"bench-bare-{uuid.uuid4()}"
    # By default the workflow runs in the sandbox, like JobWorkflow in the boxrun control worker
    # (which uses the default runner), so the two figures pay the same per-task sandbox cost. The
    # sandbox re-imports the workflow's module: bench/bare_workflow.py imports only temporalio.
    # --unsandboxed shows what the sandbox itself costs.
    extra = {} if sandboxed else {"workflow_runner": UnsandboxedWorkflowRunner()}
    async with Worker(client, task_queue=queue, workflows=[BareWorkflow], activities=[echo], **extra):
        samples = []
        for i in range(warmup + runs):
            t0 = time.perf_counter()
            out = await client.execute_workflow(
                BareWorkflow.run, f"ping-{i}", id=f"bench-bare-{uuid.uuid4()}", task_queue=queue
            )
            elapsed = time.perf_counter() - t0
            if out != f"ping-{i}":
                raise RuntimeError(f"BareWorkflow returned {out!r}")
            if i >= warmup:
                samples.append(elapsed)
    return samples


# --------------------------------------------------------------------------- boxrun jobs


SCRIPT = "import time; print(repr(time.time()))"


@dataclass
class JobSample:
    total: float  # POST -> client knows it is completed
    first_line: float  # POST -> the script's first line executed (the instant it printed)
    post: float  # POST round trip (job queued + workflow started)
    phases: dict[str, float] = field(default_factory=dict)  # from job_events / history timestamps


async def run_job(client: BoxrunClient, temporal: Client, observe: str) -> JobSample:
    wall0 = time.time()
    t0 = time.perf_counter()
    job = await client.submit(box=BOX, script=SCRIPT)
    t_post = time.perf_counter()
    state = None
    if observe == "sse":
        async for ev in client.follow(job.id):
            if isinstance(ev, DoneEvent):
                state = ev.state
    else:
        while True:
            got = await client.get(job.id)
            if got.state.terminal:
                state = got.state
                break
            await asyncio.sleep(POLL_S)
    t1 = time.perf_counter()
    if state != JobState.COMPLETED:
        ended = await client.get(job.id)
        raise RuntimeError(f"job {job.id} ended {state}: {ended.error}")
    lines = (await client.log_page(job.id, after=0, limit=10)).data
    printed = next((float(ln.text) for ln in lines if ln.stream == "stdout"), None)
    if printed is None:
        raise RuntimeError(f"job {job.id} completed without its first line: {[ln.text for ln in lines]}")
    sample = JobSample(total=t1 - t0, first_line=printed - wall0, post=t_post - t0)
    sample.phases = await phases(client, temporal, job.id, wall0, printed, wall0 + (t1 - t0))
    # the next job starts on an idle box and an idle control plane: this job's workflow closed
    # (its transcript archived), not still working next to the next submission on the same cores
    await temporal.get_workflow_handle(job.id).result()
    return sample


async def run_job_scheduled(temporal: Client, job_id: str) -> float | None:
    """When the workflow scheduled run_job (the ActivityTaskScheduled event's time)."""
    history = await temporal.get_workflow_handle(job_id).fetch_history()
    for event in history.events:
        attrs = event.activity_task_scheduled_event_attributes
        if event.HasField("activity_task_scheduled_event_attributes") and attrs.activity_type.name == "run_job":
            return float(event.event_time.ToDatetime(tzinfo=UTC).timestamp())
    return None


async def phases(
    client: BoxrunClient, temporal: Client, job_id: str, wall0: float, printed: float, wall1: float
) -> dict[str, float]:
    """Split one sample by the server's transition timestamps (Postgres clock_timestamp()), run_job's
    scheduling time (Temporal history) and the printed first-line instant; all on the host clock,
    so client, server and box instants can be subtracted."""
    at = {str(e.to_state): e.at.timestamp() for e in (await client.events(job_id)).data}
    scheduled = await run_job_scheduled(temporal, job_id)
    marks = [
        ("submit -> queued row", wall0, at.get("queued")),
        ("queued -> dispatching", at.get("queued"), at.get("dispatching")),
        ("dispatching -> run_job scheduled", at.get("dispatching"), scheduled),
        ("run_job scheduled -> running (claim)", scheduled, at.get("running")),
        # with the offer at submission the box claims before run_job exists: the two above go
        # negative, this one is the hand-over to the box either way
        ("dispatching -> running (offer + claim)", at.get("dispatching"), at.get("running")),
        ("running -> first line", at.get("running"), printed),
        ("first line -> completed", printed, at.get("completed")),
        ("completed -> client told", at.get("completed"), wall1),
    ]
    return {name: b - a for name, a, b in marks if a is not None and b is not None}


async def bench_boxrun(endpoints: dict, runs: int, warmup: int, observe: str, gap_s: float = 0.0) -> list[JobSample]:
    temporal = await connect(endpoints["temporal_address"])
    async with client_for(endpoints) as client:
        samples = []
        for i in range(warmup + runs):
            if i:
                # the arrival pattern, not a synchronisation: the box has this long to be idle
                # again (its slot's next warm interpreter starting) before the next job comes
                await asyncio.sleep(gap_s)
            sample = await run_job(client, temporal, observe)
            if i >= warmup:
                samples.append(sample)
    return samples


# --------------------------------------------------------------------------- the stack


STACK_TRIES = 3


def stack_env(args: argparse.Namespace) -> dict[str, str]:
    """Settings for the private stack's api, worker and agent (unset: the settings' defaults)."""
    env = {}
    if args.agent_python:
        env["BOXRUN_AGENT_PYTHON"] = args.agent_python
    if args.local_control is not None:
        env["BOXRUN_LOCAL_CONTROL_ACTIVITIES"] = args.local_control
    if args.warm is not None:
        env["BOXRUN_AGENT_WARM_INTERPRETER"] = args.warm
    if args.offer_at_submission is not None:
        env["BOXRUN_OFFER_AT_SUBMISSION"] = args.offer_at_submission
    return env


def agent_python(stack: Any) -> str:
    """What the box's agent really runs jobs with (its BOXRUN_AGENT_PYTHON, resolved as it does)."""
    environ = Path(f"/proc/{stack.child(f'agent-{BOX}').pid}/environ").read_bytes().split(b"\0")
    named = dict(item.decode(errors="replace").partition("=")[::2] for item in environ if item)
    return box_python(named.get("BOXRUN_AGENT_PYTHON"))


async def run(args: argparse.Namespace, root: Path) -> dict:
    """One private in-process `boxrun dev` stack (1 box, capacity 1), measured, then stopped."""
    from bench.lifecycle import private_stack  # it imports this module's nearest_rank

    for attempt in range(1, STACK_TRIES + 1):
        try:
            async with private_stack(root, f"latency-{attempt}", boxes=1, env=stack_env(args) or None) as (
                stack,
                endpoints,
            ):
                result = await measure(endpoints, args)
                result["agent_python"] = agent_python(stack)
                return result
        except StartupError as exc:
            # free ports are picked, then bound a moment later: on a busy machine another process
            # can take one in between ("address already in use"): start again on fresh ports
            if "address already in use" not in str(exc) or attempt == STACK_TRIES:
                raise
            print(f"a port was taken meanwhile; starting the stack again ({attempt})", file=sys.stderr, flush=True)
    raise AssertionError("unreachable")


# --------------------------------------------------------------------------- statistics and output


def nearest_rank(sorted_values: list[float], p: float) -> float:
    """Nearest-rank percentile: the value at 1-based rank ceil(p/100 * n) (p=0 gives the minimum)."""
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def summarise(values_s: list[float]) -> dict:
    ms = sorted(v * 1000 for v in values_s)
    out = {"n": len(ms)}
    for p in PERCENTILES:
        out[f"p{p}"] = round(nearest_rank(ms, p), 1)
    out["max"] = round(ms[-1], 1)
    out["mean"] = round(statistics.fmean(ms), 1)
    return out


def how_measured(observe: str, warmup: int, sandboxed: bool, gap_ms: float = 0.0) -> str:
    seen = (
        "SSE `event: done` of /logs/stream opened after the POST returns"
        if observe == "sse"
        else f"first GET /api/jobs/{{id}} with a terminal state, polled every {POLL_S * 1000:g} ms"
    )
    return (
        f"sequential runs after {warmup} uncounted warm-ups each, a job submitted {gap_ms:g} ms after the "
        "previous job's workflow closed; boxrun = perf_counter from just before "
        f"POST /api/jobs ({{box: {BOX}, script: {SCRIPT!r}}}) to the {seen}, and time.time() just before "
        "the POST to the instant the script's first line printed; bare = perf_counter around "
        "client.execute_workflow(BareWorkflow) (1 activity returning its input, in-process worker, "
        f"{'sandboxed' if sandboxed else 'unsandboxed'} workflow, same Temporal dev server); "
        "percentiles by nearest rank (value at rank ceil(p/100*n))"
    )


def render(result: dict) -> str:
    m = result["machine"]
    cols = ["n", "p50", "p90", "p99", "max", "mean"]
    rows = [
        ("boxrun: submit -> first line", result["first_line"]),
        ("boxrun: submit -> completed", result["boxrun"]),
        ("bare 1-activity Temporal workflow", result["bare"]),
    ]
    width = max(len(name) for name, _ in rows) + 2
    lines = [
        f"machine: {m['nproc']} CPU(s), {m['cpu_model']}, Linux {m['kernel']}, Python {m['python']}, "
        f"temporalio {m['temporalio']}",
        f"load avg: {m['loadavg_at_start']} at start, {m['loadavg_at_end']} at end; "
        f"box runs jobs with {result['agent_python']}",
        "",
        f"{'(ms)':<{width}}" + "".join(f"{c:>8}" for c in cols),
    ]
    for name, s in rows:
        lines.append(f"{name:<{width}}" + "".join(f"{s[c]:>8}" for c in cols))
    ratio = result["ratio_p50"]
    lines.append(
        f"p50 / bare p50: first line {ratio['first_line_to_bare']}, completed {ratio['completed_to_bare']}; "
        f"local control activities: {result['local_control']}; warm interpreter: {result['warm_interpreter']}; "
        f"offer at submission: {result['offer_at_submission']}"
    )
    lines += ["", f"boxrun job split by server timestamps (median ms of the {result['boxrun']['n']} jobs):"]
    for name, value in result["boxrun_phases_p50_ms"].items():
        lines.append(f"  {name:<38}{value:>8}")
    lines += ["", f"how measured: {result['how_measured']}"]
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


async def measure(endpoints: dict, args: argparse.Namespace) -> dict:
    jobs = await bench_boxrun(endpoints, args.jobs, args.warmup, args.observe, args.gap_ms / 1000)
    bare = await bench_bare(endpoints["temporal_address"], args.jobs, args.warmup, not args.unsandboxed)
    names = list(dict.fromkeys(name for s in jobs for name in s.phases))
    phase_p50 = {
        name: round(statistics.median(s.phases[name] for s in jobs if name in s.phases) * 1000, 1) for name in names
    }
    phase_p50["(POST round trip)"] = round(statistics.median(s.post for s in jobs) * 1000, 1)
    first, done, base = summarise([s.first_line for s in jobs]), summarise([s.total for s in jobs]), summarise(bare)
    return {
        "first_line": first,
        "boxrun": done,
        "bare": base,
        "ratio_p50": {
            "first_line_to_bare": round(first["p50"] / base["p50"], 2),
            "completed_to_bare": round(done["p50"] / base["p50"], 2),
        },
        "boxrun_phases_p50_ms": phase_p50,
        "observe": args.observe,
        "warmup": args.warmup,
        "bare_sandboxed": not args.unsandboxed,
        "local_control": args.local_control or "default",
        "warm_interpreter": args.warm or "default",
        "offer_at_submission": args.offer_at_submission or "default",
        "samples_ms": {
            "first_line": [round(s.first_line * 1000, 2) for s in jobs],
            "boxrun": [round(s.total * 1000, 2) for s in jobs],
            "bare": [round(v * 1000, 2) for v in bare],
        },
        "how_measured": how_measured(args.observe, args.warmup, not args.unsandboxed, args.gap_ms),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.latency", description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=50, help="counted runs of each kind (default 50)")
    parser.add_argument("--warmup", type=int, default=3, help="uncounted runs of each kind first (default 3)")
    parser.add_argument(
        "--gap-ms",
        type=float,
        default=250.0,
        help="pause between one job's workflow closing and the next submission (default 250)",
    )
    parser.add_argument(
        "--observe",
        choices=["sse", "poll"],
        default="sse",
        help="how the client learns the job completed (default sse)",
    )
    parser.add_argument(
        "--unsandboxed",
        action="store_true",
        help="run BareWorkflow without the workflow sandbox (default: sandboxed, like JobWorkflow)",
    )
    parser.add_argument(
        "--agent-python",
        metavar="PATH",
        help="interpreter the box runs jobs with (BOXRUN_AGENT_PYTHON; default: python3 on PATH)",
    )
    parser.add_argument(
        "--local-control",
        choices=["true", "false"],
        help="BOXRUN_LOCAL_CONTROL_ACTIVITIES for the stack: the short control steps as local activities "
        "or not (default: the setting's default)",
    )
    parser.add_argument(
        "--warm",
        choices=["true", "false"],
        help="BOXRUN_AGENT_WARM_INTERPRETER for the box's agent: a pre-started interpreter per slot takes "
        "the next job, or every job starts cold (default: the setting's default)",
    )
    parser.add_argument(
        "--offer-at-submission",
        choices=["true", "false"],
        help="BOXRUN_OFFER_AT_SUBMISSION for the stack: a job for a free box is leased and offered by its POST, "
        "or by its workflow (default: the setting's default)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    parser.add_argument("--keep", action="store_true", help="keep the stack's data dir (printed) afterwards")
    parser.add_argument(
        "--quick", action="store_true", help=f"CI smoke run: --jobs {QUICK['jobs']} --warmup {QUICK['warmup']}"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.jobs, args.warmup = QUICK["jobs"], QUICK["warmup"]
    if args.jobs < 1 or args.warmup < 0:
        parser.error("--jobs must be >= 1 and --warmup >= 0")

    return run_parts("boxrun-bench-latency-", args, run, render, lambda r: False)


if __name__ == "__main__":
    hard_exit(main())
