"""Deterministic Temporal workflows: no I/O here, only orchestration of activities."""

from boxrun.workflows.job import JobWorkflow
from boxrun.workflows.pipeline import PipelineWorkflow
from boxrun.workflows.reaper import ReaperWorkflow
from boxrun.workflows.step import StepWorkflow

__all__ = ["JobWorkflow", "PipelineWorkflow", "ReaperWorkflow", "StepWorkflow"]
