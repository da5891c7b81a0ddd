"""Deterministic Temporal workflows: no I/O here, only orchestration of activities."""

from boxrun.workflows.job import JobWorkflow
from boxrun.workflows.pipeline import PipelineWorkflow
from boxrun.workflows.reaper import ReaperWorkflow
from boxrun.workflows.retention import RetentionWorkflow
from boxrun.workflows.schedules import ScheduledRunWorkflow
from boxrun.workflows.step import StepWorkflow
from boxrun.workflows.webhooks import WebhookDeliveryWorkflow

__all__ = [
    "JobWorkflow",
    "PipelineWorkflow",
    "ReaperWorkflow",
    "RetentionWorkflow",
    "ScheduledRunWorkflow",
    "StepWorkflow",
    "WebhookDeliveryWorkflow",
]
