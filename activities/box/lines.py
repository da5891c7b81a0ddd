"""Turning a byte stream into log lines: newline framing, UTF-8 repair, the 1 MiB line cap."""

from __future__ import annotations

from collections.abc import Callable

MAX_LINE_BYTES = 1 << 20
TRUNCATION_NOTICE = " [boxrun: line truncated at 1 MiB; {dropped} more bytes dropped]"


class LineFramer:
    """Feed bytes, get complete lines via `emit(texts)` (a list per fed chunk). A line over
    MAX_LINE_BYTES is cut to that size and carries a visible notice; invalid UTF-8 shows as
    U+FFFD replacement characters."""

    def __init__(self, emit: Callable[[list[str]], None], *, max_line: int = MAX_LINE_BYTES) -> None:
        self._emit = emit
        self._max = max_line
        self._buf = bytearray()
        self._dropped = 0  # bytes of the current over-long line thrown away so far

    def feed(self, data: bytes) -> None:
        parts = data.split(b"\n")
        if len(parts) == 1:
            self._append(data)
            return
        self._append(parts[0])
        out = [self._take_line()]
        limit = self._max
        for part in parts[1:-1]:  # the common case, kept tight: whole lines inside one chunk
            if len(part) <= limit and not part.endswith(b"\r"):
                out.append(part.decode("utf-8", errors="replace"))
            else:
                self._append(part)
                out.append(self._take_line())
        self._append(parts[-1])
        self._emit(out)

    def close(self) -> None:
        if self._buf or self._dropped:
            self._emit([self._take_line()])

    def _append(self, chunk: bytes) -> None:
        room = self._max - len(self._buf)
        if len(chunk) <= room:
            self._buf += chunk
        else:
            self._buf += chunk[:room]
            self._dropped += len(chunk) - room

    def _take_line(self) -> str:
        line = bytes(self._buf)
        if line.endswith(b"\r"):
            line = line[:-1]  # CRLF endings; bare \r progress updates stay inside the line
        text = line.decode("utf-8", errors="replace")
        if self._dropped:
            text += TRUNCATION_NOTICE.format(dropped=self._dropped)
        self._buf.clear()
        self._dropped = 0
        return text


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
