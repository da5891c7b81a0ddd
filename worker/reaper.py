"""The reaper singleton the control worker makes sure runs (and the schedule it replaced)."""

from __future__ import annotations

import logging

from temporalio.client import Client, WorkflowHandle
from temporalio.common import WorkflowIDReusePolicy
from temporalio.service import RPCError, RPCStatusCode

from boxrun.constants import CONTROL_TASK_QUEUE
from boxrun.messages import ReaperInput
from boxrun.workflows.reaper import REAPER_WORKFLOW_ID, ReaperWorkflow

log = logging.getLogger(__name__)

# Earlier versions ran the reaper from a Temporal Schedule of this id, one workflow every 15 s.
LEGACY_SCHEDULE_ID = "boxrun-reaper"


async def ensure_reaper(client: Client, every_s: float) -> WorkflowHandle[ReaperWorkflow, None]:
    """Start the reaper workflow, or hand the running one this worker's interval.

    Signal-with-start is atomic on the server: however many control workers start at once, one
    reaper runs, and each of them only signals it. ALLOW_DUPLICATE lets a new reaper start after
    the previous one closed (terminated from the UI, or failed).
    """
    await _drop_legacy_schedule(client)
    inp = ReaperInput(interval_s=every_s)
    handle = await client.start_workflow(
        ReaperWorkflow.run,
        inp,
        id=REAPER_WORKFLOW_ID,
        task_queue=CONTROL_TASK_QUEUE,
        id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
        start_signal="configure",
        start_signal_args=[inp],
    )
    log.info("reaper workflow %s running (sweep every %.0fs)", REAPER_WORKFLOW_ID, every_s)
    return handle


async def _drop_legacy_schedule(client: Client) -> None:
    try:
        await client.get_schedule_handle(LEGACY_SCHEDULE_ID).delete()
        log.info("deleted the legacy reaper schedule %s", LEGACY_SCHEDULE_ID)
    except RPCError as exc:
        if exc.status != RPCStatusCode.NOT_FOUND:
            raise
