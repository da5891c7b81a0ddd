"""Numbered migrations (db/migrations/NNNN_*.sql), applied in one transaction under an advisory
lock by the role that owns the schema; that role then grants the runtime role its rights."""

from __future__ import annotations

import logging
from importlib import resources
from urllib.parse import unquote, urlsplit

from boxrun.db.types import Conn

log = logging.getLogger(__name__)

_LOCK_KEY = 0x626F7872  # "boxr"

# What the runtime role (the API's and the worker's) may do: read and write rows, never change the
# schema. The audit log is append-only to it: no UPDATE, DELETE or TRUNCATE (and, not being the
# owner, it cannot drop the trigger that refuses them to everyone either). Identifiers come from
# quote_ident; a role name never reaches the SQL text unquoted.
_GRANTS = """
DO $$
DECLARE
    role_name text := quote_ident(current_setting('boxrun.runtime_role'));
BEGIN
    EXECUTE format('GRANT USAGE ON SCHEMA public TO %s', role_name);
    EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO %s', role_name);
    EXECUTE format('GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO %s', role_name);
    EXECUTE format('REVOKE UPDATE, DELETE, TRUNCATE ON audit_log FROM %s', role_name);
END $$;
"""


def _migrations() -> list[tuple[int, str, str]]:
    found = []
    for entry in resources.files("boxrun.db").joinpath("migrations").iterdir():
        if entry.name.endswith(".sql"):
            version = int(entry.name.split("_", 1)[0])
            found.append((version, entry.name, entry.read_text()))
    return sorted(found)


def role_of(url: str) -> str:
    """The role a postgresql:// URL connects as."""
    user = urlsplit(url).username
    if not user:
        raise ValueError("the database URL names no user")
    return unquote(user)


async def pending(conn: Conn) -> list[str]:
    """Migrations not applied yet (all of them on an empty database); needs only SELECT."""
    if await conn.fetchval("SELECT to_regclass('schema_migrations')") is None:
        return [name for _, name, _ in _migrations()]
    done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
    return [name for version, name, _ in _migrations() if version not in done]


async def migrate(conn: Conn, *, runtime_role: str | None = None) -> list[str]:
    """Apply pending migrations; safe to call from many processes at once. Returns what ran.

    With `runtime_role` (and `conn` connected as the schema's owner, a different role), the
    runtime role is then granted data rights on every table and sequence except UPDATE, DELETE
    and TRUNCATE on audit_log; grants are re-applied on every call, so a new table is covered.
    Without it, on an up-to-date schema this only reads (a runtime role may call it).
    """
    applied: list[str] = []
    if runtime_role is None and not await pending(conn):
        return applied
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
        if runtime_role is not None and runtime_role != await conn.fetchval("SELECT current_user"):
            await conn.execute("SELECT set_config('boxrun.runtime_role', $1, true)", runtime_role)
            await conn.execute(_GRANTS)
    if applied:
        log.info("applied migrations: %s", ", ".join(applied))
    return applied


async def migrate_for(database_url: str, database_owner_url: str | None) -> list[str]:
    """What the API, the worker and `boxrun migrate` run at start: migrate as the owner and grant
    the runtime role (database_url's user) its rights if database_owner_url is set; else migrate
    as the runtime role itself, warning if it owns the audit log (then only the trigger keeps
    the log append-only: its owner could drop the trigger)."""
    from boxrun.db import connect  # boxrun.db imports this module

    if database_owner_url:
        conn = await connect(database_owner_url)
        try:
            return await migrate(conn, runtime_role=role_of(database_url))
        finally:
            await conn.close()
    conn = await connect(database_url)
    try:
        applied = await migrate(conn)
        if await conn.fetchval(
            "SELECT pg_get_userbyid(relowner) = current_user FROM pg_class WHERE oid = to_regclass('audit_log')"
        ):
            log.warning(
                "database_url's role owns the schema (no database_owner_url set): the audit log is"
                " append-only by trigger only; set BOXRUN_DATABASE_OWNER_URL to split the roles"
            )
        return applied
    finally:
        await conn.close()
