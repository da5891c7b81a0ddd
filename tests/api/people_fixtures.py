"""People for the API tests: orgs, users and their API tokens, written as rows (users, api_tokens
with the token's hash) because the routes that make them (POST /api/orgs, /api/users,
/api/users/{name}/tokens) are built on another branch. Once they land, these helpers can call
them instead: every test goes through `add_org`, `add_user` and `add_token` only."""

from __future__ import annotations

import secrets
from dataclasses import dataclass

import asyncpg

from boxrun.services.identity import Role, hash_token, mint_token

USER_TOKEN_PREFIX = "brt"


@dataclass(frozen=True)
class Person:
    name: str
    org: str
    role: Role
    token: str  # a valid API token of theirs (shown once, as the API would)
    token_id: str


async def add_org(conn: asyncpg.Connection, org_id: str, name: str | None = None) -> str:
    await conn.execute("INSERT INTO orgs (id, name) VALUES ($1, $2)", org_id, name or f"Org {org_id}")
    return org_id


async def add_token(conn: asyncpg.Connection, user: str, *, label: str = "test") -> tuple[str, str]:
    """A new API token of `user` (any org: the row takes the user's). Returns (token id, token)."""
    token_id = f"tok_{secrets.token_hex(6)}"
    token = mint_token(USER_TOKEN_PREFIX)
    await conn.execute(
        """INSERT INTO api_tokens (id, user_name, org_id, label, token_hash, created_by)
           SELECT $1, name, org_id, $3, $4, 'test' FROM users WHERE name = $2""",
        token_id,
        user,
        label,
        hash_token(token),
    )
    return token_id, token


async def add_user(
    conn: asyncpg.Connection, name: str, org: str, role: Role | str, *, platform_admin: bool = False
) -> Person:
    """A user of `org` with `role`, and one API token of theirs."""
    role = Role(role)
    await conn.execute(
        "INSERT INTO users (name, org_id, role, platform_admin, created_by) VALUES ($1, $2, $3, $4, 'test')",
        name,
        org,
        role.value,
        platform_admin,
    )
    token_id, token = await add_token(conn, name)
    return Person(name=name, org=org, role=role, token=token, token_id=token_id)
