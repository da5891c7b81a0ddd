"""Job transcripts in Postgres: chunks appended exactly once, replayed from any sequence."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg

from boxrun.constants import CHANNEL_LOGS
from boxrun.db import Q

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


async def append(conn: asyncpg.Connection, job_id: str, first_seq: int, ts: list[float], streams: list[str],
                 texts: list[str]) -> int:
    """Store lines first_seq.. of a job unless already stored; returns the highest stored seq.

    The job row is locked while appending, so concurrent resends serialise; lines at or below the
    stored head are dropped (a resend), so every line is stored exactly once and the chunks stay
    contiguous from seq 1.
    """
    async with conn.transaction():
        head = await conn.fetchval(Q.lock_log_head, job_id)
        if first_seq > head + 1:
            raise LogGap(head + 1)
        skip = head + 1 - first_seq
        if skip >= len(texts):
            return head
        ts, streams, texts = ts[skip:], streams[skip:], texts[skip:]
        first = head + 1
        last = head + len(texts)
        size = sum(len(t) for t in texts)
        await conn.execute(Q.insert_chunk, job_id, first, last, ts, streams, texts, size)
        await conn.execute(Q.advance_log_head, job_id, last, size)
        await conn.execute(Q.notify, CHANNEL_LOGS, str(job_id))
    return last


async def read(conn: asyncpg.Connection, job_id: str, after: int, limit: int) -> list[Line]:
    """Up to `limit` lines with seq > after, in order."""
    lines: list[Line] = []
    cursor = after
    while len(lines) < limit:
        chunks = await conn.fetch(Q.chunks_after, job_id, cursor, 64)
        if not chunks:
            break
        for chunk in chunks:
            first = chunk["first_seq"]
            start = max(0, cursor + 1 - first)
            texts = chunk["texts"]
            for i in range(start, len(texts)):
                lines.append(Line(first + i, chunk["ts"][i], chunk["streams"][i], texts[i]))
                if len(lines) == limit:
                    return lines
            cursor = first + len(texts) - 1
    return lines


async def read_all(conn: asyncpg.Connection, job_id: str, *, page: int = 10_000) -> AsyncIterator[Line]:
    after = 0
    while batch := await read(conn, job_id, after, page):
        for line in batch:
            yield line
        after = batch[-1].seq
