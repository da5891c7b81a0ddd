-- The run_job activity offers the job to its box. A job whose earlier offer was withdrawn
-- unclaimed (withdraw_dispatch: its run_job was lost with a control worker) is offered again
-- with the new task token and a fresh claim deadline. An offer only replaces one written by a
-- run_job scheduled before it (a run_job whose worker was paused past its heartbeat timeout and
-- wakes up late cannot take the offer back); if that late offer was claimed meanwhile, the newer
-- run_job adopts the running job (its token replaces the dead one, so the API relays heartbeats
-- and the result to the live activity). The same run_job writing again (a retry after a lost
-- reply) changes nothing. A cancelled dispatch is never re-offered. No row: not offered.
-- The offer made at submission (pre_offer: no token, no run_scheduled_at) is always adopted,
-- claimed or not, ended or not: it is this job's only offer so far. Unclaimed, it gets a fresh
-- claim deadline (the box may have missed it). Its early_result (the box ended it before this)
-- is returned for run_job to return.
-- $1 job, $2 box id, $3 task token, $4 seconds to claim, $5 the submission's request id (or NULL),
-- $6 when the offering run_job was scheduled.
-- name: offer_dispatch
INSERT INTO dispatches (job_id, org_id, box_id, task_token, claim_deadline, request_id, run_scheduled_at)
SELECT j.id, j.org_id, $2, $3, clock_timestamp() + make_interval(secs => $4), $5, $6 FROM jobs j WHERE j.id = $1
ON CONFLICT (job_id) DO UPDATE SET
  task_token = EXCLUDED.task_token,
  run_scheduled_at = EXCLUDED.run_scheduled_at,
  claim_deadline = CASE WHEN dispatches.claimed_at IS NULL AND dispatches.task_token IS DISTINCT FROM EXCLUDED.task_token
                        THEN EXCLUDED.claim_deadline ELSE dispatches.claim_deadline END,
  expired_at = CASE WHEN dispatches.claimed_at IS NULL AND dispatches.task_token IS DISTINCT FROM EXCLUDED.task_token
                         AND dispatches.cancel_requested_at IS NULL
                    THEN NULL ELSE dispatches.expired_at END
WHERE dispatches.task_token = EXCLUDED.task_token
   OR (dispatches.task_token IS NULL AND dispatches.box_id = EXCLUDED.box_id)
   OR (dispatches.cancel_requested_at IS NULL AND dispatches.result_at IS NULL
       AND COALESCE(dispatches.run_scheduled_at, '-infinity') < EXCLUDED.run_scheduled_at)
RETURNING claimed_at, expired_at, claim_deadline, early_result;

-- The offer at submission: the API leased box $2 for job $1 in the submission and offers it at
-- once, before the job's workflow exists (no task token yet: run_job adopts it with
-- offer_dispatch). $3 seconds to claim, $4 the submission's request id.
-- name: pre_offer
INSERT INTO dispatches (job_id, org_id, box_id, task_token, claim_deadline, request_id)
SELECT j.id, j.org_id, $2, NULL, clock_timestamp() + make_interval(secs => $3), $4 FROM jobs j WHERE j.id = $1
ON CONFLICT (job_id) DO NOTHING
RETURNING box_id;

-- The token of the job's dispatch to box $2, its row locked: a result and run_job's adoption
-- (offer_dispatch) take turns, so exactly one of them sees the other.
-- name: lock_dispatch_token
SELECT task_token FROM dispatches WHERE job_id = $1 AND box_id = $2 FOR UPDATE;

-- The box ended a job offered at submission before run_job adopted the offer: its result (or
-- cancellation) is kept for run_job. Returns whether a cancel had been requested before it.
-- name: store_early_result
UPDATE dispatches SET early_result = $3, result_at = clock_timestamp()
WHERE job_id = $1 AND box_id = $2 AND claimed_at IS NOT NULL AND result_at IS NULL AND task_token IS NULL
RETURNING cancel_requested_at IS NOT NULL AS cancel_requested;

-- finish_job's first step: the job's offer made at submission and not adopted by a run_job,
-- locked (before the job row, as a claim locks them). Unclaimed, it is closed with the job's end
-- (close_pre_offer); claimed and still reporting ($2 s), the end waits for the box.
-- name: lock_unadopted_dispatch
SELECT claimed_at IS NOT NULL AS claimed,
       (claimed_at IS NOT NULL AND result_at IS NULL
        AND last_heartbeat_at > clock_timestamp() - make_interval(secs => $2)) AS running
FROM dispatches WHERE job_id = $1 AND task_token IS NULL
FOR UPDATE;

-- name: close_pre_offer
UPDATE dispatches SET expired_at = coalesce(expired_at, clock_timestamp()),
                      cancel_requested_at = coalesce(cancel_requested_at, clock_timestamp())
WHERE job_id = $1 AND task_token IS NULL AND claimed_at IS NULL;

-- A submission whose workflow could not be started withdraws its offer made at submission, if
-- the box has not claimed it (a claim racing this waits on the row lock, then matches nothing).
-- name: withdraw_pre_offer
UPDATE dispatches SET expired_at = coalesce(expired_at, clock_timestamp())
WHERE job_id = $1 AND task_token IS NULL AND claimed_at IS NULL
RETURNING job_id;

-- name: dispatch_state
SELECT claimed_at, expired_at, claim_deadline, claim_deadline <= clock_timestamp() AS overdue
FROM dispatches WHERE job_id = $1;

-- Not claimed in time (or cancelled before the claim): closes the offer; a claim racing it
-- waits on the row lock and then matches nothing. Returns a row only if this call expired it.
-- name: expire_dispatch
UPDATE dispatches SET expired_at = clock_timestamp()
WHERE job_id = $1 AND claimed_at IS NULL AND expired_at IS NULL
RETURNING job_id;

-- run_job ended without a word from the box (its heartbeat timeout): close the offer if the box
-- never claimed it. True when the job never started (no offer at all, or an open or expired
-- unclaimed one: a claim racing this waits on the row lock, then matches nothing), so the
-- workflow may offer it again; false once claimed. Also true for an offer made at submission
-- that no run_job adopted (the one that died did so before writing its token): the next run_job
-- adopts it, claimed or not, and the job goes on.
-- name: withdraw_dispatch
WITH closed AS (
  UPDATE dispatches SET expired_at = coalesce(expired_at, clock_timestamp())
  WHERE job_id = $1 AND claimed_at IS NULL
  RETURNING job_id
)
SELECT EXISTS (SELECT 1 FROM closed) OR NOT EXISTS (SELECT 1 FROM dispatches WHERE job_id = $1)
    OR EXISTS (SELECT 1 FROM dispatches WHERE job_id = $1 AND task_token IS NULL);

-- The box claims the job: only an open offer to this very box. No row: refused; a row whose
-- token is NULL: claimed before run_job adopted the offer made at submission.
-- name: claim_dispatch
UPDATE dispatches SET claimed_at = clock_timestamp(), last_heartbeat_at = clock_timestamp()
WHERE job_id = $1 AND box_id = $2 AND claimed_at IS NULL AND expired_at IS NULL
  AND cancel_requested_at IS NULL AND claim_deadline > clock_timestamp()
RETURNING task_token;

-- The job's dispatch as its box sees it; NULL unless dispatched to box $2.
-- name: box_dispatch
SELECT d.*, j.state, j.spec, j.timeout_s, j.cancel_grace_s, j.finished_at
FROM dispatches d JOIN jobs j ON j.id = d.job_id
WHERE d.job_id = $1 AND d.box_id = $2;

-- Events pending for box $1: open offers, and cancels of jobs it claimed and has not finished.
-- name: box_events
SELECT 'offer' AS kind, job_id FROM dispatches
WHERE box_id = $1 AND claimed_at IS NULL AND expired_at IS NULL AND cancel_requested_at IS NULL
  AND claim_deadline > clock_timestamp()
UNION ALL
SELECT 'cancel' AS kind, job_id FROM dispatches
WHERE box_id = $1 AND claimed_at IS NOT NULL AND result_at IS NULL AND cancel_requested_at IS NOT NULL;

-- name: request_dispatch_cancel
UPDATE dispatches SET cancel_requested_at = COALESCE(cancel_requested_at, clock_timestamp())
WHERE job_id = $1 AND result_at IS NULL
RETURNING box_id, claimed_at IS NOT NULL AS claimed;

-- A progress report; returns the task token when a heartbeat is due to Temporal ($3 s since the last).
-- One clock reading for the whole statement (clock_timestamp() changes between calls). An offer
-- made at submission and not adopted yet has no token: nothing to relay (no activity runs yet).
-- name: dispatch_progress
WITH now AS (SELECT clock_timestamp() AS t)
UPDATE dispatches d SET last_heartbeat_at = now.t,
    relayed_at = CASE WHEN d.task_token IS NOT NULL
                           AND (d.relayed_at IS NULL OR d.relayed_at < now.t - make_interval(secs => $3))
                      THEN now.t ELSE d.relayed_at END
FROM now
WHERE d.job_id = $1 AND d.box_id = $2 AND d.claimed_at IS NOT NULL AND d.result_at IS NULL
RETURNING d.task_token, d.relayed_at = now.t AS relay, d.cancel_requested_at IS NOT NULL AS cancel;

-- The box's result was taken. Returns whether a cancel had been requested before it (a cancel
-- requested after finds result_at set and records nothing: request_dispatch_cancel).
-- name: dispatch_result
UPDATE dispatches SET result_at = clock_timestamp()
WHERE job_id = $1 AND box_id = $2 AND claimed_at IS NOT NULL AND result_at IS NULL
RETURNING cancel_requested_at IS NOT NULL AS cancel_requested;

-- name: manifest_count
SELECT count(*) FROM artifact_manifest WHERE job_id = $1;

-- name: insert_manifest
INSERT INTO artifact_manifest (job_id, path, size, sha256, status, reason)
SELECT $1, e.path, e.size, e.sha256, e.status, e.reason
FROM unnest($2::text[], $3::bigint[], $4::text[], $5::text[], $6::text[]) AS e(path, size, sha256, status, reason)
ON CONFLICT (job_id, path) DO NOTHING;

-- name: manifest_totals
SELECT count(*) FILTER (WHERE status = 'pending') AS pending,
       count(*) FILTER (WHERE status = 'refused') AS refused,
       COALESCE(sum(size) FILTER (WHERE status = 'pending'), 0)::bigint AS pending_bytes
FROM artifact_manifest WHERE job_id = $1;

-- Keyset pages of a job's manifest ($2 = the last path of the previous page, '' first).
-- name: manifest_page
SELECT path, size, sha256, status, reason FROM artifact_manifest
WHERE job_id = $1 AND path > $2 ORDER BY path LIMIT $3;

-- name: mark_manifest
UPDATE artifact_manifest SET status = $3, reason = $4 WHERE job_id = $1 AND path = $2;

-- name: open_agent_session
UPDATE boxes SET agent_session = $2, last_seen_at = clock_timestamp(), agent_version = $3
WHERE id = $1 AND (agent_session IS NULL OR agent_session = $4 OR last_seen_at IS NULL
                   OR last_seen_at <= clock_timestamp() - make_interval(secs => $5))
RETURNING agent_session;

-- name: box_session
SELECT agent_session, capacity FROM boxes WHERE id = $1;

-- The pid arrives with the first progress report: it joins the detail of the `running` event.
-- name: record_pid_event
UPDATE job_events SET detail = detail || $2::jsonb
WHERE job_id = $1 AND to_state = 'running' AND NOT detail ? 'pid';

-- name: job_log_seq
SELECT log_seq FROM jobs WHERE id = $1 FOR UPDATE;

-- name: lock_dispatch
SELECT 1 FROM dispatches WHERE job_id = $1 FOR UPDATE;

-- A job's dispatch to box $2 as the log ingest checks it ($3 = tail grace, s).
-- name: log_dispatch
SELECT d.claimed_at, d.result_at, j.state,
       (j.finished_at IS NOT NULL AND j.finished_at > clock_timestamp() - make_interval(secs => $3)) AS in_grace
FROM dispatches d JOIN jobs j ON j.id = d.job_id
WHERE d.job_id = $1 AND d.box_id = $2;

-- name: job_has_archive
SELECT log_archive_key IS NOT NULL FROM jobs WHERE id = $1;

-- name: box_id_by_name
SELECT b.id FROM boxes b JOIN jobs j ON j.org_id = b.org_id WHERE j.id = $1 AND b.name = $2;
