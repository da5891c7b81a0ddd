"""Placement across steps on a whole real stack (Temporal dev server, PostgreSQL, S3, API, control
worker, one agent running real processes on box `local-1`, capacity 1): a bench pipeline
flash (keep_box) -> test (same_box_as: flash) -> poweroff (same_box_as: flash), and a competing
job submitted while flash runs. The competitor must run only once the pipeline let go of the box:
after poweroff (compared from the job events the API answers), after a pipeline cancel, and
after a control worker kill or a pipeline workflow that is gone (the reaper)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from boxrun.services.pipelines import cancel_pipeline
from tests.conftest import wait_for
from tests.integration.faultstack import FaultStack, fault_stack
from tests.integration.test_pipeline_engine import ADMIN, Env

# the `env` fixture (a connection and Temporal client on this module's stack)
from tests.integration.test_pipeline_engine import env as env

pytestmark = pytest.mark.e2e

BOX = "local-1"
# Writes $STARTED, then waits until $GATE exists (at most 120 s).
GATED = """
import os, pathlib, time
pathlib.Path(os.environ["STARTED"]).write_text("up")
gate = pathlib.Path(os.environ["GATE"])
deadline = time.monotonic() + 120
while not gate.exists() and time.monotonic() < deadline:
    time.sleep(0.05)
print("gate", gate.exists(), flush=True)
raise SystemExit(0 if gate.exists() else 1)
"""
QUICK = "print('ran', flush=True)\n"


@pytest.fixture(scope="module")
async def fs(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[FaultStack]:
    async with fault_stack(tmp_path_factory.mktemp("bench") / "dev", boxes=1, capacity=1) as stack:
        yield stack


@pytest.fixture
async def api(fs: FaultStack) -> AsyncIterator[httpx.AsyncClient]:
    async with fs.api() as client:
        yield client


def bench(tmp: Path, *, test_script: str = QUICK) -> dict[str, Any]:
    """The bench pipeline; flash waits on tmp/flash-gate, test (if GATED) on tmp/test-gate."""

    def gated(name: str) -> dict[str, str]:
        return {"STARTED": str(tmp / f"{name}-started"), "GATE": str(tmp / f"{name}-gate")}

    return {
        "name": "bench",
        "timeout_s": 600,
        "steps": {
            "flash": {"box_group": "local", "keep_box": True, "script": GATED, "env": gated("flash")},
            "test": {"needs": ["flash"], "same_box_as": "flash", "script": test_script, "env": gated("test")},
            "poweroff": {"needs": ["test"], "same_box_as": "flash", "when": "always", "script": QUICK},
        },
    }


async def submit_pipeline(api: httpx.AsyncClient, body: dict[str, Any]) -> str:
    resp = await api.post("/api/pipelines", json=body)
    assert resp.status_code == 201, resp.text
    pid: str = resp.json()["id"]
    return pid


async def competitor(api: httpx.AsyncClient) -> str:
    resp = await api.post("/api/jobs", json={"box": BOX, "script": QUICK, "timeout_s": 60})
    assert resp.status_code == 201, resp.text
    job_id: str = resp.json()["id"]
    return job_id


async def event_at(api: httpx.AsyncClient, job_id: str, state: str) -> datetime:
    resp = await api.get(f"/api/jobs/{job_id}/events")
    assert resp.status_code == 200, resp.text
    (at,) = [e["at"] for e in resp.json()["data"] if e["to_state"] == state]
    return datetime.fromisoformat(at)


async def job_of(api: httpx.AsyncClient, pid: str, step: str) -> dict[str, Any]:
    resp = await api.get("/api/jobs", params={"pipeline_id": pid})
    assert resp.status_code == 200, resp.text
    (job,) = [j for j in resp.json()["data"] if j["step"] == step]
    return job  # type: ignore[no-any-return]


async def job_state(api: httpx.AsyncClient, job_id: str) -> str:
    resp = await api.get(f"/api/jobs/{job_id}")
    state: str = resp.json()["state"]
    return state


async def holds(api: httpx.AsyncClient) -> list[dict[str, Any]]:
    resp = await api.get(f"/api/boxes/{BOX}/queue")
    assert resp.status_code == 200, resp.text
    out: list[dict[str, Any]] = resp.json()["holds"]
    return out


async def until_done(api: httpx.AsyncClient, job_id: str, timeout: float = 90) -> str:
    async def done() -> str | None:
        state = await job_state(api, job_id)
        return state if state in ("completed", "failed", "cancelled", "timed_out", "unschedulable") else None

    return await wait_for(done, timeout=timeout, interval=0.2, what=f"job {job_id} to end")


async def test_the_competitor_runs_only_after_the_pipeline_let_go(
    api: httpx.AsyncClient, env: Env, tmp_path: Path
) -> None:
    tmp_path.chmod(0o1777)
    pid = await submit_pipeline(api, bench(tmp_path, test_script=GATED))
    await wait_for((tmp_path / "flash-started").exists, timeout=60, what="flash to run")
    other = await competitor(api)
    await wait_for(lambda: _is(api, other, "waiting_for_box"), timeout=30, what="the competitor to wait")
    (tmp_path / "flash-gate").touch()
    await wait_for((tmp_path / "test-started").exists, timeout=60, what="test to run")
    # flash ended, test runs on its box: the pipeline holds it, the competitor still waits
    (hold,) = await holds(api)
    assert (hold["pipeline_id"], hold["step"], hold["steps"]) == (pid, "flash", ["flash", "test", "poweroff"])
    assert await job_state(api, other) == "waiting_for_box"
    resp = await api.delete(f"/api/boxes/{BOX}")
    assert resp.status_code == 409, resp.text
    (tmp_path / "test-gate").touch()
    row = await env.wait_end(pid)
    assert row["state"] == "completed", await env.dump(pid)
    assert await until_done(api, other) == "completed"
    assert await holds(api) == []
    # every step ran on the one box; the competitor started after poweroff, the last of them, ended
    for name in ("flash", "test", "poweroff"):
        assert (await job_of(api, pid, name))["box"] == BOX
    poweroff = (await job_of(api, pid, "poweroff"))["id"]
    assert await event_at(api, other, "dispatching") > await event_at(api, poweroff, "completed")
    released = await env.conn.fetchrow("SELECT released_by FROM box_holds WHERE pipeline_id = $1", uuid.UUID(pid))
    assert released["released_by"] == "pipeline"


async def test_a_cancelled_pipeline_lets_go_of_its_box(api: httpx.AsyncClient, env: Env, tmp_path: Path) -> None:
    tmp_path.chmod(0o1777)
    body = bench(tmp_path, test_script=GATED)
    del body["steps"]["poweroff"]
    pid = await submit_pipeline(api, body)
    await wait_for((tmp_path / "flash-started").exists, timeout=60, what="flash to run")
    other = await competitor(api)
    (tmp_path / "flash-gate").touch()
    await wait_for((tmp_path / "test-started").exists, timeout=60, what="test to run")
    assert len(await holds(api)) == 1
    await cancel_pipeline(env.conn, env.temporal, ADMIN, pid)
    row = await env.wait_end(pid, timeout=60)
    assert row["state"] == "cancelled", await env.dump(pid)
    assert await until_done(api, other) == "completed"
    assert await holds(api) == []
    test = (await job_of(api, pid, "test"))["id"]
    assert await event_at(api, other, "dispatching") >= await event_at(api, test, "cancelled")


async def test_a_killed_control_worker_and_a_gone_workflow_let_go_of_the_box(
    fs: FaultStack, api: httpx.AsyncClient, env: Env, tmp_path: Path
) -> None:
    tmp_path.chmod(0o1777)
    body = bench(tmp_path, test_script=GATED)
    del body["steps"]["poweroff"]
    # the control worker dies while the pipeline holds the box; it comes back and the pipeline
    # ends and lets go
    pid = await submit_pipeline(api, body)
    (tmp_path / "flash-gate").touch()
    await wait_for((tmp_path / "test-started").exists, timeout=60, what="test to run")
    other = await competitor(api)
    assert len(await holds(api)) == 1
    fs.kill("worker")
    (tmp_path / "test-gate").touch()
    fs.start("worker")
    row = await env.wait_end(pid, timeout=120)
    assert row["state"] == "completed", await env.dump(pid)
    assert await until_done(api, other, timeout=120) == "completed"
    assert await holds(api) == []

    # the pipeline's workflow is gone (terminated from the Web UI) while it holds the box: the
    # reaper ends the pipeline and releases the hold; the competitor runs
    for name in ("flash-gate", "flash-started", "test-gate", "test-started"):
        (tmp_path / name).unlink(missing_ok=True)
    pid = await submit_pipeline(api, body)
    (tmp_path / "flash-gate").touch()
    await wait_for((tmp_path / "test-started").exists, timeout=60, what="test to run")
    other = await competitor(api)
    assert len(await holds(api)) == 1
    await env.temporal.get_workflow_handle(pid).terminate(reason="pressed in the Web UI")
    await env.conn.execute(
        "UPDATE pipelines SET created_at = created_at - interval '1 minute' WHERE id = $1", uuid.UUID(pid)
    )
    row = await env.wait_end(pid, timeout=60)
    assert row["state"] == "failed", await env.dump(pid)
    assert await until_done(api, other, timeout=90) == "completed"
    assert await holds(api) == []
    released = await env.conn.fetchrow("SELECT released_by FROM box_holds WHERE pipeline_id = $1", uuid.UUID(pid))
    assert released["released_by"] == "reaper"


async def _is(api: httpx.AsyncClient, job_id: str, state: str) -> bool:
    return await job_state(api, job_id) == state


async def test_a_failed_and_a_timed_out_pipeline_let_go_of_the_box(
    api: httpx.AsyncClient, env: Env, tmp_path: Path
) -> None:
    tmp_path.chmod(0o1777)
    # failed: test exits 3, poweroff (when: always) still runs on the held bench, then the hold goes
    (tmp_path / "flash-gate").touch()
    pid = await submit_pipeline(api, bench(tmp_path, test_script="raise SystemExit(3)\n"))
    await wait_for((tmp_path / "flash-started").exists, timeout=60, what="flash to run")
    other = await competitor(api)
    row = await env.wait_end(pid, timeout=90)
    assert row["state"] == "failed", await env.dump(pid)
    poweroff = await job_of(api, pid, "poweroff")
    assert (poweroff["state"], poweroff["box"]) == ("completed", BOX)
    assert await until_done(api, other) == "completed"
    assert await event_at(api, other, "dispatching") > await event_at(api, poweroff["id"], "completed")
    assert await holds(api) == []

    # timed out: the pipeline's deadline passes while test (gated, never opened) runs on the bench
    for name in ("flash-started", "test-started"):
        (tmp_path / name).unlink(missing_ok=True)
    body = bench(tmp_path, test_script=GATED)
    del body["steps"]["poweroff"]
    body["timeout_s"] = 20
    pid = await submit_pipeline(api, body)
    await wait_for((tmp_path / "test-started").exists, timeout=60, what="test to run")
    other = await competitor(api)
    assert len(await holds(api)) == 1
    row = await env.wait_end(pid, timeout=90)
    assert row["state"] == "timed_out", await env.dump(pid)
    assert await until_done(api, other) == "completed"
    assert await holds(api) == []
    released = await env.conn.fetchrow("SELECT released_by FROM box_holds WHERE pipeline_id = $1", uuid.UUID(pid))
    assert released["released_by"] == "pipeline"
