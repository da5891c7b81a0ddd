"""Which box results the API records as `completed` itself (boxrun.services.dispatch.ends_here):
exactly those from which JobWorkflow._outcome_of decides `completed` with no step of its own."""

from __future__ import annotations

import pytest

from boxrun.messages import RunJobResult
from boxrun.schemas import JobResultReport
from boxrun.services.dispatch import ends_here

CLEAN = RunJobResult(exit_code=0, log_lines=3)


def test_exit_0_without_artifacts_ends_here() -> None:
    assert ends_here(JobResultReport(exit_code=0), CLEAN, cancel_requested=False)


@pytest.mark.parametrize(
    ("report", "result", "cancel_requested", "why"),
    [
        (JobResultReport(exit_code=0), CLEAN, True, "a cancel requested before the result"),
        (JobResultReport(exit_code=0, cancelled=True), CLEAN, False, "the box reports a cancel"),
        (JobResultReport(exit_code=3), CLEAN.model_copy(update={"exit_code": 3}), False, "non-zero exit"),
        (JobResultReport(exit_code=None), CLEAN.model_copy(update={"exit_code": None}), False, "no exit code"),
        (JobResultReport(exit_code=0), CLEAN.model_copy(update={"timed_out": True}), False, "timed out"),
        (JobResultReport(exit_code=0), CLEAN.model_copy(update={"error": "agent stopped"}), False, "an error"),
        (JobResultReport(exit_code=0), CLEAN.model_copy(update={"artifacts": 1}), False, "artifacts to verify"),
        (JobResultReport(exit_code=0), CLEAN.model_copy(update={"refused": 1}), False, "a refused artifact"),
    ],
)
def test_anything_else_is_the_workflows_to_decide(
    report: JobResultReport, result: RunJobResult, cancel_requested: bool, why: str
) -> None:
    assert not ends_here(report, result, cancel_requested=cancel_requested), why
