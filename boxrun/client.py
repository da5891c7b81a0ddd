"""A small async client of the boxrun REST API (the SDK grows from here; the CLI uses it)."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import platformdirs

from boxrun.sse import Event, read_events

TERMINAL = ("completed", "failed", "cancelled", "timed_out", "unschedulable")


def dev_endpoints_path() -> Path:
    return Path(platformdirs.user_data_dir("boxrun")) / "dev" / "endpoints.json"


def resolve(api_url: str | None, token: str | None) -> tuple[str, str]:
    """Explicit values, else BOXRUN_API_URL / BOXRUN_API_TOKEN, else the local `boxrun dev` stack."""
    api_url = api_url or os.environ.get("BOXRUN_API_URL")
    token = token or os.environ.get("BOXRUN_API_TOKEN")
    if not (api_url and token):
        path = dev_endpoints_path()
        if not path.exists():
            raise ValueError(
                "no API given: pass --api-url/--token, set BOXRUN_API_URL/BOXRUN_API_TOKEN, "
                f"or start `boxrun dev` (which writes {path})"
            )
        endpoints = json.loads(path.read_text())
        api_url, token = api_url or endpoints["api_url"], token or endpoints["token"]
    return api_url, token


class BoxrunClient:
    def __init__(self, api_url: str, token: str, *, timeout: float = 30.0) -> None:
        self.http = httpx.AsyncClient(base_url=api_url, timeout=timeout, headers={"Authorization": f"Bearer {token}"})

    async def __aenter__(self) -> BoxrunClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.http.aclose()

    async def _json(self, method: str, path: str, **kw) -> Any:
        resp = await self.http.request(method, path, **kw)
        resp.raise_for_status()
        return resp.json()

    async def submit(self, script: str, *, box: str | None = None, **fields) -> dict:
        return await self._json("POST", "/api/jobs", json={"box": box, "script": script, **fields})

    async def get(self, job_id: str) -> dict:
        return await self._json("GET", f"/api/jobs/{job_id}")

    async def cancel(self, job_id: str) -> dict:
        return await self._json("POST", f"/api/jobs/{job_id}/cancel")

    async def logs(self, job_id: str, *, after: int = 0, page: int = 5000) -> AsyncIterator[dict]:
        while True:
            got = (await self._json("GET", f"/api/jobs/{job_id}/logs", params={"after": after, "limit": page}))["data"]
            for line in got:
                yield line
            if len(got) < page:
                return
            after = got[-1]["seq"]

    async def follow(self, job_id: str, *, after: int = 0, retry_s: float = 1.0) -> AsyncIterator[Event]:
        """Every event until `done`; if the connection drops it reconnects with Last-Event-ID = the
        last seq seen, so it continues exactly after that line."""
        while True:
            try:
                async with self.http.stream(
                    "GET",
                    f"/api/jobs/{job_id}/logs/stream",
                    headers={"Last-Event-ID": str(after)},
                    timeout=httpx.Timeout(10.0, read=None),
                ) as resp:
                    if resp.status_code >= 400:
                        await resp.aread()
                        resp.raise_for_status()
                    async for ev in read_events(resp):
                        if ev.event == "log":
                            after = ev.data["seq"]
                        yield ev
                        if ev.event == "done":
                            return
            except (httpx.TransportError, httpx.RemoteProtocolError):
                await asyncio.sleep(retry_s)  # the API restarted or the network blinked: resume

    async def wait(self, job_id: str, *, poll_s: float = 0.5) -> dict:
        while (job := await self.get(job_id))["state"] not in TERMINAL:
            await asyncio.sleep(poll_s)
        return job


def exit_code_for(job: dict) -> int:
    """The CLI's exit status for a job: 0 completed, the script's own code if it failed with one,
    124 timed out, 130 cancelled, 1 otherwise."""
    state = job["state"]
    if state == "completed":
        return 0
    if state == "failed" and job.get("exit_code") and 0 < job["exit_code"] < 256:
        return job["exit_code"]
    return {"timed_out": 124, "cancelled": 130}.get(state, 1)
