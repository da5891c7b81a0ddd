"""Helpers the benchmarks share: the product's client on a stack, the machine's facts and load, CPU
accounting of a stack's process trees, the run-and-report frame of a multi-part benchmark, and a
clean exit."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable
from importlib.metadata import version
from pathlib import Path

from boxrun.client import BoxrunClient
from boxrun.constants import TERMINAL_STATES
from boxrun.dev.procs import beside_python
from boxrun.errors import BoxrunError
from boxrun.schemas import JobPublic

TICK = os.sysconf("SC_CLK_TCK")
TERMINAL = {str(state) for state in TERMINAL_STATES}


class ProductProblem(RuntimeError):
    """The product did something wrong or did not do it in time; the message carries the evidence."""


async def submit(client: BoxrunClient, body: dict) -> str:
    try:
        return (await client.submit(**body)).id
    except BoxrunError as exc:
        raise ProductProblem(f"POST /api/jobs refused: {type(exc).__name__}: {exc}") from exc


async def evidence(client: BoxrunClient, job_id: str) -> str:
    """A job's state, error, box and transitions, for a problem report (best effort)."""
    try:
        job = await client.get(job_id)
        evs = [(str(e.to_state), e.at.isoformat()) for e in (await client.events(job_id)).data]
        return f"job {job_id}: state={job.state} error={job.error!r} box={job.box} events={evs}"
    except BoxrunError as exc:  # evidence is best effort
        return f"job {job_id}: (could not read it back: {exc})"


async def wait_state(
    client: BoxrunClient, job_id: str, states: set[str], timeout: float, interval: float = 0.05
) -> JobPublic:
    """Poll the job until its state is one of `states`; ProductProblem (with evidence) if it ends
    otherwise or the timeout passes."""
    deadline = time.monotonic() + timeout
    while True:
        job = await client.get(job_id)
        if job.state in states:
            return job
        if job.state in TERMINAL:
            raise ProductProblem(f"expected {sorted(states)}, job ended instead; {await evidence(client, job_id)}")
        if time.monotonic() > deadline:
            raise ProductProblem(f"not {sorted(states)} after {timeout:.0f}s; {await evidence(client, job_id)}")
        await asyncio.sleep(interval)


def client_for(endpoints: dict, **kw) -> BoxrunClient:
    """The product's client on a stack's endpoints (what `boxrun dev` writes to endpoints.json)."""
    return BoxrunClient(endpoints["api_url"], endpoints["token"], **{"timeout": 60.0, **kw})


def pid_alive(pid: int) -> bool:
    """True while the process exists and is not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def box_python(agent_python: str | None) -> str:
    """The interpreter the box runs jobs with: the agent resolves BOXRUN_AGENT_PYTHON (default
    python3 on PATH) to the real binary once at start, so a pyenv/asdf shim costs nothing per job."""
    from boxrun.agent.main import resolve_python

    return resolve_python(agent_python or os.environ.get("BOXRUN_AGENT_PYTHON") or "python3")


def machine() -> dict:
    """What the figures were measured on."""
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "nproc": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu_model": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "temporalio": version("temporalio"),
        "loadavg_at_start": loadavg(),
    }


def cpu_by_pid_tree(roots: Iterable[tuple[str, int]]) -> dict[str, float]:
    """CPU seconds (user+sys, including reaped children's cutime/cstime) of each named root pid and
    all its live descendants, summed per name. A descendant that exits between two snapshots is
    counted through its parent's cutime."""
    stat: dict[int, tuple[int, float]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            f = Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        stat[int(d)] = (int(f[1]), sum(int(x) for x in f[11:15]) / TICK)
    kids: dict[int, list[int]] = defaultdict(list)
    for pid, (ppid, _) in stat.items():
        kids[ppid].append(pid)

    def subtree(pid: int) -> float:
        total, todo = 0.0, [pid]
        while todo:
            p = todo.pop()
            total += stat.get(p, (0, 0.0))[1]
            todo += kids.get(p, [])
        return total

    out: dict[str, float] = defaultdict(float)
    for name, pid in roots:
        out[name] += subtree(pid)
    t = os.times()
    out["bench (this process)"] = t.user + t.system
    return dict(out)


def hard_exit(code: int) -> None:
    """Flush and leave: temporalio's core threads can abort a normal interpreter exit."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def run_parts(
    prefix: str,
    args,
    run: Callable[[object, Path], Awaitable[dict]],
    render: Callable[[dict], str],
    failed: Callable[[dict], bool],
) -> int:
    """Run a benchmark's parts in a fresh temporary directory (removed afterwards unless --keep),
    add the machine's facts, print the tables (or --json) and return the exit code: 1 if it
    raised or `failed(result)`."""
    facts = machine()
    root = Path(tempfile.mkdtemp(prefix=prefix))
    root.chmod(0o711)  # the slot users jobs run as pass through to the work dirs below (never list)
    t0 = time.perf_counter()
    code = 1
    try:
        result = asyncio.run(run(args, root))
        facts["loadavg_at_end"] = loadavg()
        result["machine"] = facts
        result["box_python"] = box_python(None)
        result["total_s"] = round(time.perf_counter() - t0, 1)
        print(json.dumps(result, indent=2) if args.json else render(result), flush=True)
        code = 1 if failed(result) else 0
    except BaseException:
        traceback.print_exc()
    finally:
        if args.keep:
            print(f"data kept in {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)
    return code


# --------------------------------------------------------------------------- throughput and backlog (issue 15)


async def job_event_rows(db_url: str, job_ids: list[str]) -> list[dict]:
    """Every transition of these jobs (job_events, Postgres clock), in order: job_id, to_state, at
    (epoch s), box (the dispatching event names it)."""
    import asyncpg

    conn = await asyncpg.connect(db_url)
    try:
        rows = await conn.fetch(
            "SELECT e.job_id::text AS job_id, e.to_state::text AS to_state, extract(epoch FROM e.at)::float8 AS at,"
            " e.detail ->> 'box' AS box FROM job_events e WHERE e.job_id = ANY($1::uuid[]) ORDER BY e.job_id, e.id",
            job_ids,
        )
    finally:
        await conn.close()
    return [dict(r) for r in rows]


def lease_intervals(events: list[dict]) -> dict[str, tuple[str, float, float]]:
    """Each job's hold on its box from job_events: (box, dispatching at, terminal at). The grant
    moves the job to `dispatching` in the lease's transaction and the terminal transition frees
    the lease in its own, so these bound the lease."""
    start: dict[str, tuple[str, float]] = {}
    out: dict[str, tuple[str, float, float]] = {}
    for e in events:
        if e["to_state"] == "dispatching":
            start[e["job_id"]] = (e["box"], e["at"])
        elif e["to_state"] in TERMINAL and e["job_id"] in start:
            box, t0 = start[e["job_id"]]
            out[e["job_id"]] = (box, t0, e["at"])
    return out


def overbooking(intervals: dict[str, tuple[str, float, float]], capacity: int = 1) -> dict:
    """The most jobs that ever held one box at once (a release at the instant of a grant counts
    first), and the boxes where that exceeded `capacity`."""
    per_box: dict[str, list[tuple[float, int]]] = defaultdict(list)
    for box, t0, t1 in intervals.values():
        per_box[box] += [(t0, 1), (t1, -1)]
    most, over = 0, []
    for box, edges in per_box.items():
        cur = peak = 0
        for _, d in sorted(edges):
            cur += d
            peak = max(peak, cur)
        most = max(most, peak)
        if peak > capacity:
            over.append(box)
    return {"max_at_once_on_one_box": most, "overbooked_boxes": sorted(over), "boxes": len(per_box)}


async def history_event_counts(temporal, workflow_ids: list[str]) -> dict:
    """Temporal history events of these workflows: per workflow (n, min, median, mean, max), the
    mean of each event type, and the same split by whether the job waited (a `wake` signal)."""
    import statistics

    counts: list[int] = []
    waited: list[int] = []
    types: dict[str, int] = defaultdict(int)
    for wf_id in workflow_ids:
        events = (await temporal.get_workflow_handle(wf_id).fetch_history()).events
        counts.append(len(events))
        kinds = [e.WhichOneof("attributes").removesuffix("_event_attributes") for e in events]
        for k in kinds:
            types[k] += 1
        if "workflow_execution_signaled" in kinds:
            waited.append(len(events))

    def summary(v: list[int]) -> dict:
        if not v:
            return {"n": 0}
        return {
            "n": len(v),
            "min": min(v),
            "median": statistics.median(v),
            "mean": round(statistics.fmean(v), 1),
            "max": max(v),
        }

    return {
        "all": summary(counts),
        "woken_by_signal": summary(waited),
        "never_signalled": summary([c for c in counts if c not in waited] if waited else counts),
        "mean_by_type": {k: round(v / len(counts), 2) for k, v in sorted(types.items(), key=lambda kv: -kv[1])},
    }


def memory_mib(pid: int) -> float:
    """Memory of pid and its live descendants, MiB: the sum of their proportional set sizes (PSS,
    /proc/PID/smaps_rollup: a page shared by k processes counts 1/k in each, so Postgres' shared
    buffers count once, not once per backend); VmRSS where PSS cannot be read."""
    kids: dict[int, list[int]] = defaultdict(list)
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                kids[int(Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()[1])].append(int(d))
            except (OSError, IndexError):
                continue
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        for path, key in ((f"/proc/{p}/smaps_rollup", "Pss:"), (f"/proc/{p}/status", "VmRSS:")):
            try:
                kb = [int(line.split()[1]) for line in Path(path).read_text().splitlines() if line.startswith(key)]
            except OSError:
                continue
            if kb:
                total += kb[0]
                break
        todo += kids.get(p, [])
    return round(total / 1024, 1)


class Profiler:
    """py-spy sampling a few processes (by name) until stop(); the summary names where their time
    went: the functions most often on top of the stack (self) and anywhere in it (inclusive, less
    the frames under more than half the samples: the entry point and the event loop)."""

    def __init__(self, pids: dict[str, int], out_dir: Path, rate: int = 50) -> None:
        import subprocess

        self.out = {name: out_dir / f"pyspy-{name}.txt" for name in pids}
        spy = beside_python("py-spy") or "py-spy"
        self.procs = [
            subprocess.Popen(
                [
                    spy,
                    "record",
                    "--pid",
                    str(pid),
                    "--rate",
                    str(rate),
                    "--format",
                    "raw",
                    "--nonblocking",
                    "--output",
                    str(self.out[name]),
                    "--duration",
                    "3600",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for name, pid in pids.items()
        ]

    def stop(self, top: int = 12) -> dict:
        import re
        import signal

        for p in self.procs:
            p.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
        for p in self.procs:
            p.wait(60)
        frame = re.compile(r"^(.*) \((.*?):\d+\)$")
        out: dict[str, dict] = {}
        for name, path in self.out.items():
            self_t: dict[str, int] = defaultdict(int)
            incl: dict[str, int] = defaultdict(int)
            total = 0
            text = path.read_text() if path.exists() else ""
            for line in text.splitlines():
                stack, _, n = line.rpartition(" ")
                if not n.isdigit():
                    continue
                count = int(n)
                total += count
                frames = []
                for f in stack.split(";"):
                    m = frame.match(f)
                    frames.append(f"{m.group(1)} ({Path(m.group(2)).name})" if m else f)
                if frames:
                    self_t[frames[-1]] += count
                for f in set(frames):
                    incl[f] += count

            def share(d: dict[str, int], total: int = total) -> list[tuple[str, float]]:
                return [(k, round(100 * v / total, 1)) for k, v in sorted(d.items(), key=lambda kv: -kv[1])[:top]]

            # inclusive: leave out the frames under nearly every sample (the entry point, the event loop)
            below = {k: v for k, v in incl.items() if v < 0.5 * total}
            out[name] = {"samples": total, "self_pct": share(self_t), "inclusive_pct": share(below)}
        return out


def header(r: dict) -> list[str]:
    """The first lines of a report: the machine, the interpreter the box ran jobs with, the load."""
    m = r["machine"]
    return [
        f"machine: {m['nproc']} CPU(s), {m['cpu_model']}, Linux {m['kernel']}, Python {m['python']}, "
        f"temporalio {m['temporalio']}; box python {r['box_python']}",
        f"load avg: {m['loadavg_at_start']} at start, {m['loadavg_at_end']} at end; settings {r.get('settings')}",
    ]


def bench_parser(name: str, doc: str | None, quick: str = "tiny run for CI") -> argparse.ArgumentParser:
    """`python -m bench.NAME`'s parser, described by the first paragraph of its docstring, with the
    options every bench takes (--json, --keep, --quick); the bench adds its own."""
    parser = argparse.ArgumentParser(prog=f"python -m bench.{name}", description=(doc or "").split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the tables")
    parser.add_argument("--keep", action="store_true", help="keep the stack's data dir (printed) afterwards")
    parser.add_argument("--quick", action="store_true", help=quick)
    return parser


def keyed_report(title: str, r: dict, keys: Iterable[str], *extra: str) -> str:
    """A bench's plain report: the title, `key: JSON` for each of `keys` present, any extra lines,
    then its errors and the machine's facts."""
    out = [title, *(f"{key}: {json.dumps(r[key])}" for key in keys if key in r), *extra]
    out.append(f"errors: {r['errors'] or 'none'}")
    out.append(f"machine: {json.dumps(r['machine'])}")
    return "\n".join(out)
