"""Deterministic Temporal workflows: no I/O here, only orchestration of activities.

Import each workflow from its module (`boxrun.workflows.job`, ...). This package imports none of
them: Temporal's sandbox re-runs a workflow's module, and its package, for every new workflow
instance, so a package that imported all seven would re-run all seven per job (18 ms against
5 ms per JobWorkflow instance here; bench/sandbox_cost.py)."""
