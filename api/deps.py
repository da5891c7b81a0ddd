"""Annotated dependency aliases: SettingsDep, ConnDep, TemporalDep, StorageDep, CurrentUser, CurrentBox."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

import asyncpg
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from temporalio.client import Client

from boxrun.api.auth import NodeBox, User, hash_token, user_for_token
from boxrun.api.live.job_tail import Tails
from boxrun.db import Q
from boxrun.errors import Forbidden, Unauthorized
from boxrun.settings import Settings
from boxrun.storage import Storage

_bearer = HTTPBearer(auto_error=False)


def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def _pool(request: Request) -> asyncpg.Pool:
    pool: asyncpg.Pool = request.app.state.pool
    return pool


async def _conn(request: Request) -> AsyncIterator[asyncpg.Connection]:
    async with request.app.state.pool.acquire() as conn:
        yield conn


def _temporal(request: Request) -> Client:
    temporal: Client = request.app.state.temporal
    return temporal


def _storage(request: Request) -> Storage:
    storage: Storage = request.app.state.storage
    return storage


def _tails(request: Request) -> Tails:
    tails: Tails = request.app.state.tails
    return tails


SettingsDep = Annotated[Settings, Depends(_settings)]
ConnDep = Annotated[asyncpg.Connection, Depends(_conn)]
# For long-lived requests (log followers): take a connection per query, never hold one.
PoolDep = Annotated[asyncpg.Pool, Depends(_pool)]
TemporalDep = Annotated[Client, Depends(_temporal)]
StorageDep = Annotated[Storage, Depends(_storage)]
TailsDep = Annotated[Tails, Depends(_tails)]
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


def _current_user(creds: Credentials, settings: SettingsDep) -> User:
    if creds is None:
        raise Unauthorized("missing bearer token")
    user = user_for_token(creds.credentials, admin_token=settings.api_token, admin_name=settings.api_token_owner)
    if user is None:
        raise Unauthorized("invalid token")
    return user


def _admin(user: Annotated[User, Depends(_current_user)]) -> User:
    if user.role != "admin":
        raise Forbidden("admin role required")
    return user


async def _current_box(creds: Credentials, conn: ConnDep) -> NodeBox:
    if creds is None:
        raise Unauthorized("missing node token")
    row = await conn.fetchrow(Q.box_by_token_hash, hash_token(creds.credentials))
    if row is None:
        raise Unauthorized("invalid node token")
    return NodeBox(id=row["id"], name=row["name"], org_id=row["org_id"])


CurrentUser = Annotated[User, Depends(_current_user)]
AdminUser = Annotated[User, Depends(_admin)]
CurrentBox = Annotated[NodeBox, Depends(_current_box)]
