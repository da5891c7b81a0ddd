-- The request id of the submission that started the job (X-Request-ID, carried through the
-- workflow by boxrun.propagation): the offer keeps it so the box's bundle names it, and the
-- agent logs and sends it on every call about the job (docs/operations.md).
ALTER TABLE dispatches ADD COLUMN request_id text;
