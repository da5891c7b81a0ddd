-- An organisation's keeping policy (docs/retention.md): retention, quota, usage; output deletion
-- and the retention sweep.

-- name: org_policy
SELECT logs_days, artifacts_days, jobs_days, storage_quota_bytes, transcript_cap_bytes,
       policy_updated_at, policy_updated_by
FROM orgs WHERE id = $1;

-- name: set_org_retention
UPDATE orgs SET logs_days = $2, artifacts_days = $3, jobs_days = $4,
                policy_updated_at = clock_timestamp(), policy_updated_by = $5
WHERE id = $1
RETURNING logs_days, artifacts_days, jobs_days, storage_quota_bytes, transcript_cap_bytes,
          policy_updated_at, policy_updated_by;

-- name: set_org_quota
UPDATE orgs SET storage_quota_bytes = $2, transcript_cap_bytes = $3,
                policy_updated_at = clock_timestamp(), policy_updated_by = $4
WHERE id = $1
RETURNING logs_days, artifacts_days, jobs_days, storage_quota_bytes, transcript_cap_bytes,
          policy_updated_at, policy_updated_by;

-- What org $1 keeps now: object storage (artifacts, transcript archives) and transcript bytes in
-- Postgres.
-- name: org_usage
SELECT (SELECT COALESCE(sum(size), 0)::bigint FROM artifacts WHERE org_id = $1) AS artifact_bytes,
       (SELECT count(*) FROM artifacts WHERE org_id = $1) AS artifacts,
       (SELECT COALESCE(sum(log_archive_size), 0)::bigint FROM jobs
         WHERE org_id = $1 AND log_archive_key IS NOT NULL) AS log_archive_bytes,
       (SELECT count(*) FROM jobs WHERE org_id = $1) AS jobs,
       (SELECT COALESCE(sum(c.bytes), 0)::bigint FROM log_chunks c JOIN jobs j ON j.id = c.job_id
         WHERE j.org_id = $1) AS transcript_bytes,
       (SELECT storage_quota_bytes FROM orgs WHERE id = $1) AS quota_bytes;

-- The org's quota, its row locked against the other manifests of the org until commit (NO KEY:
-- rows referencing the org are still inserted meanwhile).
-- name: lock_org_quota
SELECT storage_quota_bytes FROM orgs WHERE id = $1 FOR NO KEY UPDATE;

-- What the quota counts for org $1 besides job $2's own manifest: recorded artifacts, transcript
-- archives, and what the org's other unfinished jobs announced and are uploading.
-- name: org_storage_in_use
SELECT (SELECT COALESCE(sum(size), 0) FROM artifacts WHERE org_id = $1)
     + (SELECT COALESCE(sum(log_archive_size), 0) FROM jobs WHERE org_id = $1 AND log_archive_key IS NOT NULL)
     + (SELECT COALESCE(sum(m.size), 0) FROM artifact_manifest m JOIN jobs j ON j.id = m.job_id
         WHERE j.org_id = $1 AND j.id <> $2 AND j.finished_at IS NULL AND m.status = 'pending')
     AS used;

-- name: manifest_pending_bytes
SELECT COALESCE(sum(size) FILTER (WHERE status = 'pending'), 0)::bigint FROM artifact_manifest WHERE job_id = $1;

-- Mark what of an ended job goes ($2 logs, $3 artifacts), with the sentence later reads answer
-- 410 with ($4 for logs, $5 for artifacts): what is already marked keeps its first mark. The
-- flag is cleared once objects and rows are gone (clear_purge_pending).
-- name: mark_outputs_deleted
UPDATE jobs SET
    logs_deleted_at       = CASE WHEN $2 THEN COALESCE(logs_deleted_at, clock_timestamp()) ELSE logs_deleted_at END,
    logs_deleted_why      = CASE WHEN $2 THEN COALESCE(logs_deleted_why, $4) ELSE logs_deleted_why END,
    artifacts_deleted_at  = CASE WHEN $3 THEN COALESCE(artifacts_deleted_at, clock_timestamp()) ELSE artifacts_deleted_at END,
    artifacts_deleted_why = CASE WHEN $3 THEN COALESCE(artifacts_deleted_why, $5) ELSE artifacts_deleted_why END,
    outputs_purge_pending = true
WHERE id = $1
RETURNING id, logs_deleted_at, artifacts_deleted_at;

-- What is left of a job's outputs (objects are found by their keys: the archive's, the
-- artifacts' prefix).
-- name: outputs_left
SELECT j.id, j.org_id, j.log_archive_key, j.logs_deleted_at IS NOT NULL AS logs_marked,
       j.artifacts_deleted_at IS NOT NULL AS artifacts_marked,
       (SELECT COALESCE(sum(bytes), 0)::bigint FROM log_chunks WHERE job_id = j.id) AS transcript_bytes,
       COALESCE(j.log_archive_size, 0)::bigint AS archive_bytes,
       (SELECT count(*) FROM artifacts WHERE job_id = j.id) AS artifacts,
       (SELECT COALESCE(sum(size), 0)::bigint FROM artifacts WHERE job_id = j.id) AS artifact_bytes
FROM jobs j WHERE j.id = $1;

-- name: delete_log_rows
WITH gone AS (DELETE FROM log_chunks WHERE job_id = $1)
UPDATE jobs SET log_archive_key = NULL, log_archive_size = NULL, log_archive_sha256 = NULL, log_bytes = 0
WHERE id = $1;

-- name: delete_artifact_rows
WITH a AS (DELETE FROM artifacts WHERE job_id = $1)
DELETE FROM artifact_manifest WHERE job_id = $1;

-- name: clear_purge_pending
UPDATE jobs SET outputs_purge_pending = false WHERE id = $1;

-- Jobs marked whose objects or rows a crash left behind, and jobs whose transcript was deleted
-- while the workflow was still archiving it (the archive landed after the purge).
-- name: purge_pending_jobs
SELECT id FROM (
    SELECT id FROM jobs WHERE outputs_purge_pending
    UNION
    SELECT id FROM jobs WHERE logs_deleted_at IS NOT NULL AND log_archive_key IS NOT NULL
) AS left_behind
ORDER BY id LIMIT $1;

-- Orgs with a retention policy.
-- name: orgs_with_retention
SELECT id, logs_days, artifacts_days, jobs_days FROM orgs
WHERE logs_days IS NOT NULL OR artifacts_days IS NOT NULL OR jobs_days IS NOT NULL
ORDER BY id;

-- Ended jobs of org $1 whose transcript is past logs_days ($2) and not yet deleted, oldest first.
-- name: jobs_logs_expired
SELECT id FROM jobs
WHERE org_id = $1 AND finished_at IS NOT NULL
  AND finished_at < clock_timestamp() - make_interval(days => $2)
  AND state IN ('completed', 'failed', 'cancelled', 'timed_out', 'unschedulable')
  AND logs_deleted_at IS NULL
ORDER BY finished_at
LIMIT $3;

-- name: jobs_artifacts_expired
SELECT id FROM jobs
WHERE org_id = $1 AND finished_at IS NOT NULL
  AND finished_at < clock_timestamp() - make_interval(days => $2)
  AND state IN ('completed', 'failed', 'cancelled', 'timed_out', 'unschedulable')
  AND artifacts_deleted_at IS NULL
ORDER BY finished_at
LIMIT $3;

-- Ended jobs of org $1 past jobs_days ($2), not a step of a pipeline still running.
-- name: jobs_rows_expired
SELECT j.id FROM jobs j
WHERE j.org_id = $1 AND j.finished_at IS NOT NULL
  AND j.finished_at < clock_timestamp() - make_interval(days => $2)
  AND j.state IN ('completed', 'failed', 'cancelled', 'timed_out', 'unschedulable')
  AND (j.pipeline_id IS NULL OR EXISTS (
        SELECT 1 FROM pipelines p WHERE p.id = j.pipeline_id AND p.finished_at IS NOT NULL))
ORDER BY j.finished_at
LIMIT $3;

-- name: delete_ended_job
DELETE FROM jobs
WHERE id = $1 AND finished_at IS NOT NULL
  AND state IN ('completed', 'failed', 'cancelled', 'timed_out', 'unschedulable');

-- name: lock_job_outputs
SELECT logs_deleted_at, artifacts_deleted_at, outputs_purge_pending FROM jobs WHERE id = $1 FOR UPDATE;
