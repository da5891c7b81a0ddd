"""Deterministic Temporal workflows: no I/O here, only orchestration of activities."""

from boxrun.workflows.job import JobWorkflow
from boxrun.workflows.reaper import ReaperWorkflow

__all__ = ["JobWorkflow", "ReaperWorkflow"]
