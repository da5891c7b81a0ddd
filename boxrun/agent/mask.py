"""Secret masking on the box: every occurrence of a secret value in a job's output becomes `***`
before the line leaves the agent (docs/secrets.md).

The bundle lists the job's resolved secret values (`mask`); the log pump runs each block of whole
lines through `Masker.mask` as it takes it, so nothing unmasked is batched, spilled to disk or
sent. Lines are the unit (the framer cuts output at newlines), so a value is matched line by line:

- a one-line value is masked wherever it appears, whatever its length (a trailing newline, as in
  a value pasted from a file, is not a second line);
- a multi-line value (a key file, a JSON document) is masked by each of its lines, stripped of
  surrounding spaces, that has at least MIN_LINE characters: the value's lines are its parts that
  can reach one output line, while a line like `{` or `}` is structure that would blank every
  brace of the transcript.

Occurrences are found for every pattern first and their spans merged, so values that overlap in
the text (`abcdef` and `cdefgh` in `abcdefgh`) leave nothing of either visible."""

from __future__ import annotations

from collections.abc import Iterable

MASK = b"***"
MIN_LINE = 4  # a multi-line value's lines shorter than this are not masked (see above)


def patterns(values: Iterable[str]) -> list[bytes]:
    """The byte strings to mask for these secret values (UTF-8, each once, longest first)."""
    found: set[bytes] = set()
    for value in values:
        text = value.strip("\r\n")
        lines = text.split("\n")
        if len(lines) == 1:
            line = lines[0].rstrip("\r")
            if line.strip():
                found.add(line.encode())
            continue
        for line in lines:
            part = line.strip()
            if len(part) >= MIN_LINE:
                found.add(part.encode())
    return sorted(found, key=lambda p: (-len(p), p))


class Masker:
    """Replaces every occurrence of the patterns of `values` in a block of lines with `***`."""

    def __init__(self, values: Iterable[str] = ()) -> None:
        self._patterns = patterns(values)

    def __bool__(self) -> bool:
        return bool(self._patterns)

    def mask(self, data: bytes) -> bytes:
        """`data` with each span covered by some pattern replaced by `***` (overlapping and
        adjacent matches merged into one). Patterns hold no newline, so the line count stays."""
        spans: list[tuple[int, int]] = []
        for pattern in self._patterns:
            at = data.find(pattern)
            while at >= 0:
                spans.append((at, at + len(pattern)))
                at = data.find(pattern, at + 1)
        if not spans:
            return data
        spans.sort()
        out = bytearray()
        done = 0  # data[:done] is handled
        start, end = spans[0]
        for s, e in spans[1:]:
            if s <= end:  # overlaps or touches the current span
                end = max(end, e)
                continue
            out += data[done:start] + MASK
            done, (start, end) = end, (s, e)
        out += data[done:start] + MASK + data[end:]
        return bytes(out)
