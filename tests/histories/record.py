"""Record the workflow histories tests/unit/test_replay.py replays: `python -m tests.histories.record`.

Starts a whole `boxrun dev` stack (embedded Temporal, PostgreSQL, S3, API, control worker, one
agent) in a temporary directory, runs representative jobs through the real API, then writes each
workflow's history as JSON next to this file. Run it again (and commit the files in the same
commit) whenever a workflow changes on purpose; until there is a release to stay compatible with,
the replay test guards against changes that were not meant to alter a workflow.

The stack runs twice: once with control steps as regular activities, once as local activities
(BOXRUN_LOCAL_CONTROL_ACTIVITIES), since the two produce different histories.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import sys
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
from temporalio.client import Client, WorkflowExecutionStatus

from boxrun.constants import CONTROL_TASK_QUEUE, DEFAULT_ORG
from boxrun.db import connect as db_connect
from boxrun.dev.stack import DevStack, StackOptions, resolve_ports
from boxrun.messages import ReaperInput
from boxrun.pipelines.model import ExpandedPipeline, ExpandedStep, RetrySpec, StepInput, When
from boxrun.schemas import JobCreate
from boxrun.services.identity import Role, User
from boxrun.services.pipelines import attempt_job_id, create_pipeline, step_workflow_id
from boxrun.settings import Settings
from boxrun.storage import Storage
from boxrun.temporal import connect
from boxrun.workflows.reaper import REAPER_WORKFLOW_ID, ReaperWorkflow
from tests.conftest import wait_for
from tests.integration.jobs import submit, wait_terminal

HERE = Path(__file__).parent
ENV = {
    "BOXRUN_REAPER_INTERVAL_S": "1",  # a few sweeps in the reaper's history
    "BOXRUN_WAITER_SWEEP_INTERVAL_S": "60",  # a waiting job is woken by the release, not by the sweep
}
# Histories recorded by earlier workflow code, kept (never re-recorded, never deleted here) so the
# replay test covers the branch `workflow.patched` keeps for workflows started before a change.
LEGACY_HISTORIES = {
    # a job that waited with the periodic re-check (before workflows/job.py WAKE_ONLY_PATCH)
    "job_waiting_then_woken_rechecks",
}
ARTIFACT_SCRIPT = """
import os, pathlib
out = pathlib.Path(os.environ["BOXRUN_ARTIFACTS_DIR"])
(out / "result.json").write_text('{"ok": true}')
(out / "sub").mkdir()
(out / "sub" / "data.bin").write_bytes(os.urandom(4096))
for i in range(50):
    print("line", i)
"""


async def state_is(api: httpx.AsyncClient, job_id: str, state: str) -> bool:
    return (await api.get(f"/api/jobs/{job_id}")).json()["state"] == state


async def completed_with_artifacts(api: httpx.AsyncClient) -> str:
    job = await submit(api, ARTIFACT_SCRIPT)
    done = await wait_terminal(api, job["id"])
    assert done["state"] == "completed", done
    return str(job["id"])


async def failed_exit_code(api: httpx.AsyncClient) -> str:
    job = await submit(api, "print('about to fail')\nraise SystemExit(3)\n")
    done = await wait_terminal(api, job["id"])
    assert done["state"] == "failed" and done["exit_code"] == 3, done
    return str(job["id"])


async def cancelled_while_running(api: httpx.AsyncClient) -> str:
    job = await submit(api, "import time\nprint('started', flush=True)\ntime.sleep(300)\n", cancel_grace_s=1)
    await wait_for(lambda: state_is(api, job["id"], "running"), what="running")
    assert (await api.post(f"/api/jobs/{job['id']}/cancel")).status_code == 202
    done = await wait_terminal(api, job["id"])
    assert done["state"] == "cancelled", done
    return str(job["id"])


async def waiting_then_woken(api: httpx.AsyncClient) -> str:
    gate = Path(tempfile.mkdtemp(prefix="boxrun-record-")) / "go"
    gate.parent.chmod(0o1777)  # as root, jobs run as the box's slot user: let it see the gate
    holder = await submit(api, f"import os, time\nwhile not os.path.exists({str(gate)!r}):\n    time.sleep(0.05)\n")
    await wait_for(lambda: state_is(api, holder["id"], "running"), what="holder running")
    waiter = await submit(api, "print('woken')")
    await wait_for(lambda: state_is(api, waiter["id"], "waiting_for_box"), what="waiter waiting")
    gate.touch()
    assert (await wait_terminal(api, holder["id"]))["state"] == "completed"
    done = await wait_terminal(api, waiter["id"], timeout=30)  # the sweep is 60 s: only the wake-up fits
    assert done["state"] == "completed", done
    shutil.rmtree(gate.parent, ignore_errors=True)
    return str(waiter["id"])


async def unschedulable(api: httpx.AsyncClient) -> str:
    job = await submit(api, "print(1)", box=None, box_group="local", requires=["fpga"])
    done = await wait_terminal(api, job["id"])
    assert done["state"] == "unschedulable", done
    return str(job["id"])


async def timed_out(api: httpx.AsyncClient) -> str:
    job = await submit(api, "import time\nprint('sleeping', flush=True)\ntime.sleep(300)\n", timeout_s=1)
    done = await wait_terminal(api, job["id"])
    assert done["state"] == "timed_out", done
    return str(job["id"])


Scenario = Callable[[httpx.AsyncClient], Awaitable[str]]
SCENARIOS: dict[str, Scenario] = {
    "completed_with_artifacts": completed_with_artifacts,
    "failed_exit_code": failed_exit_code,
    "cancelled_while_running": cancelled_while_running,
    "waiting_then_woken": waiting_then_woken,
    "unschedulable": unschedulable,
    "timed_out": timed_out,
}
# With local activities the control steps differ (markers instead of scheduled activities).
LOCAL_SCENARIOS = ("completed_with_artifacts", "cancelled_while_running")


async def save(client: Client, name: str, workflow_id: str, run_id: str | None = None) -> None:
    history = await client.get_workflow_handle(workflow_id, run_id=run_id).fetch_history()
    path = HERE / f"{name}.json"
    path.write_text(json.dumps(json.loads(history.to_json()), indent=1) + "\n")
    print(f"  {path.name}: {len(history.events)} events", flush=True)


async def record_reaper(client: Client) -> None:
    # the stack's own singleton, a few sweeps in (still running: a partial history replays too)
    handle = client.get_workflow_handle(REAPER_WORKFLOW_ID)

    async def swept_thrice() -> bool:
        events = (await handle.fetch_history()).events
        return sum(e.HasField("activity_task_completed_event_attributes") for e in events) >= 3

    await wait_for(swept_thrice, what="three reaper sweeps")
    await save(client, "reaper_running", REAPER_WORKFLOW_ID)
    # a run that reaches its end and continues as new
    short = await client.start_workflow(
        ReaperWorkflow.run,
        ReaperInput(interval_s=0.2, run_for_s=1),
        id="record-reaper-continue-as-new",
        task_queue=CONTROL_TASK_QUEUE,
    )
    first = client.get_workflow_handle(short.id, run_id=short.result_run_id)

    async def continued() -> bool:
        return (await first.describe()).status == WorkflowExecutionStatus.CONTINUED_AS_NEW

    await wait_for(continued, what="continue-as-new")
    await save(client, "reaper_continued_as_new", short.id, short.result_run_id)
    await client.get_workflow_handle(short.id).terminate("recorded")


PIPELINE_FLAKY = """
import os, pathlib
p = pathlib.Path(os.environ["COUNTER"])
n = int(p.read_text()) if p.exists() else 0
p.write_text(str(n + 1))
raise SystemExit(75 if n < 1 else 0)
"""
# (history file, workflow id) of the pipeline scenario, from its pipeline id
PIPELINE_HISTORIES = {
    "pipeline_completed": lambda pid: pid,
    "pipeline_step_retried": lambda pid: step_workflow_id(pid, "flaky"),
    "pipeline_step_job": lambda pid: attempt_job_id(pid, "test", 1),
}


async def record_pipeline(stack: DevStack, client: Client) -> None:
    """A pipeline with an artifact passed down, a step that fails once then passes on its retry,
    a fan-in and an `always` step, created as the API will (create_pipeline)."""
    env = stack.child("api").env
    fields = {k.removeprefix("BOXRUN_").lower(): v for k, v in env.items() if k.startswith("BOXRUN_")}
    settings = Settings(**{k: v for k, v in fields.items() if k in Settings.model_fields})
    counter = Path(tempfile.mkdtemp(prefix="boxrun-record-"))
    counter.chmod(0o1777)

    def step(name: str, script: str, **kw: object) -> ExpandedStep:
        job = JobCreate(box="local-1", script=script, env=kw.pop("env", {}))  # type: ignore[arg-type]
        return ExpandedStep(name=name, job=job, **kw)  # type: ignore[arg-type]

    p = ExpandedPipeline(
        name="recorded",
        steps=[
            step("build", ARTIFACT_SCRIPT),
            step(
                "flaky",
                PIPELINE_FLAKY,
                env={"COUNTER": str(counter / "n")},
                retry=RetrySpec(max_attempts=3, initial_interval_s=0.5, exit_codes=[75]),
            ),
            step(
                "test",
                "print('testing')",
                needs=["build", "flaky"],
                inputs=[StepInput(from_step="build", path="result.json", dest="result.json")],
            ),
            step("report", "print('report')", needs=["test"], when=When.ALWAYS),
        ],
    )
    user = User(name="admin", org_id=DEFAULT_ORG, role=Role.ADMIN, platform_admin=True)
    conn = await db_connect(env["BOXRUN_DATABASE_URL"])
    try:
        pid = await create_pipeline(conn, client, settings, user, p, storage=Storage(settings))
        await client.get_workflow_handle(pid).result()
    finally:
        await conn.close()
        shutil.rmtree(counter, ignore_errors=True)
    for name, workflow_id in PIPELINE_HISTORIES.items():
        await save(client, name, workflow_id(pid))


BENCH_HISTORY = "pipeline_box_held"


async def record_bench(stack: DevStack, client: Client) -> None:
    """A bench pipeline: flash (keep_box) -> test (same_box_as: flash), so the pipeline holds the
    box between them and its workflow releases the hold (activity release_hold) after test."""
    env = stack.child("api").env
    fields = {k.removeprefix("BOXRUN_").lower(): v for k, v in env.items() if k.startswith("BOXRUN_")}
    settings = Settings(**{k: v for k, v in fields.items() if k in Settings.model_fields})
    p = ExpandedPipeline(
        name="bench",
        steps=[
            ExpandedStep(name="flash", job=JobCreate(box_group="local", script="print('flash')"), keep_box=True),
            ExpandedStep(
                name="test",
                needs=["flash"],
                job=JobCreate(box_group="local", script="print('test')"),
                same_box_as="flash",
            ),
        ],
    )
    user = User(name="admin", org_id=DEFAULT_ORG, role=Role.ADMIN, platform_admin=True)
    conn = await db_connect(env["BOXRUN_DATABASE_URL"])
    try:
        pid = await create_pipeline(conn, client, settings, user, p, storage=Storage(settings))
        await client.get_workflow_handle(pid).result()
    finally:
        await conn.close()
    await save(client, BENCH_HISTORY, pid)


WEBHOOK_HISTORY = "webhook_delivered_after_retry"


async def record_webhook(api: httpx.AsyncClient, client: Client) -> None:
    """A job.failed delivery to a receiver on loopback that answers 500, then 200."""
    from tests.api.test_webhooks import receiver  # the tests' real HTTP receiver

    async with receiver([500]) as rec:
        resp = await api.post("/api/webhooks", json={"url": rec.url, "events": ["job.failed"]})
        assert resp.status_code == 201, resp.text
        hook = resp.json()
        await failed_exit_code(api)
        await rec.wait_for(2)

        async def delivered() -> str | None:
            got = (await api.get(f"/api/webhooks/{hook['id']}/deliveries")).json()["data"]
            return got[0]["id"] if got and got[0]["state"] == "delivered" else None

        delivery_id = await wait_for(delivered, what="the delivery delivered")
        await api.delete(f"/api/webhooks/{hook['id']}")
    await save(client, WEBHOOK_HISTORY, f"webhook-{delivery_id}")


RETENTION_HISTORY = "retention_run"


async def record_retention(api: httpx.AsyncClient, client: Client, stack: DevStack) -> None:
    """One run of the `boxrun-retention` schedule, triggered, deleting an aged job's outputs."""
    job_id = await completed_with_artifacts(api)
    resp = await api.put("/api/org/retention", json={"logs_days": 1, "artifacts_days": 1})
    assert resp.status_code == 200, resp.text
    conn = await db_connect(stack.child("api").env["BOXRUN_DATABASE_URL"])
    try:
        await conn.execute("UPDATE jobs SET finished_at = finished_at - interval '2 days' WHERE id = $1::uuid", job_id)
    finally:
        await conn.close()
    await client.get_schedule_handle("boxrun-retention").trigger()

    async def finished_run() -> tuple[str, str | None] | None:
        async for wf in client.list_workflows('WorkflowType = "RetentionWorkflow"'):
            if wf.status == WorkflowExecutionStatus.COMPLETED:
                return wf.id, wf.run_id
        return None

    workflow_id, run_id = await wait_for(finished_run, timeout=60, what="a completed retention run")
    await save(client, RETENTION_HISTORY, workflow_id, run_id)


SCHEDULE_HISTORY = "schedule_run"
REOFFERED_HISTORY = "job_reoffered_after_worker_loss"


async def record_schedule(api: httpx.AsyncClient, client: Client) -> None:
    """One run of a template's schedule (docs/templates.md), triggered: it submits the template's job."""
    resp = await api.put(
        "/api/templates/recorded",
        json={
            "params": {"word": {"type": "string", "default": "hi"}},
            "job": {"box_group": "local", "script": "echo ${{ params.word }}"},
        },
    )
    assert resp.status_code in (200, 201), resp.text
    resp = await api.post(
        "/api/schedules", json={"template": "recorded", "params": {"word": "scheduled"}, "cron": "0 3 * * *"}
    )
    assert resp.status_code == 201, resp.text
    schedule = resp.json()
    await client.get_schedule_handle(schedule["temporal_schedule_id"]).trigger()

    async def finished_run() -> tuple[str, str | None] | None:
        async for wf in client.list_workflows('WorkflowType = "ScheduledRunWorkflow"'):
            if wf.status == WorkflowExecutionStatus.COMPLETED:
                return wf.id, wf.run_id
        return None

    workflow_id, run_id = await wait_for(finished_run, timeout=60, what="a completed scheduled run")
    await api.delete(f"/api/schedules/{schedule['id']}")
    await save(client, SCHEDULE_HISTORY, workflow_id, run_id)


async def record_reoffered(api: httpx.AsyncClient, stack: DevStack) -> str:
    """A job whose run_job was lost with the control worker before its box claimed it: the worker
    is killed (and restarted) while the agent is stopped, run_job times out on its heartbeat, the
    workflow withdraws the offer and offers the job again (workflows/job.py REOFFER_PATCH)."""
    db = await db_connect(stack.child("api").env["BOXRUN_DATABASE_URL"])
    agent = stack.child("agent-local-1")
    agent.proc.send_signal(signal.SIGSTOP)
    try:
        job = await submit(api, "print('offered twice, ran once')")
        jid = job["id"]

        async def offered() -> bytes | None:
            return await db.fetchval("SELECT task_token FROM dispatches WHERE job_id = $1", jid)

        await wait_for(offered, timeout=30, what="the first offer")
        first = await offered()
        worker = stack.child("worker")
        worker.proc.send_signal(signal.SIGKILL)
        worker.proc.wait(30)
        worker.respawn()

        async def offered_again() -> bool:
            token = await offered()
            return token is not None and token != first

        await wait_for(offered_again, timeout=60, what="the second offer")
    finally:
        agent.proc.send_signal(signal.SIGCONT)
        await db.close()
    done = await wait_terminal(api, jid, timeout=60)
    assert done["state"] == "completed", done
    return str(jid)


async def record(
    local: bool,
    *,
    only_webhook: bool = False,
    only_retention: bool = False,
    only_bench: bool = False,
    only_schedule: bool = False,
    only_waiting: bool = False,
    only_reoffered: bool = False,
) -> None:
    data_dir = Path(tempfile.mkdtemp(prefix="boxrun-record-")) / "dev"
    env = {**ENV, "BOXRUN_LOCAL_CONTROL_ACTIVITIES": "true" if local else "false"}
    stack = DevStack(StackOptions(data_dir=data_dir, boxes=1, env=env), resolve_ports(None, auto=True))
    try:
        endpoints = await stack.start()
        client = await connect(endpoints["temporal_address"])
        headers = {"Authorization": f"Bearer {endpoints['token']}"}
        async with httpx.AsyncClient(base_url=endpoints["api_url"], headers=headers, timeout=30) as api:
            if only_retention:
                await record_retention(api, client, stack)
                return
            if only_bench:
                await record_bench(stack, client)
                return
            if only_schedule:
                await record_schedule(api, client)
                return
            if only_waiting:
                await save(client, "job_waiting_then_woken", await waiting_then_woken(api))
                return
            if only_reoffered:
                await save(client, REOFFERED_HISTORY, await record_reoffered(api, stack))
                return
            if not local:
                await record_webhook(api, client)
                await record_retention(api, client, stack)
                await record_schedule(api, client)
            for name, scenario in SCENARIOS.items():
                if only_webhook or (local and name not in LOCAL_SCENARIOS):
                    continue
                job_id = await scenario(api)
                await save(client, f"job_{name}{'_local' if local else ''}", job_id)
            if not local and not only_webhook:
                await save(client, REOFFERED_HISTORY, await record_reoffered(api, stack))
        if not local and not only_webhook:
            await record_pipeline(stack, client)
            await record_bench(stack, client)
            await record_reaper(client)
    finally:
        stack.stop()
        shutil.rmtree(data_dir.parent, ignore_errors=True)


async def main() -> int:
    if sys.argv[1:] == ["webhook"]:  # only the webhook delivery's history (a new workflow, the rest unchanged)
        await record(False, only_webhook=True)
        return 0
    if sys.argv[1:] == ["retention"]:  # only a retention run's history (a new workflow, the rest unchanged)
        await record(False, only_retention=True)
        return 0
    if sys.argv[1:] == ["bench"]:  # only the bench pipeline's history (keep_box, same_box_as)
        await record(False, only_bench=True)
        return 0
    if sys.argv[1:] == ["schedule"]:  # only a scheduled run's history (a new workflow, the rest unchanged)
        await record(False, only_schedule=True)
        return 0
    if sys.argv[1:] == ["reoffered"]:  # only the re-offered job's history (JobWorkflow's re-offer)
        await record(False, only_reoffered=True)
        return 0
    if sys.argv[1:] == ["waiting"]:  # only the waiting job's history (JobWorkflow's wait changed)
        await record(False, only_waiting=True)
        return 0
    for old in HERE.glob("*.json"):
        if old.stem not in LEGACY_HISTORIES:
            old.unlink()
    for local in (False, True):
        print(f"recording with {'local' if local else 'regular'} control activities", flush=True)
        await record(local)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
