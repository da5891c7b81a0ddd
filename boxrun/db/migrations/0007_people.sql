-- Organisations, people and their tokens; who may use a box; an audit trail shaped for queries.

-- A user belongs to one org and has one role there. Names are unique across the platform (a
-- job's `owner`, an audit row's `actor` name a user without naming the org). A platform admin
-- also creates orgs and manages users and tokens of every org.
CREATE TABLE users (
    name            text PRIMARY KEY,
    org_id          text NOT NULL REFERENCES orgs (id),
    role            text NOT NULL CHECK (role IN ('viewer', 'operator', 'admin')),
    platform_admin  boolean NOT NULL DEFAULT false,
    disabled_at     timestamptz,
    created_by      text,
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX users_org ON users (org_id, name);

-- API tokens: only the SHA-256 of the secret is kept. Valid while revoked_at IS NULL, expires_at
-- is NULL or in the future, and its user is not disabled.
CREATE TABLE api_tokens (
    id          text PRIMARY KEY,
    user_name   text NOT NULL REFERENCES users (name),
    org_id      text NOT NULL REFERENCES orgs (id),
    label       text NOT NULL DEFAULT '',
    token_hash  text NOT NULL UNIQUE,
    created_by  text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz,
    revoked_at  timestamptz,
    last_used_at timestamptz
);
CREATE INDEX api_tokens_user ON api_tokens (user_name, created_at);
CREATE INDEX api_tokens_org ON api_tokens (org_id, created_at);

-- NULL: everyone in the box's org may use and see it; else only these users (and org admins).
ALTER TABLE boxes ADD COLUMN allowed_users text[];

-- The audit trail names its job and box in columns of their own (no foreign key: audit rows
-- outlive the jobs and boxes they name).
ALTER TABLE audit_log ADD COLUMN job_id uuid, ADD COLUMN box text;
UPDATE audit_log SET job_id = substr(subject, 5)::uuid WHERE subject LIKE 'job:%';
UPDATE audit_log SET box = substr(subject, 5) WHERE subject LIKE 'box:%';
DROP INDEX audit_log_subject;
ALTER TABLE audit_log DROP COLUMN subject;
CREATE INDEX audit_log_org ON audit_log (org_id, id);
CREATE INDEX audit_log_job ON audit_log (job_id, id) WHERE job_id IS NOT NULL;
CREATE INDEX audit_log_box ON audit_log (org_id, box, id) WHERE box IS NOT NULL;
CREATE INDEX audit_log_actor ON audit_log (org_id, actor, id);
