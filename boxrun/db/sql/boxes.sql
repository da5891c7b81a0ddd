-- name: insert_box
INSERT INTO boxes (org_id, name, groups, capabilities, capacity, node_token_hash)
VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (org_id, name) DO NOTHING
RETURNING *;

-- name: rotate_box_token
UPDATE boxes SET node_token_hash = $3 WHERE org_id = $1 AND name = $2 RETURNING *;

-- name: get_box
SELECT b.*, EXISTS (
    SELECT 1 FROM maintenance_windows w WHERE w.box_id = b.id AND w.starts_at <= clock_timestamp()
      AND (w.ends_at IS NULL OR w.ends_at > clock_timestamp())) AS in_maintenance
FROM boxes b WHERE b.org_id = $1 AND b.name = $2;

-- name: box_by_token_hash
SELECT * FROM boxes WHERE node_token_hash = $1;

-- name: list_boxes
SELECT b.*, EXISTS (
    SELECT 1 FROM maintenance_windows w WHERE w.box_id = b.id AND w.starts_at <= clock_timestamp()
      AND (w.ends_at IS NULL OR w.ends_at > clock_timestamp())) AS in_maintenance
FROM boxes b WHERE b.org_id = $1 ORDER BY b.name;


-- Marks the box seen; `was_live` tells whether it already counted as live ($3 = offline bound, s).
-- name: box_report
WITH prev AS (
    SELECT id, (last_seen_at IS NOT NULL AND last_seen_at > clock_timestamp() - make_interval(secs => $3)
                AND NOT draining) AS was_live
    FROM boxes WHERE id = $1 FOR UPDATE
)
UPDATE boxes b SET last_seen_at = clock_timestamp(), agent_version = $2, draining = $4
FROM prev WHERE b.id = prev.id
RETURNING b.*, prev.was_live;

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
