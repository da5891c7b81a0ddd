-- What an organisation keeps (docs/retention.md): retention per kind of output, a storage quota
-- and a per-job transcript cap. NULL means "keep forever" / "no quota" / "the deployment's
-- default" (Settings.transcript_cap_bytes). The values are checked by the API too (422 with the
-- rule); the CHECKs keep a hand-written UPDATE from storing what no code path expects.
ALTER TABLE orgs
    ADD COLUMN logs_days             integer CHECK (logs_days BETWEEN 1 AND 36500),
    ADD COLUMN artifacts_days        integer CHECK (artifacts_days BETWEEN 1 AND 36500),
    ADD COLUMN jobs_days             integer CHECK (jobs_days BETWEEN 1 AND 36500),
    ADD COLUMN storage_quota_bytes   bigint  CHECK (storage_quota_bytes >= 0),
    ADD COLUMN transcript_cap_bytes  bigint  CHECK (transcript_cap_bytes >= 65536),
    ADD COLUMN policy_updated_at     timestamptz,
    ADD COLUMN policy_updated_by     text;

-- A job's outputs can go before the job: its transcript (log chunks + archive) and its artifacts
-- (rows + objects), by DELETE /api/jobs/{id}/outputs or by retention. The job row and its events
-- stay; reads of what went answer 410 with `*_deleted_why`.
ALTER TABLE jobs
    ADD COLUMN logs_deleted_at       timestamptz,
    ADD COLUMN logs_deleted_why      text,
    ADD COLUMN artifacts_deleted_at  timestamptz,
    ADD COLUMN artifacts_deleted_why text;

-- Usage sums an org's artifacts; the retention sweep walks ended jobs oldest first.
CREATE INDEX artifacts_org ON artifacts (org_id);
CREATE INDEX jobs_finished ON jobs (org_id, finished_at) WHERE finished_at IS NOT NULL;

-- Output deletion is crash-safe (docs/retention.md): the job is marked (*_deleted_at, audited)
-- and flagged in one transaction, then its objects go, then its rows, then the flag is cleared.
-- The retention activity finishes any job still flagged (a crash between the steps).
ALTER TABLE jobs ADD COLUMN outputs_purge_pending boolean NOT NULL DEFAULT false;
CREATE INDEX jobs_purge_pending ON jobs (id) WHERE outputs_purge_pending;
-- A transcript deleted while the job's workflow was still archiving it: the archive lands after
-- the purge; the retention activity deletes it on its next run.
CREATE INDEX jobs_archive_after_delete ON jobs (id) WHERE logs_deleted_at IS NOT NULL AND log_archive_key IS NOT NULL;

-- Retention deletes job rows past jobs_days: a rerun made from a deleted job keeps running and
-- forgets its origin instead of blocking the delete. (job_events, dispatches, the manifest, log
-- chunks and artifacts already go with their job; audit_log.job_id and pipeline_steps.job_id
-- carry no foreign key, so the audit trail of a deleted job stays whole.)
ALTER TABLE jobs DROP CONSTRAINT jobs_rerun_of_fkey,
    ADD CONSTRAINT jobs_rerun_of_fkey FOREIGN KEY (rerun_of) REFERENCES jobs (id) ON DELETE SET NULL;
