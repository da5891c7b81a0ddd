-- The per-job transcript cap (docs/retention.md, "Transcript cap"). Past its cap (the org's
-- orgs.transcript_cap_bytes, else Settings.transcript_cap_bytes) a job's stored transcript keeps
-- its head (the first chunks, up to half the cap) and its tail (the newest chunks), with ONE
-- `system` notice chunk between them at seq log_head_seq + 1 (the seq of a dropped line, so seqs
-- stay increasing) saying how much was dropped. The chunks of the dropped lines are deleted
-- oldest first as more comes; seqs therefore have one gap, after the notice.
--
-- log_seq stays the highest seq received (the box's next expected seq is log_seq + 1) and
-- log_bytes the bytes received; the columns below say what is held now and what went.
ALTER TABLE jobs
    ADD COLUMN log_head_seq      bigint CHECK (log_head_seq >= 0),  -- last seq of the kept head; NULL until the cap bites
    ADD COLUMN log_stored_bytes  bigint NOT NULL DEFAULT 0 CHECK (log_stored_bytes >= 0),
    ADD COLUMN log_dropped_lines bigint NOT NULL DEFAULT 0 CHECK (log_dropped_lines >= 0),
    ADD COLUMN log_dropped_bytes bigint NOT NULL DEFAULT 0 CHECK (log_dropped_bytes >= 0);

-- Until now every byte received was stored.
UPDATE jobs SET log_stored_bytes = log_bytes WHERE log_bytes <> 0;
