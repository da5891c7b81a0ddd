"""Job transcripts in Postgres: chunks appended exactly once, replayed from any sequence."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg

from boxrun.constants import CHANNEL_LOGS
from boxrun.db import Q
from boxrun.logbatch import Batch, unpack

STREAMS = ("stdout", "stderr", "output", "system")


@dataclass(frozen=True)
class Line:
    seq: int
    ts: float
    stream: str
    text: str

    def public(self) -> dict:
        ts = datetime.fromtimestamp(self.ts, UTC).isoformat().replace("+00:00", "Z")
        return {"seq": self.seq, "ts": ts, "stream": self.stream,
                "text": self.text}


class LogGap(Exception):
    """A batch starts after the next expected seq: earlier lines are missing."""

    def __init__(self, expected: int) -> None:
        super().__init__(f"expected seq {expected} next")
        self.expected = expected


async def append(conn: asyncpg.Connection, job_id: str, batch: Batch) -> int:
    """Store lines batch.first_seq.. of a job unless already stored; returns the highest stored seq.

    The job row is locked while appending, so concurrent resends serialise; lines at or below the
    stored head are dropped (a resend), so every line is stored exactly once and the chunks stay
    contiguous from seq 1.
    """
    async with conn.transaction():
        head = await conn.fetchval(Q.lock_log_head, job_id)
        if batch.first_seq > head + 1:
            raise LogGap(head + 1)
        if batch.last_seq <= head:
            return head
        batch = batch.skip(head + 1 - batch.first_seq)
        counts, streams, ts = zip(*batch.runs)
        await conn.execute(Q.insert_chunk, job_id, batch.first_seq, batch.last_seq, counts, streams, ts,
                           batch.data, len(batch.data))
        await conn.execute(Q.advance_log_head, job_id, batch.last_seq, len(batch.data))
        await conn.execute(Q.notify, CHANNEL_LOGS, str(job_id))
    return batch.last_seq


async def read(conn: asyncpg.Connection, job_id: str, after: int, limit: int) -> list[Line]:
    """Up to `limit` lines with seq > after, in order."""
    lines: list[Line] = []
    cursor = after
    while len(lines) < limit:
        chunks = await conn.fetch(Q.chunks_after, job_id, cursor, 4)
        if not chunks:
            break
        for chunk in chunks:
            count = sum(chunk["run_lines"])
            start = max(0, cursor + 1 - chunk["first_seq"])
            stop = min(count, start + limit - len(lines))
            lines += [Line(*row) for row in unpack(chunk["first_seq"], chunk["run_lines"], chunk["run_streams"],
                                                   chunk["run_ts"], chunk["data"], start, stop)]
            cursor = chunk["first_seq"] + stop - 1
            if len(lines) == limit:
                return lines
    return lines


async def read_all(conn: asyncpg.Connection, job_id: str, *, page: int = 10_000) -> AsyncIterator[Line]:
    after = 0
    while batch := await read(conn, job_id, after, page):
        for line in batch:
            yield line
        after = batch[-1].seq
