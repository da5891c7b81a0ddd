-- Offers made at submission that no run_job adopted yet (task token still NULL): the reaper looks
-- for the ones whose workflow never started (jobs.sql stale_queued_jobs) on every sweep.
CREATE INDEX dispatches_unadopted ON dispatches (job_id) WHERE task_token IS NULL;
