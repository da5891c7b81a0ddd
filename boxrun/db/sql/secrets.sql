-- name: put_secret
-- Create or replace org $1's secret $2 (sealed value $3) by user $4; `created` tells which.
INSERT INTO secrets (org_id, name, sealed, created_by, updated_by) VALUES ($1, $2, $3, $4, $4)
ON CONFLICT (org_id, name) DO UPDATE
SET sealed = EXCLUDED.sealed, updated_by = EXCLUDED.updated_by, updated_at = clock_timestamp()
RETURNING (xmax = 0) AS created;

-- name: list_secrets
-- Org $1's secrets by name: never the sealed value.
SELECT name, created_at, created_by, updated_at, updated_by FROM secrets WHERE org_id = $1 ORDER BY name;

-- name: delete_secret
DELETE FROM secrets WHERE org_id = $1 AND name = $2 RETURNING name;

-- name: secret_names
-- Which of names $2 org $1 has (the submission check: no value is read).
SELECT name FROM secrets WHERE org_id = $1 AND name = ANY($2::text[]);

-- name: sealed_secrets
-- The sealed values of names $2 in org $1 (only the bundle of a claimed job reads these).
SELECT name, sealed FROM secrets WHERE org_id = $1 AND name = ANY($2::text[]);
