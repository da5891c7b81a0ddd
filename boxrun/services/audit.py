"""The audit trail: recording what people do (downloads) and reading it back a page at a time.

Most rows are written elsewhere: job transitions, leases, maintenance rejections and reruns by
triggers in the database (migration 0008, so no code path can forget them); cancel, box and
maintenance changes, users and tokens by their services through `Q.audit` in their transaction.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg

from boxrun.db import Conn, Q
from boxrun.errors import InvalidInput
from boxrun.services.identity import User
from boxrun.services.jobs import load_job


async def record(
    conn: Conn, user: User, action: str, *, job_id: str | None = None, box: str | None = None, **detail: Any
) -> None:
    """One audit row by `user` in its org (inside the caller's transaction, if any)."""
    await conn.execute(Q.audit, user.org_id, user.name, action, job_id, box, detail)


@dataclass(frozen=True)
class AuditFilter:
    """GET /api/audit's filters, each None = any. `action` is exact, or `prefix.*` for every
    action under that prefix (`job.*`: every job transition, job.cancel, job.rerun)."""

    job_id: UUID | None = None
    actor: str | None = None
    action: str | None = None
    box: str | None = None
    since: datetime | None = None
    until: datetime | None = None


@dataclass(frozen=True)
class AuditPage:
    rows: list[dict[str, Any]]
    next_cursor: str | None


def _cursor(cursor: str | None) -> int | None:
    if cursor is None:
        return None
    try:
        value = int(cursor)
    except ValueError:
        value = 0
    if not 1 <= value < 2**63:
        raise InvalidInput("cursor is not one this API handed out", field="cursor")
    return value


async def audit_page(conn: Conn, user: User, filters: AuditFilter, *, limit: int, cursor: str | None) -> AuditPage:
    """The caller's org's audit rows matching `filters`, newest first, `limit` at most, older
    than `cursor`. InvalidInput for `since` after `until` or a cursor not handed out."""
    if filters.since is not None and filters.until is not None and filters.since > filters.until:
        raise InvalidInput("since is after until", field="since")
    exact, prefix = filters.action, None
    if filters.action is not None and filters.action.endswith(".*"):
        exact, prefix = None, filters.action[:-1]  # `job.*` -> every action starting with `job.`
    rows = await conn.fetch(
        Q.audit_page,
        user.org_id,
        filters.job_id,
        filters.actor,
        exact,
        prefix,
        filters.box,
        filters.since,
        filters.until,
        _cursor(cursor),
        limit + 1,
    )
    more = len(rows) > limit
    page = [
        {
            "id": str(r["id"]),
            "at": r["at"],
            "actor": r["actor"],
            "action": r["action"],
            "job_id": str(r["job_id"]) if r["job_id"] is not None else None,
            "box": r["box"],
            "detail": r["detail"],
        }
        for r in rows[:limit]
    ]
    return AuditPage(page, page[-1]["id"] if more else None)


def shown_env(env: dict[str, str]) -> dict[str, str]:
    """The env as GET /api/jobs/{id}/spec shows it: as submitted. A value referring to a secret
    shows the reference (`${{ secrets.NAME }}`): the frozen spec keeps only the reference, the
    value is read only into the claiming box's bundle (services/secrets.py), so it can never be
    shown here."""
    return dict(env)


def spec_files(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """Every workspace file of a frozen spec, by path: inline texts hashed as their UTF-8 bytes
    (what the box writes), uploads as recorded at submission, and a pipeline step's inputs (the
    upstream artifacts it was given, with the job and path they came from)."""
    files = {
        path: {"path": path, "size": len(text.encode()), "sha256": hashlib.sha256(text.encode()).hexdigest()}
        for path, text in (spec.get("files") or {}).items()
    }
    for path, ref in (spec.get("file_refs") or {}).items():
        files[path] = {"path": path, "size": ref["size"], "sha256": ref["sha256"]}
    for inp in spec.get("inputs") or []:
        files[inp["dest"]] = {
            "path": inp["dest"],
            "size": inp["size"],
            "sha256": inp["sha256"],
            "from_job_id": inp["job_id"],
            "from_path": inp["path"],
        }
    return [files[path] for path in sorted(files)]


async def job_spec(conn: asyncpg.Connection, user: User, job_id: str) -> dict[str, Any]:
    """What job `job_id` ran (NotFound outside the caller's org): its frozen spec, files by
    digest, and its spec_hash (equal for two runs of the same spec, a rerun included)."""
    job = await load_job(conn, user, job_id)
    spec: dict[str, Any] = job["spec"]
    return {
        "job_id": str(job["id"]),
        "spec_hash": job["spec_hash"],
        "script": spec["script"],
        "env": shown_env(spec.get("env") or {}),
        "files": spec_files(spec),
        "settings": {
            "box": job["box_name"],
            "box_group": job["box_group"],
            "requires": list(job["requires"]),
            "timeout_s": job["timeout_s"],
            "lock": job["lock"],
            "priority": job["priority"],
            "cancel_grace_s": job["cancel_grace_s"],
            "queue_timeout_s": job["queue_timeout_s"],
        },
        "template": spec.get("template"),
    }
