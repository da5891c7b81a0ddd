"""`boxrun worker`: the control-plane Temporal worker (all workflows, control and dispatch activities)."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

from temporalio.worker import Worker

from boxrun.activities.control import ControlActivities
from boxrun.activities.dispatch import DispatchActivities
from boxrun.activities.pipeline import PipelineActivities
from boxrun.activities.reaper import ReaperActivities
from boxrun.activities.retention import RetentionActivities
from boxrun.activities.schedules import ScheduleActivities
from boxrun.activities.webhooks import WebhookActivities
from boxrun.constants import CONTROL_TASK_QUEUE, WEBHOOK_TASK_QUEUE
from boxrun.db import create_pool, migrate_for
from boxrun.propagation import RequestIdPropagation
from boxrun.settings import Settings
from boxrun.storage import Storage
from boxrun.temporal import connect_with, ensure_search_attributes
from boxrun.worker.bytecode import compile_workflow_modules
from boxrun.worker.observe import WebhookOutcomes, metrics_runtime
from boxrun.worker.reaper import ensure_reaper
from boxrun.worker.retention import ensure_retention_schedule
from boxrun.workflows.job import JobWorkflow
from boxrun.workflows.pipeline import PipelineWorkflow
from boxrun.workflows.reaper import ReaperWorkflow
from boxrun.workflows.retention import RetentionWorkflow
from boxrun.workflows.schedules import ScheduledRunWorkflow
from boxrun.workflows.step import StepWorkflow
from boxrun.workflows.webhooks import WebhookDeliveryWorkflow

log = logging.getLogger(__name__)

# Every workflow the control worker runs (tests/unit/test_replay.py replays histories against this).
WORKFLOWS: list[type] = [
    JobWorkflow,
    ReaperWorkflow,
    PipelineWorkflow,
    StepWorkflow,
    WebhookDeliveryWorkflow,
    RetentionWorkflow,
    ScheduledRunWorkflow,
]


async def run_control_worker(settings: Settings, stop: asyncio.Event) -> int:
    settings.require_secrets("s3_secret_access_key", "secrets_key")
    client = await connect_with(
        settings,
        runtime=metrics_runtime(settings),  # its exporter serves BOXRUN_WORKER_METRICS_PORT
        interceptors=[RequestIdPropagation()],  # workers on this client use it too
    )
    await ensure_search_attributes(client)
    await migrate_for(settings.database_url, settings.database_owner_url)
    pool = await create_pool(settings.database_url, min_size=settings.db_pool_min, max_size=settings.db_pool_max)
    try:
        storage = Storage(settings)
        await asyncio.to_thread(storage.ensure_bucket)
        activities = ControlActivities(pool, storage, offline_after_s=settings.box_offline_after_s)
        dispatch = DispatchActivities(pool, claim_timeout_s=settings.dispatch_timeout_s)
        reaper = ReaperActivities(pool, settings)
        pipeline = PipelineActivities(pool, settings)
        webhooks = WebhookActivities(pool, settings)
        retention = RetentionActivities(pool, storage)
        schedules = ScheduleActivities(pool, storage, settings)
        compile_workflow_modules(WORKFLOWS)  # the sandbox re-imports them per workflow instance
        worker = Worker(
            client,
            task_queue=CONTROL_TASK_QUEUE,
            workflows=WORKFLOWS,
            activities=[
                *activities.all(),
                *dispatch.all(),
                *pipeline.all(),
                *webhooks.control(),
                *retention.all(),
                *schedules.all(),
                reaper.reap,
            ],
            # run_job waits here only until its box claims the job (then the API completes it)
            max_concurrent_activities=1000,
            # a crashed worker's sticky tasks move to the shared queue after 2 s
            sticky_queue_schedule_to_start_timeout=timedelta(seconds=2),
        )
        # webhook attempts on their own queue and slots: receivers that stall hold these only
        deliveries = Worker(
            client,
            task_queue=WEBHOOK_TASK_QUEUE,
            activities=webhooks.delivery(),
            max_concurrent_activities=settings.webhook_max_concurrent,
            interceptors=[WebhookOutcomes()],
        )
        async with worker, deliveries:
            await ensure_reaper(client, settings.reaper_interval_s)
            await ensure_retention_schedule(client, settings.retention_interval_s)
            log.info("control worker polling %s", CONTROL_TASK_QUEUE)
            await stop.wait()
            log.info("control worker stopping")
    finally:
        await pool.close()
    return 0
