-- Pipelines: a DAG of steps, each attempt of a step an ordinary job.

CREATE TYPE pipeline_state AS ENUM ('queued', 'running', 'completed', 'failed', 'cancelled', 'timed_out');
CREATE TYPE step_state AS ENUM ('pending', 'running', 'completed', 'failed', 'timed_out', 'skipped', 'cancelled');

CREATE TABLE pipelines (
    id           uuid PRIMARY KEY,               -- = the PipelineWorkflow's workflow id
    org_id       text NOT NULL REFERENCES orgs (id),
    owner        text NOT NULL,
    name         text,
    state        pipeline_state NOT NULL DEFAULT 'queued',
    spec         jsonb NOT NULL,                 -- the ExpandedPipeline as submitted
    spec_hash    text NOT NULL,
    timeout_s    integer NOT NULL,
    error        text,
    rerun_of     uuid REFERENCES pipelines (id) ON DELETE SET NULL,
    created_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    started_at   timestamptz,
    finished_at  timestamptz,
    updated_at   timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX pipelines_list ON pipelines (org_id, created_at DESC, id DESC);
CREATE INDEX pipelines_state ON pipelines (org_id, state, created_at DESC);

CREATE TABLE pipeline_steps (
    pipeline_id  uuid NOT NULL REFERENCES pipelines (id) ON DELETE CASCADE,
    name         text NOT NULL,
    position     integer NOT NULL,               -- in the stored topological order
    needs        text[] NOT NULL DEFAULT '{}',
    state        step_state NOT NULL DEFAULT 'pending',
    -- {"job": JobCreate.frozen_spec (file_refs resolved), "inputs", "retry", "when", "allow_failure"}
    spec         jsonb NOT NULL,
    job_id       uuid,                           -- the latest (at the end: the final) attempt's job
    attempts     integer NOT NULL DEFAULT 0,
    reused_from  uuid,                           -- rerun only_failed: the pipeline whose job is reused
    error        text,
    started_at   timestamptz,
    finished_at  timestamptz,
    PRIMARY KEY (pipeline_id, name)
);
CREATE UNIQUE INDEX pipeline_steps_position ON pipeline_steps (pipeline_id, position);

-- Every step and pipeline state change, in order (the SSE route replays then follows these).
CREATE TABLE pipeline_events (
    id           bigserial PRIMARY KEY,
    pipeline_id  uuid NOT NULL REFERENCES pipelines (id) ON DELETE CASCADE,
    org_id       text NOT NULL REFERENCES orgs (id),
    step         text,                           -- NULL: the pipeline's own state
    state        text NOT NULL,
    at           timestamptz NOT NULL DEFAULT clock_timestamp(),
    detail       jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX pipeline_events_pipeline ON pipeline_events (pipeline_id, id);

-- A pipeline step's attempt is a job like any other, tagged with where it belongs.
ALTER TABLE jobs ADD COLUMN pipeline_id uuid REFERENCES pipelines (id) ON DELETE SET NULL;
ALTER TABLE jobs ADD COLUMN step text;
ALTER TABLE jobs ADD COLUMN attempt integer;
-- Structured cause beside the human `error`: exit_code, heartbeat_lost, timed_out, cancelled,
-- unschedulable, claim_timeout, artifacts, input_missing, internal.
ALTER TABLE jobs ADD COLUMN error_kind text;
CREATE INDEX jobs_pipeline ON jobs (pipeline_id, step, attempt) WHERE pipeline_id IS NOT NULL;
