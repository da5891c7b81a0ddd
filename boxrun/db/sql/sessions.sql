-- name: create_session
-- A dashboard session (id = hash of the cookie secret) for token $2, with CSRF token $3, for $4 seconds.
-- Sessions long expired are swept on the way (a sign-in is rare).
WITH swept AS (DELETE FROM ui_sessions WHERE expires_at < now() - interval '1 day')
INSERT INTO ui_sessions (id, token_id, csrf, expires_at)
VALUES ($1, $2, $3, now() + make_interval(secs => $4))
RETURNING expires_at;

-- name: user_for_session
-- The user and token a session (id $1) stands for, with what decides whether it is valid now:
-- the session's own expiry, then everything the token itself is checked for.
SELECT s.csrf, s.expires_at <= now() AS session_expired,
       t.id AS token_id, t.revoked_at, t.expires_at <= now() AS expired,
       u.name, u.org_id, u.role, u.platform_admin, u.disabled_at
FROM ui_sessions s
JOIN api_tokens t ON t.id = s.token_id
JOIN users u ON u.name = t.user_name
WHERE s.id = $1;

-- name: delete_session
-- Sign out: the session row goes (its cookie names nothing any more).
DELETE FROM ui_sessions WHERE id = $1;
