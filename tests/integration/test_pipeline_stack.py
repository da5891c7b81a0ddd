"""Pipelines through the whole stack (Temporal dev server, PostgreSQL, S3, API, control worker and
two agents running real processes): the box downloads each step's inputs, the upstream step's
artifacts, and checks their SHA-256 before the script starts; Temporal's statuses tell the truth;
retries are runs of the step's workflow. Pipelines are created with the service
(`create_pipeline`), as the REST routes are built on another branch.

One stack is shared by the module: two boxes of capacity 2 in group `local`."""

from __future__ import annotations

import hashlib
import io
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from temporalio.client import WorkflowExecution, WorkflowExecutionStatus, WorkflowFailureError
from temporalio.exceptions import ApplicationError

from boxrun.client import BoxrunClient
from boxrun.constants import artifact_key
from boxrun.db import connect
from boxrun.pipelines.model import ExpandedPipeline, RetrySpec, StepInput
from boxrun.services.jobs import cancel_job
from boxrun.services.pipelines import attempt_job_id, cancel_pipeline
from boxrun.temporal import connect as temporal_connect
from tests.conftest import wait_for
from tests.integration.faultstack import FaultStack, fault_stack
from tests.integration.test_pipeline_engine import ADMIN, FLAKY, LONG, Env, step

pytestmark = pytest.mark.e2e

# Two binary artifacts (not valid UTF-8, 300 KB and 1 byte).
BUILD = """
import os, pathlib
out = pathlib.Path(os.environ["BOXRUN_ARTIFACTS_DIR"])
(out / "fw.bin").write_bytes(bytes(range(256)) * 1000 + os.urandom(44_000))
(out / "sub").mkdir()
(out / "sub" / "tiny.bin").write_bytes(b"\\xff")
print("built", flush=True)
"""
# Prints the SHA-256 and size of each input it was given ($INPUTS: space-separated paths), and
# keeps a copy of the first as its own artifact `copy.bin`.
READ = """
import hashlib, os, pathlib, shutil
paths = os.environ["INPUTS"].split()
for p in paths:
    data = pathlib.Path(p).read_bytes()
    print("sha256", p, hashlib.sha256(data).hexdigest(), len(data), flush=True)
shutil.copyfile(paths[0], pathlib.Path(os.environ["BOXRUN_ARTIFACTS_DIR"]) / "copy.bin")
"""
# Waits until $GATE exists (the test opens it once it has damaged the stored inputs).
GATE = """
import os, pathlib, time
gate = pathlib.Path(os.environ["GATE"])
deadline = time.monotonic() + 120
while not gate.exists() and time.monotonic() < deadline:
    time.sleep(0.05)
raise SystemExit(0 if gate.exists() else 1)
"""
# Writes $MARK: proves the script ran.
MARK = """
import os, pathlib
pathlib.Path(os.environ["MARK"]).write_text("ran")
"""


@pytest.fixture(scope="module")
async def fs(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[FaultStack]:
    async with fault_stack(tmp_path_factory.mktemp("pipestack") / "dev", boxes=2, capacity=2) as stack:
        yield stack


@pytest.fixture
async def env(fs: FaultStack) -> AsyncIterator[Env]:
    conn = await connect(fs.child("api").env["BOXRUN_DATABASE_URL"])
    temporal = await temporal_connect(fs.endpoints["temporal_address"])
    yield Env(fs, conn, temporal)
    await conn.close()


@pytest.fixture
async def client(fs: FaultStack) -> AsyncIterator[BoxrunClient]:
    c = BoxrunClient(fs.endpoints["api_url"], fs.endpoints["token"], timeout=30.0)
    yield c
    await c.aclose()


def stored(env: Env, job_id: object, path: str) -> bytes:
    """An artifact's bytes as the store holds them."""
    obj = env.storage.client.get_object(Bucket=env.storage.bucket, Key=artifact_key(str(job_id), path))
    data: bytes = obj["Body"].read()
    return data


async def printed(client: BoxrunClient, job_id: object) -> dict[str, tuple[str, int]]:
    """The `sha256 <path> <hex> <size>` lines a READ step printed, by path."""
    lines = (await client.log_page(str(job_id), after=0, limit=1000)).data
    out = {}
    for line in lines:
        if line.stream == "stdout" and line.text.startswith("sha256 "):
            _, path, hexdigest, size = line.text.split()
            out[path] = (hexdigest, int(size))
    return out


async def test_a_diamond_passes_artifacts_byte_for_byte_through_real_boxes(env: Env, client: BoxrunClient) -> None:
    p = ExpandedPipeline(
        name="diamond",
        steps=[
            step("build", BUILD),
            step(
                "left",
                READ,
                needs=["build"],
                env={"INPUTS": "fw.bin"},
                inputs=[StepInput(from_step="build", path="fw.bin", dest="fw.bin")],
            ),
            step(
                "right",
                READ,
                needs=["build"],
                env={"INPUTS": "in/deep/fw.bin tiny"},
                inputs=[
                    StepInput(from_step="build", path="fw.bin", dest="in/deep/fw.bin"),
                    StepInput(from_step="build", path="sub/tiny.bin", dest="tiny"),
                ],
            ),
            step(
                "join",
                READ,
                needs=["left", "right"],
                env={"INPUTS": "l.bin r.bin fw.bin"},
                inputs=[
                    StepInput(from_step="left", path="copy.bin", dest="l.bin"),
                    StepInput(from_step="right", path="copy.bin", dest="r.bin"),
                    StepInput(from_step="build", path="fw.bin", dest="fw.bin"),  # a grandparent
                ],
            ),
        ],
    )
    pid = await env.create(p)
    row = await env.wait_end(pid)
    assert row["state"] == "completed", (row["error"], await env.dump(pid))
    jobs = {name: (await env.jobs(pid, name))[0] for name in ("build", "left", "right", "join")}
    fw = stored(env, jobs["build"]["id"], "fw.bin")
    tiny = stored(env, jobs["build"]["id"], "sub/tiny.bin")
    assert len(fw) == 300_000 and tiny == b"\xff"
    art = await env.conn.fetchrow(
        "SELECT sha256, size FROM artifacts WHERE job_id = $1 AND path = 'fw.bin'", jobs["build"]["id"]
    )
    assert art is not None and (art["sha256"], art["size"]) == (hashlib.sha256(fw).hexdigest(), len(fw))
    want_fw = (hashlib.sha256(fw).hexdigest(), len(fw))
    # what each downstream script read in its own workspace, on whichever box ran it
    assert await printed(client, jobs["left"]["id"]) == {"fw.bin": want_fw}
    assert await printed(client, jobs["right"]["id"]) == {
        "in/deep/fw.bin": want_fw,
        "tiny": (hashlib.sha256(b"\xff").hexdigest(), 1),
    }
    assert await printed(client, jobs["join"]["id"]) == {"l.bin": want_fw, "r.bin": want_fw, "fw.bin": want_fw}
    # and the bytes went round trip: upstream artifact -> box -> the branch's own artifact
    for name in ("left", "right", "join"):
        assert stored(env, jobs[name]["id"], "copy.bin") == fw


async def test_a_corrupt_or_missing_input_fails_the_step_before_its_script_runs(env: Env, tmp_path: Path) -> None:
    gate, mark_c, mark_m = tmp_path / "gate", tmp_path / "ran-corrupt", tmp_path / "ran-missing"
    ins = {"corrupt": ("fw.bin", "fw.bin"), "missing": ("sub/tiny.bin", "tiny")}
    p = ExpandedPipeline(
        steps=[
            step("build", BUILD),
            step("gate", GATE, env={"GATE": str(gate)}),
            *(
                step(
                    name,
                    MARK,
                    needs=["build", "gate"],
                    env={"MARK": str(mark)},
                    inputs=[StepInput(from_step="build", path=ins[name][0], dest=ins[name][1])],
                    retry=RetrySpec(max_attempts=3, initial_interval_s=0.2),
                )
                for name, mark in (("corrupt", mark_c), ("missing", mark_m))
            ),
        ]
    )
    pid = await env.create(p)

    async def built() -> bool:
        return (await env.steps(pid))["build"]["state"] == "completed"

    await wait_for(built, timeout=90, what="the build step to complete")
    build_id = str((await env.jobs(pid, "build"))[0]["id"])
    # damage the store behind the control plane's back: other bytes under fw.bin, no tiny.bin at all
    other = b"not the firmware"
    env.storage.put(artifact_key(build_id, "fw.bin"), io.BytesIO(other), hashlib.sha256(other).hexdigest())
    env.storage.client.delete_object(Bucket=env.storage.bucket, Key=artifact_key(build_id, "sub/tiny.bin"))
    gate.write_text("open")

    row = await env.wait_end(pid)
    assert row["state"] == "failed", (row["error"], await env.dump(pid))
    for name, mark, why in (("corrupt", mark_c, "SHA-256 mismatch"), ("missing", mark_m, "download failed")):
        jobs = await env.jobs(pid, name)
        assert [j["state"] for j in jobs] == ["failed"] * len(jobs), await env.dump(pid)
        for job in jobs:
            assert job["error"].startswith(f"file {ins[name][1]}: {why}"), job["error"]
            assert job["exit_code"] is None  # no process ran
        assert not mark.exists(), f"the {name} step's script ran"
    # the bytes the corrupt step refused are the ones planted, not the artifact recorded
    art = await env.conn.fetchrow(
        "SELECT sha256 FROM artifacts WHERE job_id = $1 AND path = 'fw.bin'", uuid.UUID(build_id)
    )
    assert art is not None
    corrupt_error = (await env.jobs(pid, "corrupt"))[0]["error"]
    assert f"expected {art['sha256']}, got {hashlib.sha256(other).hexdigest()}" in corrupt_error


async def test_temporal_status_of_failed_timed_out_cancelled_jobs_and_of_pipelines(env: Env, tmp_path: Path) -> None:
    started = tmp_path / "started"
    p = ExpandedPipeline(
        steps=[
            step("fails", "raise SystemExit(3)\n"),
            step("slow", "import time\ntime.sleep(60)\n", timeout_s=1),
            step("held", LONG, env={"STARTED": str(started)}),
        ]
    )
    pid = await env.create(p)
    await wait_for(started.exists, timeout=60, what="the held step to run")
    await cancel_job(env.conn, env.temporal, ADMIN, attempt_job_id(pid, "held", 1))
    row = await env.wait_end(pid)
    assert row["state"] == "failed", (row["error"], await env.dump(pid))
    states = {n: s["state"] for n, s in (await env.steps(pid)).items()}
    assert states == {"fails": "failed", "slow": "timed_out", "held": "cancelled"}
    for name, status, kind in (
        ("fails", WorkflowExecutionStatus.FAILED, "JobFailed"),
        ("slow", WorkflowExecutionStatus.FAILED, "JobTimedOut"),
        ("held", WorkflowExecutionStatus.CANCELED, None),
    ):
        handle = env.temporal.get_workflow_handle(attempt_job_id(pid, name, 1))
        assert await env.status(handle.id) == status, name
        if kind is not None:
            with pytest.raises(WorkflowFailureError) as err:
                await handle.result()
            assert isinstance(err.value.cause, ApplicationError) and err.value.cause.type == kind
    pipeline = env.temporal.get_workflow_handle(pid)
    assert await env.status(pid) == WorkflowExecutionStatus.FAILED
    with pytest.raises(WorkflowFailureError) as err:
        await pipeline.result()
    assert isinstance(err.value.cause, ApplicationError) and err.value.cause.type == "PipelineFailed"

    # and a cancelled pipeline's workflow ends CANCELED
    started2 = tmp_path / "started2"
    pid2 = await env.create(ExpandedPipeline(steps=[step("long", LONG, env={"STARTED": str(started2)})]))
    await wait_for(started2.exists, timeout=60, what="the long step to run")
    await cancel_pipeline(env.conn, env.temporal, ADMIN, pid2)
    assert (await env.wait_end(pid2))["state"] == "cancelled"
    assert await env.status(pid2) == WorkflowExecutionStatus.CANCELED

    # the Web UI's status filters find them
    async def failed_listed() -> set[str] | None:
        query = f'PipelineId = "{pid}" AND WorkflowType = "JobWorkflow" AND ExecutionStatus = "Failed"'
        found = {w.id async for w in env.temporal.list_workflows(query)}
        return found if len(found) == 2 else None

    found = await wait_for(failed_listed, timeout=30, what="the failed step jobs listed by ExecutionStatus")
    assert found == {attempt_job_id(pid, "fails", 1), attempt_job_id(pid, "slow", 1)}


async def test_retries_are_runs_of_the_step_workflow_in_temporal(env: Env, tmp_path: Path) -> None:
    counter = tmp_path / "counter"
    retry = RetrySpec(max_attempts=3, initial_interval_s=1, backoff_coefficient=2, exit_codes=[75])
    pid = await env.create(ExpandedPipeline(steps=[step("flaky", FLAKY, env={"COUNTER": str(counter)}, retry=retry)]))
    row = await env.wait_end(pid)
    assert row["state"] == "completed", (row["error"], await env.dump(pid))
    wid = f"{pid}/flaky"

    async def runs() -> list[WorkflowExecution] | None:
        found = [w async for w in env.temporal.list_workflows(f'WorkflowId = "{wid}"')]
        return found if len(found) == 3 and all(w.close_time is not None for w in found) else None

    listed = sorted(
        await wait_for(runs, timeout=30, what="three runs of the step workflow"), key=lambda w: w.start_time
    )
    attempts = []
    for run in listed:
        history = await env.temporal.get_workflow_handle(wid, run_id=run.run_id).fetch_history()
        attempts.append(history.events[0].workflow_execution_started_event_attributes.attempt)
    assert attempts == [1, 2, 3]
    assert [r.status for r in listed] == [
        WorkflowExecutionStatus.FAILED,
        WorkflowExecutionStatus.FAILED,
        WorkflowExecutionStatus.COMPLETED,
    ]
    # one job per run, each with its own workflow (workflow id = job id)
    for attempt in (1, 2, 3):
        assert await env.status(attempt_job_id(pid, "flaky", attempt)) == (
            WorkflowExecutionStatus.COMPLETED if attempt == 3 else WorkflowExecutionStatus.FAILED
        )
    # Temporal's backoff between the runs: 1 s, then 2 s
    gaps = [(b.execution_time - a.close_time).total_seconds() for a, b in zip(listed, listed[1:], strict=False)]
    assert gaps[0] >= 0.9 and gaps[1] >= 1.9, gaps
