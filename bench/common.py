"""Helpers the benchmarks share: the product's client on a stack, the machine's facts and load, CPU
accounting of a stack's process trees, the run-and-report frame of a multi-part benchmark, and a
clean exit."""

from __future__ import annotations

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
