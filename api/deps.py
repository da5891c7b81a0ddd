"""Annotated dependency aliases: SettingsDep, ConnDep, TemporalDep, StorageDep, StreamGuardDep; who
calls (CurrentUser, Operator, AdminUser, UserAdmin, PlatformAdmin, CurrentBox).

Every dependency is `async def`, even the ones that only read app.state: FastAPI runs a plain
`def` dependency in its thread pool, a thread hand-off per dependency per request (20 % of the
API's CPU with 1,000 agents reporting; bench/boundary.py --profile-idle). A test keeps it so."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated

import asyncpg
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from temporalio.client import Client

from boxrun import logcontext
from boxrun.api.auth import USER_SCOPE_KEY, NodeBox, Role, User, authenticate, hash_token
from boxrun.api.live.guard import StreamGuard
from boxrun.api.live.job_tail import Tails
from boxrun.db import Q
from boxrun.errors import Forbidden, Unauthorized
from boxrun.settings import Settings
from boxrun.storage import Storage

_bearer = HTTPBearer(auto_error=False)


async def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def _pool(request: Request) -> asyncpg.Pool:
    pool: asyncpg.Pool = request.app.state.pool
    return pool


async def _conn(request: Request) -> AsyncIterator[asyncpg.Connection]:
    async with request.app.state.pool.acquire() as conn:
        yield conn


async def _temporal(request: Request) -> Client:
    temporal: Client = request.app.state.temporal
    return temporal


async def _storage(request: Request) -> Storage:
    storage: Storage = request.app.state.storage
    return storage


async def _tails(request: Request) -> Tails:
    tails: Tails = request.app.state.tails
    return tails


async def _stream_guard(request: Request) -> StreamGuard:
    guard: StreamGuard = request.app.state.stream_guard
    return guard


SettingsDep = Annotated[Settings, Depends(_settings)]
ConnDep = Annotated[asyncpg.Connection, Depends(_conn)]
# For long-lived requests (log followers): take a connection per query, never hold one.
PoolDep = Annotated[asyncpg.Pool, Depends(_pool)]
TemporalDep = Annotated[Client, Depends(_temporal)]
StorageDep = Annotated[Storage, Depends(_storage)]
TailsDep = Annotated[Tails, Depends(_tails)]
StreamGuardDep = Annotated[StreamGuard, Depends(_stream_guard)]
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


async def _current_user(request: Request, creds: Credentials) -> User:
    known: User | None = request.scope.get(USER_SCOPE_KEY)  # RequestGuard checked it (token or session)
    if known is not None:
        logcontext.note(org=known.org_id)  # on the request's log lines from here on
        return known
    if creds is None:
        raise Unauthorized("missing bearer token")
    # one short query on a pooled connection: a stream never pins a connection for its auth
    async with request.app.state.pool.acquire() as conn:
        user = await authenticate(conn, creds.credentials)
    logcontext.note(org=user.org_id)
    return user


def _at_least(role: Role) -> Callable[[User], Awaitable[User]]:
    async def check(user: Annotated[User, Depends(_current_user)]) -> User:
        if not user.role.includes(role):
            raise Forbidden(f"this needs the {role.value} role (you are {user.role.value} in org {user.org_id})")
        return user

    return check


async def _platform_admin(user: Annotated[User, Depends(_current_user)]) -> User:
    if not user.platform_admin:
        raise Forbidden("this needs a platform admin")
    return user


async def _user_admin(user: Annotated[User, Depends(_current_user)]) -> User:
    if not (user.is_admin or user.platform_admin):
        raise Forbidden(f"this needs the admin role (you are {user.role.value} in org {user.org_id})")
    return user


async def _current_box(creds: Credentials, conn: ConnDep) -> NodeBox:
    if creds is None:
        raise Unauthorized("missing node token")
    row = await conn.fetchrow(Q.box_by_token_hash, hash_token(creds.credentials))
    if row is None:
        raise Unauthorized("invalid node token")
    logcontext.note(box=row["name"], org=row["org_id"])  # on the request's log lines from here on
    return NodeBox(id=row["id"], name=row["name"], org_id=row["org_id"])


# Who may call a route, by role in the caller's org (docs/access.md has the matrix). Anything of
# another org is 404 to everyone, platform admins included; a role too low for an action is 403.
CurrentUser = Annotated[User, Depends(_current_user)]  # any role: reads
Viewer = CurrentUser
Operator = Annotated[User, Depends(_at_least(Role.OPERATOR))]  # submits; cancels/reruns own jobs
AdminUser = Annotated[User, Depends(_at_least(Role.ADMIN))]  # everything in its org
# users of its org (an org admin) or of any org (a platform admin); services check which org
UserAdmin = Annotated[User, Depends(_user_admin)]
PlatformAdmin = Annotated[User, Depends(_platform_admin)]  # orgs; users and tokens of any org
CurrentBox = Annotated[NodeBox, Depends(_current_box)]
