"""Organisations, users and their API tokens: who may create, change, mint and revoke what, each
change audited in the same transaction (docs/people.md).

Who may act on a user: an admin of the user's org, or a platform admin. A user of another org is
`NotFound` to everyone else. A platform admin is changed (role, disabled, tokens) only by a
platform admin or, for their own tokens, by themself: an org admin cannot take their powers by
minting them a token. No change may leave an org without an enabled admin."""

from __future__ import annotations

import re
import secrets
from typing import Any

import asyncpg

from boxrun.db import Q
from boxrun.errors import Conflict, Forbidden, NotFound
from boxrun.schemas.people import (
    ORG_ID_PATTERN,
    TOKEN_ID_PATTERN,
    USER_NAME_PATTERN,
    OrgCreate,
    TokenCreate,
    UserCreate,
    UserUpdate,
)
from boxrun.services.identity import Role, User, hash_token, mint_token

USER_TOKEN_PREFIX = "brt"
_ORG_ID = re.compile(ORG_ID_PATTERN)
_USER_NAME = re.compile(USER_NAME_PATTERN)
_TOKEN_ID = re.compile(TOKEN_ID_PATTERN)


def new_token_id() -> str:
    return f"tok_{secrets.token_hex(6)}"


# ---------------------------------------------------------------- orgs


async def create_org(conn: asyncpg.Connection, user: User, body: OrgCreate) -> asyncpg.Record:
    """A new org (platform admins only: the route checks), without users yet; audited in the new
    org's trail as `org.create`."""
    async with conn.transaction():
        row: asyncpg.Record | None = await conn.fetchrow(Q.insert_org, body.id, body.name)
        if row is None:
            raise Conflict(f"org {body.id} already exists")
        await conn.execute(Q.audit, body.id, user.name, "org.create", None, None, {"id": body.id, "name": body.name})
    return row


async def list_orgs(conn: asyncpg.Connection, user: User) -> list[asyncpg.Record]:
    """Every org, by id (platform admins only)."""
    if not user.platform_admin:
        raise Forbidden("this needs a platform admin")
    rows: list[asyncpg.Record] = await conn.fetch(Q.list_orgs)
    return rows


async def resolve_org(conn: asyncpg.Connection, user: User, org: str | None) -> str:
    """The org a request names (`None`: the caller's). Another org than the caller's exists only
    for a platform admin; to anyone else it is NotFound, like an unknown one."""
    if org is None or org == user.org_id:
        return user.org_id
    if not (user.platform_admin and _ORG_ID.match(org) and await conn.fetchval(Q.org_exists, org)):
        raise NotFound(f"org {org[:80]!r} not found")
    return org


# ---------------------------------------------------------------- users


def _may_manage(actor: User, target_org: str) -> None:
    """Forbidden unless the actor is an admin of target_org or a platform admin (the caller made
    sure target_org is one the actor may see)."""
    if actor.platform_admin or (actor.is_admin and actor.org_id == target_org):
        return
    raise Forbidden(f"managing users needs the admin role (you are {actor.role.value} in org {actor.org_id})")


async def load_user(conn: asyncpg.Connection, actor: User, name: str) -> asyncpg.Record:
    """User `name` if the actor may see them (their own org; any org for a platform admin)."""
    row: asyncpg.Record | None = None
    if _USER_NAME.match(name):
        row = await conn.fetchrow(Q.get_user, name)
    if row is None or (row["org_id"] != actor.org_id and not actor.platform_admin):
        raise NotFound(f"user {name[:80]!r} not found")
    return row


async def create_user(conn: asyncpg.Connection, actor: User, body: UserCreate) -> asyncpg.Record:
    org = await resolve_org(conn, actor, body.org)
    _may_manage(actor, org)
    async with conn.transaction():
        row: asyncpg.Record | None = await conn.fetchrow(Q.insert_user, body.name, org, body.role.value, actor.name)
        if row is None:
            raise Conflict(f"user name {body.name} is taken (names are unique across the platform)")
        detail = {"name": body.name, "role": body.role.value}
        await conn.execute(Q.audit, org, actor.name, "user.create", None, None, detail)
    return row


async def list_users(conn: asyncpg.Connection, actor: User, org: str | None) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await conn.fetch(Q.list_users, await resolve_org(conn, actor, org))
    return rows


async def update_user(conn: asyncpg.Connection, actor: User, name: str, body: UserUpdate) -> asyncpg.Record:
    """Change a user's role and/or disabled state, audited as `user.update` with what changed.
    Conflict if it would leave the org without an enabled admin (the org row is locked, so two
    admins demoting each other at once cannot both succeed)."""
    target = await load_user(conn, actor, name)
    _may_manage(actor, target["org_id"])
    if target["platform_admin"] and not actor.platform_admin:
        raise Forbidden(f"user {name} is a platform admin: only a platform admin may change them")
    async with conn.transaction():
        await conn.fetchval(Q.lock_org, target["org_id"])
        old = await conn.fetchrow(Q.get_user, name)
        assert old is not None  # users are never deleted
        changes: dict[str, Any] = {}
        if body.role is not None and body.role.value != old["role"]:
            changes["role"] = {"from": old["role"], "to": body.role.value}
        if body.disabled is not None and body.disabled != (old["disabled_at"] is not None):
            changes["disabled"] = {"from": not body.disabled, "to": body.disabled}
        if not changes:
            return old
        stays_admin = (body.role or Role(old["role"])) is Role.ADMIN and not (
            body.disabled if body.disabled is not None else old["disabled_at"] is not None
        )
        was_admin = old["role"] == Role.ADMIN.value and old["disabled_at"] is None
        if was_admin and not stays_admin and not await conn.fetchval(Q.other_enabled_admins, old["org_id"], name):
            who = "yourself" if name == actor.name else name
            raise Conflict(
                f"cannot demote or disable {who}: the last enabled admin of org {old['org_id']} "
                "(make another user admin first)"
            )
        row: asyncpg.Record | None = await conn.fetchrow(
            Q.update_user, name, body.role.value if body.role else None, body.disabled
        )
        assert row is not None
        await conn.execute(Q.audit, old["org_id"], actor.name, "user.update", None, None, {"name": name, **changes})
    return row


# ---------------------------------------------------------------- tokens


async def create_token(conn: asyncpg.Connection, actor: User, name: str, body: TokenCreate) -> tuple[str, str, Any]:
    """Mint a token for user `name`: the user themself, an admin of their org, or a platform
    admin (a platform admin's tokens: only themself or another platform admin). Returns (id,
    secret, expires_at); the secret is shown only here, only its hash is stored."""
    target = await load_user(conn, actor, name)
    if name != actor.name:
        if not (actor.platform_admin or (actor.is_admin and actor.org_id == target["org_id"])):
            raise Forbidden("you may mint tokens only for yourself (an admin mints them for the users of its org)")
        if target["platform_admin"] and not actor.platform_admin:
            raise Forbidden(f"user {name} is a platform admin: only they or a platform admin may mint their tokens")
    if target["disabled_at"] is not None:
        raise Conflict(f"user {name} is disabled: enable them first")
    secret = mint_token(USER_TOKEN_PREFIX)
    token_id = new_token_id()
    async with conn.transaction():
        row = await conn.fetchrow(
            Q.insert_api_token,
            token_id,
            name,
            target["org_id"],
            body.label,
            hash_token(secret),
            actor.name,
            None if body.expires_in_s is None else float(body.expires_in_s),
        )
        assert row is not None
        expires_at = row["expires_at"]
        detail = {
            "id": token_id,
            "user": name,
            "label": body.label,
            "expires_at": expires_at.isoformat() if expires_at else None,
        }
        await conn.execute(Q.audit, target["org_id"], actor.name, "token.create", None, None, detail)
    return token_id, secret, expires_at


async def list_tokens(conn: asyncpg.Connection, actor: User, org: str | None) -> list[asyncpg.Record]:
    """The caller's own tokens; an org admin's (or a platform admin's) listing shows every token
    of the org (`org`: another org, platform admins only)."""
    org_id = await resolve_org(conn, actor, org)
    rows: list[asyncpg.Record]
    if actor.platform_admin or actor.is_admin:
        rows = await conn.fetch(Q.list_org_tokens, org_id)
    else:
        rows = await conn.fetch(Q.list_user_tokens, actor.name)
    return rows


async def revoke_token(conn: asyncpg.Connection, actor: User, token_id: str) -> bool:
    """Revoke a token: one's own, an org admin any of its org's (but a platform admin's), a
    platform admin any. True if this call revoked it (False: it was revoked already)."""
    row: asyncpg.Record | None = None
    if _TOKEN_ID.match(token_id):
        row = await conn.fetchrow(Q.get_api_token, token_id)
    if row is None or (row["org_id"] != actor.org_id and not actor.platform_admin):
        raise NotFound(f"token {token_id[:80]!r} not found")
    if row["user_name"] != actor.name and not actor.platform_admin:
        if not actor.is_admin:
            raise Forbidden("you may revoke only your own tokens (an admin revokes any of its org's)")
        if row["platform_admin"]:
            raise Forbidden(f"token {token_id} is a platform admin's: only they or a platform admin may revoke it")
    async with conn.transaction():
        if await conn.fetchval(Q.revoke_api_token, token_id) is None:
            return False
        detail = {"id": token_id, "user": row["user_name"], "label": row["label"]}
        await conn.execute(Q.audit, row["org_id"], actor.name, "token.revoke", None, None, detail)
    return True
