-- Dashboard sessions: a browser signs in with an API token and gets a cookie naming one of these
-- rows. A session hangs off the token it was opened with: revoking the token (or disabling its
-- user) ends every session of it, deleting the token deletes them.

CREATE TABLE ui_sessions (
    id          text PRIMARY KEY,          -- sha256 of the cookie's secret (the secret is never stored)
    token_id    text NOT NULL REFERENCES api_tokens (id) ON DELETE CASCADE,
    csrf        text NOT NULL,             -- sent back by the page in X-CSRF-Token on state changes
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL
);
CREATE INDEX ui_sessions_token ON ui_sessions (token_id);
CREATE INDEX ui_sessions_expiry ON ui_sessions (expires_at);
