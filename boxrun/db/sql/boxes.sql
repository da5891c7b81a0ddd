-- name: insert_box
INSERT INTO boxes (org_id, name, groups, capabilities, capacity, node_token_hash)
VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (org_id, name) DO NOTHING
RETURNING *;

-- name: rotate_box_token
UPDATE boxes SET node_token_hash = $3 WHERE org_id = $1 AND name = $2 RETURNING *;

-- name: get_box
SELECT * FROM boxes WHERE org_id = $1 AND name = $2;

-- name: box_by_token_hash
SELECT * FROM boxes WHERE node_token_hash = $1;

-- name: list_boxes
SELECT * FROM boxes WHERE org_id = $1 ORDER BY name;

-- name: box_seen
UPDATE boxes SET last_seen_at = clock_timestamp(), agent_version = $2 WHERE id = $1 RETURNING *;
