-- name: audit
INSERT INTO audit_log (org_id, actor, action, subject, detail) VALUES ($1, $2, $3, $4, $5);

-- name: audit_for
SELECT actor, action, subject, detail, at FROM audit_log
WHERE org_id = $1 AND subject = $2 ORDER BY id;
