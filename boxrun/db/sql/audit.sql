-- name: audit
-- One audit row: org, actor (a user name, a box's `box:NAME`, or `system`), action, job id or
-- NULL, box name or NULL, detail.
INSERT INTO audit_log (org_id, actor, action, job_id, box, detail) VALUES ($1, $2, $3, $4, $5, $6);
