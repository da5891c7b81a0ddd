"""Histories recorded from real runs (tests/histories/, made by tests/histories/record.py) replay
against the current workflow code: a change that would break running workflows fails here.

A change that alters a workflow on purpose re-records the histories in the same commit (until
there is a release whose running workflows must stay compatible; then it uses workflow.patched).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer

from boxrun.worker.control import WORKFLOWS
from tests.histories.record import (
    BENCH_HISTORY,
    LEGACY_HISTORIES,
    LOCAL_SCENARIOS,
    PIPELINE_HISTORIES,
    REOFFERED_HISTORY,
    RETENTION_HISTORY,
    SCENARIOS,
    SCHEDULE_HISTORY,
    WEBHOOK_HISTORY,
)

HISTORIES = Path(__file__).parent.parent / "histories"
EXPECTED = {
    *(f"job_{name}" for name in SCENARIOS),
    *(f"job_{name}_local" for name in LOCAL_SCENARIOS),
    "reaper_running",
    "reaper_continued_as_new",
    *PIPELINE_HISTORIES,
    BENCH_HISTORY,
    WEBHOOK_HISTORY,
    RETENTION_HISTORY,
    SCHEDULE_HISTORY,
    REOFFERED_HISTORY,
    *LEGACY_HISTORIES,
}


def test_every_recorded_scenario_is_there():
    assert {p.stem for p in HISTORIES.glob("*.json")} == EXPECTED


@pytest.mark.parametrize("name", sorted(EXPECTED))
async def test_history_replays_on_current_code(name: str):
    history = WorkflowHistory.from_json(name, (HISTORIES / f"{name}.json").read_text())
    replayer = Replayer(workflows=WORKFLOWS, data_converter=pydantic_data_converter)  # the worker's own set
    await replayer.replay_workflow(history)  # raises on non-determinism or a workflow task failure
