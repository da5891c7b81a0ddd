"""Postgres access: a pool with JSON codecs, named queries and migrations."""

from __future__ import annotations

import json

import asyncpg

from boxrun.db.migrate import migrate, migrate_for
from boxrun.db.queries import Q
from boxrun.db.types import Conn

__all__ = ["Q", "Conn", "connect", "create_pool", "migrate", "migrate_for"]


async def _init(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


async def create_pool(dsn: str, *, min_size: int = 1, max_size: int = 10) -> asyncpg.Pool:
    return await asyncpg.create_pool(dsn, min_size=min_size, max_size=max_size, init=_init)


async def connect(dsn: str) -> asyncpg.Connection:
    conn = await asyncpg.connect(dsn)
    await _init(conn)
    return conn
