-- Templates (presets), CI triggers and schedules (docs/templates.md).
--
-- A template is a named, versioned job or pipeline body with declared params; every PUT adds a
-- version (versions are never changed or deleted while the template lives). A run renders one
-- version with its params and submits the result as any job or pipeline is submitted, frozen
-- with `template: {name, version}`, so a later version never changes a queued run.

CREATE TABLE templates (
    id                    uuid PRIMARY KEY,
    org_id                text NOT NULL REFERENCES orgs (id),
    name                  text NOT NULL CHECK (length(name) BETWEEN 1 AND 63),
    latest_version        integer NOT NULL CHECK (latest_version >= 1),
    trigger_secret_sealed bytea NOT NULL,     -- sealed with boxrun.secretbox, as webhook secrets
    created_by            text NOT NULL,
    created_at            timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_by            text NOT NULL,
    updated_at            timestamptz NOT NULL DEFAULT clock_timestamp(),
    UNIQUE (org_id, name)
);

CREATE TABLE template_versions (
    template_id  uuid NOT NULL REFERENCES templates (id) ON DELETE CASCADE,
    version      integer NOT NULL CHECK (version >= 1),
    description  text NOT NULL DEFAULT '',
    params       jsonb NOT NULL,            -- name -> {type, default?, required, choices?}
    kind         text NOT NULL CHECK (kind IN ('job', 'pipeline')),
    body         jsonb NOT NULL,            -- the job (JobCreate) or pipeline definition, unrendered
    created_by   text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (template_id, version)
);

-- One row per CI delivery a trigger took: a replayed delivery id answers with the same run.
-- run_id is NULL while the run is being submitted (a failed submission removes the row again).
CREATE TABLE trigger_deliveries (
    template_id  uuid NOT NULL REFERENCES templates (id) ON DELETE CASCADE,
    delivery_id  text NOT NULL CHECK (length(delivery_id) BETWEEN 1 AND 200),
    kind         text CHECK (kind IN ('job', 'pipeline')),
    run_id       uuid,
    created_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (template_id, delivery_id)
);

-- A schedule runs a template on a cron through a Temporal Schedule (id boxrun-schedule-<id>).
CREATE TABLE schedules (
    id                   uuid PRIMARY KEY,
    org_id               text NOT NULL REFERENCES orgs (id),
    template_id          uuid NOT NULL REFERENCES templates (id) ON DELETE CASCADE,
    version              integer,           -- NULL: the latest version at each run
    params               jsonb NOT NULL DEFAULT '{}',
    cron                 text NOT NULL CHECK (length(cron) BETWEEN 1 AND 200),
    paused               boolean NOT NULL DEFAULT false,
    temporal_schedule_id text NOT NULL UNIQUE,
    created_by           text NOT NULL,
    created_at           timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX schedules_org ON schedules (org_id, created_at);
