"""The agent's log pump: one sequence per job, batches to the API, resent until acknowledged.

Lines arrive as blocks (bytes of whole lines from one read of one stream, see lines.py) and stay
blocks: a batch is the concatenation of some blocks plus one run (count, stream, time) per block.
Secret values (the bundle's `mask`) become `***` as a block is added, before anything keeps it.
Blocks wait in memory up to a bound; past it they go to a spill file in the workspace (in order),
so a long API outage costs disk, not memory, and never stops the script or loses a line.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import httpx

from boxrun.agent.mask import Masker
from boxrun.errors import BoxrunError
from boxrun.logbatch import nth_newline

log = logging.getLogger(__name__)

_CODES = {"stdout": 0, "stderr": 1, "output": 2, "system": 3}
_NAMES = {v: k for k, v in _CODES.items()}
_HEAD = struct.Struct("<dBII")  # ts, stream code, lines, bytes
_OVERHEAD = 64  # bytes accounted per block besides its data


class LogRejected(Exception):
    """The API refused a batch for good (4xx other than 408/429): resending cannot help."""


class LogSink(Protocol):
    async def send(self, job_id: str, first_seq: int, runs: list[tuple[int, str, float]], data: bytes) -> int:
        """Deliver lines first_seq.. (`runs` of (lines, stream, ts) over `data`, whole lines each
        ended by a newline); idempotent by seq. Returns the highest seq the receiver holds.
        Raises on failure (the pump retries) or LogRejected (it gives up)."""


@dataclass
class _Block:
    stream: str
    ts: float
    data: bytes
    lines: int

    def split(self, n: int) -> tuple[_Block, _Block]:
        cut = nth_newline(self.data, n) + 1
        return (
            _Block(self.stream, self.ts, self.data[:cut], n),
            _Block(self.stream, self.ts, self.data[cut:], self.lines - n),
        )


class _Spill:
    """Append-only file of blocks that did not fit in memory, read back in order."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._out = path.open("ab")
        self._in = path.open("rb")
        self.pending = 0

    def write(self, block: _Block) -> None:
        self._out.write(_HEAD.pack(block.ts, _CODES[block.stream], block.lines, len(block.data)))
        self._out.write(block.data)
        self.pending += 1

    def read(self, max_bytes: int) -> list[_Block]:
        self._out.flush()
        blocks, size = [], 0
        while size < max_bytes and self.pending:
            ts, code, lines, length = _HEAD.unpack(self._in.read(_HEAD.size))
            blocks.append(_Block(_NAMES[code], ts, self._in.read(length), lines))
            size += length
            self.pending -= 1
        if not self.pending:  # drained: start the file afresh
            self._out.truncate(0)
            self._out.seek(0)
            self._in.seek(0)
        return blocks

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

    def __init__(
        self,
        sink: LogSink,
        job_id: str,
        *,
        max_lines: int = 50_000,
        max_bytes: int = 4 << 20,
        memory_limit: int = 64 << 20,
        spill_path: Path | None = None,
        linger_s: float = 0.002,
        mask: Masker | None = None,
    ) -> None:
        self._sink = sink
        self._mask = mask if mask else None  # the job's secret values (agent/mask.py)
        self._job_id = job_id
        self._max_lines = max_lines
        self._max_bytes = max_bytes
        self._memory_limit = memory_limit
        self._spill_path = spill_path
        self._spill: _Spill | None = None
        self._linger_s = linger_s
        self._blocks: deque[_Block] = deque()  # in memory, oldest first, each at most max_lines
        self._mem_bytes = 0
        self._seq = 0  # last seq handed out
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
        """One line of text (the agent's own notices); a newline in it becomes a space."""
        self.add_block(stream, text.replace("\n", " ").encode("utf-8", "replace") + b"\n", 1)

    def add_block(self, stream: str, data: bytes, lines: int) -> None:
        """`lines` whole lines (valid UTF-8, each ended by b"\\n") read together: they share one
        timestamp, when the agent read them. Secret values are masked here, before the lines
        are kept in memory, spilled or sent."""
        if not lines:
            return
        if self._mask is not None:
            data = self._mask.mask(data)
        self._seq += lines
        block = _Block(stream, time.time(), data, lines)
        while block.lines > self._max_lines:
            head, block = block.split(self._max_lines)
            self._keep(head)
        self._keep(block)
        self._more.set()

    def _keep(self, block: _Block) -> None:
        spilling = self._spill is not None and self._spill.pending
        if spilling or (self._mem_bytes > self._memory_limit and self._spill_path is not None):
            if self._spill is None:
                assert self._spill_path is not None
                self._spill = _Spill(self._spill_path)
            self._spill.write(block)  # keep order: once spilling, new lines queue behind the spilled ones
        else:
            self._blocks.append(block)
            self._mem_bytes += len(block.data) + _OVERHEAD

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
        if not self._blocks and self._spill is not None and self._spill.pending:
            for block in self._spill.read(self._max_bytes * 2):
                self._blocks.append(block)
                self._mem_bytes += len(block.data) + _OVERHEAD

    def _batch(self) -> tuple[list[tuple[int, str, float]], bytes, int]:
        """Whole blocks from the front, within the line and byte bounds (at least one block)."""
        runs: list[tuple[int, str, float]] = []
        parts: list[bytes] = []
        lines = size = 0
        for block in self._blocks:
            if runs and (lines + block.lines > self._max_lines or size + len(block.data) > self._max_bytes):
                break
            runs.append((block.lines, block.stream, block.ts))
            parts.append(block.data)
            lines += block.lines
            size += len(block.data)
        return runs, b"".join(parts), lines

    def _drop(self, n: int) -> None:
        """Forget the first n lines in memory (acknowledged)."""
        while n:
            block = self._blocks[0]
            if block.lines > n:
                done, self._blocks[0] = block.split(n)
                self._mem_bytes -= len(done.data)
                return
            self._blocks.popleft()
            self._mem_bytes -= len(block.data) + _OVERHEAD
            n -= block.lines

    async def _run(self) -> None:
        while True:
            self._refill()
            if not self._blocks:
                if self._closing:
                    return
                self._more.clear()
                await self._more.wait()
                if self._linger_s and not self._closing:
                    await asyncio.sleep(self._linger_s)  # let a burst of lines share one request
                continue
            runs, data, count = self._batch()
            first = self._acked + 1
            stored = await self._deliver(first, runs, data, count)
            done = min(count, stored - self._acked)
            if done <= 0:
                raise LogRejected(f"the API holds lines only up to {stored}, below {first}")
            self._drop(done)
            self._acked += done

    async def _deliver(self, first: int, runs: list[tuple[int, str, float]], data: bytes, count: int) -> int:
        delay = 0.05
        while True:
            try:
                return await self._sink.send(self._job_id, first, runs, data)
            except (BoxrunError, httpx.HTTPError, OSError, ValueError) as exc:
                log.warning(
                    "log lines %d..%d of job %s not delivered (%s); retrying in %.2fs",
                    first,
                    first + count - 1,
                    self._job_id,
                    exc,
                    delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
