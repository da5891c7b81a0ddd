"""The `boxrun-retention` Temporal Schedule as control workers make it at start-up, on the test
session's real Temporal dev server: created once, brought to a new interval by the next worker,
left paused if paused from the Web UI, its action a RetentionWorkflow on the control queue."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from temporalio.client import Client, ScheduleActionStartWorkflow
from temporalio.service import RPCError

from boxrun.constants import CONTROL_TASK_QUEUE
from boxrun.services.org_policy import RETENTION_SCHEDULE_ID
from boxrun.worker.retention import ensure_retention_schedule


@pytest.fixture
async def clean_schedule(temporal_client: Client) -> AsyncIterator[None]:
    async def drop() -> None:
        try:
            await temporal_client.get_schedule_handle(RETENTION_SCHEDULE_ID).delete()
        except RPCError:
            pass  # none yet

    await drop()
    yield
    await drop()


async def test_the_schedule_is_created_then_updated_in_place(temporal_client: Client, clean_schedule: None) -> None:
    handle = await ensure_retention_schedule(temporal_client, 3600)
    first = await handle.describe()
    assert handle.id == RETENTION_SCHEDULE_ID
    assert [i.every.total_seconds() for i in first.schedule.spec.intervals] == [3600]
    action = first.schedule.action
    assert isinstance(action, ScheduleActionStartWorkflow)
    assert action.workflow == "RetentionWorkflow" and action.task_queue == CONTROL_TASK_QUEUE
    assert action.id == "boxrun-retention-run"

    await handle.pause(note="paused from the Web UI")
    again = await ensure_retention_schedule(temporal_client, 600)  # a second worker, another interval
    described = await again.describe()
    assert [i.every.total_seconds() for i in described.schedule.spec.intervals] == [600]
    assert described.schedule.state.paused, "a worker's start-up does not unpause it"
    assert described.schedule.action == action, "the same action: one schedule, updated in place"
