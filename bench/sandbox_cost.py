"""What a new workflow instance costs the control worker (issue 15): Temporal's sandbox re-runs a
workflow's module, and every module of its package it imports, for each workflow instance it
creates (a job's first workflow task, or any task after the worker's cache evicted it).

    python -m bench.sandbox_cost [--instances 200] [--json] [--quick]

For each of boxrun's workflows and the bare one-activity workflow (bench.bare_workflow, the
reference), in this process: `SandboxedWorkflowRunner.create_instance` (what the SDK's worker
calls) timed --instances times with perf_counter, after one uncounted instance. Twice: with the
modules' bytecode (.pyc) written as the control worker does at start
(`boxrun.worker.bytecode.compile_workflow_modules`), and without it (the sandbox compiles the
source each time; what a worker under PYTHONDONTWRITEBYTECODE=1 paid before). No stack, no
server: the figure is CPU in the worker process, on the job's first workflow task.

--quick (CI): 10 instances each. Exits 1 if an instance cannot be created.
Percentiles by nearest rank.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import importlib.util
import json
import sys
import time
from pathlib import Path
from typing import Any
from unittest import mock

import temporalio.converter
import temporalio.workflow
from temporalio.api.common.v1 import Payloads
from temporalio.worker._workflow_instance import WorkflowInstanceDetails
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner

from bench.common import bench_parser, hard_exit, loadavg, machine

WORKFLOWS = [
    "bench.bare_workflow.BareWorkflow",
    "boxrun.workflows.job.JobWorkflow",
    "boxrun.workflows.step.StepWorkflow",
    "boxrun.workflows.pipeline.PipelineWorkflow",
]


def _details(defn: Any) -> WorkflowInstanceDetails:
    info = mock.MagicMock()  # only read when workflow code runs; creating the instance runs none
    info.workflow_type = defn.name
    return WorkflowInstanceDetails(
        payload_converter_factory=temporalio.converter.DefaultPayloadConverter,
        failure_converter_class=temporalio.converter.DefaultFailureConverter,
        interceptor_classes=[],
        defn=defn,
        info=info,
        randomness_seed=1,
        extern_functions={},
        disable_eager_activity_execution=False,
        worker_level_failure_exception_types=[],
        patch_activation_callback=None,
        last_completion_result=Payloads(),
        last_failure=None,
        default_workflow_logic_flags=frozenset(),
    )


def _pct(sorted_ms: list[float], p: float) -> float:
    return round(sorted_ms[min(len(sorted_ms) - 1, max(0, round(p / 100 * len(sorted_ms)) - 1))], 2)


def _module_files(names: list[str]) -> list[Path]:
    files: set[Path] = set()
    for name in names:
        parts = name.rsplit(".", 1)[0].split(".")
        for i in range(1, len(parts) + 1):
            spec = importlib.util.find_spec(".".join(parts[:i]))
            if spec is not None and spec.origin:
                files.add(Path(spec.origin))
    return sorted(files)


async def measure(instances: int, with_bytecode: bool) -> dict[str, dict[str, float]]:
    from boxrun.worker.bytecode import compile_workflow_modules

    sys.dont_write_bytecode = True  # else the imports below write the bytecode this run removed
    for source in _module_files(WORKFLOWS):  # start from no bytecode for these modules
        with contextlib.suppress(OSError):  # a read-only install: measured as it is
            Path(importlib.util.cache_from_source(str(source))).unlink(missing_ok=True)
    classes = []
    for dotted in WORKFLOWS:
        module, name = dotted.rsplit(".", 1)
        classes.append(getattr(importlib.import_module(module), name))
    if with_bytecode:
        compile_workflow_modules(classes)
    out: dict[str, dict[str, float]] = {}
    for dotted, cls in zip(WORKFLOWS, classes, strict=True):
        defn = temporalio.workflow._Definition.must_from_class(cls)
        runner = SandboxedWorkflowRunner()
        runner.prepare_workflow(defn)
        det = _details(defn)
        runner.create_instance(det)
        ms = []
        for _ in range(instances):
            t = time.perf_counter()
            runner.create_instance(det)
            ms.append((time.perf_counter() - t) * 1000)
        ms.sort()
        out[dotted.rsplit(".", 1)[1]] = {"p50_ms": _pct(ms, 50), "p90_ms": _pct(ms, 90), "max_ms": round(ms[-1], 2)}
    return out


def render(r: dict) -> str:
    lines = [
        "Sandbox cost: SandboxedWorkflowRunner.create_instance per workflow instance (ms, p50 / p90 / max)",
        f"instances per workflow: {r['instances']}",
        f"{'workflow':<20} {'with bytecode':>26} {'without bytecode':>26}",
    ]
    for name, got in r["with_bytecode"].items():
        w, wo = got, r["without_bytecode"][name]
        lines.append(
            f"{name:<20} {w['p50_ms']:>8} / {w['p90_ms']:>6} / {w['max_ms']:>6} "
            f"{wo['p50_ms']:>9} / {wo['p90_ms']:>6} / {wo['max_ms']:>6}"
        )
    lines.append(f"machine: {json.dumps(r['machine'])}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser("sandbox_cost", __doc__, quick="CI smoke run: 10 instances each")
    parser.add_argument("--instances", type=int, default=200)
    args = parser.parse_args(argv)
    instances = 10 if args.quick else args.instances
    facts = machine()
    try:
        result: dict[str, Any] = {"instances": instances}
        # without first: the bytecode written by the second pass would otherwise be found
        result["without_bytecode"] = asyncio.run(measure(instances, with_bytecode=False))
        result["with_bytecode"] = asyncio.run(measure(instances, with_bytecode=True))
    except Exception as exc:  # a bench reports, never hides, a failure
        print(f"sandbox_cost failed: {exc!r}", file=sys.stderr)
        return 1
    facts["loadavg_at_end"] = loadavg()
    result["machine"] = facts
    print(json.dumps(result, indent=2) if args.json else render(result), flush=True)
    return 0


if __name__ == "__main__":
    hard_exit(main())
