-- name: user_for_token_hash
-- The user an API token belongs to, with what decides whether the token is valid now.
SELECT t.id AS token_id, t.expires_at, t.revoked_at, t.expires_at <= now() AS expired,
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
