-- Logs in sequenced chunks: one row per acknowledged batch, columns as arrays.
-- jobs.log_seq is the highest stored seq; chunks are contiguous from 1 to it.

CREATE TABLE log_chunks (
    job_id     uuid NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    first_seq  bigint NOT NULL CHECK (first_seq >= 1),
    last_seq   bigint NOT NULL,
    ts         double precision[] NOT NULL,  -- unix seconds, when the agent read each line
    streams    text[] NOT NULL,              -- stdout | stderr | output | system
    texts      text[] NOT NULL,
    bytes      bigint NOT NULL,
    PRIMARY KEY (job_id, first_seq),
    CHECK (last_seq - first_seq + 1 = cardinality(texts))
);
CREATE INDEX log_chunks_last ON log_chunks (job_id, last_seq);

ALTER TABLE jobs ADD COLUMN log_seq bigint NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN log_bytes bigint NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN log_archive_key text;
ALTER TABLE jobs ADD COLUMN log_archive_size bigint;
ALTER TABLE jobs ADD COLUMN log_archive_sha256 text;

INSERT INTO log_chunks (job_id, first_seq, last_seq, ts, streams, texts, bytes)
SELECT job_id, seq, seq, ARRAY[extract(epoch FROM ts)::double precision], ARRAY[stream], ARRAY[text],
       octet_length(text)
FROM job_logs;
UPDATE jobs j SET log_seq = l.max_seq, log_bytes = l.bytes
FROM (SELECT job_id, max(seq) AS max_seq, sum(octet_length(text)) AS bytes FROM job_logs GROUP BY job_id) l
WHERE l.job_id = j.id;
DROP TABLE job_logs;
