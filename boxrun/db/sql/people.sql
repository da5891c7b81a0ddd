-- name: user_for_token_hash
-- The user an API token belongs to, with what decides whether the token is valid now.
SELECT t.id AS token_id, t.expires_at, t.revoked_at, t.expires_at <= now() AS expired,
       t.last_used_at IS NULL OR t.last_used_at < now() - interval '1 minute' AS touch,
       u.name, u.org_id, u.role, u.platform_admin, u.disabled_at
FROM api_tokens t JOIN users u ON u.name = t.user_name
WHERE t.token_hash = $1;

-- name: ensure_bootstrap_user
-- The bootstrap user ($1): platform admin and admin of org `default`. Left as it is if it exists.
INSERT INTO users (name, org_id, role, platform_admin, created_by)
VALUES ($1, 'default', 'admin', true, 'bootstrap')
ON CONFLICT (name) DO NOTHING;

-- name: ensure_bootstrap_token
-- The bootstrap token (hash $2) of user $1. A revoked one stays revoked until the setting holds
-- another token.
INSERT INTO api_tokens (id, user_name, org_id, label, token_hash, created_by)
VALUES ('tok_bootstrap', $1, 'default', 'bootstrap (BOXRUN_API_TOKEN)', $2, 'bootstrap')
ON CONFLICT (id) DO UPDATE
SET user_name = EXCLUDED.user_name,
    token_hash = EXCLUDED.token_hash,
    revoked_at = CASE WHEN api_tokens.token_hash = EXCLUDED.token_hash THEN api_tokens.revoked_at END;

-- name: touch_token
-- Record a token's use, at most once a minute (concurrent requests collapse into one write).
UPDATE api_tokens SET last_used_at = now()
WHERE id = $1 AND (last_used_at IS NULL OR last_used_at < now() - interval '1 minute');

-- name: invalid_stream_credentials
-- Of the credentials held by open streams (token ids $1, each with the dashboard session id in
-- $2 at the same index, or NULL for a bearer token), those no longer valid, with the reason (one
-- query for every stream of an API process).
SELECT i.token_id, i.session_id,
       CASE WHEN t.id IS NULL THEN 'invalid token'
            WHEN t.revoked_at IS NOT NULL THEN 'token revoked'
            WHEN t.expires_at <= now() THEN 'token expired'
            WHEN u.disabled_at IS NOT NULL THEN concat('user ', u.name, ' is disabled')
            WHEN s.id IS NULL THEN 'signed out'
            ELSE 'session expired' END AS reason
FROM unnest($1::text[], $2::text[]) AS i (token_id, session_id)
LEFT JOIN api_tokens t ON t.id = i.token_id
LEFT JOIN users u ON u.name = t.user_name
LEFT JOIN ui_sessions s ON s.id = i.session_id
WHERE t.id IS NULL OR t.revoked_at IS NOT NULL OR t.expires_at <= now() OR u.disabled_at IS NOT NULL
   OR (i.session_id IS NOT NULL AND (s.id IS NULL OR s.expires_at <= now()));

-- name: insert_org
-- A new org; NULL if the id is taken.
INSERT INTO orgs (id, name) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING
RETURNING id, name, created_at;

-- name: list_orgs
SELECT id, name, created_at FROM orgs ORDER BY id;

-- name: lock_org
-- Serialises the changes that could leave org $1 without an enabled admin.
SELECT id FROM orgs WHERE id = $1 FOR UPDATE;

-- name: org_exists
SELECT EXISTS (SELECT 1 FROM orgs WHERE id = $1);

-- name: insert_user
-- A new user; NULL if the name is taken (in any org).
INSERT INTO users (name, org_id, role, created_by) VALUES ($1, $2, $3, $4)
ON CONFLICT (name) DO NOTHING
RETURNING name, org_id, role, platform_admin, disabled_at, created_at;

-- name: get_user
SELECT name, org_id, role, platform_admin, disabled_at, created_at FROM users WHERE name = $1;

-- name: list_users
SELECT name, org_id, role, platform_admin, disabled_at, created_at FROM users WHERE org_id = $1 ORDER BY name;

-- name: other_enabled_admins
-- How many enabled admins org $1 has besides user $2.
SELECT count(*) FROM users
WHERE org_id = $1 AND name <> $2 AND role = 'admin' AND disabled_at IS NULL;

-- name: update_user
-- Set user $1's role ($2, NULL keeps it) and disabled state ($3, NULL keeps it; a user disabled
-- again keeps the first disabled_at).
UPDATE users
SET role = coalesce($2, role),
    disabled_at = CASE WHEN $3::boolean IS NULL THEN disabled_at
                       WHEN $3 THEN coalesce(disabled_at, now()) END
WHERE name = $1
RETURNING name, org_id, role, platform_admin, disabled_at, created_at;

-- name: insert_api_token
INSERT INTO api_tokens (id, user_name, org_id, label, token_hash, created_by, expires_at)
VALUES ($1, $2, $3, $4, $5, $6, CASE WHEN $7::float8 IS NULL THEN NULL ELSE now() + make_interval(secs => $7) END)
RETURNING id, expires_at;

-- name: get_api_token
-- A token's row (never its hash), with its user's platform_admin flag.
SELECT t.id, t.user_name, t.org_id, t.label, t.created_at, t.expires_at, t.revoked_at, t.last_used_at,
       u.platform_admin
FROM api_tokens t JOIN users u ON u.name = t.user_name
WHERE t.id = $1;

-- name: list_user_tokens
-- The tokens of user $1, newest first (never the hash).
SELECT id, user_name, label, created_at, expires_at, revoked_at, last_used_at
FROM api_tokens WHERE user_name = $1 ORDER BY created_at DESC, id;

-- name: list_org_tokens
-- The tokens of org $1's users, newest first (never the hash).
SELECT id, user_name, label, created_at, expires_at, revoked_at, last_used_at
FROM api_tokens WHERE org_id = $1 ORDER BY created_at DESC, id;

-- name: revoke_api_token
-- Revoke token $1; NULL if it was revoked already.
UPDATE api_tokens SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL RETURNING id;
