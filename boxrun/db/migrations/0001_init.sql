-- boxrun schema v1. Every row carries org_id so organisations can arrive without a rewrite.

CREATE TABLE orgs (
    id          text PRIMARY KEY,
    name        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
INSERT INTO orgs (id, name) VALUES ('default', 'Default organisation');

CREATE TYPE job_state AS ENUM (
    'queued',               -- accepted and frozen; its workflow has started
    'waiting_for_box',      -- no box free yet; woken when a lease is released
    'dispatching',          -- leased a box; run_job is queued on the box's task queue
    'running',              -- the box spawned the process
    'uploading_artifacts',  -- the process ended; outputs are going to object storage
    'completed',            -- exit 0 and every artifact verified (terminal)
    'failed',               -- non-zero exit, lost heartbeat or an internal error (terminal)
    'cancelled',            -- cancelled by a user (terminal)
    'timed_out',            -- ran past timeout_s and was killed (terminal)
    'unschedulable'         -- no box could ever match its requirements (terminal)
);

CREATE TABLE boxes (
    id               bigserial PRIMARY KEY,
    org_id           text NOT NULL REFERENCES orgs (id),
    name             text NOT NULL,
    groups           text[] NOT NULL DEFAULT '{}',
    capabilities     text[] NOT NULL DEFAULT '{}',
    capacity         integer NOT NULL DEFAULT 1 CHECK (capacity >= 1),
    node_token_hash  text NOT NULL,
    last_seen_at     timestamptz,
    agent_version    text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    UNIQUE (org_id, name)
);
CREATE UNIQUE INDEX boxes_node_token_hash ON boxes (node_token_hash);

CREATE TABLE jobs (
    id               uuid PRIMARY KEY,
    org_id           text NOT NULL REFERENCES orgs (id),
    owner            text NOT NULL,
    state            job_state NOT NULL DEFAULT 'queued',
    box_name         text,              -- the box the submission named (NULL for group jobs)
    box_group        text,
    requires         text[] NOT NULL DEFAULT '{}',
    box_id           bigint REFERENCES boxes (id),  -- the box it was placed on
    spec             jsonb NOT NULL,    -- frozen at submission: script, files, env, settings
    spec_hash        text NOT NULL,
    timeout_s        integer NOT NULL,
    lock             boolean NOT NULL DEFAULT false,
    priority         integer NOT NULL DEFAULT 0,
    idempotency_key  text,
    exit_code        integer,
    error            text,
    waiting_reason   text,
    created_at       timestamptz NOT NULL DEFAULT clock_timestamp(),
    started_at       timestamptz,
    finished_at      timestamptz,
    updated_at       timestamptz NOT NULL DEFAULT clock_timestamp(),
    CHECK ((box_name IS NULL) <> (box_group IS NULL))
);
CREATE UNIQUE INDEX jobs_idempotency ON jobs (org_id, owner, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX jobs_list ON jobs (org_id, created_at DESC, id DESC);
CREATE INDEX jobs_waiting ON jobs (priority DESC, created_at, id) WHERE state = 'waiting_for_box';

-- Every transition, with its time: the job's history and the audit trail.
CREATE TABLE job_events (
    id          bigserial PRIMARY KEY,
    org_id      text NOT NULL REFERENCES orgs (id),
    job_id      uuid NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    from_state  job_state,
    to_state    job_state NOT NULL,
    at          timestamptz NOT NULL DEFAULT clock_timestamp(),
    detail      jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX job_events_job ON job_events (job_id, id);

-- A job's hold on a box. Active while released_at IS NULL.
CREATE TABLE leases (
    job_id       uuid PRIMARY KEY REFERENCES jobs (id) ON DELETE CASCADE,
    org_id       text NOT NULL REFERENCES orgs (id),
    box_id       bigint NOT NULL REFERENCES boxes (id),
    exclusive    boolean NOT NULL,
    acquired_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    released_at  timestamptz
);
CREATE INDEX leases_active ON leases (box_id) WHERE released_at IS NULL;

CREATE TABLE job_logs (
    job_id  uuid NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    seq     bigint NOT NULL CHECK (seq >= 1),
    ts      timestamptz NOT NULL,
    stream  text NOT NULL,
    text    text NOT NULL,
    PRIMARY KEY (job_id, seq)
);

CREATE TABLE artifacts (
    job_id      uuid NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    org_id      text NOT NULL REFERENCES orgs (id),
    path        text NOT NULL,
    key         text NOT NULL,
    size        bigint NOT NULL,
    sha256      text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (job_id, path)
);
