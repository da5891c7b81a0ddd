"""Turning a byte stream into log lines: newline framing, UTF-8 repair, the 1 MiB line cap."""

from __future__ import annotations

from collections.abc import Callable

MAX_LINE_BYTES = 1 << 20
TRUNCATION_NOTICE = " [boxrun: line truncated at 1 MiB; {dropped} more bytes dropped]"


class LineFramer:
    """Feed bytes, get complete lines via `emit(text)`. A line over MAX_LINE_BYTES is cut to that
    size and carries a visible notice; invalid UTF-8 shows as U+FFFD replacement characters."""

    def __init__(self, emit: Callable[[str], None], *, max_line: int = MAX_LINE_BYTES) -> None:
        self._emit = emit
        self._max = max_line
        self._buf = bytearray()
        self._dropped = 0  # bytes of the current over-long line thrown away so far

    def feed(self, data: bytes) -> None:
        start = 0
        while True:
            nl = data.find(b"\n", start)
            if nl < 0:
                self._append(data[start:])
                return
            self._append(data[start:nl])
            self._flush_line()
            start = nl + 1

    def close(self) -> None:
        if self._buf or self._dropped:
            self._flush_line()

    def _append(self, chunk: bytes) -> None:
        room = self._max - len(self._buf)
        if len(chunk) <= room:
            self._buf += chunk
        else:
            self._buf += chunk[:room]
            self._dropped += len(chunk) - room

    def _flush_line(self) -> None:
        line = bytes(self._buf)
        if line.endswith(b"\r"):
            line = line[:-1]  # CRLF endings; bare \r progress updates stay inside the line
        text = line.decode("utf-8", errors="replace")
        if self._dropped:
            text += TRUNCATION_NOTICE.format(dropped=self._dropped)
        self._buf.clear()
        self._dropped = 0
        self._emit(text)


class FrameDecoder:
    """Decodes the bootstrap's framed pipe (code, 2-byte length, payload) into per-stream bytes."""

    def __init__(self, sinks: dict[bytes, LineFramer]) -> None:
        self._sinks = sinks
        self._buf = bytearray()

    def feed(self, data: bytes) -> None:
        self._buf += data
        pos = 0
        buf = self._buf
        while len(buf) - pos >= 3:
            size = int.from_bytes(buf[pos + 1:pos + 3], "big")
            if len(buf) - pos - 3 < size:
                break
            sink = self._sinks.get(bytes(buf[pos:pos + 1]))
            if sink is not None:
                sink.feed(bytes(buf[pos + 3:pos + 3 + size]))
            pos += 3 + size
        del buf[:pos]

    def close(self) -> None:
        for framer in self._sinks.values():
            framer.close()
