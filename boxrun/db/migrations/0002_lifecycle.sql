-- Lifecycle: re-runs, per-job cancel grace, maintenance windows, draining agents, placement audit.

ALTER TABLE jobs ADD COLUMN rerun_of uuid REFERENCES jobs (id);
ALTER TABLE jobs ADD COLUMN cancel_grace_s integer NOT NULL DEFAULT 10;
ALTER TABLE boxes ADD COLUMN draining boolean NOT NULL DEFAULT false;

-- A box is in maintenance while a window covers now. Manual "on" is a window without an end;
-- manual "off" ends every open window at that moment.
CREATE TABLE maintenance_windows (
    id          bigserial PRIMARY KEY,
    org_id      text NOT NULL REFERENCES orgs (id),
    box_id      bigint NOT NULL REFERENCES boxes (id) ON DELETE CASCADE,
    starts_at   timestamptz NOT NULL,
    ends_at     timestamptz,
    reason      text NOT NULL,
    created_by  text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    CHECK (ends_at IS NULL OR ends_at > starts_at)
);
CREATE INDEX maintenance_windows_box ON maintenance_windows (box_id, starts_at);

-- Every time placement passed over a box because of a maintenance window (once per job and window).
CREATE TABLE placement_rejections (
    id         bigserial PRIMARY KEY,
    org_id     text NOT NULL REFERENCES orgs (id),
    job_id     uuid NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    box_id     bigint NOT NULL REFERENCES boxes (id) ON DELETE CASCADE,
    window_id  bigint NOT NULL REFERENCES maintenance_windows (id) ON DELETE CASCADE,
    at         timestamptz NOT NULL DEFAULT clock_timestamp(),
    UNIQUE (job_id, window_id)
);

-- Who did what, for actions that are not job transitions (cancel requests, maintenance changes, re-runs).
CREATE TABLE audit_log (
    id       bigserial PRIMARY KEY,
    org_id   text NOT NULL REFERENCES orgs (id),
    actor    text NOT NULL,
    action   text NOT NULL,
    subject  text NOT NULL,
    detail   jsonb NOT NULL DEFAULT '{}',
    at       timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX audit_log_subject ON audit_log (org_id, subject, id);
