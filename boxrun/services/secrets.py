"""Organisation secrets (docs/secrets.md): admins put and delete them, operators and admins list
their names; a job's env refers to one as `${{ secrets.NAME }}`, checked at submission and
resolved only in the bundle of the box that claimed the job (services/dispatch.py).

A value is sealed (boxrun.secretbox) before it reaches Postgres and opened only by `resolve`. No
function here puts a value into an exception, a log line or an audit row: errors name the secret
and the env key, never what they hold."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import asyncpg

from boxrun.db import Conn, Q
from boxrun.errors import Conflict, InvalidInput, NotFound
from boxrun.schemas.secrets import SECRET_NAME_PATTERN
from boxrun.secretbox import SecretBox, SecretBoxError
from boxrun.services.identity import User

_NAME = re.compile(SECRET_NAME_PATTERN)
# `${{ secrets.NAME }}`, spaces inside the braces optional. What stands after `secrets.` is read
# up to the closing braces (bounded, without '}', so unclosed text costs linear time) and then
# checked as a name: `${{ secrets.db-pass }}` is refused at submission, not left as text.
_REFERENCE = re.compile(r"\$\{\{\s*secrets\.([^}]{0,200}?)\s*\}\}")


class SecretUnavailable(Conflict):
    """A referenced secret cannot be resolved for a claimed job: deleted since the submission, or
    sealed with a key no longer configured. `name` is the secret's (never its value)."""

    def __init__(self, reason: str, *, name: str) -> None:
        super().__init__(reason)
        self.name = name


@dataclass(frozen=True)
class Resolved:
    """A job's env with every reference replaced, and the values the box must mask."""

    env: dict[str, str]
    mask: list[str]

    def __repr__(self) -> str:  # values must not reach a log line or a traceback through a repr
        return f"Resolved(env=<{len(self.env)} keys>, mask=<{len(self.mask)} values>)"

    __str__ = __repr__


def valid_name(name: str) -> bool:
    return bool(_NAME.match(name))


def references(value: str) -> list[str]:
    """The names `value` refers to, in order (a name may repeat). ValueError for a reference
    whose name is not a valid secret name."""
    if "${{" not in value:
        return []
    names = []
    for match in _REFERENCE.finditer(value):
        name = match.group(1)
        if not _NAME.match(name):
            shown = name if len(name) <= 40 else name[:40] + "..."
            raise ValueError(f"${{{{ secrets.{shown} }}}}: a secret name is {SECRET_NAME_PATTERN}")
        names.append(name)
    return names


def env_references(env: Mapping[str, str]) -> dict[str, list[str]]:
    """env key -> the secret names its value refers to (keys without references left out).
    ValueError naming the key for a reference that is not a valid secret name."""
    out: dict[str, list[str]] = {}
    for key, value in env.items():
        try:
            names = references(value)
        except ValueError as exc:
            raise ValueError(f"env {key}: {exc}") from None
        if names:
            out[key] = names
    return out


def substitute(value: str, values: Mapping[str, str]) -> str:
    """`value` with each reference replaced by its secret's value (every name must be in
    `values`). A replacement is not scanned again: a value holding `${{ secrets.X }}` stays so."""
    if "${{" not in value:
        return value
    return _REFERENCE.sub(lambda m: values[m.group(1)], value)


async def check_references(conn: Conn, org_id: str, env: Mapping[str, str], *, field: str = "env") -> None:
    """InvalidInput naming the env key and the secret if `env` refers to a secret org `org_id`
    does not have (or to a name no secret can have). Reads names only, never a value."""
    wanted: dict[str, list[str]] = {}
    for key, value in env.items():
        try:
            names = references(value)
        except ValueError as exc:
            raise InvalidInput(f"env {key}: {exc}", field=f"{field}.{key}") from None
        if names:
            wanted[key] = names
    if not wanted:
        return
    names = sorted({n for ns in wanted.values() for n in ns})
    have = {r["name"] for r in await conn.fetch(Q.secret_names, org_id, names)}
    for key, refs in wanted.items():
        for name in refs:
            if name not in have:
                raise InvalidInput(
                    f"env {key} refers to secret {name}, which org {org_id} does not have "
                    f"(an admin creates it: PUT /api/secrets/{name})",
                    field=f"{field}.{key}",
                )


async def resolve(conn: Conn, box: SecretBox, org_id: str, env: Mapping[str, str]) -> Resolved:
    """The env a box runs the job with: every reference replaced by its secret's value, and
    those values as the mask. SecretUnavailable (naming the secret) if one was deleted since the
    submission or cannot be opened with the configured key."""
    wanted = env_references(env)  # checked at submission: a stored spec holds only valid names
    if not wanted:
        return Resolved(env=dict(env), mask=[])
    names = sorted({n for ns in wanted.values() for n in ns})
    sealed = {r["name"]: r["sealed"] for r in await conn.fetch(Q.sealed_secrets, org_id, names)}
    values: dict[str, str] = {}
    for name in names:
        if name not in sealed:
            raise SecretUnavailable(f"secret {name} no longer exists", name=name)
        try:
            values[name] = box.open(sealed[name])
        except SecretBoxError:
            raise SecretUnavailable(
                f"secret {name} cannot be decrypted with BOXRUN_SECRETS_KEY (key changed?)", name=name
            ) from None
    resolved = {key: substitute(value, values) if key in wanted else value for key, value in env.items()}
    return Resolved(env=resolved, mask=sorted({v for v in values.values() if v}, key=lambda v: (-len(v), v)))


# ---------------------------------------------------------------- the REST use cases


def _check_name(name: str) -> None:
    if not _NAME.match(name):
        raise InvalidInput(f"a secret name is {SECRET_NAME_PATTERN} (upper case, digits, _)", field="path.name")


async def put_secret(conn: asyncpg.Connection, box: SecretBox, user: User, name: str, value: str) -> bool:
    """Create or replace secret `name` of the caller's org (the route admits admins only),
    audited as `secret.put` with the name. Returns whether it was created."""
    _check_name(name)
    sealed = box.seal(value)
    async with conn.transaction():
        created = bool(await conn.fetchval(Q.put_secret, user.org_id, name, sealed, user.name))
        detail = {"name": name, "created": created}
        await conn.execute(Q.audit, user.org_id, user.name, "secret.put", None, None, detail)
    return created


async def list_secrets(conn: Conn, user: User) -> list[asyncpg.Record]:
    """The caller's org's secrets by name, without values."""
    rows: list[asyncpg.Record] = await conn.fetch(Q.list_secrets, user.org_id)
    return rows


async def delete_secret(conn: asyncpg.Connection, user: User, name: str) -> None:
    """Delete secret `name` of the caller's org, audited as `secret.delete`; NotFound if the org
    has none by that name. Jobs referring to it that have not started fail at their claim."""
    _check_name(name)
    async with conn.transaction():
        if await conn.fetchval(Q.delete_secret, user.org_id, name) is None:
            raise NotFound(f"secret {name} not found")
        await conn.execute(Q.audit, user.org_id, user.name, "secret.delete", None, None, {"name": name})
