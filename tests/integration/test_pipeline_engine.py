"""The pipeline engine on a whole real stack (Temporal dev server, PostgreSQL, S3 API, API,
control worker, agents running real processes): pipelines are created by calling
create_pipeline directly (the REST routes come later) and watched in Postgres and Temporal.

One stack is shared by the module: two boxes of capacity 2 in group `local`."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowFailureError
from temporalio.exceptions import ApplicationError

from boxrun.constants import DEFAULT_ORG
from boxrun.db import connect
from boxrun.pipelines.model import ExpandedPipeline, ExpandedStep, RetryOn, RetrySpec, StepInput, When
from boxrun.schemas import JobCreate
from boxrun.services.identity import Role, User
from boxrun.services.pipelines import attempt_job_id, cancel_pipeline, create_pipeline
from boxrun.settings import Settings
from boxrun.storage import Storage
from boxrun.temporal import connect as temporal_connect
from tests.conftest import wait_for
from tests.integration.faultstack import FaultStack, fault_stack

pytestmark = pytest.mark.e2e

ADMIN = User(name="admin", org_id=DEFAULT_ORG, role=Role.ADMIN, platform_admin=True)

QUICK = "print('step ran', flush=True)\n"
ARTIFACT = """
import os, pathlib
out = pathlib.Path(os.environ["BOXRUN_ARTIFACTS_DIR"])
(out / "fw.bin").write_bytes(b"firmware " * 1000)
print("built", flush=True)
"""
# Exits 75 on its first two runs, then 0 ($COUNTER counts the runs).
FLAKY = """
import os, pathlib
p = pathlib.Path(os.environ["COUNTER"])
n = int(p.read_text()) if p.exists() else 0
p.write_text(str(n + 1))
print("run", n, flush=True)
raise SystemExit(75 if n < 2 else 0)
"""
# Writes $STARTED, then runs until killed.
LONG = """
import os, pathlib, time
pathlib.Path(os.environ["STARTED"]).write_text("up")
print("long up", flush=True)
time.sleep(300)
"""


@pytest.fixture(scope="module")
async def fs(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[FaultStack]:
    async with fault_stack(tmp_path_factory.mktemp("pipelines") / "dev", boxes=2, capacity=2) as stack:
        yield stack


class Env:
    def __init__(self, fs: FaultStack, conn: asyncpg.Connection, temporal: Client) -> None:
        env = fs.child("api").env
        fields = {k.removeprefix("BOXRUN_").lower(): v for k, v in env.items() if k.startswith("BOXRUN_")}
        self.settings = Settings(**{k: v for k, v in fields.items() if k in Settings.model_fields})
        self.storage = Storage(self.settings)
        self.conn = conn
        self.temporal = temporal

    async def create(self, p: ExpandedPipeline, **kw: Any) -> str:
        return await create_pipeline(self.conn, self.temporal, self.settings, ADMIN, p, storage=self.storage, **kw)

    async def wait_end(self, pid: str, timeout: float = 90) -> asyncpg.Record:
        async def ended() -> asyncpg.Record | None:
            row = await self.conn.fetchrow("SELECT * FROM pipelines WHERE id = $1", uuid.UUID(pid))
            return row if row["state"] not in ("queued", "running") else None

        return await wait_for(ended, timeout=timeout, interval=0.1, what=f"pipeline {pid} to end")

    async def steps(self, pid: str) -> dict[str, asyncpg.Record]:
        rows = await self.conn.fetch("SELECT * FROM pipeline_steps WHERE pipeline_id = $1", uuid.UUID(pid))
        return {r["name"]: r for r in rows}

    async def jobs(self, pid: str, step: str) -> list[asyncpg.Record]:
        return await self.conn.fetch(
            "SELECT * FROM jobs WHERE pipeline_id = $1 AND step = $2 ORDER BY attempt", uuid.UUID(pid), step
        )

    async def events(self, pid: str) -> list[tuple[str | None, str]]:
        rows = await self.conn.fetch(
            "SELECT step, state FROM pipeline_events WHERE pipeline_id = $1 ORDER BY id", uuid.UUID(pid)
        )
        return [(r["step"], r["state"]) for r in rows]

    async def dump(self, pid: str) -> list[dict[str, Any]]:
        """Every job of the pipeline, for an assertion's message."""
        rows = await self.conn.fetch(
            "SELECT step, attempt, state, exit_code, error, error_kind, started_at, finished_at FROM jobs "
            "WHERE pipeline_id = $1 ORDER BY created_at",
            uuid.UUID(pid),
        )
        return [dict(r) for r in rows]

    async def status(self, workflow_id: str, timeout: float = 30) -> WorkflowExecutionStatus:
        """The workflow's status once it closed (a pipeline's or job's row turns terminal in its
        last activity, just before its workflow ends)."""

        async def closed() -> WorkflowExecutionStatus | None:
            status = (await self.temporal.get_workflow_handle(workflow_id).describe()).status
            return None if status in (None, WorkflowExecutionStatus.RUNNING) else status

        return await wait_for(closed, timeout=timeout, interval=0.1, what=f"workflow {workflow_id} to close")


@pytest.fixture
async def env(fs: FaultStack) -> AsyncIterator[Env]:
    conn = await connect(fs.child("api").env["BOXRUN_DATABASE_URL"])
    temporal = await temporal_connect(fs.endpoints["temporal_address"])
    yield Env(fs, conn, temporal)
    await conn.close()


def step(name: str, script: str = QUICK, *, needs: list[str] | None = None, **kw: Any) -> ExpandedStep:
    job = JobCreate(box_group="local", script=script, env=kw.pop("env", {}), timeout_s=kw.pop("timeout_s", 60))
    return ExpandedStep(name=name, needs=needs or [], job=job, **kw)


async def test_a_diamond_runs_in_dependency_order_and_passes_artifacts_down(env: Env) -> None:
    p = ExpandedPipeline(
        name="diamond",
        steps=[
            step("build", ARTIFACT),
            step("left", needs=["build"], inputs=[StepInput(from_step="build", path="fw.bin", dest="fw.bin")]),
            step("right", needs=["build"], inputs=[StepInput(from_step="build", path="fw.bin", dest="in/fw.bin")]),
            step("join", needs=["left", "right"]),
        ],
    )
    pid = await env.create(p)
    row = await env.wait_end(pid)
    assert row["state"] == "completed", row
    steps = await env.steps(pid)
    assert {n: s["state"] for n, s in steps.items()} == dict.fromkeys(["build", "left", "right", "join"], "completed")
    assert all(s["attempts"] == 1 for s in steps.values())
    # dependency order: join started only after both branches had finished
    assert steps["join"]["started_at"] >= max(steps["left"]["finished_at"], steps["right"]["finished_at"])
    assert min(steps["left"]["started_at"], steps["right"]["started_at"]) >= steps["build"]["finished_at"]
    # each attempt is an ordinary job tagged with its pipeline, step and attempt, with the deterministic id
    build = (await env.jobs(pid, "build"))[0]
    assert (build["state"], build["attempt"], str(build["id"])) == ("completed", 1, attempt_job_id(pid, "build", 1))
    artifact = await env.conn.fetchrow("SELECT * FROM artifacts WHERE job_id = $1 AND path = 'fw.bin'", build["id"])
    assert artifact is not None and artifact["size"] == 9000
    # the downstream jobs' specs name the upstream job's artifact (the box checks its sha256)
    for name, dest in (("left", "fw.bin"), ("right", "in/fw.bin")):
        spec = (await env.jobs(pid, name))[0]["spec"]
        want = {"job_id": str(build["id"]), "path": "fw.bin", "dest": dest, "sha256": artifact["sha256"], "size": 9000}
        assert spec["inputs"] == [want]
    assert ("join", "completed") in await env.events(pid)
    assert (await env.events(pid))[-1] == (None, "completed")
    assert await env.status(pid) == WorkflowExecutionStatus.COMPLETED
    assert await env.status(f"{pid}/join") == WorkflowExecutionStatus.COMPLETED

    # the PipelineId search attribute finds every step job (visibility catches up shortly)
    async def listed() -> set[str] | None:
        found = {
            w.id async for w in env.temporal.list_workflows(f'PipelineId = "{pid}" AND WorkflowType = "JobWorkflow"')
        }
        return found if len(found) == 4 else None

    found = await wait_for(listed, timeout=30, what="the step jobs listed by PipelineId")
    assert found == {attempt_job_id(pid, n, 1) for n in steps}


async def test_a_flaky_step_is_retried_by_temporal_with_backoff_each_attempt_a_job(env: Env, tmp_path: Path) -> None:
    counter = tmp_path / "counter"
    retry = RetrySpec(max_attempts=3, initial_interval_s=1, backoff_coefficient=2, exit_codes=[75])
    p = ExpandedPipeline(
        steps=[step("flash", FLAKY, env={"COUNTER": str(counter)}, retry=retry), step("after", needs=["flash"])]
    )
    pid = await env.create(p)
    row = await env.wait_end(pid)
    assert row["state"] == "completed", row
    jobs = await env.jobs(pid, "flash")
    assert [(j["attempt"], j["state"], j["exit_code"]) for j in jobs] == [
        (1, "failed", 75),
        (2, "failed", 75),
        (3, "completed", 0),
    ]
    assert [j["error_kind"] for j in jobs] == ["exit_code", "exit_code", None]
    assert [str(j["id"]) for j in jobs] == [attempt_job_id(pid, "flash", a) for a in (1, 2, 3)]
    # Temporal's backoff between attempts: 1 s, then 2 s
    assert (jobs[1]["created_at"] - jobs[0]["finished_at"]).total_seconds() >= 1.0
    assert (jobs[2]["created_at"] - jobs[1]["finished_at"]).total_seconds() >= 2.0
    steps = await env.steps(pid)
    assert (steps["flash"]["attempts"], steps["flash"]["job_id"]) == (3, jobs[2]["id"])
    # the failed attempts' job workflows tell the truth
    for j in jobs[:2]:
        assert await env.status(str(j["id"])) == WorkflowExecutionStatus.FAILED
    assert await env.status(str(jobs[2]["id"])) == WorkflowExecutionStatus.COMPLETED
    assert counter.read_text() == "3"


async def test_no_retry_when_the_exit_code_is_not_listed_and_when_rules_apply(env: Env) -> None:
    retry = RetrySpec(max_attempts=5, initial_interval_s=0.2, on=[RetryOn.FAILED], exit_codes=[75])
    p = ExpandedPipeline(
        steps=[
            step("bad", "raise SystemExit(3)\n", retry=retry),
            step("slow", "import time\ntime.sleep(60)\n", timeout_s=1, allow_failure=True),
            step("after", needs=["bad"]),
            step("tolerant", needs=["slow"]),  # slow failed with allow_failure: runs
            step("notify", needs=["after"], when=When.ON_FAILURE),  # a failure upstream (after skipped)
            step("quiet", needs=["tolerant"], when=When.ON_FAILURE),  # nothing failed up there: skipped
            step("report", needs=["after", "tolerant"], when=When.ALWAYS),
        ]
    )
    pid = await env.create(p)
    row = await env.wait_end(pid)
    assert row["state"] == "failed" and "bad" in row["error"], row
    states = {n: s["state"] for n, s in (await env.steps(pid)).items()}
    assert states == {
        "bad": "failed",
        "slow": "timed_out",
        "after": "skipped",
        "tolerant": "completed",
        "notify": "completed",
        "quiet": "skipped",
        "report": "completed",
    }
    bad = await env.jobs(pid, "bad")
    assert [(j["attempt"], j["exit_code"], j["error_kind"]) for j in bad] == [(1, 3, "exit_code")]
    slow = await env.jobs(pid, "slow")
    assert [(j["state"], j["error_kind"]) for j in slow] == [("timed_out", "timed_out")]
    assert await env.jobs(pid, "after") == []  # a skipped step runs no job
    # Temporal statuses: the failed and timed-out jobs' workflows and the pipeline's failed
    for job_id, kind in ((bad[0]["id"], "JobFailed"), (slow[0]["id"], "JobTimedOut")):
        handle = env.temporal.get_workflow_handle(str(job_id))
        assert (await handle.describe()).status == WorkflowExecutionStatus.FAILED
        with pytest.raises(WorkflowFailureError) as err:
            await handle.result()
        assert isinstance(err.value.cause, ApplicationError) and err.value.cause.type == kind
        assert err.value.cause.non_retryable
    assert await env.status(pid) == WorkflowExecutionStatus.FAILED
    assert await env.status(f"{pid}/bad") == WorkflowExecutionStatus.FAILED


async def test_matrix_fan_out_and_fan_in(env: Env) -> None:
    legs = [f"test[voltage={v}]" for v in ("3.0", "3.3", "5.0")]
    p = ExpandedPipeline(
        steps=[
            step("build"),
            *(step(name, needs=["build"], env={"VOLTAGE": name[-4:-1]}) for name in legs),
            step("report", needs=legs),
        ]
    )
    pid = await env.create(p)
    assert (await env.wait_end(pid))["state"] == "completed"
    steps = await env.steps(pid)
    assert all(steps[n]["state"] == "completed" for n in [*legs, "report"])
    assert steps["report"]["started_at"] >= max(steps[n]["finished_at"] for n in legs)
    assert await env.status(f"{pid}/{legs[0]}") == WorkflowExecutionStatus.COMPLETED


async def test_a_missing_input_fails_the_step_before_it_runs_and_never_retries(env: Env) -> None:
    p = ExpandedPipeline(
        steps=[
            step("build"),
            step(
                "flash",
                needs=["build"],
                inputs=[StepInput(from_step="build", path="fw.bin", dest="fw.bin")],
                retry=RetrySpec(max_attempts=3, initial_interval_s=0.2),
            ),
        ]
    )
    pid = await env.create(p)
    assert (await env.wait_end(pid))["state"] == "failed"
    jobs = await env.jobs(pid, "flash")
    assert len(jobs) == 1
    assert (jobs[0]["state"], jobs[0]["error_kind"], jobs[0]["started_at"]) == ("failed", "input_missing", None)
    assert "'fw.bin' from step 'build' is missing" in jobs[0]["error"]


async def test_cancel_mid_pipeline_cancels_running_and_pending_steps_and_runs_always_cleanup(
    env: Env, tmp_path: Path
) -> None:
    started = tmp_path / "started"
    p = ExpandedPipeline(
        steps=[
            step("long", LONG, env={"STARTED": str(started)}),
            step("next", needs=["long"]),
            step("cleanup", needs=["next"], when=When.ALWAYS),
        ]
    )
    pid = await env.create(p)
    await wait_for(started.exists, timeout=60, what="the long step to run")
    t0 = time.monotonic()
    await cancel_pipeline(env.conn, env.temporal, ADMIN, pid)
    row = await env.wait_end(pid, timeout=60)
    assert row["state"] == "cancelled", row
    assert time.monotonic() - t0 < 30  # SIGTERM, not the 300 s sleep
    states = {n: s["state"] for n, s in (await env.steps(pid)).items()}
    assert states == {"long": "cancelled", "next": "cancelled", "cleanup": "completed"}
    long_job = (await env.jobs(pid, "long"))[0]
    assert (long_job["state"], long_job["error_kind"]) == ("cancelled", "cancelled")
    assert await env.jobs(pid, "next") == []
    assert (await env.jobs(pid, "cleanup"))[0]["state"] == "completed"
    # Temporal: the job's and the pipeline's workflows end cancelled
    assert await env.status(str(long_job["id"])) == WorkflowExecutionStatus.CANCELED
    assert await env.status(f"{pid}/long") == WorkflowExecutionStatus.CANCELED
    assert await env.status(pid) == WorkflowExecutionStatus.CANCELED
    events = await env.events(pid)
    assert events.index(("cleanup", "completed")) < events.index((None, "cancelled"))


async def test_the_pipeline_timeout_stops_it_and_ends_it_timed_out(env: Env, tmp_path: Path) -> None:
    started = tmp_path / "started"
    p = ExpandedPipeline(
        timeout_s=3,
        steps=[
            step("long", LONG, env={"STARTED": str(started)}),
            step("cleanup", needs=["long"], when=When.ALWAYS),
        ],
    )
    t0 = time.monotonic()
    pid = await env.create(p)
    row = await env.wait_end(pid, timeout=60)
    assert row["state"] == "timed_out", (row["error"], await env.dump(pid))
    assert started.exists()
    assert 3 <= time.monotonic() - t0 < 40
    states = {n: s["state"] for n, s in (await env.steps(pid)).items()}
    assert states == {"long": "cancelled", "cleanup": "completed"}
    handle = env.temporal.get_workflow_handle(pid)
    with pytest.raises(WorkflowFailureError) as err:
        await handle.result()
    assert isinstance(err.value.cause, ApplicationError) and err.value.cause.type == "PipelineTimedOut"


async def test_a_rerun_reuses_completed_steps_jobs_and_their_artifacts(env: Env, tmp_path: Path) -> None:
    counter = tmp_path / "counter"
    flaky = {"COUNTER": str(counter)}
    p = ExpandedPipeline(
        steps=[
            step("build", ARTIFACT),
            step(
                "flash",
                FLAKY.replace("n < 2", "n < 1"),  # fails on its first run only
                needs=["build"],
                env=flaky,
                inputs=[StepInput(from_step="build", path="fw.bin", dest="fw.bin")],
            ),
        ]
    )
    first = await env.create(p)
    assert (await env.wait_end(first))["state"] == "failed"
    build = (await env.steps(first))["build"]
    again = await env.create(p, rerun_of=first, reuse={"build": str(build["job_id"])})
    row = await env.wait_end(again)
    assert (row["state"], row["rerun_of"]) == ("completed", uuid.UUID(first)), (row["error"], await env.dump(again))
    steps = await env.steps(again)
    assert (steps["build"]["state"], steps["build"]["job_id"], steps["build"]["reused_from"]) == (
        "completed",
        build["job_id"],
        uuid.UUID(first),
    )
    assert await env.jobs(again, "build") == []  # not run again
    spec = (await env.jobs(again, "flash"))[0]["spec"]
    assert [i["job_id"] for i in spec["inputs"]] == [str(build["job_id"])]


# Leaves one file per run in $RUNS (named after the step and the process), then waits for $GATE if given.
COUNTED = """
import os, pathlib, time
pathlib.Path(os.environ["RUNS"], f"{os.environ['STEP']}.{os.getpid()}").touch()
gate = os.environ.get("GATE")
while gate and not os.path.exists(gate):
    time.sleep(0.02)
print("done", flush=True)
"""


def counted_diamond(runs: Path, gate: Path) -> ExpandedPipeline:
    def counted(name: str, needs: list[str], **env: str) -> ExpandedStep:
        return step(name, COUNTED, needs=needs, env={"RUNS": str(runs), "STEP": name, **env})

    return ExpandedPipeline(
        steps=[
            counted("a", [], GATE=str(gate)),
            counted("b", ["a"]),
            counted("c", ["a"]),
            counted("d", ["b", "c"]),
        ]
    )


async def assert_each_step_ran_once(env: Env, pid: str, runs: Path) -> None:
    assert sorted(p.name.split(".")[0] for p in runs.iterdir()) == ["a", "b", "c", "d"]
    for name in "abcd":
        jobs = await env.jobs(pid, name)
        assert [(j["attempt"], j["state"]) for j in jobs] == [(1, "completed")], name


async def test_control_worker_killed_mid_pipeline_completes_and_no_step_job_runs_twice(
    fs: FaultStack, env: Env, tmp_path: Path
) -> None:
    runs, gate = tmp_path / "runs", tmp_path / "gate"
    runs.mkdir()
    runs.chmod(0o1777)
    pid = await env.create(counted_diamond(runs, gate))
    await wait_for(lambda: any(runs.iterdir()), timeout=60, what="step a to run")
    fs.kill("worker")
    gate.touch()  # a finishes on its box while no control worker runs
    fs.start("worker")
    row = await env.wait_end(pid, timeout=120)
    assert row["state"] == "completed", row
    await assert_each_step_ran_once(env, pid, runs)


async def test_temporal_restart_mid_pipeline_completes(fs: FaultStack, env: Env, tmp_path: Path) -> None:
    runs, gate = tmp_path / "runs", tmp_path / "gate"
    runs.mkdir()
    runs.chmod(0o1777)
    pid = await env.create(counted_diamond(runs, gate))
    await wait_for(lambda: any(runs.iterdir()), timeout=60, what="step a to run")
    fs.stop("temporal")
    gate.touch()
    fs.start("temporal")
    row = await env.wait_end(pid, timeout=120)
    assert row["state"] == "completed", row
    await assert_each_step_ran_once(env, pid, runs)


async def _backdate(env: Env, pid: str) -> None:
    """Make the pipeline look older than the reaper's 30 s grace (its sweep runs every 3 s here)."""
    await env.conn.execute(
        "UPDATE pipelines SET created_at = created_at - interval '1 minute' WHERE id = $1", uuid.UUID(pid)
    )


async def test_the_reaper_starts_the_workflow_of_a_pipeline_whose_start_a_crash_missed(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    import boxrun.services.pipelines as pipelines

    async def crashed(*_: Any) -> None:  # fault injection: the API died between commit and start
        return None

    monkeypatch.setattr(pipelines, "start_pipeline_workflow", crashed)
    pid = await env.create(ExpandedPipeline(steps=[step("a"), step("b", needs=["a"])]))
    monkeypatch.undo()
    await _backdate(env, pid)
    row = await env.wait_end(pid)
    assert row["state"] == "completed", await env.dump(pid)
    assert [len(await env.jobs(pid, s)) for s in ("a", "b")] == [1, 1]


async def test_a_pipeline_whose_workflow_was_terminated_is_ended_by_cancel_and_by_the_reaper(
    env: Env, tmp_path: Path
) -> None:
    started = tmp_path / "started"
    # cancel after an outside terminate: the rows end cancelled (Temporal accepts a cancel of a
    # closed workflow and does nothing, so the service looks first)
    pid = await env.create(ExpandedPipeline(steps=[step("long", LONG, env={"STARTED": str(started)})]))
    await wait_for(started.exists, timeout=60, what="the step to start")
    await env.temporal.get_workflow_handle(pid).terminate(reason="pressed in the Web UI")
    await cancel_pipeline(env.conn, env.temporal, ADMIN, pid)
    row = await env.wait_end(pid, timeout=10)
    assert row["state"] == "cancelled" and (await env.steps(pid))["long"]["state"] == "cancelled"

    # nobody cancels: the reaper ends it failed, naming why
    started.unlink()
    pid = await env.create(ExpandedPipeline(steps=[step("long", LONG, env={"STARTED": str(started)})]))
    await wait_for(started.exists, timeout=60, what="the step to start")
    await env.temporal.get_workflow_handle(pid).terminate(reason="pressed in the Web UI")
    await _backdate(env, pid)
    row = await env.wait_end(pid, timeout=30)
    assert (row["state"], row["error"]) == ("failed", "workflow terminated before the pipeline ended")
    assert (await env.steps(pid))["long"]["state"] == "cancelled"
    # the step's job (its workflow terminated with its parent) is ended by the job reaper
    job = (await env.jobs(pid, "long"))[0]
    await wait_for(lambda: _job_ended(env, job["id"]), timeout=30, what="the terminated step's job to be reaped")


async def _job_ended(env: Env, job_id: uuid.UUID) -> bool:
    state = await env.conn.fetchval("SELECT state FROM jobs WHERE id = $1", job_id)
    return state in ("failed", "cancelled")
