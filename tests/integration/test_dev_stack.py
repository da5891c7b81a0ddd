"""`boxrun dev` itself: endpoints.json, a clean stop, and a restart that keeps earlier jobs."""

from __future__ import annotations

import hashlib

import httpx
import pytest

from tests.conftest import pid_alive
from tests.integration.conftest import DevStackProcess
from tests.integration.jobs import replay, submit, wait_terminal

pytestmark = pytest.mark.e2e

SCRIPT = """
import os
print("persist me")
open(os.path.join(os.environ["BOXRUN_ARTIFACTS_DIR"], "keep.txt"), "w").write("kept across restarts\\n")
"""


def client(endpoints: dict) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=endpoints["api_url"], timeout=30, headers={"Authorization": f"Bearer {endpoints['token']}"}
    )


async def test_restart_on_the_same_data_dir_keeps_jobs_logs_and_artifacts(private_tmp):
    first = DevStackProcess(private_tmp / "dev", boxes=1)
    try:
        ep = first.endpoints
        assert set(ep) >= {"api_url", "temporal_address", "temporal_ui_url", "s3_endpoint", "token", "boxes"}
        assert [b["name"] for b in ep["boxes"]] == ["local-1"] and pid_alive(ep["boxes"][0]["pid"])
        async with client(ep) as api:
            job = await submit(api, SCRIPT)
            assert (await wait_terminal(api, job["id"]))["state"] == "completed"
    finally:
        assert first.stop() == 0
    assert not any(pid_alive(pid) for pid in ep["pids"].values()), "Ctrl-C/SIGTERM must stop every child"

    second = DevStackProcess(private_tmp / "dev", boxes=1)
    try:
        ep2 = second.endpoints
        assert ep2["token"] == ep["token"]
        async with client(ep2) as api:
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
