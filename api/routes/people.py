"""Organisations, users, API tokens and /api/me (docs/people.md)."""

from __future__ import annotations

from typing import Annotated

import asyncpg
from fastapi import APIRouter, Query, Response, status

from boxrun.api.deps import ConnDep, CurrentUser, PlatformAdmin, StreamGuardDep, UserAdmin
from boxrun.api.errors import responses
from boxrun.schemas.people import (
    ORG_ID_PATTERN,
    MePublic,
    OrgCreate,
    OrgPublic,
    OrgsPublic,
    TokenCreate,
    TokenCreated,
    TokenPublic,
    TokensPublic,
    UserCreate,
    UserCreated,
    UserPublic,
    UsersPublic,
    UserUpdate,
)
from boxrun.services import people
from boxrun.services.identity import Role

router = APIRouter()

USER_404 = "no such user (or one of another org)"
ORG_404 = "no such org (another org than yours: platform admins only)"
OrgQuery = Annotated[
    str | None, Query(pattern=ORG_ID_PATTERN, description="another org than yours: platform admins only")
]


def _user(row: asyncpg.Record) -> UserPublic:
    return UserPublic(
        name=row["name"],
        role=Role(row["role"]),
        org=row["org_id"],
        disabled=row["disabled_at"] is not None,
        created_at=row["created_at"],
    )


def _token(row: asyncpg.Record) -> TokenPublic:
    return TokenPublic(
        id=row["id"],
        user=row["user_name"],
        label=row["label"],
        created_at=row["created_at"],
        expires_at=row["expires_at"],
        last_used_at=row["last_used_at"],
        revoked=row["revoked_at"] is not None,
    )


@router.post(
    "/orgs",
    tags=["people"],
    status_code=status.HTTP_201_CREATED,
    response_model=OrgPublic,
    responses=responses(401, 403, 409, 422, e403="not a platform admin", e409="an org with that id exists"),
)
async def create_org(body: OrgCreate, conn: ConnDep, user: PlatformAdmin) -> OrgPublic:
    """A new organisation, without users: create its first admin with POST /api/users {"org"}."""
    row = await people.create_org(conn, user, body)
    return OrgPublic(id=row["id"], name=row["name"], created_at=row["created_at"])


@router.get("/orgs", tags=["people"], response_model=OrgsPublic, responses=responses(401, 403))
async def list_orgs(conn: ConnDep, user: PlatformAdmin) -> OrgsPublic:
    """Every organisation (platform admins only)."""
    rows = await people.list_orgs(conn, user)
    return OrgsPublic(data=[OrgPublic(id=r["id"], name=r["name"], created_at=r["created_at"]) for r in rows])


@router.post(
    "/users",
    tags=["people"],
    status_code=status.HTTP_201_CREATED,
    response_model=UserCreated,
    responses=responses(
        401, 403, 404, 409, 422, e404=ORG_404, e409="the name is taken (names are unique across the platform)"
    ),
)
async def create_user(body: UserCreate, conn: ConnDep, user: UserAdmin) -> UserCreated:
    """A user of `org` (default: yours) with a role. Org admins create users of their org,
    platform admins of any. The user has no token yet: mint one with POST /api/users/{name}/tokens."""
    row = await people.create_user(conn, user, body)
    return UserCreated(name=row["name"], role=Role(row["role"]), org=row["org_id"])


@router.get("/users", tags=["people"], response_model=UsersPublic, responses=responses(401, 404, 422, e404=ORG_404))
async def list_users(conn: ConnDep, user: CurrentUser, org: OrgQuery = None) -> UsersPublic:
    """The users of your org (any role), by name."""
    return UsersPublic(data=[_user(r) for r in await people.list_users(conn, user, org)])


@router.patch(
    "/users/{name}",
    tags=["people"],
    response_model=UserPublic,
    responses=responses(401, 403, 404, 409, 422, e404=USER_404, e409="it would leave the org without an enabled admin"),
)
async def update_user(name: str, body: UserUpdate, conn: ConnDep, guard: StreamGuardDep, user: UserAdmin) -> UserPublic:
    """Change a user's role, or disable them (`{"disabled": true}`: every token of theirs is
    refused at once and their open streams close) or enable them again."""
    row = await people.update_user(conn, user, name, body)
    if row["disabled_at"] is not None:
        guard.kick()
    return _user(row)


@router.post(
    "/users/{name}/tokens",
    tags=["people"],
    status_code=status.HTTP_201_CREATED,
    response_model=TokenCreated,
    responses=responses(401, 403, 404, 409, 422, e404=USER_404, e409="the user is disabled"),
)
async def create_token(name: str, body: TokenCreate, conn: ConnDep, user: CurrentUser) -> TokenCreated:
    """Mint an API token for a user: yourself (any role), a user of your org (org admins), anyone
    (platform admins). The secret is in this answer only; it is stored hashed."""
    token_id, secret, expires_at = await people.create_token(conn, user, name, body)
    return TokenCreated(id=token_id, token=secret, expires_at=expires_at)


@router.get("/tokens", tags=["people"], response_model=TokensPublic, responses=responses(401, 404, 422, e404=ORG_404))
async def list_tokens(conn: ConnDep, user: CurrentUser, org: OrgQuery = None) -> TokensPublic:
    """Your own tokens; an admin sees every token of its org. Never the secret. Newest first."""
    return TokensPublic(data=[_token(r) for r in await people.list_tokens(conn, user, org)])


@router.delete(
    "/tokens/{token_id}",
    tags=["people"],
    status_code=status.HTTP_204_NO_CONTENT,
    responses=responses(401, 403, 404, 422, e404="no such token (or one of another org)"),
)
async def revoke_token(token_id: str, conn: ConnDep, guard: StreamGuardDep, user: CurrentUser) -> Response:
    """Revoke a token: it is refused (401) from the next request on, and the streams opened with it
    close within `auth_recheck_s`. Revoking a revoked token is a 204 too."""
    if await people.revoke_token(conn, user, token_id):
        guard.kick()
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/me", tags=["people"], response_model=MePublic, responses=responses(401))
async def me(user: CurrentUser) -> MePublic:
    """Who the token names."""
    return MePublic(
        name=user.name, org=user.org_id, role=user.role, platform_admin=user.platform_admin, token_id=user.token_id
    )
