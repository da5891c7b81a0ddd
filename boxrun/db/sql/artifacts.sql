-- name: insert_artifact
INSERT INTO artifacts (job_id, org_id, path, key, size, sha256)
VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (job_id, path) DO NOTHING;

-- name: list_artifacts
SELECT path, size, sha256 FROM artifacts WHERE job_id = $1 ORDER BY path;

-- name: get_artifact
SELECT a.path, a.key, a.size, a.sha256 FROM artifacts a
WHERE a.org_id = $1 AND a.job_id = $2 AND a.path = $3;

-- name: list_artifacts_page
SELECT path, size, sha256 FROM artifacts WHERE job_id = $1 ORDER BY path LIMIT $2 OFFSET $3;

-- name: count_artifacts
SELECT count(*) FROM artifacts WHERE job_id = $1;
