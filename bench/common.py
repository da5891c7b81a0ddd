"""Helpers the benchmarks share: CPU accounting of a stack's process trees and a clean exit."""

from __future__ import annotations

import os
import sys
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")


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
