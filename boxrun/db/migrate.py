"""Numbered migrations (db/migrations/NNNN_*.sql), applied in one transaction under an advisory lock."""

from __future__ import annotations

import logging
from importlib import resources

from boxrun.db.types import Conn

log = logging.getLogger(__name__)

_LOCK_KEY = 0x626F7872  # "boxr"


def _migrations() -> list[tuple[int, str, str]]:
    found = []
    for entry in resources.files("boxrun.db").joinpath("migrations").iterdir():
        if entry.name.endswith(".sql"):
            version = int(entry.name.split("_", 1)[0])
            found.append((version, entry.name, entry.read_text()))
    return sorted(found)


async def migrate(conn: Conn) -> list[str]:
    """Apply pending migrations; safe to call from many processes at once. Returns what ran."""
    applied: list[str] = []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_KEY)
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
        for version, name, sql in _migrations():
            if version in done:
                continue
            await conn.execute(sql)
            await conn.execute("INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", version, name)
            applied.append(name)
    if applied:
        log.info("applied migrations: %s", ", ".join(applied))
    return applied
