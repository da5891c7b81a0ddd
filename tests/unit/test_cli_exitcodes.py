"""The CLI's exit codes: the job's own code, and boxrun's codes for the rest (docs/cli.md)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from boxrun.cli.exitcodes import TABLE, exit_code_for, pipeline_exit_code, table_text
from boxrun.constants import JobState, PipelineState
from boxrun.schemas import JobPublic


def job(state: str, exit_code: int | None = None) -> JobPublic:
    return JobPublic(
        id="j1", state=JobState(state), owner="me", box="b", box_group=None, requires=[], lock=False, priority=0,
        timeout_s=60, cancel_grace_s=10, log_lines=0, log_archive=None, exit_code=exit_code, error=None,
        idempotency_key=None, created_at=datetime.now(UTC), started_at=None, finished_at=None, temporal_ui_url="",
    )  # fmt: skip


@pytest.mark.parametrize(
    ("state", "exit_code", "expected"),
    [
        ("completed", 0, 0),
        ("failed", 3, 3),
        ("failed", 255, 255),
        ("failed", 124, 124),  # a script's own 124 looks like a timeout: documented
        ("failed", None, 123),  # box lost, artifacts, verification
        ("failed", 0, 123),
        ("failed", -9, 123),  # killed by a signal: no code of its own
        ("failed", 300, 123),
        ("timed_out", None, 124),
        ("timed_out", 143, 124),
        ("unschedulable", None, 126),
        ("cancelled", None, 130),
        ("cancelled", 143, 130),
        ("running", None, 0),
        ("queued", None, 0),
    ],
)
def test_exit_code_for_a_job(state: str, exit_code: int | None, expected: int) -> None:
    assert exit_code_for(job(state, exit_code)) == expected


@pytest.mark.parametrize(
    ("state", "expected"),
    [("completed", 0), ("failed", 123), ("timed_out", 124), ("cancelled", 130)],
)
def test_exit_code_for_a_pipeline(state: str, expected: int) -> None:
    assert pipeline_exit_code(PipelineState(state)) == expected


def test_the_table_in_help_and_docs_names_every_code() -> None:
    text = table_text()
    for code in ("0", "1-255", "123", "124", "125", "126", "130"):
        assert code in dict(TABLE) and f"**{code}**" in text
    assert "boxrun job ID --json" in text
