"""Deterministic Temporal workflows: no I/O here, only orchestration of activities."""

from boxrun.workflows.job import JobWorkflow

__all__ = ["JobWorkflow"]
