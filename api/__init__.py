"""The REST API (FastAPI): jobs, logs, artifacts, boxes, agent ingest."""
