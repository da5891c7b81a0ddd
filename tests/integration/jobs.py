"""Submitting jobs to a running stack and waiting for them, for the e2e tests."""

from __future__ import annotations

import httpx

from boxrun.constants import TERMINAL_STATES
from tests.conftest import wait_for


async def submit(api: httpx.AsyncClient, script: str, **fields) -> dict:
    body = {"box": "local-1", "script": script, **fields}
    resp = await api.post("/api/jobs", json=body)
    assert resp.status_code == 201, resp.text
    return resp.json()


async def wait_terminal(api: httpx.AsyncClient, job_id: str, timeout: float = 60) -> dict:
    async def done():
        job = (await api.get(f"/api/jobs/{job_id}")).json()
        return job if job["state"] in TERMINAL_STATES else None

    return await wait_for(done, timeout=timeout, interval=0.05, what=f"job {job_id} to end")


async def replay(api: httpx.AsyncClient, job_id: str, page: int = 1000) -> list[dict]:
    lines: list[dict] = []
    while True:
        got = (
            await api.get(f"/api/jobs/{job_id}/logs", params={"after": lines[-1]["seq"] if lines else 0, "limit": page})
        ).json()["data"]
        lines += got
        if len(got) < page:
            return lines


async def has_lines(api: httpx.AsyncClient, job_id: str, n: int) -> bool:
    """At least n lines of the job are stored (False while the API is unreachable, e.g. restarting)."""
    try:
        return (await api.get(f"/api/jobs/{job_id}")).json()["log_lines"] >= n
    except httpx.HTTPError:
        return False
