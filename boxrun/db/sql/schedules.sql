-- Schedules (migration 0018, docs/templates.md). Every query names the org it reads, except the
-- run side (the control worker's), which starts from a schedule id.

-- name: insert_schedule
INSERT INTO schedules (id, org_id, template_id, version, params, cron, temporal_schedule_id, created_by)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
RETURNING *;

-- name: list_schedules
SELECT s.*, t.name AS template FROM schedules s JOIN templates t ON t.id = s.template_id
WHERE s.org_id = $1
ORDER BY s.created_at, s.id;

-- name: get_schedule
SELECT s.*, t.name AS template FROM schedules s JOIN templates t ON t.id = s.template_id
WHERE s.org_id = $1 AND s.id = $2;

-- name: set_schedule_paused
UPDATE schedules SET paused = $3 WHERE org_id = $1 AND id = $2 RETURNING id;

-- name: delete_schedule
DELETE FROM schedules WHERE org_id = $1 AND id = $2 RETURNING id;

-- The schedule a run starts from, with its template (NULL: deleted meanwhile).
-- name: schedule_to_run
SELECT s.*, t.name AS template FROM schedules s JOIN templates t ON t.id = s.template_id WHERE s.id = $1;

-- name: count_schedules
SELECT count(*) FROM schedules WHERE org_id = $1;

-- The template a schedule is being made for, locked against a DELETE until the schedule is in.
-- name: template_for_share
SELECT id FROM templates WHERE id = $1 FOR SHARE;
