"""Every benchmark in its --quick mode (tiny sizes, each on its own private stack): the benches keep
working, and the behaviour each one measures still holds (a bench exits 1 on any problem)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    "bench",
    [
        "bench.latency",
        "bench.lifecycle",
        "bench.logs",
        "bench.boundary",
        "bench.pipelines",
        "bench.throughput",
        "bench.backlog",
        "bench.followers",
        "bench.scale_sim",
        "bench.placement",
        "bench.sandbox_cost",
        "bench.routing_cost",
    ],
)
def test_bench_quick_mode_runs_clean(bench: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", bench, "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, (
        f"{bench} --quick exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    )
    assert "machine:" in done.stdout  # the report was printed
