-- Idempotent by (job_id, seq): a resent batch inserts nothing twice.
-- name: insert_logs
INSERT INTO job_logs (job_id, seq, ts, stream, text)
SELECT $1, s, t, st, tx
FROM unnest($2::bigint[], $3::timestamptz[], $4::text[], $5::text[]) AS u(s, t, st, tx)
ON CONFLICT (job_id, seq) DO NOTHING;

-- name: get_logs
SELECT seq, ts, stream, text FROM job_logs
WHERE job_id = $1 AND seq > $2
ORDER BY seq
LIMIT $3;
