"""`boxrun dev` itself: endpoints.json, a clean stop that drains the agents, and a restart that
keeps earlier jobs, their logs and their artifacts (SeaweedFS keeps objects on disk)."""

from __future__ import annotations

import hashlib
import json
import stat
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from boxrun.dev.stack import AGENT_DRAIN_S
from tests.conftest import pid_alive, wait_for
from tests.integration.conftest import DevStackProcess
from tests.integration.jobs import has_lines, replay, submit, wait_terminal

pytestmark = pytest.mark.e2e

SCRIPT = """
import os
print("persist me")
open(os.path.join(os.environ["BOXRUN_ARTIFACTS_DIR"], "keep.txt"), "w").write("kept across restarts\\n")
"""
# running when the stack stops: the first outlives the agent's drain, the second ends within it
SLEEPER = "import time\nprint('sleeping', flush=True)\ntime.sleep(60)\nprint('never')"
SHORT = "import time\nprint('started', flush=True)\ntime.sleep(4)\nprint('finished during the drain')"


def client(endpoints: dict) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=endpoints["api_url"], timeout=30, headers={"Authorization": f"Bearer {endpoints['token']}"}
    )


async def test_restart_on_the_same_data_dir_keeps_jobs_logs_and_artifacts(private_tmp):
    first = DevStackProcess(private_tmp / "dev", boxes=2)
    try:
        ep = first.endpoints
        assert set(ep) >= {"api_url", "temporal_address", "temporal_ui_url", "s3_endpoint", "token", "boxes"}
        assert [b["name"] for b in ep["boxes"]] == ["local-1", "local-2"] and pid_alive(ep["boxes"][0]["pid"])
        data_dir = private_tmp / "dev"
        modes = {name: stat.S_IMODE((data_dir / name).stat().st_mode) for name in ("secrets.json", "endpoints.json")}
        assert modes == {"secrets.json": 0o600, "endpoints.json": 0o600}, "tokens and passwords: the user's only"
        assert stat.S_IMODE(data_dir.stat().st_mode) & 0o006 == 0  # as root: o+x, to the job users' workspaces
        assert set(json.loads((data_dir / "secrets.json").read_text())["postgres"]) == {
            "superuser_password",
            "app_password",
            "runtime_password",
        }
        async with client(ep) as api:
            job = await submit(api, SCRIPT)
            assert (await wait_terminal(api, job["id"]))["state"] == "completed"
            sleeper = await submit(api, SLEEPER)
            short = await submit(api, SHORT, box="local-2")
            for running in (sleeper, short):
                await wait_for(lambda j=running: has_lines(api, j["id"], 1), what=f"job {running['id']} to print")
    finally:
        stopping = time.monotonic()
        assert first.stop() == 0
    assert time.monotonic() - stopping < AGENT_DRAIN_S + 30, "the drain is bounded, Ctrl-C stays quick"
    assert not any(pid_alive(pid) for pid in ep["pids"].values()), "Ctrl-C/SIGTERM must stop every child"
    s3_port = urlsplit(ep["s3_endpoint"]).port
    assert not Path(f"/tmp/seaweedfs-s3-{s3_port}.sock").exists(), "the killed store's sockets are removed"

    second = DevStackProcess(private_tmp / "dev", boxes=2)
    try:
        ep2 = second.endpoints
        assert ep2["token"] == ep["token"]
        async with client(ep2) as api:
            # stopped mid-run: not lost ("box heartbeat lost") but failed by the agent's drain limit
            cut = await wait_terminal(api, sleeper["id"])
            assert (cut["state"], cut["error"]) == ("failed", "agent stopped (drain limit reached)")
            texts = [line["text"] for line in await replay(api, sleeper["id"])]
            assert "sleeping" in texts and "never" not in texts
            drained = await wait_terminal(api, short["id"])
            assert drained["state"] == "completed", drained
            assert [line["text"] for line in await replay(api, short["id"])] == ["started", "finished during the drain"]
            again = (await api.get(f"/api/jobs/{job['id']}")).json()
            assert again["state"] == "completed"
            assert [line["text"] for line in await replay(api, job["id"])] == ["persist me"]
            redirect = await api.get(f"/api/jobs/{job['id']}/artifacts/keep.txt")
            async with httpx.AsyncClient() as anon:
                body = (await anon.get(redirect.headers["location"])).content
            assert body == b"kept across restarts\n"
            arts = (await api.get(f"/api/jobs/{job['id']}/artifacts")).json()["data"]
            assert arts[0]["sha256"] == hashlib.sha256(body).hexdigest()
            new = await submit(api, "print('after restart')")
            assert (await wait_terminal(api, new["id"]))["state"] == "completed"
    finally:
        assert second.stop() == 0
