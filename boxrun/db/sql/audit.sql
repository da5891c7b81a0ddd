-- name: audit
-- One audit row: org, actor (a user name, a box's `box:NAME`, or `system`), action, job id or
-- NULL, box name or NULL, detail.
INSERT INTO audit_log (org_id, actor, action, job_id, box, detail) VALUES ($1, $2, $3, $4, $5, $6);

-- name: audit_page
-- GET /api/audit: org $1's rows, newest first, each filter NULL = any. $4 exact action, $5 an
-- action prefix ('job.' for `job.*`), $9 the cursor (rows older than that id), $10 the limit.
SELECT id, at, actor, action, job_id, box, detail FROM audit_log
WHERE org_id = $1
  AND ($2::uuid IS NULL OR job_id = $2)
  AND ($3::text IS NULL OR actor = $3)
  AND ($4::text IS NULL OR action = $4)
  AND ($5::text IS NULL OR starts_with(action, $5))
  AND ($6::text IS NULL OR box = $6)
  AND ($7::timestamptz IS NULL OR at >= $7)
  AND ($8::timestamptz IS NULL OR at < $8)
  AND ($9::bigint IS NULL OR id < $9)
ORDER BY id DESC
LIMIT $10;
