-- Templates, their versions and trigger deliveries (migration 0018, docs/templates.md). Every
-- query names the org it reads, except the trigger side, which starts from the template's id.

-- name: template_for_update
SELECT * FROM templates WHERE org_id = $1 AND name = $2 FOR UPDATE;

-- name: insert_template
INSERT INTO templates (id, org_id, name, latest_version, trigger_secret_sealed, created_by, updated_by)
VALUES ($1, $2, $3, 1, $4, $5, $5)
RETURNING *;

-- name: bump_template
UPDATE templates SET latest_version = latest_version + 1, updated_by = $2, updated_at = clock_timestamp()
WHERE id = $1
RETURNING *;

-- name: insert_template_version
INSERT INTO template_versions (template_id, version, description, params, kind, body, created_by)
VALUES ($1, $2, $3, $4, $5, $6, $7)
RETURNING *;

-- The templates of org $1 with their latest version, by name.
-- name: list_templates
SELECT t.*, v.description, v.params, v.kind, v.body, v.version, v.created_by AS version_created_by,
       v.created_at AS version_created_at
FROM templates t JOIN template_versions v ON v.template_id = t.id AND v.version = t.latest_version
WHERE t.org_id = $1
ORDER BY t.name;

-- Template $2 of org $1 at version $3 (NULL: the latest).
-- name: get_template
SELECT t.*, v.description, v.params, v.kind, v.body, v.version, v.created_by AS version_created_by,
       v.created_at AS version_created_at
FROM templates t JOIN template_versions v ON v.template_id = t.id AND v.version = COALESCE($3, t.latest_version)
WHERE t.org_id = $1 AND t.name = $2;

-- A trigger at /api/templates/NAME/trigger names no org: every org's template of that name is a
-- candidate (org $2 only, when the request names one), and the one whose trigger secret signed the
-- request is it. Their secrets only: an unauthenticated request reads no bodies.
-- name: trigger_candidates
SELECT t.id, t.org_id, t.trigger_secret_sealed
FROM templates t
WHERE t.name = $1 AND ($2::text IS NULL OR t.org_id = $2)
ORDER BY t.created_at
LIMIT $3;

-- name: set_trigger_secret
UPDATE templates SET trigger_secret_sealed = $3 WHERE org_id = $1 AND name = $2 RETURNING id;

-- ---------------------------------------------------------------- triggers

-- Claim delivery $2 of template $1; no row: taken before.
-- name: claim_trigger_delivery
INSERT INTO trigger_deliveries (template_id, delivery_id) VALUES ($1, $2)
ON CONFLICT DO NOTHING
RETURNING delivery_id;

-- name: get_trigger_delivery
SELECT * FROM trigger_deliveries WHERE template_id = $1 AND delivery_id = $2;

-- name: record_trigger_delivery
UPDATE trigger_deliveries SET kind = $3, run_id = $4 WHERE template_id = $1 AND delivery_id = $2;

-- Another delivery id for a run made before (a GitHub body seen under another id).
-- name: alias_trigger_delivery
INSERT INTO trigger_deliveries (template_id, delivery_id, kind, run_id) VALUES ($1, $2, $3, $4)
ON CONFLICT DO NOTHING;

-- name: drop_trigger_delivery
DELETE FROM trigger_deliveries WHERE template_id = $1 AND delivery_id = $2 AND run_id IS NULL;

-- name: delete_template
DELETE FROM templates WHERE id = $1 RETURNING id;

-- name: template_schedule_count
SELECT count(*) FROM schedules WHERE template_id = $1;

-- name: count_templates
SELECT count(*) FROM templates WHERE org_id = $1;

-- The size of org $1's templates at their latest versions, but template $2's (the one being replaced).
-- name: template_bytes
SELECT coalesce(sum(octet_length(v.body::text)), 0)
FROM templates t JOIN template_versions v ON v.template_id = t.id AND v.version = t.latest_version
WHERE t.org_id = $1 AND t.id IS DISTINCT FROM $2;
