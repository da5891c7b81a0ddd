-- name: insert_job
INSERT INTO jobs (id, org_id, owner, box_name, box_group, requires, spec, spec_hash,
                  timeout_s, lock, priority, idempotency_key, cancel_grace_s, rerun_of)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
RETURNING *;

-- name: insert_first_event
INSERT INTO job_events (org_id, job_id, from_state, to_state, detail)
VALUES ($1, $2, NULL, 'queued', $3);

-- name: job_by_idempotency_key
SELECT id, spec_hash FROM jobs
WHERE org_id = $1 AND owner = $2 AND idempotency_key = $3;

-- name: get_job
SELECT j.*, COALESCE(b.name, j.deleted_box_name, j.box_name) AS box
FROM jobs j LEFT JOIN boxes b ON b.id = j.box_id
WHERE j.org_id = $1 AND j.id = $2;

-- $2 state, $3 box, $6 owner, $7 pipeline, $8 since, $9 until (created_at in [since, until)),
-- $10 labels (all must match), $11/$12 cursor (created_at, id of the last job of the page before):
-- NULL matches every job.
-- One page, newest first ($4: the page size plus one, so the caller sees whether a page follows
-- without counting; count_jobs counts every matching job in its own query: a window count here
-- would read every matching row, all columns and the join, for each page).
-- name: list_jobs
SELECT j.*, COALESCE(b.name, j.deleted_box_name, j.box_name) AS box
FROM jobs j LEFT JOIN boxes b ON b.id = j.box_id
WHERE j.org_id = $1
  AND ($2::job_state IS NULL OR j.state = $2)
  AND ($3::text IS NULL OR COALESCE(b.name, j.deleted_box_name, j.box_name) = $3)
  AND ($6::text IS NULL OR j.owner = $6)
  AND ($7::uuid IS NULL OR j.pipeline_id = $7)
  AND ($8::timestamptz IS NULL OR j.created_at >= $8)
  AND ($9::timestamptz IS NULL OR j.created_at < $9)
  AND ($10::jsonb IS NULL OR j.labels @> $10)
  AND ($11::timestamptz IS NULL OR (j.created_at, j.id) < ($11, $12::uuid))
ORDER BY j.created_at DESC, j.id DESC
LIMIT $4 OFFSET $5;

-- The same filters as list_jobs, without the cursor.
-- name: count_jobs
SELECT count(*)
FROM jobs j LEFT JOIN boxes b ON b.id = j.box_id
WHERE j.org_id = $1
  AND ($2::job_state IS NULL OR j.state = $2)
  AND ($3::text IS NULL OR COALESCE(b.name, j.deleted_box_name, j.box_name) = $3)
  AND ($4::text IS NULL OR j.owner = $4)
  AND ($5::uuid IS NULL OR j.pipeline_id = $5)
  AND ($6::timestamptz IS NULL OR j.created_at >= $6)
  AND ($7::timestamptz IS NULL OR j.created_at < $7)
  AND ($8::jsonb IS NULL OR j.labels @> $8);

-- name: job_events
SELECT from_state, to_state, at, detail FROM job_events
WHERE job_id = $1 ORDER BY id;

-- name: lock_job
SELECT id, org_id, state, owner, box_name, box_group, requires, box_id, lock, priority, created_at, waiting_reason
FROM jobs WHERE id = $1 FOR UPDATE;

-- name: set_waiting_reason
UPDATE jobs SET waiting_reason = $2, updated_at = clock_timestamp() WHERE id = $1 AND state = 'waiting_for_box';

-- name: job_org
SELECT org_id FROM jobs WHERE id = $1;

-- name: job_state
SELECT state FROM jobs WHERE org_id = $1 AND id = $2;

-- Guarded one-way transition: matches nothing unless the job is in one of the allowed states ($3).
-- name: transition
UPDATE jobs SET
    state          = $2,
    box_id         = COALESCE($4, box_id),
    exit_code      = COALESCE($5, exit_code),
    error          = COALESCE($6, error),
    waiting_reason = $7,
    started_at     = CASE WHEN $2 = 'running'::job_state THEN clock_timestamp() ELSE started_at END,
    finished_at    = CASE WHEN $8 THEN clock_timestamp() ELSE finished_at END,
    updated_at     = clock_timestamp()
WHERE id = $1 AND state = ANY($3::job_state[])
RETURNING org_id;

-- name: insert_event
INSERT INTO job_events (org_id, job_id, from_state, to_state, detail)
VALUES ($1, $2, $3, $4, $5);

-- name: notify
SELECT pg_notify($1, $2);

-- Withdraws a job whose workflow could not be started (events, logs cascade).
-- name: delete_job
DELETE FROM jobs WHERE id = $1 AND state = 'queued';

-- Another job for the same target of org $1 is still waiting to be placed (queued or
-- waiting_for_box; index jobs_pending): the offer at submission is not tried then (FIFO would
-- refuse it, and a backlog's submissions would queue on the target's placement lock).
-- name: target_has_pending
SELECT EXISTS (
  SELECT 1 FROM jobs
  WHERE org_id = $1 AND state IN ('queued', 'waiting_for_box') AND id <> $4
    AND box_name IS NOT DISTINCT FROM $2 AND box_group IS NOT DISTINCT FROM $3
);

-- A submission withdrawn after its offer at submission was withdrawn unclaimed (lease, dispatch
-- and events go with the job).
-- name: delete_offered_job
DELETE FROM jobs WHERE id = $1 AND state IN ('queued', 'dispatching');

-- name: job_placement
SELECT box_id, org_id FROM jobs WHERE id = $1;

-- name: job_state_any_org
SELECT state FROM jobs WHERE id = $1::uuid;

-- Submitted longer than $1 seconds ago and possibly without a workflow: still queued (its
-- workflow should have moved it long ago), or offered at submission and never adopted by a
-- run_job (the API died between the offer and the workflow's start). The reaper asks Temporal.
-- Each kind at most 100 a sweep (dispatches_unadopted indexes the second).
-- name: stale_queued_jobs
(SELECT * FROM jobs
 WHERE state = 'queued' AND created_at < clock_timestamp() - make_interval(secs => $1)
 ORDER BY created_at LIMIT 100)
UNION ALL
(SELECT j.* FROM dispatches d JOIN jobs j ON j.id = d.job_id
 WHERE d.task_token IS NULL
   AND j.state NOT IN ('completed', 'failed', 'cancelled', 'timed_out', 'unschedulable')
   AND j.created_at < clock_timestamp() - make_interval(secs => $1)
 ORDER BY j.created_at LIMIT 100);

-- name: job_claim
SELECT j.id, j.org_id, j.state, l.box_id AS lease_box
FROM jobs j LEFT JOIN leases l ON l.job_id = j.id AND l.released_at IS NULL
WHERE j.id = $1;
