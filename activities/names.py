"""Activity names, so workflows can call activities without importing their I/O-heavy modules."""

# Control activities (task queue boxrun-control).
ACQUIRE_BOX = "acquire_box"
RECORD_TRANSITION = "record_transition"
FINISH_JOB = "finish_job"
PRESIGN_UPLOADS = "presign_uploads"
VERIFY_ARTIFACTS = "verify_artifacts"
ARCHIVE_LOGS = "archive_logs"

# Box activities (task queue box.NAME, run by that box's agent).
RUN_JOB = "run_job"
UPLOAD_ARTIFACTS = "upload_artifacts"

# Reaper (control worker, run by the boxrun-reaper schedule).
REAP = "reap"
