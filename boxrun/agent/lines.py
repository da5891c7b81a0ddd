"""Turning a byte stream into log lines: newline framing, UTF-8 repair, the 1 MiB line cap.

Lines stay bytes end to end (a block of whole lines, each ended by b"\\n", is what the pump batches,
the API stores and Postgres keeps), so a chatty job costs a few C-level passes over each read
instead of Python work per line.
"""

from __future__ import annotations

from collections.abc import Callable

MAX_LINE_BYTES = 1 << 20
TRUNCATION_NOTICE = " [boxrun: line truncated at 1 MiB; {dropped} more bytes dropped]"


def valid_utf8(data: bytes) -> bytes:
    """`data` itself if it is valid UTF-8, else with each invalid sequence as U+FFFD."""
    try:
        data.decode("utf-8")
        return data
    except UnicodeDecodeError:
        return data.decode("utf-8", errors="replace").encode("utf-8")


class LineFramer:
    """Feed bytes, get whole lines as blocks: `emit(block, count)`, where `block` is `count` lines
    of valid UTF-8, each ended by b"\\n". A line over MAX_LINE_BYTES is cut to that size and carries
    a visible notice; invalid UTF-8 shows as U+FFFD; a CRLF ending loses its CR, while a bare \\r
    (progress bars) stays inside the line."""

    def __init__(self, emit: Callable[[bytes, int], None], *, max_line: int = MAX_LINE_BYTES) -> None:
        self._emit = emit
        self._max = max_line
        self._buf = bytearray()  # the current, unfinished line
        self._dropped = 0  # bytes of the current over-long line thrown away so far

    def feed(self, data: bytes) -> None:
        end = data.rfind(b"\n")
        if end < 0:
            self._append(data)
            return
        start, head = 0, b""
        if self._buf:
            start = data.index(b"\n") + 1
            self._append(data[: start - 1])
            head = self._take_line()
        body = data[start : end + 1]
        self._append(data[end + 1 :])
        if len(body) > self._max:  # it may hold an over-long line: cut line by line
            body = b"".join(self._whole(line) for line in body.split(b"\n")[:-1])
        else:
            if b"\r\n" in body:
                body = body.replace(b"\r\n", b"\n")
            body = valid_utf8(body)
        block = head + body if head else body
        self._emit(block, block.count(b"\n"))

    def close(self) -> None:
        if self._buf:
            self._emit(self._take_line(), 1)

    def _append(self, chunk: bytes) -> None:
        room = self._max - len(self._buf)
        if len(chunk) <= room:
            self._buf += chunk
        else:
            self._buf += chunk[:room]
            self._dropped += len(chunk) - room

    def _take_line(self) -> bytes:
        line = self._finish(bytes(self._buf), self._dropped)
        self._buf.clear()
        self._dropped = 0
        return line

    def _whole(self, line: bytes) -> bytes:
        return self._finish(line[: self._max], max(0, len(line) - self._max))

    @staticmethod
    def _finish(line: bytes, dropped: int) -> bytes:
        if line.endswith(b"\r"):
            line = line[:-1]  # CRLF endings; bare \r progress updates stay inside the line
        line = valid_utf8(line)
        if dropped:
            line += TRUNCATION_NOTICE.format(dropped=dropped).encode()
        return line + b"\n"


class FrameDecoder:
    """Decodes the bootstrap's framed pipe (code, 2-byte length, payload) into per-stream bytes.
    Consecutive frames of one stream reach its sink as one piece."""

    def __init__(self, sinks: dict[bytes, LineFramer]) -> None:
        self._sinks = {code[0]: sink for code, sink in sinks.items()}
        self._buf = bytearray()

    def feed(self, data: bytes) -> None:
        self._buf += data
        buf, pos, size_all = self._buf, 0, len(self._buf)
        code, parts = -1, list[bytearray]()
        while size_all - pos >= 3:
            size = int.from_bytes(buf[pos + 1 : pos + 3], "big")
            if size_all - pos - 3 < size:
                break
            if buf[pos] != code:
                self._deliver(code, parts)
                code, parts = buf[pos], []
            parts.append(buf[pos + 3 : pos + 3 + size])
            pos += 3 + size
        self._deliver(code, parts)
        del buf[:pos]

    def _deliver(self, code: int, parts: list[bytearray]) -> None:
        sink = self._sinks.get(code)
        if parts and sink is not None:
            sink.feed(bytes(parts[0]) if len(parts) == 1 else b"".join(parts))

    def close(self) -> None:
        for framer in self._sinks.values():
            framer.close()
