"""Fakes for unit tests of the box side (named as fakes: they stand in for the API)."""

from __future__ import annotations

from typing import Any

from boxrun.logbatch import Batch


class MemorySinkFake:
    """Stands in for the API log ingest: keeps every line by seq."""

    def __init__(self) -> None:
        self.lines: dict[int, dict[str, Any]] = {}

    async def send(self, job_id: str, first_seq: int, runs: list[tuple[int, str, float]], data: bytes) -> int:
        for seq, _ts, stream, text in Batch(first_seq, runs, data).unpack():
            self.lines.setdefault(seq, {"stream": stream, "text": text})
        return max(self.lines)

    def ordered(self) -> list[tuple[str, str]]:
        assert sorted(self.lines) == list(range(1, len(self.lines) + 1)), "seqs must be contiguous from 1"
        return [(self.lines[s]["stream"], self.lines[s]["text"]) for s in sorted(self.lines)]
