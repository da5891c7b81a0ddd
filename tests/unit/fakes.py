"""Fakes for unit tests (named as fakes: they stand in for the API): the box side's log sink, and
the JSON a mock API answers for a job."""

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


def job_json(job_id: str = "job-1", state: str = "queued", **fields: Any) -> dict[str, Any]:
    """A job as GET /api/jobs/{id} answers it, for mock APIs; `fields` override or add keys."""
    return {
        "id": job_id,
        "state": state,
        "owner": "tester",
        "box": "local-1",
        "box_group": None,
        "requires": [],
        "lock": False,
        "priority": 0,
        "timeout_s": 60,
        "cancel_grace_s": 10,
        "log_lines": 0,
        "log_archive": None,
        "exit_code": 0 if state == "completed" else None,
        "error": None,
        "idempotency_key": None,
        "created_at": "2026-12-01T10:00:00Z",
        "started_at": None,
        "finished_at": None,
        "temporal_ui_url": "http://ui.test",
        **fields,
    }
