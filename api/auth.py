"""Bearer-token authentication: user API tokens (looked up on every request, so a revoked token
or a disabled user is refused at once; a token's last_used_at is written at most once a minute)
and the bootstrap user the settings token belongs to. Dashboard sessions (a cookie naming a
ui_sessions row that hangs off the token it was opened with) are checked the same way: the
session's expiry, then everything the token is checked for."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from boxrun.db import Conn, Q
from boxrun.errors import Unauthorized
from boxrun.services.identity import NodeBox, Role, User, hash_token, mint_token
from boxrun.services.people import USER_TOKEN_PREFIX
from boxrun.settings import Settings

__all__ = [
    "SESSION_SCOPE_KEY",
    "USER_SCOPE_KEY",
    "Session",
    "USER_TOKEN_PREFIX",
    "NodeBox",
    "Role",
    "User",
    "authenticate",
    "authenticate_session",
    "ensure_bootstrap",
    "hash_token",
    "mint_token",
]

# Where RequestGuard leaves the user it authenticated (before the body is read) for the route.
USER_SCOPE_KEY = "boxrun.user"
# Where RequestGuard leaves the dashboard session a cookie named (absent for bearer requests).
SESSION_SCOPE_KEY = "boxrun.session"


@dataclass(frozen=True)
class Session:
    """A dashboard session: `id` is the hash of the cookie's secret; `csrf` the page's header value."""

    id: str
    csrf: str


async def authenticate(conn: Conn, token: str) -> User:
    """The user `token` belongs to; Unauthorized saying why if it is not valid now."""
    row = await conn.fetchrow(Q.user_for_token_hash, hash_token(token))
    if row is None:
        raise Unauthorized("invalid token")
    user = _valid_user(row)
    if row["touch"]:  # last_used_at is older than a minute: one write, not one per request
        await conn.execute(Q.touch_token, row["token_id"])
    return user


async def authenticate_session(conn: Conn, secret: str) -> tuple[User, Session]:
    """The user and session a session cookie's `secret` names; Unauthorized saying why if none now."""
    session_id = hash_token(secret)
    row = await conn.fetchrow(Q.user_for_session, session_id)
    if row is None:
        raise Unauthorized("no such session (signed out?)")
    if row["session_expired"]:
        raise Unauthorized("session expired")
    return replace(_valid_user(row), session_id=session_id), Session(id=session_id, csrf=row["csrf"])


def _valid_user(row: Any) -> User:
    """The user of a token row (user_for_token_hash, user_for_session), if the token is valid now."""
    if row["revoked_at"] is not None:
        raise Unauthorized("token revoked")
    if row["expired"]:
        raise Unauthorized("token expired")
    if row["disabled_at"] is not None:
        raise Unauthorized(f"user {row['name']} is disabled")
    return User(
        name=row["name"],
        org_id=row["org_id"],
        role=Role(row["role"]),
        platform_admin=row["platform_admin"],
        token_id=row["token_id"],
    )


async def ensure_bootstrap(conn: Conn, settings: Settings) -> None:
    """Make sure the settings token works: its user (platform admin, admin of org `default`) and
    the token row `tok_bootstrap` holding its hash."""
    async with conn.transaction():
        await conn.execute(Q.ensure_bootstrap_user, settings.api_token_owner)
        await conn.execute(Q.ensure_bootstrap_token, settings.api_token_owner, hash_token(settings.api_token))
