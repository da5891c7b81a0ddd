-- name: active_lease
SELECT l.box_id, b.name AS box FROM leases l JOIN boxes b ON b.id = l.box_id
WHERE l.job_id = $1 AND l.released_at IS NULL;

-- Placement serialises on its *target* (a box name or a group of one org), not on the boxes: one
-- transaction-scoped advisory lock per target, so a placement holds one lock whatever the size of
-- the group, and heartbeats (which update box rows) never wait for placements. $1 the target's
-- key (boxrun.placement.target_key). Whatever frees a box takes the keys of every target the box
-- is in (lock_targets_of_box's keys, sorted) before it looks for waiters, so a release either
-- frees capacity a grant sees or finds the job that grant made wait.
-- name: lock_target
SELECT pg_advisory_xact_lock(hashtextextended($1, 0));

-- The targets box $1 is in: its name and each of its groups (keys made by boxrun.placement).
-- name: box_targets
SELECT org_id, name, groups FROM boxes WHERE id = $1;

-- Boxes a job may be placed on (read without locks: the target's advisory lock serialises
-- placements of the target; the box chosen is locked and checked again, lock_chosen_box).
-- $2 box name (or NULL), $3 group (or NULL), $4 the job's owner. Box access: a box whose
-- allowed_users leaves the owner out is never a target, unless the owner is an admin of the org
-- now (checked at every placement, so a change of role or of the list counts at once).
-- name: target_boxes
SELECT b.id, b.name, b.groups, b.capabilities, b.capacity FROM boxes b, (SELECT $4::text AS owner) w
WHERE b.org_id = $1
  AND (($2::text IS NOT NULL AND b.name = $2) OR ($3::text IS NOT NULL AND $3 = ANY(b.groups)))
  AND (b.allowed_users IS NULL OR w.owner = ANY(b.allowed_users)
       OR EXISTS (SELECT 1 FROM users u WHERE u.name = w.owner AND u.org_id = b.org_id AND u.role = 'admin'))
ORDER BY b.id;

-- The box a placement chose, locked (a grant of another target that shares the box, a release,
-- a hold, a window or an edit of the box waits for it, and it for them) and only if it is still
-- in the job's target with every capability the job requires ($5) and open to its owner.
-- name: lock_chosen_box
SELECT b.id FROM boxes b, (SELECT $4::text AS owner) w
WHERE b.id = $6 AND b.org_id = $1
  AND (($2::text IS NOT NULL AND b.name = $2) OR ($3::text IS NOT NULL AND $3 = ANY(b.groups)))
  AND b.capabilities @> $5::text[]
  AND (b.allowed_users IS NULL OR w.owner = ANY(b.allowed_users)
       OR EXISTS (SELECT 1 FROM users u WHERE u.name = w.owner AND u.org_id = b.org_id AND u.role = 'admin'))
FOR NO KEY UPDATE OF b;

-- The boxes of the job's target that its owner ($4) may not use (placement says so when no box is
-- left for the job).
-- name: closed_target_boxes
SELECT count(*) FROM boxes b
WHERE b.org_id = $1
  AND (($2::text IS NOT NULL AND b.name = $2) OR ($3::text IS NOT NULL AND $3 = ANY(b.groups)))
  AND b.allowed_users IS NOT NULL AND NOT ($4::text = ANY(b.allowed_users));

-- name: box_load
SELECT count(*) AS active, COALESCE(bool_or(exclusive), false) AS exclusive
FROM leases WHERE box_id = $1 AND released_at IS NULL;

-- name: insert_lease
INSERT INTO leases (job_id, org_id, box_id, exclusive) VALUES ($1, $2, $3, $4)
ON CONFLICT (job_id) DO NOTHING;

-- name: release_lease
UPDATE leases SET released_at = clock_timestamp()
WHERE job_id = $1 AND released_at IS NULL
RETURNING box_id;

-- FOR NO KEY UPDATE (here and in lock_chosen_box, box_report): serialises with grants, releases
-- and heartbeats of the box, but not with the foreign-key checks of rows that point at the box
-- (a lease, an offer, a job moving to it), which take FOR KEY SHARE.
-- name: lock_box
SELECT capacity FROM boxes WHERE id = $1 FOR NO KEY UPDATE;

-- Jobs waiting for a box that could use box $1 (their owner may: box access; a live hold on the
-- box does not refuse them), in grant order.
-- name: waiters_for_box
SELECT w.id FROM jobs w, boxes b
WHERE b.id = $1 AND w.state = 'waiting_for_box' AND w.org_id = b.org_id
  AND (w.box_name = b.name OR (w.box_group = ANY(b.groups) AND b.capabilities @> w.requires))
  AND (b.allowed_users IS NULL OR w.owner = ANY(b.allowed_users)
       OR EXISTS (SELECT 1 FROM users u WHERE u.name = w.owner AND u.org_id = b.org_id AND u.role = 'admin'))
  AND NOT EXISTS (SELECT 1 FROM box_holds h WHERE h.box_id = b.id AND h.released_at IS NULL
                  AND NOT COALESCE(w.pipeline_id = h.pipeline_id AND w.step = ANY(h.steps), false))
ORDER BY w.priority DESC, w.created_at, w.id
LIMIT $2;

-- The first $2 jobs waiting for a box (grant order) that one of boxes $1 could take now: free
-- capacity, no exclusive lease, the waiter's owner allowed, no hold refusing it. One query for the
-- whole candidate list of a grant (the wake-up cascade), whatever the size of the group.
-- name: next_waiters_for_boxes
SELECT w.id FROM jobs w
WHERE w.state = 'waiting_for_box'
  AND EXISTS (
    SELECT 1 FROM boxes b
    CROSS JOIN LATERAL (
        SELECT count(*) AS active, COALESCE(bool_or(l.exclusive), false) AS exclusive
        FROM leases l WHERE l.box_id = b.id AND l.released_at IS NULL
    ) load
    WHERE b.id = ANY($1::bigint[]) AND w.org_id = b.org_id
      AND (w.box_name = b.name OR (w.box_group = ANY(b.groups) AND b.capabilities @> w.requires))
      AND NOT load.exclusive AND load.active < b.capacity
      AND (b.allowed_users IS NULL OR w.owner = ANY(b.allowed_users)
           OR EXISTS (SELECT 1 FROM users u WHERE u.name = w.owner AND u.org_id = b.org_id AND u.role = 'admin'))
      AND NOT EXISTS (SELECT 1 FROM box_holds h WHERE h.box_id = b.id AND h.released_at IS NULL
                      AND NOT COALESCE(w.pipeline_id = h.pipeline_id AND w.step = ANY(h.steps), false)))
ORDER BY w.priority DESC, w.created_at, w.id
LIMIT $2;

-- name: record_rejection
INSERT INTO placement_rejections (org_id, job_id, box_id, window_id) VALUES ($1, $2, $3, $4)
ON CONFLICT (job_id, window_id) DO NOTHING;

-- name: box_leases
SELECT l.job_id, l.exclusive, l.acquired_at FROM leases l
WHERE l.box_id = $1 AND l.released_at IS NULL ORDER BY l.acquired_at;

-- name: leases_of_finished_jobs
SELECT l.job_id FROM leases l JOIN jobs j ON j.id = l.job_id
WHERE l.released_at IS NULL
  AND j.state IN ('completed', 'failed', 'cancelled', 'timed_out', 'unschedulable');

-- name: box_waiters
SELECT w.id, w.priority, w.created_at, w.waiting_reason FROM jobs w, boxes b
WHERE b.id = $1 AND w.state = 'waiting_for_box' AND w.org_id = b.org_id
  AND (w.box_name = b.name OR (w.box_group = ANY(b.groups) AND b.capabilities @> w.requires))
  AND (b.allowed_users IS NULL OR w.owner = ANY(b.allowed_users)
       OR EXISTS (SELECT 1 FROM users u WHERE u.name = w.owner AND u.org_id = b.org_id AND u.role = 'admin'))
ORDER BY w.priority DESC, w.created_at, w.id;

-- Everything placement needs to know about boxes $1 (ids) for job $2, in one round trip:
-- the maintenance window covering now, liveness (reported within $3 s, not draining), active
-- leases, an exclusive lease, and whether a job that waits longer could use the box (its owner
-- allowed on it: a job that may never use the box holds nobody back); a live pipeline hold on the
-- box that refuses job $2 (`held`) or admits it (`held_for_me`: the hold keeps the box for it).
-- `behind` reads the jobs still ahead of $2 once (jobs_pending index), reduced to their distinct
-- targets, owners and requirements (a backlog of a thousand jobs for one group is one row), so
-- its cost does not grow with boxes x backlog.
-- name: box_facts
WITH ahead AS MATERIALIZED (
    SELECT DISTINCT w.box_name, w.box_group, w.requires, w.owner
    FROM jobs w, jobs me
    WHERE me.id = $2 AND w.id <> me.id
      AND w.state IN ('queued', 'waiting_for_box') AND w.org_id = me.org_id
      AND (w.priority > me.priority
           OR (w.priority = me.priority AND (w.created_at, w.id) < (me.created_at, me.id)))
)
SELECT b.id, b.name, b.capacity,
       win.id AS window_id, win.ends_at AS window_ends,
       (b.last_seen_at IS NOT NULL AND b.last_seen_at > clock_timestamp() - make_interval(secs => $3)
        AND NOT b.draining) AS live,
       load.active, load.exclusive,
       COALESCE(hold.refused, false) AS held, COALESCE(hold.admitted, false) AS held_for_me,
       EXISTS (
           SELECT 1 FROM ahead w
           WHERE (w.box_name = b.name OR (w.box_group = ANY(b.groups) AND b.capabilities @> w.requires))
             AND (b.allowed_users IS NULL OR w.owner = ANY(b.allowed_users)
                  OR EXISTS (SELECT 1 FROM users u WHERE u.name = w.owner AND u.org_id = b.org_id AND u.role = 'admin'))
       ) AS behind
FROM boxes b
LEFT JOIN LATERAL (
    SELECT w.id, w.ends_at FROM maintenance_windows w
    WHERE w.box_id = b.id AND w.starts_at <= clock_timestamp()
      AND (w.ends_at IS NULL OR w.ends_at > clock_timestamp())
    ORDER BY w.ends_at DESC NULLS FIRST LIMIT 1
) win ON true
CROSS JOIN LATERAL (
    SELECT count(*) AS active, COALESCE(bool_or(l.exclusive), false) AS exclusive
    FROM leases l WHERE l.box_id = b.id AND l.released_at IS NULL
) load
LEFT JOIN LATERAL (
    SELECT bool_or(NOT ok) AS refused, bool_or(ok) AS admitted
    FROM (SELECT COALESCE(me.pipeline_id = h.pipeline_id AND me.step = ANY(h.steps), false) AS ok
          FROM box_holds h, jobs me
          WHERE h.box_id = b.id AND h.released_at IS NULL AND me.id = $2) hs
) hold ON true
WHERE b.id = ANY($1::bigint[])
ORDER BY b.id;

-- The reaper's waiter sweep: boxes that could take a job now (live, $1 s liveness as placement
-- counts it; no maintenance window covering now; free capacity, no exclusive lease) while a job
-- of their org waits for their name or one of their groups, and that have not granted or freed
-- a lease for $2 s (a wake-up in flight is not a lost one). `free` is how many waiters
-- waiters_for_box may name. Scans each such box's leases (no index on released_at: a sweep every
-- waiter_sweep_interval_s, not per job).
-- name: idle_boxes_with_waiters
SELECT b.id, b.name, b.capacity - load.active AS free
FROM boxes b
CROSS JOIN LATERAL (
    SELECT count(*) AS active, COALESCE(bool_or(l.exclusive), false) AS exclusive
    FROM leases l WHERE l.box_id = b.id AND l.released_at IS NULL
) load
WHERE b.last_seen_at > clock_timestamp() - make_interval(secs => $1) AND NOT b.draining
  AND NOT load.exclusive AND load.active < b.capacity
  AND NOT EXISTS (SELECT 1 FROM maintenance_windows w
                  WHERE w.box_id = b.id AND w.starts_at <= clock_timestamp()
                    AND (w.ends_at IS NULL OR w.ends_at > clock_timestamp()))
  AND EXISTS (SELECT 1 FROM jobs w
              WHERE w.state = 'waiting_for_box' AND w.org_id = b.org_id
                AND (w.box_name = b.name OR w.box_group = ANY(b.groups)))
  AND NOT EXISTS (SELECT 1 FROM leases l
                  WHERE l.box_id = b.id
                    AND GREATEST(l.acquired_at, l.released_at) > clock_timestamp() - make_interval(secs => $2))
ORDER BY b.id;
