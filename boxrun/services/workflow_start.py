"""Starting a job's workflow from its frozen row: used at submission and by the reaper."""

from __future__ import annotations

from datetime import timedelta

import asyncpg
from temporalio.client import Client
from temporalio.common import SearchAttributePair, TypedSearchAttributes, WorkflowIDReusePolicy

from boxrun.constants import CONTROL_TASK_QUEUE
from boxrun.messages import JobInput
from boxrun.settings import Settings
from boxrun.temporal import KEY_BOX_ID, KEY_JOB_STATE, KEY_OWNER

WORKFLOW_TASK_TIMEOUT = timedelta(seconds=5)


def job_input(row: asyncpg.Record, settings: Settings) -> JobInput:
    """The workflow's input: the job's name and settings, never its script, files or env."""
    return JobInput(
        job_id=str(row["id"]),
        spec_hash=row["spec_hash"],
        owner=row["owner"],
        box=row["box_name"],
        box_group=row["box_group"],
        timeout_s=row["timeout_s"],
        queue_timeout_s=row["queue_timeout_s"],
        cancel_grace_s=row["cancel_grace_s"],
        heartbeat_timeout_s=settings.activity_heartbeat_timeout_s,
        claim_timeout_s=settings.dispatch_timeout_s,
        local_control=settings.local_control_activities,
    )


async def start_job_workflow(temporal: Client, spec: JobInput) -> None:
    """Workflow id = job id; a second start of the same job is refused by Temporal."""
    await temporal.start_workflow(
        "JobWorkflow",
        spec,
        id=spec.job_id,
        task_queue=CONTROL_TASK_QUEUE,
        id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
        # A workflow task takes milliseconds; if the worker holding one dies, retry it elsewhere
        # after 5 s instead of Temporal's default 10 s.
        task_timeout=WORKFLOW_TASK_TIMEOUT,
        search_attributes=TypedSearchAttributes(
            [
                SearchAttributePair(KEY_JOB_STATE, "queued"),
                SearchAttributePair(KEY_OWNER, spec.owner),
                SearchAttributePair(KEY_BOX_ID, spec.box or f"group:{spec.box_group}"),
            ]
        ),
    )
