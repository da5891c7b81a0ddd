-- The job's log head, locked while a batch is appended, with the cap that applies to it: the
-- org's own, else $2 (Settings.transcript_cap_bytes). See 0016_transcript_cap.sql.
-- name: lock_log_head
SELECT j.log_seq, j.log_head_seq, j.log_stored_bytes, j.log_dropped_lines, j.log_dropped_bytes,
       j.logs_deleted_at IS NOT NULL AS logs_deleted, COALESCE(o.transcript_cap_bytes, $2::bigint) AS cap
FROM jobs j JOIN orgs o ON o.id = j.org_id
WHERE j.id = $1
FOR UPDATE OF j;

-- name: insert_chunk
INSERT INTO log_chunks (job_id, first_seq, last_seq, run_lines, run_streams, run_ts, data, bytes)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8);

-- $3: bytes received; $4: bytes held now; $5-$7: the cap's head, dropped lines and bytes.
-- Lines of a job whose transcript was deleted (a box's last lines arriving after DELETE
-- .../outputs or retention): acknowledged, never stored.
-- name: skip_log_head
UPDATE jobs SET log_seq = $2, log_bytes = log_bytes + $3 WHERE id = $1;

-- name: advance_log_head
UPDATE jobs SET log_seq = $2, log_bytes = log_bytes + $3, log_stored_bytes = $4,
                log_head_seq = $5, log_dropped_lines = $6, log_dropped_bytes = $7
WHERE id = $1;

-- The last seq of the longest run of a job's first chunks holding at most $2 bytes (0: none):
-- the head a capped transcript keeps. Read once per job, when its cap first bites.
-- name: log_head_end
SELECT COALESCE(max(last_seq), 0) FROM (
    SELECT last_seq, sum(bytes) OVER (ORDER BY first_seq) AS upto FROM log_chunks WHERE job_id = $1
) c
WHERE upto <= $2;

-- Delete the oldest chunks starting after seq $2 and before seq $3 (the newest chunk stays),
-- just enough of them to free $4 bytes, from at most 64 chunks at a time (the caller repeats).
-- name: drop_oldest_chunks
WITH oldest AS (
    SELECT first_seq, sum(bytes) OVER (ORDER BY first_seq) - bytes AS before
    FROM (SELECT first_seq, bytes FROM log_chunks
          WHERE job_id = $1 AND first_seq > $2 AND first_seq < $3
          ORDER BY first_seq LIMIT 64) o
)
DELETE FROM log_chunks c USING oldest
WHERE c.job_id = $1 AND c.first_seq = oldest.first_seq AND oldest.before < $4
RETURNING c.first_seq, c.last_seq, c.bytes, c.run_ts[1] AS ts;

-- The cap's notice: one `system` line at seq $2, written when the cap first bites and rewritten
-- as more is dropped (its time stays that of the first line it stands for). Returns the bytes
-- of the notice it replaced (NULL: none).
-- name: put_log_notice
WITH old AS (SELECT bytes FROM log_chunks WHERE job_id = $1 AND first_seq = $2)
INSERT INTO log_chunks (job_id, first_seq, last_seq, run_lines, run_streams, run_ts, data, bytes)
VALUES ($1, $2, $2, ARRAY[1], ARRAY['system'], ARRAY[$3::double precision], $4::bytea, octet_length($4::bytea))
ON CONFLICT (job_id, first_seq) DO UPDATE SET data = EXCLUDED.data, bytes = EXCLUDED.bytes
RETURNING (SELECT bytes FROM old);

-- Chunks holding the lines after $2 whose seqs lie at most $3 past the seq before the first
-- stored line after $2 (so a gap of seqs left by the transcript cap is skipped), in order; `more`:
-- a chunk lies past that window (a short page then means a gap inside it, not the end).
-- name: chunks_after
-- (Chunks never overlap: those after $2 start at or after the first of them, which bounds the
-- primary key range scanned.)
WITH w AS (
    SELECT first_seq AS first, GREATEST($2, first_seq - 1) + $3 AS last FROM log_chunks
    WHERE job_id = $1 AND last_seq > $2
    ORDER BY last_seq
    LIMIT 1
)
SELECT c.first_seq, c.last_seq, c.run_lines, c.run_streams, c.run_ts, c.data,
       EXISTS (SELECT 1 FROM log_chunks m WHERE m.job_id = $1 AND m.first_seq > w.last) AS more
FROM w JOIN log_chunks c ON c.job_id = $1 AND c.first_seq BETWEEN w.first AND w.last AND c.last_seq > $2
ORDER BY c.first_seq;

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
