"""The control-plane worker process: `boxrun worker` and the Temporal Schedules it keeps."""
