"""The agent's log pump: one sequence per job, batches to the API, resent until acknowledged."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import Protocol

import httpx

log = logging.getLogger(__name__)


class LogRejected(Exception):
    """The API refused a batch for good (4xx other than 408/429): resending cannot help."""


class LogSink(Protocol):
    async def send(self, job_id: str, lines: list[dict]) -> None:
        """Deliver a batch; must be idempotent by seq. Raises on failure (the pump retries)."""


class ApiLogSink:
    """Posts batches to the API's agent ingest with the box's node token."""

    def __init__(self, http: httpx.AsyncClient) -> None:
        self._http = http

    async def send(self, job_id: str, lines: list[dict]) -> None:
        resp = await self._http.post(f"/api/agent/jobs/{job_id}/logs", json={"lines": lines})
        if 400 <= resp.status_code < 500 and resp.status_code not in (408, 429):
            raise LogRejected(f"API refused log batch: HTTP {resp.status_code} {resp.text[:200]}")
        resp.raise_for_status()


class LogPump:
    """Numbers lines 1, 2, 3... in the order they are added and ships them in batches.

    A batch goes out as soon as the previous one is acknowledged, so an idle job's line leaves
    at once and a chatty job's lines coalesce while a request is in flight. Failed sends are
    retried (same seqs, so the API's ON CONFLICT DO NOTHING keeps them exactly once).
    """

    def __init__(self, sink: LogSink, job_id: str, *, max_lines: int = 2000, max_bytes: int = 1 << 20,
                 linger_s: float = 0.002) -> None:
        self._sink = sink
        self._job_id = job_id
        self._max_lines = max_lines
        self._max_bytes = max_bytes
        self._linger_s = linger_s
        self._pending: list[dict] = []
        self._seq = 0
        self._acked = 0
        self._more = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task | None = None

    @property
    def last_seq(self) -> int:
        return self._seq

    @property
    def acked(self) -> int:
        return self._acked

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"logpump-{self._job_id}")

    def add(self, stream: str, text: str) -> None:
        self._seq += 1
        self._pending.append({"seq": self._seq, "ts": datetime.now(UTC).isoformat(), "stream": stream, "text": text})
        self._more.set()

    async def close(self, *, tick_s: float | None = None, on_tick=None) -> None:
        """Wait until every line added so far is acknowledged, calling `on_tick` every `tick_s`
        meanwhile (run_job heartbeats there, so a slow or absent API is not a dead box)."""
        self._closing = True
        self._more.set()
        if self._task is None:
            return
        while True:
            done, _ = await asyncio.wait({self._task}, timeout=tick_s)
            if done:
                return self._task.result()
            if on_tick is not None:
                on_tick()

    async def abort(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            if not self._pending:
                if self._closing:
                    return
                self._more.clear()
                await self._more.wait()
                if self._linger_s and not self._closing:
                    await asyncio.sleep(self._linger_s)  # let a burst of lines share one request
                continue
            batch = self._take_batch()
            await self._deliver(batch)
            self._acked = batch[-1]["seq"]
            del self._pending[: len(batch)]

    def _take_batch(self) -> list[dict]:
        size = 0
        for i, line in enumerate(self._pending):
            size += len(line["text"]) + 64
            if i + 1 >= self._max_lines or size >= self._max_bytes:
                return self._pending[: i + 1]
        return self._pending[:]

    async def _deliver(self, batch: list[dict]) -> None:
        delay = 0.05
        while True:
            try:
                await self._sink.send(self._job_id, batch)
                return
            except (httpx.HTTPError, OSError) as exc:
                log.warning("log batch %d..%d for job %s not delivered (%s); retrying in %.2fs",
                            batch[0]["seq"], batch[-1]["seq"], self._job_id, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
