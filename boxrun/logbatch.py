"""The agent -> API log batch on the wire: a one-line JSON header, then the lines' bytes.

    {"first_seq": 41, "runs": [[3, "stdout", 1795000000.25], [1, "stderr", 1795000000.26]]}\\n
    line 41\\nline 42\\nline 43\\nline 44\\n

`data` holds the batch's lines as UTF-8, each ended by "\\n" (lines never contain one). `runs` says,
in order, how many consecutive lines share a stream and a timestamp (when the agent read them), so
a chatty job's thousands of lines cost a few runs, not a per-line column. Postgres stores the same
two parts (log_chunks.data, run_*), so neither side re-encodes line by line on the hot path.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from pydantic import ValidationError

from boxrun.schemas import LogBatchHeader

MEDIA_TYPE = "application/x-boxrun-log-batch"
MAX_LINES = 100_000


class BadBatch(ValueError):
    """The body is not a valid batch; the message says why (a 4xx for the sender)."""


@dataclass(frozen=True)
class Batch:
    first_seq: int
    runs: list[tuple[int, str, float]]  # (lines, stream, unix ts)
    data: bytes

    @property
    def lines(self) -> int:
        return sum(run[0] for run in self.runs)

    @property
    def last_seq(self) -> int:
        return self.first_seq + self.lines - 1

    def unpack(self) -> list[tuple[int, float, str, str]]:
        """(seq, ts, stream, text) per line."""
        counts, streams, ts = zip(*self.runs) if self.runs else ((), (), ())
        return unpack(self.first_seq, counts, streams, ts, self.data)

    def pieces(self, max_bytes: int) -> list[Batch]:
        """The batch cut at line ends into pieces of at most `max_bytes` (a longer line is a piece
        of its own), so that reading a few lines from storage never fetches much more than them."""
        if len(self.data) <= max_bytes:
            return [self]
        out, data, pos, seq = [], self.data, 0, self.first_seq
        runs = list(self.runs)
        while pos < len(data):
            end = data.rfind(b"\n", pos, pos + max_bytes)
            if end < 0:
                end = data.index(b"\n", pos + max_bytes)
            piece = data[pos : end + 1]
            lines, taken = piece.count(b"\n"), []
            while lines:
                count, stream, ts = runs[0]
                used = min(count, lines)
                taken.append((used, stream, ts))
                lines -= used
                if used == count:
                    runs.pop(0)
                else:
                    runs[0] = (count - used, stream, ts)
            out.append(Batch(seq, taken, piece))
            seq += sum(run[0] for run in taken)
            pos = end + 1
        return out

    def skip(self, n: int) -> Batch:
        """The same batch without its first `n` lines (they were stored by an earlier send)."""
        if n <= 0:
            return self
        cut = nth_newline(self.data, n) + 1
        runs, left = [], n
        for count, stream, ts in self.runs:
            if left >= count:
                left -= count
                continue
            runs.append((count - left, stream, ts))
            left = 0
        return Batch(self.first_seq + n, runs, self.data[cut:])


def unpack(
    first_seq: int,
    counts: Sequence[int],
    streams: Sequence[str],
    ts: Sequence[float],
    data: bytes,
    start: int = 0,
    stop: int | None = None,
) -> list[tuple[int, float, str, str]]:
    """(seq, ts, stream, text) of lines start..stop-1 (0-based) of a batch or stored chunk."""
    total = sum(counts)
    stop = total if stop is None else min(stop, total)
    if start >= stop:
        return []
    if start:
        data = data[nth_newline(data, start) + 1 :]
    texts = data.decode("utf-8").split("\n", stop - start)
    out, seq, index, i = [], first_seq + start, 0, 0
    for count, stream, when in zip(counts, streams, ts):
        lo, hi = max(index, start), min(index + count, stop)
        index += count
        for _ in range(lo, hi):
            out.append((seq, when, stream, texts[i]))
            seq += 1
            i += 1
        if index >= stop:
            break
    return out


def nth_newline(data: bytes, n: int) -> int:
    """Index of the n-th (1-based) b"\\n" in data."""
    pos = -1
    for _ in range(n):
        pos = data.index(b"\n", pos + 1)
    return pos


def encode(first_seq: int, runs: list[tuple[int, str, float]], data: bytes) -> bytes:
    head = json.dumps({"first_seq": first_seq, "runs": runs}, separators=(",", ":")).encode()
    return head + b"\n" + data


def decode(body: bytes) -> Batch:
    end = body.find(b"\n")
    if end < 0:
        raise BadBatch("the body must start with a one-line JSON header")
    try:
        head = LogBatchHeader.model_validate_json(body[:end])
    except ValidationError as exc:
        raise BadBatch(f"invalid header: {_first_error(exc)}") from None
    data = body[end + 1 :]
    runs: list[tuple[int, str, float]] = [(count, stream, ts) for count, stream, ts in head.runs]
    lines, newlines = sum(run[0] for run in runs), data.count(b"\n")
    if lines > MAX_LINES:
        raise BadBatch(f"a batch may hold at most {MAX_LINES} lines, not {lines}")
    if newlines != lines:
        raise BadBatch(f"the runs count {lines} lines but the data holds {newlines}")
    if data and not data.endswith(b"\n"):
        raise BadBatch("the data must end with a newline (whole lines only)")
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadBatch(f"the data is not valid UTF-8 (byte {exc.start})") from None
    return Batch(head.first_seq, runs, data)


def _first_error(exc: ValidationError) -> str:
    err = exc.errors(include_url=False)[0]
    where = ".".join(str(p) for p in err["loc"])
    return f"{where}: {err['msg']}" if where else err["msg"]
