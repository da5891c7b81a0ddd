-- name: audit
INSERT INTO audit_log (org_id, actor, action, subject, detail) VALUES ($1, $2, $3, $4, $5);

