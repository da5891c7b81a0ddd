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

- surrounding spaces of a one-line value are not part of what is masked (`echo $PW` drops them),
  and a multi-line value none of whose lines reaches MIN_LINE characters is masked by each of its
  lines (it is not structure then, and it would otherwise not be masked at all);
- each of those also in the forms JSON and Python's repr escape it to (`boxrun_job.emit` sends
  JSON, so a value with a quote, a backslash, a control or non-ASCII character would differ in the
  `output` stream from what the job holds).

Occurrences are found for every pattern first and their spans merged, so values that overlap in
the text (`abcdef` and `cdefgh` in `abcdefgh`) leave nothing of either visible. The work is linear
in the block whatever the values and the text (a value that repeats itself, printed over and over,
is followed through its period rather than matched again at every byte): masking runs on the
agent's event loop, where the other jobs' logs and heartbeats wait."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable

MASK = b"***"
MIN_LINE = 4  # a multi-line value's lines shorter than this are not masked (see above)
_COVERED = 0xFF  # marks masked bytes; never part of valid UTF-8 (what the framer hands the pump)
_RUNS = re.compile(rb"\xff+")


def _parts(value: str) -> list[str]:
    """The texts of one secret value that can reach one output line (see the module's rules)."""
    text = value.strip("\r\n")
    lines = text.split("\n")
    if len(lines) == 1:
        part = lines[0].strip()
        return [part] if part else []
    parts = [line.strip() for line in lines]
    long_ones = [p for p in parts if len(p) >= MIN_LINE]
    return long_ones or [p for p in parts if p]


def _escaped(part: str) -> set[str]:
    """`part` as JSON (ASCII or not) and Python's repr write it inside their quotes."""
    return {json.dumps(part)[1:-1], json.dumps(part, ensure_ascii=False)[1:-1], repr(part)[1:-1], part}


def patterns(values: Iterable[str]) -> list[bytes]:
    """The byte strings to mask for these secret values (UTF-8, each once, longest first)."""
    found: set[bytes] = set()
    for value in values:
        for part in _parts(value):
            found.update(form.encode("utf-8", "surrogatepass") for form in _escaped(part) if form)
    return sorted(found, key=lambda p: (-len(p), p))


class _Pattern:
    """A pattern with what following a run of its overlapping occurrences needs: `unit`, its last
    `period` bytes (an occurrence at `at` followed by `unit` means another at `at + period`), and
    the other shifts at which two occurrences can overlap (the periods of the pattern that are
    not multiples of its smallest one; after the unit stops repeating, only they remain)."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self._analysed = False
        self.unit = data
        self.shifts: list[int] = []
        self.overlaps = False  # two occurrences can overlap

    def _analyse(self) -> None:
        """The pattern's periods (KMP borders): done once, when it first occurs in the output
        (O(len) Python steps; most secrets of a job are never printed)."""
        data, n = self.data, len(self.data)
        border = [0] * (n + 1)  # border[i] = longest proper border of data[:i]
        k = 0
        for i in range(1, n):
            while k and data[i] != data[k]:
                k = border[k]
            if data[i] == data[k]:
                k += 1
            border[i + 1] = k
        periods = []
        b = border[n]
        while b:
            periods.append(n - b)  # each border gives a period, smallest first
            b = border[b]
        period = periods[0] if periods else n
        self.unit = data[n - period :]
        self.shifts = sorted((d for d in periods if d % period), reverse=True)
        self.overlaps = period < n
        self._analysed = True

    def cover(self, data: bytes, covered: bytearray) -> None:
        """Mark every byte of `data` inside an occurrence of the pattern in `covered`."""
        pat, size = self.data, len(self.data)
        at = data.find(pat)
        while at >= 0:
            start, end = at, at + size
            while True:
                chunk = self.unit  # doubling: the unit repeated 2**k times
                while True:
                    if data.startswith(chunk, end):
                        end += len(chunk)
                        if len(chunk) < 1 << 16:
                            chunk += chunk
                    elif len(chunk) > len(self.unit):
                        chunk = chunk[: len(chunk) // 2]
                    else:
                        break
                at = end - size
                for shift in self.shifts:
                    if data.startswith(pat, at + shift):
                        at, end = at + shift, at + shift + size
                        break
                else:
                    break
            covered[start:end] = bytes([_COVERED]) * (end - start)
            at = data.find(pat, end)

    def marked(self, data: bytes) -> bytes:
        """`data` with the bytes of every occurrence turned into _COVERED. Occurrences of a pattern
        that cannot overlap itself are exactly the ones str.replace finds (in C); the others are
        followed by `cover`."""
        if not self._analysed:
            self._analyse()
        if not self.overlaps:
            return data.replace(self.data, bytes([_COVERED]) * len(self.data))
        covered = bytearray(data)
        self.cover(data, covered)
        return bytes(covered)


class Masker:
    """Replaces every occurrence of the patterns of `values` in a block of lines with `***`."""

    def __init__(self, values: Iterable[str] = ()) -> None:
        self._patterns = [_Pattern(p) for p in patterns(values)]

    def __bool__(self) -> bool:
        return bool(self._patterns)

    def mask(self, data: bytes) -> bytes:
        """`data` (valid UTF-8) with each span covered by some pattern replaced by `***`
        (overlapping and adjacent matches merged into one). Patterns hold no newline, so the
        line count stays."""
        # Each pattern marks its occurrences in its own copy; the copies are OR-ed together as big
        # integers: a byte is _COVERED (all bits set) if any copy has it so, and data otherwise.
        union: int | None = None
        for pattern in self._patterns:
            if pattern.data in data:
                marks = int.from_bytes(pattern.marked(data), "big")
                union = marks if union is None else union | marks
        if union is None:
            return data
        return _RUNS.sub(MASK, union.to_bytes(len(data), "big"))
