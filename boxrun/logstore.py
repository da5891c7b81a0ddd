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
SCAN_CHUNKS = 16  # chunks fetched per query when scanning for one stream or the tail (a few MiB at most)


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


def _lines(chunk: Any, start: int = 0, stop: int | None = None) -> list[Line]:
    rows = unpack(
        chunk["first_seq"], chunk["run_lines"], chunk["run_streams"], chunk["run_ts"], chunk["data"], start, stop
    )
    return [Line(*row) for row in rows]


async def read_stream(conn: Conn, job_id: str, stream: str, after: int, limit: int) -> list[Line]:
    """Up to `limit` lines of one stream with seq > after, in order. Skips the chunks without a
    line of that stream."""
    lines: list[Line] = []
    cursor = after
    while chunks := await conn.fetch(Q.stream_chunks_after, job_id, cursor, stream, SCAN_CHUNKS):
        for chunk in chunks:
            for line in _lines(chunk, max(0, cursor + 1 - chunk["first_seq"])):
                if line.stream == stream:
                    lines.append(line)
                    if len(lines) == limit:
                        return lines
            cursor = chunk["last_seq"]
    return lines


async def tail(conn: Conn, job_id: str, count: int, stream: str | None = None) -> list[Line]:
    """The last `count` lines stored (of one stream, when given), in order: read from the newest
    chunk backwards, never the whole transcript."""
    pieces: list[list[Line]] = []  # newest first
    wanted, before = count, MAX_SEQ
    while wanted > 0 and (chunks := await conn.fetch(Q.chunks_before, job_id, before, stream, SCAN_CHUNKS)):
        for chunk in chunks:
            size = chunk["last_seq"] - chunk["first_seq"] + 1
            if stream is None:
                lines = _lines(chunk, max(0, size - wanted))
            else:
                lines = [line for line in _lines(chunk) if line.stream == stream][-wanted:]
            pieces.append(lines)
            wanted -= len(lines)
            before = chunk["first_seq"]
            if wanted <= 0:
                break
    return [line for piece in reversed(pieces) for line in piece]


async def transcript(conn: Conn, job_id: str, stream: str | None = None) -> AsyncIterator[bytes]:
    """The job's lines as UTF-8 text, one "\n"-ended line per log line, in pieces of at most a few
    chunks: as stored when every stream is wanted (no line is decoded), else one stream's lines."""
    if stream is not None:
        after = 0
        while page := await read_stream(conn, job_id, stream, after, 10_000):
            yield "".join(f"{line.text}\n" for line in page).encode()
            after = page[-1].seq
        return
    after = 0
    while chunks := await conn.fetch(Q.chunk_data_after, job_id, after, SCAN_CHUNKS):
        yield b"".join(bytes(chunk["data"]) for chunk in chunks)
        after = chunks[-1]["last_seq"]


async def read_all(conn: Conn, job_id: str, *, page: int = 10_000) -> AsyncIterator[Line]:
    after = 0
    while batch := await read(conn, job_id, after, page):
        for line in batch:
            yield line
        after = batch[-1].seq
