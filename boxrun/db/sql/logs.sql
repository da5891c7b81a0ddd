-- name: lock_log_head
SELECT log_seq, box_id FROM jobs WHERE id = $1 FOR UPDATE;

-- name: insert_chunk
INSERT INTO log_chunks (job_id, first_seq, last_seq, run_lines, run_streams, run_ts, data, bytes)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8);

-- name: advance_log_head
UPDATE jobs SET log_seq = $2, log_bytes = log_bytes + $3 WHERE id = $1;

-- Chunks holding lines $2+1 .. $3, in order.
-- name: chunks_after
SELECT first_seq, run_lines, run_streams, run_ts, data FROM log_chunks
WHERE job_id = $1 AND last_seq > $2 AND first_seq <= $3
ORDER BY first_seq;

-- name: set_log_archive
UPDATE jobs SET log_archive_key = $2, log_archive_size = $3, log_archive_sha256 = $4 WHERE id = $1;

-- name: log_archive
SELECT log_archive_key, log_archive_size, log_archive_sha256, log_seq FROM jobs WHERE org_id = $1 AND id = $2;

-- Up to $4 chunks holding lines after $2 with at least one line of stream $3, in order.
-- name: stream_chunks_after
SELECT first_seq, last_seq, run_lines, run_streams, run_ts, data FROM log_chunks
WHERE job_id = $1 AND last_seq > $2 AND $3 = ANY(run_streams)
ORDER BY first_seq
LIMIT $4;

-- Up to $4 chunks starting before line $2 (with a line of stream $3, when given), newest first.
-- name: chunks_before
SELECT first_seq, last_seq, run_lines, run_streams, run_ts, data FROM log_chunks
WHERE job_id = $1 AND first_seq < $2 AND ($3::text IS NULL OR $3 = ANY(run_streams))
ORDER BY first_seq DESC
LIMIT $4;

-- Up to $3 chunks' raw text (each line ended by "\n") after line $2, in order: the transcript.
-- name: chunk_data_after
SELECT last_seq, data FROM log_chunks
WHERE job_id = $1 AND last_seq > $2
ORDER BY first_seq
LIMIT $3;
