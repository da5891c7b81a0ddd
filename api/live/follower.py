"""Following a job's transcript: what SSE and WebSocket followers receive, batch by batch.

A follower holds a cursor (the last seq it was given) and the job's shared tail
(`boxrun.api.live.job_tail`). At each wake-up it takes everything after its cursor at once: from the tail's
ring, already encoded, when its cursor lies inside it (the usual case); otherwise from Postgres, one
page at a time, until it reaches the ring. So the API holds at most one page or one ring slice per
follower, whatever the follower's speed, and a follower holds no database connection between reads.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import asyncpg

from boxrun import logstore
from boxrun.api.live.job_tail import KEEPALIVE, PAGE, JobTail, Tails, encode_event, encode_log, ws_event, ws_message
from boxrun.constants import JobState


@dataclass
class Batch:
    """What a follower sends at one wake-up, in this order: lines (SSE-encoded; joined into one
    bytes object for SSE, one per line for WebSocket), a state change, `done`; or a keepalive."""

    lines: bytes | list[bytes] = b""
    state: JobState | None = None
    done: dict | None = None
    keepalive: bool = False

    def sse(self) -> bytes:
        if self.keepalive:
            return KEEPALIVE
        parts: list[bytes] = [self.lines] if isinstance(self.lines, bytes) else list(self.lines)
        if self.state is not None:
            parts.append(encode_event("state", {"state": self.state.value}))
        if self.done is not None:
            parts.append(encode_event("done", self.done))
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def ws(self) -> list[str]:
        if self.keepalive:
            return [ws_event("keepalive")]
        assert not isinstance(self.lines, bytes) or not self.lines, "a WebSocket follower takes lines one by one"
        out = [] if isinstance(self.lines, bytes) else [ws_message(line) for line in self.lines]
        if self.state is not None:
            out.append(ws_event("state", {"state": self.state.value}))
        if self.done is not None:
            out.append(ws_event("done", self.done))
        return out


class Follower:
    """One SSE or WebSocket follower of a job, from seq `after` on. Call close() when done with it.

    Its writer (EventStream) marks each write with `writing_since`; the job's tail calls stalled()
    on a follower whose write has not finished for stall_s, which cancels the writer's task."""

    def __init__(
        self,
        tails: Tails,
        pool: asyncpg.Pool,
        org_id: str,
        job_id: str,
        *,
        after: int,
        keepalive_s: float,
        stall_s: float,
        joined: bool = True,
        log_head: int | None = None,
    ) -> None:
        self.job_id = str(job_id)
        self.cursor = after  # the last seq handed out
        # the job's stored head when the follower came: a tail this follower starts begins no later
        # (a cursor past the end must not keep the lines before it out of the ring)
        self.start = after if log_head is None else min(after, log_head)
        self.pool = pool
        self.keepalive_s = keepalive_s
        self.stall_s = stall_s
        self.joined = joined
        self.writing_since: float | None = None  # loop time a write began, None between writes
        self.writer: asyncio.Task | None = None
        self.is_stalled = False
        self._state: JobState | None = None  # the last state handed out
        self._org_id = org_id
        self._tails = tails
        self._tail: JobTail | None = None  # attached when batches() starts, detached by close()
        self._closed = False

    def close(self) -> None:
        self._closed = True
        if self._tail is not None:
            self._tails.detach(self, self._tail)
            self._tail = None

    def stalled(self) -> None:
        if not self.is_stalled and self.writer is not None:
            self.is_stalled = True
            self.writer.cancel()

    async def batches(self) -> AsyncIterator[Batch]:
        """Every batch until (and with) `done`. Between batches the consumer writes; the follower
        looks again when it asks for the next one, so a slow consumer gets bigger batches. After
        keepalive_s without a batch it yields a keepalive (the tail wakes it now and then)."""
        assert self._tail is None and not self._closed, "one batches() per follower"
        tail = self._tail = self._tails.attach(self, self.pool, self._org_id)
        loop = asyncio.get_running_loop()
        last_sent = loop.time()
        while True:
            if tail.failed is not None:
                raise RuntimeError(f"the tail of job {self.job_id} failed") from tail.failed
            changed = tail.changed  # before looking: a change from now on sets it
            ring = tail.ring
            if ring.holds(self.cursor):
                # state and final describe every line up to ring.head: take them together
                state, final = tail.state, tail.final
                lines: bytes | list[bytes]
                if self.joined:
                    lines, last = ring.bytes_after(self.cursor)
                else:
                    lines, last = ring.slice_after(self.cursor)
                caught_up = last >= ring.head
            else:
                state, final = tail.state, tail.final  # true of every line the read below returns
                async with self.pool.acquire() as conn:
                    page = await logstore.read(conn, self.job_id, self.cursor, PAGE)
                encoded = [encode_log(line) for line in page]
                lines = b"".join(encoded) if self.joined else encoded
                last = page[-1].seq if page else self.cursor
                caught_up = len(page) < PAGE
            batch = Batch(lines=lines)
            self.cursor = last
            if caught_up:
                if state is not None and state != self._state:
                    batch.state = self._state = state
                if final and state is not None:
                    batch.done = {"state": state.value, "last_seq": self.cursor}
            if batch.lines or batch.state or batch.done:
                yield batch
                if batch.done:
                    return
                last_sent = loop.time()
                continue
            if not final and self.cursor >= ring.head:
                tail.want_more()
            if loop.time() - last_sent >= self.keepalive_s:
                yield Batch(keepalive=True)
                last_sent = loop.time()
                continue
            await changed.wait()
