"""Issue 9 faults on a stack of real processes: the API restarted mid-job (the agent reconnects;
the job finishes if the API is back within heartbeat_timeout, else fails "box heartbeat lost"),
a box that never claims its job (the claim deadline), the control worker killed while its box has
not yet claimed the job (offered again), and cancel pushed to the box at once."""

from __future__ import annotations

import signal
import time

import asyncpg
import pytest

from boxrun.temporal import connect
from tests.conftest import pid_alive, wait_for
from tests.integration.faultstack import fault_stack
from tests.integration.jobs import replay, submit, wait_terminal
from tests.integration.test_faults import RUN_JOB, Gated, job, kill_leftovers, wait_running

pytestmark = pytest.mark.e2e

HEARTBEAT_TIMEOUT_S = 8.0
CLAIM_TIMEOUT_S = 4.0


async def test_api_restart_mid_job_within_and_past_the_heartbeat_timeout(tmp_path):
    quick, slow = Gated(tmp_path, "quick"), Gated(tmp_path, "slow")
    env = {"BOXRUN_ACTIVITY_HEARTBEAT_TIMEOUT_S": str(HEARTBEAT_TIMEOUT_S)}
    async with fault_stack(tmp_path, boxes=1, capacity=2, env=env) as fs:
        try:
            async with fs.api() as api:
                first = await submit(api, quick.script())
                await wait_running(api, first["id"], quick)
            # back well within the heartbeat timeout: the agent reconnects and the job finishes
            fs.kill("api")
            down = time.monotonic()
            fs.start("api")
            async with fs.api() as api:
                await wait_for(lambda: _up(api), timeout=30, what="the API back")
                print(f"\nAPI down for {time.monotonic() - down:.2f}s")
                quick.open()
                done = await wait_terminal(api, first["id"], timeout=30)
                assert (done["state"], done["exit_code"], done["error"]) == ("completed", 0, None), done
                assert [line["text"] for line in await replay(api, first["id"])] == ["started", "finished"]

                second = await submit(api, slow.script(child=True))
                await wait_running(api, second["id"], slow)
            # away longer than the heartbeat timeout: the job fails, the box kills it once it hears
            fs.kill("api")
            await _sleep_past(HEARTBEAT_TIMEOUT_S + 4)
            fs.start("api")
            async with fs.api() as api:
                await wait_for(lambda: _up(api), timeout=30, what="the API back")
                done = await wait_terminal(api, second["id"], timeout=30)
                assert (done["state"], done["error"]) == ("failed", "box heartbeat lost"), done
                await wait_for(
                    lambda: not any(pid_alive(p) for p in slow.pid_list()),
                    timeout=15,
                    what="the failed job's processes to be killed by its agent",
                )
                assert slow.run_count() == 1
                after = await submit(api, "print('box free again')")
                assert (await wait_terminal(api, after["id"], timeout=30))["state"] == "completed"
        finally:
            kill_leftovers(quick.pid_list() + slow.pid_list())


async def test_a_box_that_never_claims_fails_the_job_at_the_claim_deadline(tmp_path):
    marker = tmp_path / "ran"
    env = {"BOXRUN_DISPATCH_TIMEOUT_S": str(CLAIM_TIMEOUT_S)}
    async with fault_stack(tmp_path, boxes=1, env=env) as fs, fs.api() as api:
        agent = fs.child("agent-local-1")
        agent.proc.send_signal(signal.SIGSTOP)  # alive for liveness a few seconds more, but deaf
        try:
            stuck = await submit(api, f"open({str(marker)!r}, 'w').write('x')")
            done = await wait_terminal(api, stuck["id"], timeout=CLAIM_TIMEOUT_S + 20)
        finally:
            agent.proc.send_signal(signal.SIGCONT)
        why = f"the box did not claim the job within {CLAIM_TIMEOUT_S:g} s (agent gone?)"
        assert (done["state"], done["error"]) == ("failed", why), done
        # the thawed agent's late claim is refused: the script never runs, the box takes new work
        after = await submit(api, "print('next')")
        assert (await wait_terminal(api, after["id"], timeout=30))["state"] == "completed"
        assert not marker.exists()
        assert (await job(api, stuck["id"]))["state"] == "failed"


async def test_a_control_worker_killed_before_the_claim_costs_a_heartbeat_timeout_not_the_job(tmp_path):
    """run_job's worker dies while the job is offered and its box has not claimed it yet: Temporal
    times run_job out on its heartbeat, the workflow finds the offer unclaimed, closes it and
    offers the job again; the box claims the new offer and the job runs once."""
    marker = tmp_path / "ran"
    marker.touch()
    marker.chmod(0o666)  # the job runs as the box's slot user when the tests run as root
    async with fault_stack(tmp_path, boxes=1) as fs, fs.api() as api:
        db = await asyncpg.connect(fs.child("api").env["BOXRUN_DATABASE_URL"])
        agent = fs.child("agent-local-1")
        agent.proc.send_signal(signal.SIGSTOP)  # deaf: the offer stays unclaimed
        try:
            submitted = await submit(api, f"open({str(marker)!r}, 'a').write('ran\\n'); print('ran')")
            jid = submitted["id"]

            async def offered() -> bytes | None:
                return await db.fetchval("SELECT task_token FROM dispatches WHERE job_id = $1", jid)

            await wait_for(offered, timeout=30, what="the first offer")
            first = await offered()
            fs.kill("worker")
            fs.start("worker")

            async def offered_again() -> bool:
                row = await db.fetchrow("SELECT task_token, expired_at FROM dispatches WHERE job_id = $1", jid)
                return row["task_token"] != first and row["expired_at"] is None

            await wait_for(offered_again, timeout=60, what="the job offered again after run_job's heartbeat timeout")
        finally:
            agent.proc.send_signal(signal.SIGCONT)
            await db.close()
        done = await wait_terminal(api, jid, timeout=60)
        assert (done["state"], done["exit_code"]) == ("completed", 0), done
        assert marker.read_text() == "ran\n", "the script ran exactly once"
        assert [line["text"] for line in await replay(api, jid)] == ["ran"]
        client = await connect(fs.endpoints["temporal_address"])
        events = (await client.get_workflow_handle(jid).fetch_history()).events
        scheduled = [
            e.event_id
            for e in events
            if e.HasField("activity_task_scheduled_event_attributes")
            and e.activity_task_scheduled_event_attributes.activity_type.name == RUN_JOB
        ]
        timed_out = [
            e.activity_task_timed_out_event_attributes.scheduled_event_id
            for e in events
            if e.HasField("activity_task_timed_out_event_attributes")
        ]
        assert len(scheduled) == 2 and timed_out == scheduled[:1], (scheduled, timed_out)


async def _up(api) -> bool:
    try:
        return (await api.get("/api/health")).status_code == 200
    except Exception:
        return False


async def _sleep_past(seconds: float) -> None:
    """The outage itself: nothing to wait on but time (the API is down on purpose)."""
    deadline = time.monotonic() + seconds
    await wait_for(lambda: time.monotonic() >= deadline, timeout=seconds + 5, interval=0.2, what="the outage")
