"""Submitting jobs to a running stack and waiting for them, for the e2e tests: thin helpers over
the product's client (boxrun.client) on the test's raw `api` httpx client, answering the API's
JSON as dicts (what the tests compare)."""

from __future__ import annotations

from typing import Any

import httpx

from boxrun.client import BoxrunClient
from boxrun.errors import Unavailable
from tests.conftest import wait_for


async def submit(api: httpx.AsyncClient, script: str, **fields: Any) -> dict:
    job = await BoxrunClient.over(api).submit(**{"box": "local-1", "script": script, **fields})
    return job.model_dump(mode="json")


async def wait_terminal(api: httpx.AsyncClient, job_id: str, timeout: float = 60) -> dict:
    client = BoxrunClient.over(api)

    async def done() -> dict | None:
        job = await client.get(job_id)
        return job.model_dump(mode="json") if job.state.terminal else None

    return await wait_for(done, timeout=timeout, interval=0.05, what=f"job {job_id} to end")


async def replay(api: httpx.AsyncClient, job_id: str, page: int = 1000) -> list[dict]:
    return [line.model_dump(mode="json") async for line in BoxrunClient.over(api).logs(job_id, page=page)]


async def has_lines(api: httpx.AsyncClient, job_id: str, n: int) -> bool:
    """At least n lines of the job are stored (False while the API is unreachable, e.g. restarting)."""
    try:
        return (await BoxrunClient.over(api).get(job_id)).log_lines >= n
    except Unavailable:
        return False


async def archive(api: httpx.AsyncClient, job_id: str) -> bytes | None:
    """The job's gzip transcript archive from storage (its presigned redirect), or None while
    it is not written yet (404)."""
    resp = await api.get(f"/api/jobs/{job_id}/logs/archive")
    if resp.status_code == 404:
        return None
    async with httpx.AsyncClient() as anon:
        return (await anon.get(resp.headers["location"])).content
