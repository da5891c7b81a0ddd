-- Log chunks hold their lines as one UTF-8 byte string (each line ended by "\n") plus runs of
-- lines sharing a stream and read time, the same shape as the agent's batch on the wire: storing
-- and replaying a chunk no longer encodes or parses an array element per line.
-- STORAGE EXTERNAL: out of line, not compressed; pglz halved the ingest rate and rarely pays off
-- on log text, and the archive in S3 is compressed.

ALTER TABLE log_chunks
    ADD COLUMN run_lines   integer[],
    ADD COLUMN run_streams text[],
    ADD COLUMN run_ts      double precision[],
    ADD COLUMN data        bytea;

UPDATE log_chunks SET
    run_lines   = array_fill(1, ARRAY[cardinality(texts)]),
    run_streams = streams,
    run_ts      = ts,
    data        = CASE WHEN cardinality(texts) = 0 THEN ''::bytea
                       -- a line never holds a newline; the old API took any text, so make sure
                       ELSE convert_to(array_to_string(ARRAY(SELECT replace(t, E'\n', ' ')
                                                             FROM unnest(texts) WITH ORDINALITY AS u(t, i)
                                                             ORDER BY i), E'\n') || E'\n', 'UTF8') END;

ALTER TABLE log_chunks
    DROP COLUMN ts,
    DROP COLUMN streams,
    DROP COLUMN texts,
    ALTER COLUMN run_lines SET NOT NULL,
    ALTER COLUMN run_streams SET NOT NULL,
    ALTER COLUMN run_ts SET NOT NULL,
    ALTER COLUMN data SET NOT NULL,
    ALTER COLUMN data SET STORAGE EXTERNAL,
    ADD CHECK (cardinality(run_lines) = cardinality(run_streams)
               AND cardinality(run_lines) = cardinality(run_ts));
