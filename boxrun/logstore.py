"""Job transcripts in Postgres: chunks appended exactly once, replayed from any sequence."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from boxrun.constants import CHANNEL_LOGS
from boxrun.db import Conn, Q
from boxrun.logbatch import Batch, unpack
from boxrun.schemas import MAX_SEQ

STREAMS = ("stdout", "stderr", "output", "system")
CHUNK_BYTES = 256 << 10  # a batch is stored as chunks of at most this (or one longer line)


@dataclass(frozen=True)
class Line:
    seq: int
    ts: float
    stream: str
    text: str

    def public(self) -> dict[str, Any]:
        ts = datetime.fromtimestamp(self.ts, UTC).isoformat().replace("+00:00", "Z")
        return {"seq": self.seq, "ts": ts, "stream": self.stream, "text": self.text}


class LogGap(Exception):
    """A batch starts after the next expected seq: earlier lines are missing."""

    def __init__(self, expected: int) -> None:
        super().__init__(f"expected seq {expected} next")
        self.expected = expected


async def append(conn: Conn, job_id: str, batch: Batch) -> int:
    """Store lines batch.first_seq.. of a job unless already stored; returns the highest stored seq.

    The job row is locked while appending, so concurrent resends serialise; lines at or below the
    stored head are dropped (a resend), so every line is stored exactly once and the chunks stay
    contiguous from seq 1.
    """
    async with conn.transaction():
        head: int = await conn.fetchval(Q.lock_log_head, job_id)
        if batch.first_seq > head + 1:
            raise LogGap(head + 1)
        if batch.last_seq <= head:
            return head
        batch = batch.skip(head + 1 - batch.first_seq)
        rows = []
        for piece in batch.pieces(CHUNK_BYTES):
            counts, streams, ts = zip(*piece.runs)
            rows.append((job_id, piece.first_seq, piece.last_seq, counts, streams, ts, piece.data, len(piece.data)))
        await conn.executemany(Q.insert_chunk, rows)
        await conn.execute(Q.advance_log_head, job_id, batch.last_seq, len(batch.data))
        await conn.execute(Q.notify, CHANNEL_LOGS, str(job_id))
    return batch.last_seq


async def read(conn: Conn, job_id: str, after: int, limit: int) -> list[Line]:
    """Up to `limit` lines with seq > after, in order. Fetches only the chunks that hold them."""
    lines: list[Line] = []
    for chunk in await conn.fetch(Q.chunks_after, job_id, after, min(after + limit, MAX_SEQ)):
        start = max(0, after + 1 - chunk["first_seq"])
        stop = start + limit - len(lines)
        lines += [
            Line(*row)
            for row in unpack(
                chunk["first_seq"],
                chunk["run_lines"],
                chunk["run_streams"],
                chunk["run_ts"],
                chunk["data"],
                start,
                stop,
            )
        ]
    return lines


async def read_all(conn: Conn, job_id: str, *, page: int = 10_000) -> AsyncIterator[Line]:
    after = 0
    while batch := await read(conn, job_id, after, page):
        for line in batch:
            yield line
        after = batch[-1].seq
