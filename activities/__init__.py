"""Temporal activities: control-plane ones (Postgres, S3) and box ones (run on the agent)."""
