-- name: insert_box
INSERT INTO boxes (org_id, name, groups, capabilities, capacity, node_token_hash)
VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (org_id, name) DO NOTHING
RETURNING *;

-- name: rotate_box_token
UPDATE boxes SET node_token_hash = $3 WHERE org_id = $1 AND name = $2 RETURNING *;

-- Box access: $3 is the viewer or operator asking (NULL for an org admin, who sees every box of
-- the org). A box whose allowed_users leaves them out does not exist for them.
-- name: get_box
SELECT b.*, EXISTS (
    SELECT 1 FROM maintenance_windows w WHERE w.box_id = b.id AND w.starts_at <= clock_timestamp()
      AND (w.ends_at IS NULL OR w.ends_at > clock_timestamp())) AS in_maintenance
FROM boxes b WHERE b.org_id = $1 AND b.name = $2
  AND ($3::text IS NULL OR b.allowed_users IS NULL OR $3 = ANY(b.allowed_users));

-- name: box_by_token_hash
SELECT * FROM boxes WHERE node_token_hash = $1;

-- name: list_boxes
SELECT b.*, EXISTS (
    SELECT 1 FROM maintenance_windows w WHERE w.box_id = b.id AND w.starts_at <= clock_timestamp()
      AND (w.ends_at IS NULL OR w.ends_at > clock_timestamp())) AS in_maintenance
FROM boxes b WHERE b.org_id = $1
  AND ($2::text IS NULL OR b.allowed_users IS NULL OR $2 = ANY(b.allowed_users))
ORDER BY b.name;


-- Marks the box seen; `was_live` tells whether it already counted as live ($3 = offline bound, s).
-- name: box_report
-- $5: the agent's session; when given, no row unless it is the box's live session (the caller
-- then tells a stale session from a deleted box), so liveness is one statement.
WITH prev AS (
    SELECT id, (last_seen_at IS NOT NULL AND last_seen_at > clock_timestamp() - make_interval(secs => $3)
                AND NOT draining) AS was_live
    FROM boxes WHERE id = $1 AND ($5::uuid IS NULL OR agent_session = $5::uuid) FOR NO KEY UPDATE
)
UPDATE boxes b SET last_seen_at = clock_timestamp(), agent_version = $2, draining = $4
FROM prev WHERE b.id = prev.id
RETURNING b.*, prev.was_live;

-- name: renew_held_polls
-- Liveness from held long-polls (api/live/liveness.py): every box in $1 whose live session is the
-- matching one of $2 is seen now, as a heartbeat would see it (agent version and draining stay as
-- its last report left them). SKIP LOCKED: a box busy in a grant, release or report is renewed
-- at the next round (rounds every offline threshold / 4: three skips in a row to lapse), and this
-- statement never waits on or deadlocks with them. Returns the renewed boxes with whether each was live before.
WITH held AS (SELECT * FROM unnest($1::bigint[], $2::uuid[]) AS h(id, session)),
prev AS (
    SELECT b.id, (b.last_seen_at IS NOT NULL AND b.last_seen_at > clock_timestamp() - make_interval(secs => $3)
                  AND NOT b.draining) AS was_live
    FROM boxes b JOIN held ON b.id = held.id AND b.agent_session = held.session
    ORDER BY b.id
    FOR NO KEY UPDATE OF b SKIP LOCKED
)
UPDATE boxes b SET last_seen_at = clock_timestamp()
FROM prev WHERE b.id = prev.id
RETURNING b.id, b.capacity, b.draining, prev.was_live;

-- name: insert_window
INSERT INTO maintenance_windows (org_id, box_id, starts_at, ends_at, reason, created_by)
VALUES ($1, $2, $3, $4, $5, $6)
RETURNING *;

-- name: end_open_windows
UPDATE maintenance_windows SET ends_at = clock_timestamp()
WHERE box_id = $1 AND starts_at <= clock_timestamp() AND (ends_at IS NULL OR ends_at > clock_timestamp())
RETURNING id;

-- name: delete_window
DELETE FROM maintenance_windows WHERE box_id = $1 AND id = $2 RETURNING id;

-- name: box_windows
SELECT * FROM maintenance_windows
WHERE box_id = $1 AND (ends_at IS NULL OR ends_at > clock_timestamp())
ORDER BY starts_at;

-- name: box_rejections
SELECT r.job_id, r.window_id, r.at FROM placement_rejections r
WHERE r.box_id = $1 ORDER BY r.id DESC LIMIT $2;

-- The box row locked for a change or a delete (acquire() locks target boxes the same way, so a
-- grant and a delete of one box serialise).
-- name: lock_box_by_name
SELECT * FROM boxes WHERE org_id = $1 AND name = $2 FOR UPDATE;

-- $2..$4: NULL keeps the value; allowed_users becomes $6 (NULL: the whole org) only when $5.
-- name: update_box
UPDATE boxes SET groups = COALESCE($2, groups), capabilities = COALESCE($3, capabilities),
                 capacity = COALESCE($4, capacity),
                 allowed_users = CASE WHEN $5::boolean THEN $6::text[] ELSE allowed_users END
WHERE id = $1
RETURNING *;

-- Jobs placed on box $1 keep its name for display once it is gone (box_id becomes NULL).
-- name: keep_deleted_box_name
UPDATE jobs SET deleted_box_name = $2 WHERE box_id = $1;

-- name: delete_box
DELETE FROM boxes WHERE id = $1 RETURNING id;

-- Every job waiting for box $1 (any of them may have nowhere else to go once it is deleted).
-- name: all_waiters_for_box
SELECT w.id FROM jobs w, boxes b
WHERE b.id = $1 AND w.state IN ('queued', 'waiting_for_box') AND w.org_id = b.org_id
  AND (w.box_name = b.name OR w.box_group = ANY(b.groups))
ORDER BY w.priority DESC, w.created_at, w.id;

-- The latest deletion of box $2 or, with $3, of a box that was
-- in group $3, since $4: placement names it when a job finds its box or group empty.
-- name: last_box_deletion
SELECT box, detail, at FROM audit_log
WHERE org_id = $1 AND action = 'box.delete' AND at >= $4
  AND (($2::text IS NOT NULL AND box = $2)
       OR ($3::text IS NOT NULL AND detail -> 'groups' ? $3))
ORDER BY id DESC
LIMIT 1;

-- Which of the names $2 are users of org $1 (an allowed_users list may name only them).
-- name: org_user_names
SELECT name FROM users WHERE org_id = $1 AND name = ANY($2::text[]);
