"""The reaper frees what a workflow could not: a job whose workflow was terminated from the UI."""

from __future__ import annotations

import pytest

from boxrun.temporal import connect
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
