-- Webhooks (migration 0013, docs/webhooks.md). Every query names the org it reads, except the
-- delivery side (the control worker's), which starts from a delivery id.

-- name: insert_webhook
INSERT INTO webhooks (id, org_id, url, events, secret_sealed, created_by)
VALUES ($1, $2, $3, $4, $5, $6)
RETURNING *;

-- name: count_webhooks
SELECT count(*) FROM webhooks WHERE org_id = $1;

-- name: list_webhooks
SELECT * FROM webhooks WHERE org_id = $1 ORDER BY created_at, id;

-- name: get_webhook
SELECT * FROM webhooks WHERE org_id = $1 AND id = $2;

-- name: delete_webhook
DELETE FROM webhooks WHERE org_id = $1 AND id = $2 RETURNING id, url;

-- A page of webhook $1's deliveries, newest first ($3: only those created before this one's row).
-- name: list_deliveries
SELECT * FROM webhook_deliveries
WHERE webhook_id = $1
  AND ($3::timestamptz IS NULL OR (created_at, id) < ($3, $4::uuid))
ORDER BY created_at DESC, id DESC
LIMIT $2;

-- name: delivery_attempts
SELECT * FROM webhook_attempts WHERE delivery_id = ANY($1::uuid[]) ORDER BY id;

-- name: get_delivery
SELECT * FROM webhook_deliveries WHERE webhook_id = $1 AND id = $2;

-- A redelivery: the same delivery (id, body) pending again.
-- name: reopen_delivery
UPDATE webhook_deliveries SET state = 'pending', finished_at = NULL, error = NULL, run_started_at = NULL
WHERE id = $1
RETURNING *;

-- ---------------------------------------------------------------- the delivery side

-- The delivery with what sending it needs (NULL if it, or its webhook, is gone).
-- name: delivery_to_send
SELECT d.*, w.url, w.secret_sealed FROM webhook_deliveries d JOIN webhooks w ON w.id = d.webhook_id
WHERE d.id = $1;

-- Freeze the body at the first send (a second writer keeps the first's bytes).
-- name: freeze_delivery_body
UPDATE webhook_deliveries SET body = COALESCE(body, $2) WHERE id = $1 RETURNING body;

-- name: insert_attempt
INSERT INTO webhook_attempts (delivery_id, status_code, error, duration_ms, response)
VALUES ($1, $2, $3, $4, $5);

-- name: end_delivery
UPDATE webhook_deliveries SET state = $2, error = $3, finished_at = clock_timestamp()
WHERE id = $1 AND state = 'pending'
RETURNING id;

-- Deliveries of subject $1 with no run yet (the change that wrote them just committed).
-- name: unstarted_deliveries_of
SELECT id FROM webhook_deliveries WHERE subject = $1 AND run_started_at IS NULL ORDER BY created_at, id;

-- Deliveries still without a run $1 seconds after they were written (a crash between commit and
-- start): the reaper starts them.
-- name: stale_unstarted_deliveries
SELECT id FROM webhook_deliveries
WHERE run_started_at IS NULL AND created_at < clock_timestamp() - make_interval(secs => $1)
ORDER BY created_at, id
LIMIT 500;

-- name: mark_delivery_started
UPDATE webhook_deliveries SET run_started_at = COALESCE(run_started_at, clock_timestamp()) WHERE id = ANY($1::uuid[]);

-- Every box whose liveness (seen within $1 seconds) differs from what the sweep saw last: flip it
-- and write one box.online / box.offline delivery per subscribed webhook, in one statement. A box
-- never seen (NULL -> offline) only records what it is.
-- name: box_liveness_flips
WITH now_live AS (
    SELECT id, webhook_online AS was,
           (last_seen_at IS NOT NULL AND last_seen_at > clock_timestamp() - make_interval(secs => $1)) AS live
    FROM boxes
), flipped AS (
    UPDATE boxes b SET webhook_online = n.live
    FROM now_live n
    WHERE b.id = n.id AND b.webhook_online IS DISTINCT FROM n.live
    RETURNING b.org_id, b.name, n.live, (n.live OR n.was IS NOT NULL) AS announce
), emitted AS (
    INSERT INTO webhook_deliveries (id, webhook_id, org_id, event, subject)
    SELECT gen_random_uuid(), w.id, w.org_id, e.event, f.name
    FROM flipped f
    CROSS JOIN LATERAL (SELECT CASE WHEN f.live THEN 'box.online' ELSE 'box.offline' END AS event) e
    JOIN webhooks w ON w.org_id = f.org_id AND e.event = ANY (w.events)
    WHERE f.announce
    RETURNING id
)
SELECT (SELECT count(*) FROM flipped) AS flipped, COALESCE(array_agg(id), ARRAY[]::uuid[]) AS delivery_ids FROM emitted;
