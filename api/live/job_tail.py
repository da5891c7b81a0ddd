"""The shared tail of a job's transcript in one API process: read once, encoded once, sent to every follower.

A `JobTail` exists while a job has followers in this process (`Tails`: created by the first, closed
with the last). Its task wakes on the job's NOTIFY (or a LISTEN reconnect, or the periodic
re-check), reads the new lines from Postgres from its head, then the job's state, encodes each line
once into its SSE bytes, keeps the most recent ones in a `Ring` bounded by bytes, and wakes the
followers; each takes all that lies after its own cursor as one write (`boxrun.api.live.follower`). A
follower whose cursor lies before the ring reads Postgres itself, page by page, until it reaches
the ring. A second task per tail, the ticker, wakes idle followers for their keepalives and stops
writes that have stalled.
"""

from __future__ import annotations

import asyncio
import json
import logging
from array import array
from bisect import bisect_right
from collections.abc import Sequence
from typing import Any, Protocol

import asyncpg

from boxrun import logstore
from boxrun.api.live.listener import Notifier, Subscription
from boxrun.constants import JobState
from boxrun.db import Q

log = logging.getLogger(__name__)


class Follower(Protocol):
    """What a tail needs of a follower (`boxrun.api.live.follower.Follower` is one)."""

    job_id: str
    start: int
    keepalive_s: float
    stall_s: float
    writing_since: float | None

    def stalled(self) -> None: ...


PAGE = 1000  # lines per Postgres read (the tail's and a lagging follower's)
RING_BYTES = 4 << 20  # encoded lines kept per job, newest first (the newest line is kept whatever its size)
CHUNK_BYTES = 256 << 10  # at most this much (or one line) of the ring goes out in one write
_JOIN_CACHE = 8  # joined slices kept per ring head: followers at the same cursor share one bytes object
RETRY_S = (0.2, 5.0)  # back-off of the tail's reads while Postgres is unavailable
# A wake-up costs each follower one write (~25 us of the API's core, mostly the send() system call).
# While lines keep coming, a tail wakes its followers at most once per COALESCE_PER_FOLLOWER_S times
# the followers of the whole process, but never waits more than COALESCE_MAX_S: up to 500
# followers a process makes at most ~10,000 follower writes a second (500 followers: a wake-up
# every 50 ms; one follower: at once), and under load a follower's batches grow, not its lag.
COALESCE_PER_FOLLOWER_S = 100e-6
COALESCE_MAX_S = 0.05

DB_ERRORS = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError)

KEEPALIVE = b": keepalive\n\n"


def encode_log(line: logstore.Line) -> bytes:
    """One `log` event on the wire: id = seq, data = the line's public JSON (ASCII, one line)."""
    return b"id: %d\nevent: log\ndata: %s\n\n" % (line.seq, json.dumps(line.public()).encode())


def encode_event(event: str, data: Any) -> bytes:
    return b"event: %s\ndata: %s\n\n" % (event.encode(), json.dumps(data).encode())


_LOG_MID = b"\nevent: log\ndata: "


def ws_message(encoded: bytes) -> str:
    """The WebSocket message {"event", "id", "data"} of a line, from its SSE encoding."""
    ident, _, data = encoded.partition(_LOG_MID)
    return '{"event": "log", "id": ' + ident[4:].decode() + ', "data": ' + data[:-2].decode() + "}"


def ws_event(event: str, data: Any = None) -> str:
    return json.dumps({"event": event, "id": None, "data": data})


class Ring:
    """The encoded lines of one job read since `head` (the seq it starts after), in seq order; the
    oldest are evicted once the ring holds more than `max_bytes` (the newest line always stays).

    Seqs may skip: a transcript past its cap has a gap of seqs whose lines were dropped from
    storage before the tail read them (docs/retention.md). The ring holds every stored line after
    `floor` (the seq it started after, or the last it evicted), whatever gap lies in between."""

    def __init__(self, head: int = 0, *, max_bytes: int | None = None, chunk_bytes: int | None = None) -> None:
        self.max_bytes = RING_BYTES if max_bytes is None else max_bytes
        self.chunk_bytes = CHUNK_BYTES if chunk_bytes is None else chunk_bytes
        self.head = head
        self.floor = head  # every stored line after this seq (up to head) is in the ring
        self.nbytes = 0
        self._lines: list[bytes | None] = []  # evicted entries become None until compacted away
        self._seqs = array("q")  # the seq of each entry of _lines
        self._start = 0  # index of the oldest line held in _lines
        self._joined: dict[int, tuple[bytes, int]] = {}

    def __len__(self) -> int:
        return len(self._lines) - self._start

    @property
    def first(self) -> int:
        """The seq of the oldest line held; head + 1 while empty."""
        return self._seqs[self._start] if len(self) else self.head + 1

    def holds(self, cursor: int) -> bool:
        """Every line after `cursor` (up to head) is in the ring."""
        return cursor >= self.floor

    def append(self, first_seq: int, encoded: list[bytes], *, seqs: Sequence[int] | None = None) -> None:
        """Lines first_seq.. (contiguous), or lines of `seqs` (increasing, past head: a gap allowed)."""
        if seqs is None:
            if first_seq != self.head + 1:
                raise ValueError(f"ring of head {self.head} cannot take seq {first_seq} next")
            seqs = range(first_seq, first_seq + len(encoded))
        elif len(seqs) != len(encoded) or (seqs and seqs[0] <= self.head):
            raise ValueError(f"ring of head {self.head} cannot take seqs from {seqs[0] if seqs else None}")
        if not encoded:
            return
        self._lines.extend(encoded)
        self._seqs.extend(seqs)
        self.head = seqs[-1]
        self.nbytes += sum(map(len, encoded))
        self._joined.clear()
        lines = self._lines
        while self.nbytes > self.max_bytes and len(self) > 1:
            evicted = lines[self._start]
            assert evicted is not None  # entries from _start on are all bytes
            self.nbytes -= len(evicted)
            lines[self._start] = None
            self.floor = self._seqs[self._start]
            self._start += 1
        if self._start > 1024 and self._start * 2 > len(lines):
            del lines[: self._start]
            del self._seqs[: self._start]
            self._start = 0

    def slice_after(self, cursor: int, *, max_bytes: int | None = None) -> tuple[list[bytes], int]:
        """The encoded lines after `cursor` (which the ring must hold), oldest first, at most
        `max_bytes` of them (default chunk_bytes) but at least one; and the seq of the last of
        them (`cursor` when none)."""
        if cursor >= self.head:
            return [], cursor
        if cursor < self.floor:
            raise ValueError(f"seq {cursor + 1} has left the ring (it starts at {self.first})")
        limit = self.chunk_bytes if max_bytes is None else max_bytes
        lines = self._lines
        i = bisect_right(self._seqs, cursor, self._start)
        if self.nbytes <= limit:
            return lines[i:], self.head  # type: ignore[return-value]  # entries from _start on are all bytes
        end, size = i, 0
        while end < len(lines):
            size += len(lines[end])  # type: ignore[arg-type]
            if size > limit and end > i:
                break
            end += 1
        return lines[i:end], self._seqs[end - 1]  # type: ignore[return-value]

    def lines_after(self, cursor: int, *, max_bytes: int | None = None) -> list[bytes]:
        """slice_after's lines."""
        return self.slice_after(cursor, max_bytes=max_bytes)[0]

    def bytes_after(self, cursor: int) -> tuple[bytes, int]:
        """The wire bytes of the lines after `cursor` (at most chunk_bytes, at least one line)
        joined, and the seq of the last of them; cached per cursor until the ring moves."""
        hit = self._joined.get(cursor)
        if hit is not None:
            return hit
        lines, last = self.slice_after(cursor)
        out = (b"".join(lines), last)
        if len(self._joined) < _JOIN_CACHE:
            self._joined[cursor] = out
        return out


class JobTail:
    """Reads one job's new lines and state once per wake-up for all its followers in this process."""

    def __init__(
        self,
        tails: Tails,
        pool: asyncpg.Pool,
        sub: Subscription,
        org_id: str,
        job_id: str,
        *,
        after: int,
        keepalive_s: float,
        stall_s: float,
        ring_bytes: int | None = None,
    ) -> None:
        self.tails = tails
        self.pool = pool
        self.org_id = org_id
        self.job_id = job_id
        self.recheck_s = keepalive_s
        self.stall_s = stall_s
        self.ring = Ring(after, max_bytes=ring_bytes)
        self.state: JobState | None = None  # as read after the ring's lines up to head at that time
        self.final = False  # the state is terminal and every line of the job is in (or has passed) the ring
        self.more = False  # the last read filled a page: more lines are stored already
        self.failed: BaseException | None = None
        self.followers: set[Follower] = set()
        self._sub = sub
        self._changed = asyncio.Event()
        self._published = 0.0  # loop time of the last wake-up
        self._task = asyncio.create_task(self._run(), name=f"tail {job_id}")
        self._task.add_done_callback(self._ended)
        self._ticker = asyncio.create_task(self._tick(min(keepalive_s, stall_s) / 4), name=f"tail ticker {job_id}")

    @property
    def changed(self) -> asyncio.Event:
        """Set at the next change (new lines, state, final, failure); take it before looking."""
        return self._changed

    def want_more(self) -> None:
        """A follower has taken everything up to head: read the next page now if there is one."""
        if self.more and not self.final:
            self._sub.event.set()

    def close(self) -> None:
        self._sub.close()
        self._task.cancel()
        self._ticker.cancel()

    def _wake(self) -> None:
        woken, self._changed = self._changed, asyncio.Event()
        woken.set()

    def _publish(self) -> None:
        self._wake()
        self._published = asyncio.get_running_loop().time()

    async def _tick(self, period: float) -> None:
        """Wake idle followers now and then (they send a keepalive once idle for keepalive_s), and
        stop the write of any follower whose client has not taken it for stall_s. One timer per
        job rather than two per follower and write."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(period)
            self._wake()
            stuck = loop.time() - self.stall_s
            for follower in list(self.followers):
                if follower.writing_since is not None and follower.writing_since < stuck:
                    follower.stalled()

    async def _coalesce(self) -> None:
        """Let lines that come in quick succession go out together to many followers."""
        window = min(COALESCE_MAX_S, self.tails.followers * COALESCE_PER_FOLLOWER_S)
        wait = self._published + window - asyncio.get_running_loop().time()
        if wait > 0:
            await asyncio.sleep(wait)

    def _ended(self, task: asyncio.Task) -> None:
        if task.cancelled() or task.exception() is None:
            return
        self.failed = task.exception()
        log.error("tail of job %s failed", self.job_id, exc_info=self.failed)
        self._wake()

    async def _run(self) -> None:
        delay = RETRY_S[0]
        while not self.final:
            self._sub.event.clear()  # before reading: a NOTIFY from now on wakes the next wait
            try:
                news = await self._read()
            except DB_ERRORS as exc:
                log.warning("tail of job %s: read failed (%s: %s); retrying", self.job_id, type(exc).__name__, exc)
                await self._sub.wait(delay)  # a LISTEN reconnect wakes it early
                delay = min(delay * 2, RETRY_S[1])
                continue
            delay = RETRY_S[0]
            if news:
                self._publish()
            if not self.final:
                await self._sub.wait(self.recheck_s)  # NOTIFY, a LISTEN reconnect, want_more, or the re-check
                await self._coalesce()

    def _take(self, lines: list[logstore.Line]) -> None:
        if lines:
            self.ring.append(lines[0].seq, [encode_log(line) for line in lines], seqs=[line.seq for line in lines])

    async def _read(self) -> bool:
        """One page from head; after a partial page the state, and after a terminal state the rest
        of the lines (a job ends only once every line is stored). True if anything changed."""
        ring = self.ring
        head = ring.head
        async with self.pool.acquire() as conn:
            lines = await logstore.read(conn, self.job_id, ring.head, PAGE)
            self._take(lines)
            self.more = len(lines) == PAGE
            if self.more:
                return True
            state = JobState(await conn.fetchval(Q.job_state, self.org_id, self.job_id))
            if state.terminal:
                while batch := await logstore.read(conn, self.job_id, ring.head, PAGE):
                    self._take(batch)
        changed = ring.head != head or state != self.state
        self.state = state
        self.final = state.terminal
        return changed or self.final


class Tails:
    """The JobTails of this process, one per followed job, created by its first follower and
    closed with its last."""

    def __init__(self, notifier: Notifier) -> None:
        self._notifier = notifier
        self._tails: dict[str, JobTail] = {}
        self.followers = 0  # of every job: a process has one core's worth of writes to share

    def __len__(self) -> int:
        return len(self._tails)

    def get(self, job_id: str) -> JobTail | None:
        return self._tails.get(str(job_id))

    def attach(self, follower: Follower, pool: asyncpg.Pool, org_id: str) -> JobTail:
        """The tail of the follower's job, started from the follower's cursor if it is the first."""
        job_id = follower.job_id  # text, as NOTIFY payloads are: never a UUID object
        tail = self._tails.get(job_id)
        if tail is None or tail.failed is not None:
            tail = JobTail(
                self,
                pool,
                self._notifier.subscribe(job_id),
                org_id,
                job_id,
                after=follower.start,
                keepalive_s=follower.keepalive_s,
                stall_s=follower.stall_s,
            )
            self._tails[job_id] = tail
        tail.followers.add(follower)
        self.followers += 1
        return tail

    def detach(self, follower: Follower, tail: JobTail) -> None:
        tail.followers.remove(follower)
        self.followers -= 1
        if not tail.followers:
            tail.close()
            if self._tails.get(tail.job_id) is tail:
                del self._tails[tail.job_id]

    def close(self) -> None:
        for tail in self._tails.values():
            tail.close()
        self._tails.clear()
        self.followers = 0
