"""The box agent's calls to the API (node-token auth): log batches and the start-of-run claim."""

from __future__ import annotations

import httpx

from boxrun import logbatch
from boxrun.agent.logpump import LogRejected


def _permanent(resp: httpx.Response) -> bool:
    return 400 <= resp.status_code < 500 and resp.status_code not in (408, 429)


class AgentApi:
    def __init__(self, http: httpx.AsyncClient) -> None:
        self._http = http

    async def send(self, job_id: str, first_seq: int, runs: list[tuple[int, str, float]], data: bytes) -> int:
        """One log batch; returns the highest seq the API holds (LogSink)."""
        resp = await self._http.post(
            f"/api/agent/jobs/{job_id}/logs",
            content=logbatch.encode(first_seq, runs, data),
            headers={"content-type": logbatch.MEDIA_TYPE},
        )
        if _permanent(resp):
            raise LogRejected(f"API refused log batch: HTTP {resp.status_code} {resp.text[:200]}")
        resp.raise_for_status()
        return resp.json()["stored_through"]

    async def claim(self, job_id: str) -> str | None:
        """Ask whether the job may start here now; None if yes, else the reason it may not.
        Raises httpx errors when the API cannot answer (the caller retries)."""
        resp = await self._http.post(f"/api/agent/jobs/{job_id}/claim")
        if resp.status_code == 409 or resp.status_code == 403 or resp.status_code == 404:
            return resp.json().get("detail", f"HTTP {resp.status_code}")
        resp.raise_for_status()
        return None
