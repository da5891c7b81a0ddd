"""The agent's log pump: one sequence per job, batches to the API, resent until acknowledged.

Lines wait in memory up to a bound; past it they go to a spill file in the workspace (in order),
so a long API outage costs disk, not memory, and never stops the script or loses a line.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from pathlib import Path
from typing import Protocol

import httpx

log = logging.getLogger(__name__)

_CODES = {"stdout": b"o", "stderr": b"e", "output": b"u", "system": b"s"}
_NAMES = {v[0]: k for k, v in _CODES.items()}
_HEAD = struct.Struct("<dBI")  # ts, stream code, text length


class LogRejected(Exception):
    """The API refused a batch for good (4xx other than 408/429): resending cannot help."""


class LogSink(Protocol):
    async def send(self, job_id: str, first_seq: int, ts: list[float], streams: list[str],
                   texts: list[str]) -> int:
        """Deliver lines first_seq..; idempotent by seq. Returns the highest seq the receiver holds.
        Raises on failure (the pump retries) or LogRejected (it gives up)."""


class _Spill:
    """Append-only file of lines that did not fit in memory, read back in order."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._out = path.open("ab")
        self._in = path.open("rb")
        self.pending = 0

    def write(self, ts: float, stream: str, text: str) -> None:
        data = text.encode("utf-8", "surrogatepass")
        self._out.write(_HEAD.pack(ts, _CODES[stream][0], len(data)) + data)
        self.pending += 1

    def read(self, n: int) -> list[tuple[float, str, str]]:
        self._out.flush()
        rows = []
        while len(rows) < n and self.pending:
            ts, code, size = _HEAD.unpack(self._in.read(_HEAD.size))
            rows.append((ts, _NAMES[code], self._in.read(size).decode("utf-8", "surrogatepass")))
            self.pending -= 1
        if not self.pending:  # drained: start the file afresh
            self._out.truncate(0)
            self._out.seek(0)
            self._in.seek(0)
        return rows

    def close(self) -> None:
        self._out.close()
        self._in.close()
        self.path.unlink(missing_ok=True)


class LogPump:
    """Numbers lines 1, 2, 3... in the order they are added and ships them in batches.

    A batch goes out as soon as the previous one is acknowledged, so an idle job's line leaves at
    once and a chatty job's lines coalesce while a request is in flight. Failed sends are retried
    with the same seqs; the API stores each seq once.
    """

    def __init__(self, sink: LogSink, job_id: str, *, max_lines: int = 5000, max_bytes: int = 1 << 20,
                 memory_limit: int = 64 << 20, spill_path: Path | None = None, linger_s: float = 0.002) -> None:
        self._sink = sink
        self._job_id = job_id
        self._max_lines = max_lines
        self._max_bytes = max_bytes
        self._memory_limit = memory_limit
        self._spill_path = spill_path
        self._spill: _Spill | None = None
        self._linger_s = linger_s
        # lines in memory, oldest first, as parallel lists (trimmed from the front once acked)
        self._ts: list[float] = []
        self._streams: list[str] = []
        self._texts: list[str] = []
        self._mem_bytes = 0
        self._seq = 0          # last seq handed out
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

    @property
    def spilled(self) -> bool:
        return self._spill is not None and self._spill.pending > 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"logpump-{self._job_id}")

    def add(self, stream: str, text: str) -> None:
        self.add_many(stream, [text])

    def add_many(self, stream: str, texts: list[str]) -> None:
        """Lines read together share one timestamp (when the agent read them)."""
        if not texts:
            return
        self._seq += len(texts)
        now = time.time()
        if (self._spill is not None and self._spill.pending) or (
                self._mem_bytes > self._memory_limit and self._spill_path is not None):
            self._spill = self._spill or _Spill(self._spill_path)
            for text in texts:  # keep order: once spilling, new lines queue behind the spilled ones
                self._spill.write(now, stream, text)
        else:
            n = len(texts)
            self._ts.extend([now] * n)
            self._streams.extend([stream] * n)
            self._texts.extend(texts)
            self._mem_bytes += sum(map(len, texts)) + 64 * n
        self._more.set()

    async def close(self, *, tick_s: float | None = None, on_tick=None) -> None:
        """Wait until every line added so far is acknowledged, calling `on_tick` every `tick_s`
        meanwhile (run_job heartbeats there, so a slow or absent API is not a dead box)."""
        self._closing = True
        self._more.set()
        if self._task is None:
            return
        try:
            while True:
                done, _ = await asyncio.wait({self._task}, timeout=tick_s)
                if done:
                    return self._task.result()
                if on_tick is not None:
                    on_tick()
        finally:
            if self._spill is not None:
                self._spill.close()

    def _refill(self) -> None:
        if not self._texts and self._spill is not None and self._spill.pending:
            for ts, stream, text in self._spill.read(self._max_lines * 4):
                self._ts.append(ts)
                self._streams.append(stream)
                self._texts.append(text)
                self._mem_bytes += len(text) + 64

    async def _run(self) -> None:
        while True:
            self._refill()
            if not self._texts:
                if self._closing:
                    return
                self._more.clear()
                await self._more.wait()
                if self._linger_s and not self._closing:
                    await asyncio.sleep(self._linger_s)  # let a burst of lines share one request
                continue
            count = min(len(self._texts), self._max_lines)
            size = sum(map(len, self._texts[:count])) + 64 * count
            while count > 1 and size > self._max_bytes:  # shrink to the byte bound
                count //= 2
                size = sum(map(len, self._texts[:count])) + 64 * count
            first = self._acked + 1
            stored = await self._deliver(first, self._ts[:count], self._streams[:count], self._texts[:count])
            done = min(count, stored - self._acked)
            if done <= 0:
                raise LogRejected(f"the API holds lines only up to {stored}, below {first}")
            self._mem_bytes -= sum(map(len, self._texts[:done])) + 64 * done
            del self._ts[:done], self._streams[:done], self._texts[:done]
            self._acked += done

    async def _deliver(self, first: int, ts: list[float], streams: list[str], texts: list[str]) -> int:
        delay = 0.05
        while True:
            try:
                return await self._sink.send(self._job_id, first, ts, streams, texts)
            except (httpx.HTTPError, OSError, ValueError) as exc:
                log.warning("log lines %d..%d of job %s not delivered (%s); retrying in %.2fs",
                            first, first + len(texts) - 1, self._job_id, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
