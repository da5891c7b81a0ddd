-- Boxes are untrusted: run_job is completed through the API (task token kept here), the
-- artifact manifest lives here (not in Temporal payloads), one live agent session per box,
-- and a per-job bound on the wait for a box.

-- One row per job dispatch. Active = offered or claimed and result_at IS NULL.
CREATE TABLE dispatches (
    job_id              uuid PRIMARY KEY REFERENCES jobs (id) ON DELETE CASCADE,
    org_id              text NOT NULL REFERENCES orgs (id),
    box_id              bigint NOT NULL REFERENCES boxes (id) ON DELETE CASCADE,
    task_token          bytea NOT NULL,              -- the run_job activity's, for async completion
    offered_at          timestamptz NOT NULL DEFAULT clock_timestamp(),
    claim_deadline      timestamptz NOT NULL,
    claimed_at          timestamptz,
    expired_at          timestamptz,                 -- not claimed by claim_deadline (or cancelled first)
    cancel_requested_at timestamptz,
    result_at           timestamptz,
    last_heartbeat_at   timestamptz,                 -- the box's last progress report
    relayed_at          timestamptz                  -- the last heartbeat relayed to Temporal
);
CREATE INDEX dispatches_box_active ON dispatches (box_id) WHERE result_at IS NULL AND expired_at IS NULL;

-- What the box says it will upload, page by page; the control plane verifies against storage.
CREATE TABLE artifact_manifest (
    job_id  uuid NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    path    text NOT NULL,
    size    bigint NOT NULL,
    sha256  text NOT NULL,
    status  text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'uploaded', 'refused')),
    reason  text,
    PRIMARY KEY (job_id, path)
);

-- The job ends unschedulable if no box takes it within this; part of the frozen spec.
ALTER TABLE jobs ADD COLUMN queue_timeout_s integer NOT NULL
    GENERATED ALWAYS AS (COALESCE((spec ->> 'queue_timeout_s')::integer, 86400)) STORED;

-- The agent process holding the box's token right now (one live session per box).
ALTER TABLE boxes ADD COLUMN agent_session uuid;
