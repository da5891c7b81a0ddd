"""The reaper frees what a workflow could not: a job whose workflow was terminated from the UI, a
waiting job whose wake-up was lost."""

from __future__ import annotations

import json

import pytest
from temporalio.client import Client, WorkflowExecutionStatus

from boxrun.db import connect as db_connect
from boxrun.temporal import connect
from boxrun.workflows.reaper import REAPER_WORKFLOW_ID
from tests.conftest import pid_alive, wait_for
from tests.integration.faultstack import fault_stack
from tests.integration.jobs import submit, wait_terminal

pytestmark = pytest.mark.e2e


async def test_terminated_workflow_frees_the_box_and_kills_the_process(tmp_path):
    pidfile = tmp_path / "pid"
    script = f"import os, time\nopen({str(pidfile)!r}, 'w').write(str(os.getpid()))\ntime.sleep(300)\n"
    async with fault_stack(tmp_path / "dev", boxes=1) as fs, fs.api() as api:
        job = await submit(api, script)
        nxt = await submit(api, "print('next')")
        await wait_for(lambda: pidfile.exists() and pidfile.read_text(), what="job process")
        client = await connect(fs.endpoints["temporal_address"])
        await client.get_workflow_handle(job["id"]).terminate(reason="operator pressed terminate")

        done = await wait_terminal(api, job["id"], timeout=30)
        assert done["state"] == "failed" and "terminated" in done["error"]
        await wait_for(lambda: not pid_alive(int(pidfile.read_text())), timeout=10, what="process to be killed")
        assert (await wait_terminal(api, nxt["id"], timeout=30))["state"] == "completed"
        assert (await api.get("/api/boxes/local-1/queue")).json()["leases"] == []


async def reapers(client: Client) -> list[tuple[str, str, WorkflowExecutionStatus | None]]:
    return [(wf.id, wf.run_id, wf.status) async for wf in client.list_workflows('WorkflowType = "ReaperWorkflow"')]


async def test_one_reaper_workflow_loops_and_a_restarted_worker_reuses_it(tmp_path):
    """The safety net is one long-running workflow (a durable timer between sweeps), not a
    scheduled workflow per sweep; a control worker that starts again signals the running one."""
    async with fault_stack(tmp_path / "dev", boxes=1) as fs:  # sweeps every 3 s
        client = await connect(fs.endpoints["temporal_address"])
        handle = client.get_workflow_handle(REAPER_WORKFLOW_ID)

        async def sweeps() -> int:
            events = (await handle.fetch_history()).events
            return sum(e.HasField("activity_task_completed_event_attributes") for e in events)

        async def swept(more_than: int) -> bool:
            return await sweeps() > more_than

        await wait_for(lambda: swept(1), timeout=30, what="two sweeps")
        listed = await wait_for(lambda: reapers(client), what="the reaper in the workflow list")
        assert len(listed) == 1 and listed[0][2] == WorkflowExecutionStatus.RUNNING, listed
        scheduled = [s.schedule.action async for s in await client.list_schedules()]
        assert [getattr(a, "workflow", None) for a in scheduled] == ["RetentionWorkflow"], "no schedule starts reapers"

        run_id = listed[0][1]
        fs.stop("worker")
        fs.start("worker")

        async def configured_twice() -> bool:
            events = (await client.get_workflow_handle(REAPER_WORKFLOW_ID, run_id=run_id).fetch_history()).events
            return sum(e.HasField("workflow_execution_signaled_event_attributes") for e in events) >= 2

        await wait_for(configured_twice, timeout=30, what="the restarted worker to signal the same run")
        before = await sweeps()
        await wait_for(lambda: swept(before), timeout=30, what="a sweep after the restart")
        assert [(wf_id, run) for wf_id, run, _ in await reapers(client)] == [(REAPER_WORKFLOW_ID, run_id)]


async def test_a_waiting_job_whose_wake_up_was_lost_starts_through_the_waiter_sweep(tmp_path):
    """A waiting job has no periodic re-check of its own. When the wake-up that should start it
    never comes (here the window holding it back is ended straight in Postgres, as an API process
    that died between its commit and its signal leaves it), the reaper's waiter sweep wakes it."""
    async with fault_stack(tmp_path / "dev", boxes=1) as fs, fs.api() as api:  # waiter sweep every 5 s
        on = await api.put("/api/boxes/local-1/maintenance", json={"on": True, "reason": "lost wake-up test"})
        assert on.status_code == 200, on.text
        job = await submit(api, "print('ran')")

        async def waiting() -> bool:
            got = (await api.get(f"/api/jobs/{job['id']}")).json()
            return got["state"] == "waiting_for_box" and got["waiting_reason"] == "maintenance"

        await wait_for(waiting, timeout=30, what="the job to wait for maintenance")
        conn = await db_connect(fs.child("api").env["BOXRUN_DATABASE_URL"])
        try:  # the window ends, and nobody signals the job
            ended = await conn.execute(
                "UPDATE maintenance_windows SET ends_at = clock_timestamp() WHERE ends_at IS NULL"
            )
            assert ended == "UPDATE 1"
        finally:
            await conn.close()
        done = await wait_terminal(api, job["id"], timeout=60)
        assert done["state"] == "completed", done

        client = await connect(fs.endpoints["temporal_address"])
        events = (await client.get_workflow_handle(job["id"]).fetch_history()).events
        signals = [
            e.workflow_execution_signaled_event_attributes
            for e in events
            if e.HasField("workflow_execution_signaled_event_attributes")
        ]
        assert signals and {s.signal_name for s in signals} == {"wake"}, "woken by the sweep"
        assert not any(e.HasField("timer_fired_event_attributes") for e in events), "no timer woke it"
        # the reaper's sweep said so (its activity results are in the reaper's history)
        reaper = (await client.get_workflow_handle(REAPER_WORKFLOW_ID).fetch_history()).events
        results = [
            json.loads(p.data)
            for e in reaper
            if e.HasField("activity_task_completed_event_attributes")
            for p in e.activity_task_completed_event_attributes.result.payloads
        ]
        assert sum(r.get("waiters_woken", 0) for r in results) >= 1, results
