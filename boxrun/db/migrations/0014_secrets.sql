-- Organisation secrets: named values a job's env refers to as `${{ secrets.NAME }}`, resolved only
-- when the box that claimed the job fetches its bundle (docs/secrets.md). The value is stored
-- sealed with boxrun.secretbox (Fernet, key BOXRUN_SECRETS_KEY): this table never holds plain
-- text, and nothing reads it back but the bundle. The runtime role gets its rights from the
-- migration runner's grants, like every table; the audit rows (secret.put, secret.delete, with
-- the name only) are written by services/secrets.py in the same transaction as the change.

CREATE TABLE secrets (
    org_id      text NOT NULL REFERENCES orgs (id),
    name        text NOT NULL CHECK (name ~ '^[A-Z_][A-Z0-9_]{0,127}$'),
    sealed      bytea NOT NULL,                  -- SecretBox.seal(value)
    created_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    created_by  text NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_by  text NOT NULL,
    PRIMARY KEY (org_id, name)
);
