"""Job transcripts in Postgres: chunks appended exactly once, replayed from any sequence."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from boxrun.constants import CHANNEL_LOGS
from boxrun.db import Conn, Q
from boxrun.logbatch import Batch, unpack
from boxrun.schemas import MAX_SEQ
from boxrun.settings import Settings

STREAMS = ("stdout", "stderr", "output", "system")
CHUNK_BYTES = 256 << 10  # a batch is stored as chunks of at most this (or one longer line)
NOTICE_MAX_BYTES = 256  # the transcript cap's notice line is shorter
DEFAULT_CAP_BYTES: int = Settings.model_fields["transcript_cap_bytes"].default
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


@dataclass
class _Kept:
    """What the jobs row says a job's stored transcript holds (0016_transcript_cap.sql)."""

    head_seq: int | None  # last seq of the kept head; None until the cap bites
    stored: int  # bytes held now (the notice included)
    dropped_lines: int
    dropped_bytes: int


async def append(conn: Conn, job_id: str, batch: Batch, *, cap_bytes: int = DEFAULT_CAP_BYTES) -> int:
    """Store lines batch.first_seq.. of a job unless already stored; returns the highest stored seq.

    The job row is locked while appending, so concurrent resends serialise; lines at or below the
    job's head (log_seq, the highest seq received) are dropped (a resend), so every line is stored
    at most once, in chunks of contiguous seqs.

    `cap_bytes` is the transcript cap when the job's org sets none (Settings.transcript_cap_bytes).
    Past the cap the transcript keeps its head and its tail with one notice between them (see
    _trim); the seqs of the lines dropped are never stored again, and log_seq still moves on.
    """
    async with conn.transaction():
        row = await conn.fetchrow(Q.lock_log_head, job_id, cap_bytes)
        if row is None:
            raise LookupError(f"no job {job_id}")
        head: int = row["log_seq"]
        if batch.first_seq > head + 1:
            raise LogGap(head + 1)
        if batch.last_seq <= head:
            return head
        batch = batch.skip(head + 1 - batch.first_seq)
        if row["logs_deleted"]:  # deleted outputs stay deleted: a late line is acknowledged only
            await conn.execute(Q.skip_log_head, job_id, batch.last_seq, len(batch.data))
            return batch.last_seq
        cap: int = row["cap"]
        rows = []
        for piece in batch.pieces(chunk_bytes(cap)):
            counts, streams, ts = zip(*piece.runs)
            rows.append((job_id, piece.first_seq, piece.last_seq, counts, streams, ts, piece.data, len(piece.data)))
        await conn.executemany(Q.insert_chunk, rows)
        kept = _Kept(
            row["log_head_seq"],
            row["log_stored_bytes"] + len(batch.data),
            row["log_dropped_lines"],
            row["log_dropped_bytes"],
        )
        if kept.stored > cap:
            await _trim(conn, job_id, kept, cap, newest=rows[-1][1])
        await conn.execute(
            Q.advance_log_head,
            job_id,
            batch.last_seq,
            len(batch.data),
            kept.stored,
            kept.head_seq,
            kept.dropped_lines,
            kept.dropped_bytes,
        )
        await conn.execute(Q.notify, CHANNEL_LOGS, str(job_id))
    return batch.last_seq


def chunk_bytes(cap: int) -> int:
    """The most one stored chunk holds (or one longer line) under transcript cap `cap`: small
    enough that the head and the tail are each many chunks, so whole chunks cut them finely."""
    return max(1, min(CHUNK_BYTES, cap // 16))


async def _trim(conn: Conn, job_id: str, kept: _Kept, cap: int, *, newest: int) -> None:
    """Bring a transcript past its cap back under it, updating `kept`.

    The head is the longest run of first chunks within cap/2 bytes, fixed when the cap first
    bites. After it come ONE notice chunk (stream `system`, one line, at seq head + 1: the seq of
    the first line dropped, so seqs stay increasing) and then the tail: the oldest chunks after the
    notice are deleted, whole, until the transcript (notice included) fits the cap again. The
    newest chunk always stays, so the last lines are always there (a single line longer than the
    cap's room can take the transcript past it). The notice is rewritten as more is dropped."""
    first_time = kept.head_seq is None
    head_seq: int = await conn.fetchval(Q.log_head_end, job_id, cap // 2) if kept.head_seq is None else kept.head_seq
    # the notice is (re)written below: leave it room (kept.stored counts the old one)
    excess = kept.stored + NOTICE_MAX_BYTES - cap
    after = head_seq if first_time else head_seq + 1  # the first time, the chunk at head + 1 goes too
    lines = nbytes = 0
    first_ts = time.time()
    while nbytes < excess:
        gone = await conn.fetch(Q.drop_oldest_chunks, job_id, after, newest, excess - nbytes)
        if not gone:
            break
        for chunk in gone:
            lines += chunk["last_seq"] - chunk["first_seq"] + 1
            nbytes += chunk["bytes"]
            if chunk["first_seq"] == head_seq + 1:
                first_ts = chunk["ts"]
    if lines == 0:
        return  # nothing but the head, the notice and the newest chunk: nothing to drop yet
    kept.head_seq = head_seq
    kept.dropped_lines += lines
    kept.dropped_bytes += nbytes
    data = notice(kept.dropped_lines, kept.dropped_bytes, cap).encode() + b"\n"
    old = await conn.fetchval(Q.put_log_notice, job_id, head_seq + 1, first_ts, data)
    kept.stored += len(data) - nbytes - (old or 0)


def notice(lines: int, nbytes: int, cap: int) -> str:
    """The one line that stands for the lines a capped transcript dropped."""
    text = (
        f"[boxrun] {lines:,} line{'' if lines == 1 else 's'} ({size_text(nbytes)}) dropped here: this job's"
        f" transcript passed its cap of {size_text(cap)}, so only about its first and last"
        f" {size_text(cap // 2)} are kept"
    )
    assert len(text) < NOTICE_MAX_BYTES, text
    return text


def size_text(n: int) -> str:
    """1 GiB, 812.4 MiB, 17 B."""
    value, unit = float(n), "B"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"):
        if value < 1024 or unit == "EiB":
            break
        value /= 1024
    if unit == "B":
        return f"{n} B"
    return f"{value:.1f}".removesuffix(".0") + f" {unit}"


async def read(conn: Conn, job_id: str, after: int, limit: int) -> list[Line]:
    """Up to `limit` lines with seq > after, in order. Fetches only the chunks that hold them.

    Fewer than `limit` lines only when no line is stored after the last one returned: the gap of
    seqs a capped transcript has is skipped, never taken for the end (pagers stop at a short
    page)."""
    lines: list[Line] = []
    cursor = after
    while len(lines) < limit:
        chunks = await conn.fetch(Q.chunks_after, job_id, cursor, limit - len(lines))
        for chunk in chunks:
            start = max(0, cursor + 1 - chunk["first_seq"])
            lines += _lines(chunk, start, start + limit - len(lines))
        if not chunks or not chunks[0]["more"] or not lines:
            break
        cursor = lines[-1].seq  # a gap inside the window: go on after it
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
