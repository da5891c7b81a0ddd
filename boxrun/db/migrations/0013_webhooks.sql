-- Outgoing webhooks (docs/webhooks.md): an org's endpoints, one delivery per (event, endpoint), and
-- every attempt at it.
--
-- Emission is durable: the deliveries of a job's or a pipeline's terminal transition are written by
-- the triggers below, in the transaction of the transition itself (whoever makes it: a control
-- activity, the API, the reaper), so a committed end always has its deliveries and a rolled-back
-- one has none. A box's liveness flip writes its deliveries in the sweep's own statement
-- (webhooks.sql box_liveness_flips). The delivery workflows are started after commit by whoever
-- made the change, and by the reaper's sweep for any delivery a crash left without a run.
-- Like the audit triggers these are plain functions (the runtime role may INSERT into
-- webhook_deliveries) with a pinned search path (see 0010).

CREATE TABLE webhooks (
    id             uuid PRIMARY KEY,
    org_id         text NOT NULL REFERENCES orgs (id),
    url            text NOT NULL CHECK (length(url) <= 2048),
    events         text[] NOT NULL CHECK (cardinality(events) > 0),
    secret_sealed  bytea NOT NULL,        -- the signing secret, sealed with boxrun.secretbox
    created_by     text NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX webhooks_org ON webhooks (org_id, created_at);

CREATE TABLE webhook_deliveries (
    id          uuid PRIMARY KEY,
    webhook_id  uuid NOT NULL REFERENCES webhooks (id) ON DELETE CASCADE,
    org_id      text NOT NULL REFERENCES orgs (id),
    event       text NOT NULL,             -- job.completed, box.offline, ...
    subject     text NOT NULL,             -- the job or pipeline id, the box name
    state       text NOT NULL DEFAULT 'pending'
                CHECK (state IN ('pending', 'delivered', 'failed')),
    body        text,                      -- frozen at the first send: every retry sends these bytes
    created_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    run_started_at timestamptz,            -- a delivery workflow was started for it (NULL: none yet)
    finished_at timestamptz,
    error       text                       -- why it ended failed
);
CREATE INDEX webhook_deliveries_list ON webhook_deliveries (webhook_id, created_at DESC, id);
CREATE INDEX webhook_deliveries_subject ON webhook_deliveries (subject) WHERE run_started_at IS NULL;
CREATE INDEX webhook_deliveries_unstarted ON webhook_deliveries (created_at) WHERE run_started_at IS NULL;

CREATE TABLE webhook_attempts (
    id           bigserial PRIMARY KEY,
    delivery_id  uuid NOT NULL REFERENCES webhook_deliveries (id) ON DELETE CASCADE,
    at           timestamptz NOT NULL DEFAULT clock_timestamp(),
    status_code  integer,                  -- NULL: no HTTP answer (refused, timeout, connection error)
    error        text,
    duration_ms  integer NOT NULL,
    response     text                      -- at most 1 KiB of the answer's body, as text
);
CREATE INDEX webhook_attempts_delivery ON webhook_attempts (delivery_id, id);

-- What a box's liveness was when the sweep last looked (NULL: never looked). The sweep flips it
-- and writes box.online / box.offline deliveries in the same statement. Boxes live now start
-- "online" so the first sweep after this migration sends nothing.
ALTER TABLE boxes ADD COLUMN webhook_online boolean;
UPDATE boxes SET webhook_online = (last_seen_at IS NOT NULL AND last_seen_at > now() - interval '15 seconds');

-- One pending delivery per webhook of org `p_org` subscribed to `p_event`.
CREATE FUNCTION webhook_emit(p_org text, p_event text, p_subject text) RETURNS void
LANGUAGE sql SET search_path = public, pg_temp AS $$
    INSERT INTO webhook_deliveries (id, webhook_id, org_id, event, subject)
    SELECT gen_random_uuid(), w.id, w.org_id, p_event, p_subject
    FROM webhooks w WHERE w.org_id = p_org AND p_event = ANY (w.events);
$$;

-- A job's terminal transition: job.<state> (completed, failed, cancelled, timed_out, unschedulable).
CREATE FUNCTION webhook_job_ended() RETURNS trigger LANGUAGE plpgsql SET search_path = public, pg_temp AS $$
BEGIN
    PERFORM webhook_emit(NEW.org_id, 'job.' || NEW.state::text, NEW.id::text);
    RETURN NULL;
END $$;

CREATE TRIGGER jobs_webhooks AFTER UPDATE OF state ON jobs
    FOR EACH ROW
    WHEN (OLD.state IS DISTINCT FROM NEW.state
          AND NEW.state IN ('completed', 'failed', 'cancelled', 'timed_out', 'unschedulable')
          AND OLD.state NOT IN ('completed', 'failed', 'cancelled', 'timed_out', 'unschedulable'))
    EXECUTE FUNCTION webhook_job_ended();

-- A pipeline's terminal state: pipeline.<state> (completed, failed, cancelled, timed_out).
CREATE FUNCTION webhook_pipeline_ended() RETURNS trigger LANGUAGE plpgsql SET search_path = public, pg_temp AS $$
BEGIN
    PERFORM webhook_emit(NEW.org_id, 'pipeline.' || NEW.state::text, NEW.id::text);
    RETURN NULL;
END $$;

CREATE TRIGGER pipelines_webhooks AFTER UPDATE OF state ON pipelines
    FOR EACH ROW
    WHEN (OLD.state IS DISTINCT FROM NEW.state
          AND NEW.state IN ('completed', 'failed', 'cancelled', 'timed_out')
          AND OLD.state NOT IN ('completed', 'failed', 'cancelled', 'timed_out'))
    EXECUTE FUNCTION webhook_pipeline_ended();
