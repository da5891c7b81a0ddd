-- name: insert_pipeline
INSERT INTO pipelines (id, org_id, owner, name, spec, spec_hash, timeout_s, rerun_of)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
RETURNING *;

-- $5: 'pending', or 'completed' for a step whose job a re-run reuses ($7 its job, $8 its pipeline).
-- name: insert_pipeline_step
INSERT INTO pipeline_steps (pipeline_id, name, position, needs, state, spec, job_id, reused_from)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8);

-- name: insert_pipeline_event
INSERT INTO pipeline_events (pipeline_id, org_id, step, state, detail)
VALUES ($1, $2, $3, $4, $5)
RETURNING id;

-- Withdraws a pipeline whose workflow could not be started (steps and events cascade).
-- name: delete_pipeline
DELETE FROM pipelines WHERE id = $1 AND state = 'queued';

-- name: get_pipeline
SELECT * FROM pipelines WHERE org_id = $1 AND id = $2;

-- name: pipeline_steps
SELECT * FROM pipeline_steps WHERE pipeline_id = $1 ORDER BY position;

-- name: pipeline_step_attempts
SELECT id, step, attempt, state, exit_code, error, error_kind FROM jobs
WHERE pipeline_id = $1 ORDER BY step, attempt;

-- name: pipeline_events_after
SELECT id, step, state, at, detail FROM pipeline_events
WHERE pipeline_id = $1 AND id > $2 ORDER BY id LIMIT $3;

-- A pipeline state change; a terminal state is absorbing (the UPDATE matches nothing then).
-- name: set_pipeline_state
UPDATE pipelines SET
    state       = $2,
    error       = COALESCE($3, error),
    started_at  = CASE WHEN $2 = 'running'::pipeline_state THEN COALESCE(started_at, clock_timestamp()) ELSE started_at END,
    finished_at = CASE WHEN $4 THEN clock_timestamp() ELSE finished_at END,
    updated_at  = clock_timestamp()
WHERE id = $1 AND state <> $2 AND state IN ('queued', 'running')
RETURNING org_id;

-- A step state change (terminal states absorbing); $4/$5 the attempt's job and number if known.
-- name: set_step_state
UPDATE pipeline_steps SET
    state       = $3,
    job_id      = COALESCE($4, job_id),
    attempts    = GREATEST(attempts, COALESCE($5, attempts)),
    error       = COALESCE($6, error),
    started_at  = CASE WHEN $3 = 'running'::step_state THEN COALESCE(started_at, clock_timestamp()) ELSE started_at END,
    finished_at = CASE WHEN $7 THEN clock_timestamp() ELSE finished_at END
WHERE pipeline_id = $1 AND name = $2 AND state IN ('pending', 'running')
  AND (state <> $3 OR job_id IS DISTINCT FROM COALESCE($4, job_id))
RETURNING (SELECT org_id FROM pipelines WHERE id = $1) AS org_id;

-- name: pipeline_step_for_attempt
SELECT s.spec, s.needs, p.org_id, p.owner FROM pipeline_steps s JOIN pipelines p ON p.id = s.pipeline_id
WHERE s.pipeline_id = $1 AND s.name = $2;

-- The job an upstream step ended with (its final attempt, or the job a re-run reuses).
-- name: step_final_job
SELECT job_id, state FROM pipeline_steps WHERE pipeline_id = $1 AND name = $2;

-- name: job_artifact_any_org
SELECT path, size, sha256 FROM artifacts WHERE job_id = $1 AND path = $2;

-- An attempt's job row; re-inserting the same attempt (an activity retry) changes nothing.
-- name: insert_attempt_job
INSERT INTO jobs (id, org_id, owner, box_name, box_group, requires, spec, spec_hash,
                  timeout_s, lock, priority, cancel_grace_s, pipeline_id, step, attempt)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)
ON CONFLICT (id) DO NOTHING
RETURNING *;

-- name: job_row
SELECT * FROM jobs WHERE id = $1;

-- name: set_error_kind
UPDATE jobs SET error_kind = $2 WHERE id = $1 AND error_kind IS NULL;

-- The REST face. $2 state: NULL matches every pipeline. One page; count_pipelines counts (a
-- window count here would read every matching pipeline for each page, as list_jobs once did).
-- name: list_pipelines
SELECT p.* FROM pipelines p
WHERE p.org_id = $1 AND ($2::pipeline_state IS NULL OR p.state = $2)
ORDER BY p.created_at DESC, p.id DESC
LIMIT $3 OFFSET $4;

-- name: count_pipelines
SELECT count(*) FROM pipelines WHERE org_id = $1 AND ($2::pipeline_state IS NULL OR state = $2);

-- name: pipeline_state
SELECT state, error FROM pipelines WHERE id = $1;

-- name: stale_active_pipelines
-- Pipelines not ended, older than $1 s: the reaper checks that each has a running workflow.
SELECT * FROM pipelines
WHERE state IN ('queued', 'running') AND created_at < clock_timestamp() - make_interval(secs => $1)
ORDER BY created_at
LIMIT 500;

-- name: pipeline_live_jobs
-- The step jobs of pipeline $1 that have not ended (a pipeline cancel names its canceller on each).
SELECT id, box_name, state FROM jobs
WHERE pipeline_id = $1 AND state NOT IN ('completed', 'failed', 'cancelled', 'timed_out', 'unschedulable');
