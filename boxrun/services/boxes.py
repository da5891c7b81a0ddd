"""Boxes: register, update, delete, rotate a node token, maintenance on/off and windows (each
audited, and waking the jobs that wait when a box can take work again, or can never take theirs),
and the agent's liveness report."""

from __future__ import annotations

import logging
import re
import uuid
from datetime import UTC, datetime
from typing import Any

import asyncpg
from temporalio.client import Client
from temporalio.service import RPCError

from boxrun.db import Q
from boxrun.errors import Conflict, InvalidInput, NotFound
from boxrun.placement import lock_box_targets
from boxrun.schemas import (
    NAME_PATTERN,
    BoxCreate,
    BoxQueuePublic,
    BoxUpdate,
    HoldPublic,
    LeasePublic,
    MaintenancePublic,
    RejectionPublic,
    WaiterPublic,
    WindowPublic,
)
from boxrun.services.dispatch import check_session
from boxrun.services.identity import NodeBox, User, hash_token, mint_token
from boxrun.services.wakeups import wake_waiters

log = logging.getLogger(__name__)

REJECTIONS_SHOWN = 50
_NAME = re.compile(NAME_PATTERN)
NODE_TOKEN_PREFIX = "bxn"


def box_viewer(user: User) -> str | None:
    """Whom box access (allowed_users) applies to: the caller, unless an org admin (who sees and
    uses every box of the org). The queries take it as their viewer parameter."""
    return None if user.is_admin else user.name


async def load_box(conn: asyncpg.Connection, user: User, name: str) -> asyncpg.Record:
    """The box row (with `in_maintenance`), if it exists in the caller's org and the caller may
    see it (a box whose allowed_users leaves a viewer or operator out does not exist for them).
    A string that is not a valid box name cannot name one: NotFound, without asking the database."""
    row: asyncpg.Record | None = None
    if _NAME.match(name):
        row = await conn.fetchrow(Q.get_box, user.org_id, name, box_viewer(user))
    if row is None:
        raise NotFound(f"box {name[:80]!r} not found")
    return row


async def register_box(conn: asyncpg.Connection, user: User, body: BoxCreate) -> tuple[asyncpg.Record, str]:
    """Returns (box row, node token); the token is shown only here. Conflict if the name is taken."""
    token = mint_token(NODE_TOKEN_PREFIX)
    async with conn.transaction():
        row: asyncpg.Record | None = await conn.fetchrow(
            Q.insert_box, user.org_id, body.name, body.groups, body.capabilities, body.capacity, hash_token(token)
        )
        if row is None:
            raise Conflict(f"box {body.name} already exists; rotate its token instead")
        await conn.execute(
            Q.audit, user.org_id, user.name, "box.register", None, body.name, {"capacity": body.capacity}
        )
    return row, token


async def rotate_token(conn: asyncpg.Connection, user: User, name: str) -> tuple[asyncpg.Record, str]:
    """Mint a new node token; the old one stops working at once. Returns (box row, new token)."""
    box = await load_box(conn, user, name)
    token = mint_token(NODE_TOKEN_PREFIX)
    async with conn.transaction():
        if await conn.fetchrow(Q.rotate_box_token, user.org_id, box["name"], hash_token(token)) is None:
            raise NotFound(f"box {name} not found")  # deleted since load_box
        await conn.execute(Q.audit, user.org_id, user.name, "box.token_rotated", None, name, {})
    return await load_box(conn, user, name), token


async def _allowed_users(conn: asyncpg.Connection, user: User, body: BoxUpdate) -> list[str] | None:
    """The new allowed_users, sorted and without repeats; InvalidInput naming a name that is not a
    user of the caller's org."""
    if body.allowed_users is None:
        return None
    wanted = sorted(set(body.allowed_users))
    known = {r["name"] for r in await conn.fetch(Q.org_user_names, user.org_id, wanted)}
    unknown = [n for n in wanted if n not in known]
    if unknown:
        raise InvalidInput(
            f"allowed_users names {unknown[0]!r}, who is not a user of org {user.org_id}", field="allowed_users"
        )
    return wanted


def _access_change(old: list[str] | None, new: list[str] | None) -> tuple[bool, bool]:
    """(losing, gaining): whether a change of allowed_users shuts someone out, lets someone in."""
    if old is None and new is None:
        return False, False
    if old is None:
        return True, False
    if new is None:
        return False, True
    return bool(set(old) - set(new)), bool(set(new) - set(old))


async def update_box(
    conn: asyncpg.Connection, temporal: Client, user: User, name: str, body: BoxUpdate
) -> asyncpg.Record:
    """Replace the box's groups, capabilities, capacity (a field absent or null is kept) or
    allowed_users (null: the whole org), audited as `box.update` with what changed. Running jobs
    are never stopped. A change that lets the box take more (capacity up, a group or capability
    added, a user let in) wakes the jobs waiting for it; one that takes something away wakes those
    that waited for it before (so a job that can no longer go anywhere ends unschedulable now, not
    at its next periodic re-check)."""
    box = await load_box(conn, user, name)
    set_access = "allowed_users" in body.model_fields_set
    allowed = await _allowed_users(conn, user, body) if set_access else None
    async with conn.transaction():
        # the placement locks of the box's targets first (the order placements take them): a
        # placement deciding meanwhile either has made its job wait (it is among the waiters read
        # below) or sees the edited box
        await lock_box_targets(conn, [box["id"]])
        old = await conn.fetchrow(Q.lock_box_by_name, user.org_id, box["name"])
        if old is None:
            raise NotFound(f"box {name} not found")  # deleted since load_box
        changes: dict[str, Any] = {}
        for field in ("groups", "capabilities", "capacity"):
            new = getattr(body, field)
            before = old[field] if field == "capacity" else sorted(old[field])
            if new is not None and (new if field == "capacity" else sorted(new)) != before:
                changes[field] = {"from": old[field] if field == "capacity" else list(old[field]), "to": new}
        old_access = None if old["allowed_users"] is None else sorted(old["allowed_users"])
        if set_access and allowed != old_access:
            changes["allowed_users"] = {"from": old_access, "to": allowed}
        if not changes:
            return box
        access_losing, access_gaining = _access_change(old_access, allowed) if set_access else (False, False)
        losing = (
            access_losing
            or (body.capacity is not None and body.capacity < old["capacity"])
            or any(
                getattr(body, f) is not None and set(old[f]) - set(getattr(body, f)) for f in ("groups", "capabilities")
            )
        )
        gaining = (
            access_gaining
            or (body.capacity is not None and body.capacity > old["capacity"])
            or any(
                getattr(body, f) is not None and set(getattr(body, f)) - set(old[f]) for f in ("groups", "capabilities")
            )
        )
        before_ids = [str(r["id"]) for r in await conn.fetch(Q.all_waiters_for_box, old["id"])] if losing else []
        row = await conn.fetchrow(
            Q.update_box, old["id"], body.groups, body.capabilities, body.capacity, set_access, allowed
        )
        assert row is not None  # locked above
        await conn.execute(Q.audit, user.org_id, user.name, "box.update", None, name, changes)
    await _wake(temporal, before_ids)
    if gaining:
        await wake_waiters(conn, temporal, old["id"], row["capacity"])
    return await load_box(conn, user, name)


async def delete_box(conn: asyncpg.Connection, temporal: Client, user: User, name: str) -> None:
    """Delete the box (its node token stops working at once), audited as `box.delete`.

    Conflict while a job holds a lease on it or a pipeline holds it (keep_box). Jobs that ran on it keep its name (jobs.
    deleted_box_name); the jobs waiting for it are woken, and each one's next placement finds
    the box gone: a job that named it, or whose group has no other box for it, ends
    `unschedulable` ("box NAME was deleted"); the others keep waiting for their group."""
    box = await load_box(conn, user, name)
    async with conn.transaction():
        await lock_box_targets(conn, [box["id"]])  # as update_box: placements of its targets settle first
        row = await conn.fetchrow(Q.lock_box_by_name, user.org_id, box["name"])
        if row is None:
            raise NotFound(f"box {name} not found")  # deleted since load_box
        leases = await conn.fetch(Q.box_leases, row["id"])
        if leases:
            held = ", ".join(str(r["job_id"]) for r in leases[:5])
            raise Conflict(
                f"box {name} is in use: {len(leases)} job(s) hold a lease on it ({held}); "
                "cancel them or wait for them to end, then delete it"
            )
        holds = await conn.fetch(Q.box_live_holds, row["id"])
        if holds:
            by = ", ".join(f"pipeline {h['pipeline_id']} (step {h['step']})" for h in holds[:5])
            raise Conflict(
                f"box {name} is held between pipeline steps by {by}; "
                "cancel the pipeline or wait for its pinned steps to end, then delete it"
            )
        waiting = [str(r["id"]) for r in await conn.fetch(Q.all_waiters_for_box, row["id"])]
        await conn.execute(Q.keep_deleted_box_name, row["id"], row["name"])
        await conn.fetchval(Q.delete_box, row["id"])
        detail = {
            "groups": list(row["groups"]),
            "capabilities": list(row["capabilities"]),
            "capacity": row["capacity"],
            "waiting_jobs": len(waiting),
        }
        await conn.execute(Q.audit, user.org_id, user.name, "box.delete", None, name, detail)
    await _wake(temporal, waiting)


async def _wake(temporal: Client, job_ids: list[str]) -> None:
    """Signal these jobs' workflows to try placement again now."""
    for job_id in job_ids:
        try:
            await temporal.get_workflow_handle(job_id).signal("wake")
        except RPCError as exc:  # the workflow ended meanwhile (or is not started yet: the reaper's)
            log.info("could not wake job %s: %s", job_id, exc)


async def queue_of(conn: asyncpg.Connection, user: User, name: str) -> BoxQueuePublic:
    """The box's current leases, the pipelines holding it between steps, and the jobs waiting
    that it could take, in grant order."""
    box = await load_box(conn, user, name)
    leases = await conn.fetch(Q.box_leases, box["id"])
    waiting = await conn.fetch(Q.box_waiters, box["id"])
    holds = await conn.fetch(Q.box_live_holds, box["id"])
    return BoxQueuePublic(
        holds=[
            HoldPublic(
                pipeline_id=str(h["pipeline_id"]),
                step=h["step"],
                steps=list(h["steps"]),
                job_id=str(h["job_id"]) if h["job_id"] is not None else None,
                since=h["held_at"],
            )
            for h in holds
        ],
        leases=[
            LeasePublic(job_id=str(r["job_id"]), exclusive=r["exclusive"], acquired_at=r["acquired_at"]) for r in leases
        ],
        waiting=[
            WaiterPublic(
                job_id=str(r["id"]),
                priority=r["priority"],
                created_at=r["created_at"],
                waiting_reason=r["waiting_reason"],
            )
            for r in waiting
        ],
    )


async def maintenance_of(conn: asyncpg.Connection, user: User, name: str) -> MaintenancePublic:
    """Whether a window covers now, the windows open or to come, the latest jobs passed over."""
    box = await load_box(conn, user, name)
    windows = await conn.fetch(Q.box_windows, box["id"])
    rejections = await conn.fetch(Q.box_rejections, box["id"], REJECTIONS_SHOWN)
    return MaintenancePublic(
        maintenance=box["in_maintenance"],
        windows=[_window(w) for w in windows],
        rejections=[RejectionPublic(job_id=str(r["job_id"]), window_id=r["window_id"], at=r["at"]) for r in rejections],
    )


async def set_maintenance(
    conn: asyncpg.Connection, temporal: Client, user: User, name: str, *, on: bool, reason: str
) -> MaintenancePublic:
    """Manual maintenance. On opens a window without an end (if none covers now); off ends every
    open window now and wakes the jobs waiting for the box. Running jobs are never stopped."""
    box = await load_box(conn, user, name)
    async with conn.transaction():
        if on:
            if not box["in_maintenance"]:
                await conn.fetchrow(Q.insert_window, user.org_id, box["id"], datetime.now(UTC), None, reason, user.name)
        else:
            await conn.fetch(Q.end_open_windows, box["id"])
        action = f"maintenance.{'on' if on else 'off'}"
        await conn.execute(Q.audit, user.org_id, user.name, action, None, name, {"reason": reason})
    if not on:
        await wake_waiters(conn, temporal, box["id"], box["capacity"])
    return await maintenance_of(conn, user, name)


async def add_window(
    conn: asyncpg.Connection, user: User, name: str, *, starts_at: datetime, ends_at: datetime, reason: str
) -> WindowPublic:
    """A planned window. InvalidInput if it ends before it starts or has already ended."""
    box = await load_box(conn, user, name)
    if ends_at <= starts_at:
        raise InvalidInput("ends_at must be after starts_at", field="ends_at")
    if ends_at <= datetime.now(UTC):
        raise InvalidInput("ends_at is in the past", field="body.ends_at")
    async with conn.transaction():
        row = await conn.fetchrow(Q.insert_window, user.org_id, box["id"], starts_at, ends_at, reason, user.name)
        assert row is not None  # INSERT ... RETURNING
        await conn.execute(
            Q.audit,
            user.org_id,
            user.name,
            "maintenance.window",
            None,
            name,
            {"window_id": row["id"], "reason": reason},
        )
    return _window(row)


async def delete_window(conn: asyncpg.Connection, temporal: Client, user: User, name: str, window_id: int) -> None:
    """Remove a window (planned or open) and wake the jobs it held back. NotFound if the box has
    no such window."""
    box = await load_box(conn, user, name)
    async with conn.transaction():
        if await conn.fetchval(Q.delete_window, box["id"], window_id) is None:
            raise NotFound(f"box {name} has no window {window_id}")
        await conn.execute(
            Q.audit, user.org_id, user.name, "maintenance.window_deleted", None, name, {"window_id": window_id}
        )
    await wake_waiters(conn, temporal, box["id"], box["capacity"])


def _canonical_uuid(text: str) -> uuid.UUID | None:
    """`text` as a UUID when it is spelled exactly as str(UUID) spells it (no braces, urn: prefix or
    upper case), the one spelling check_session accepts; None otherwise."""
    try:
        parsed = uuid.UUID(text)
    except ValueError:
        return None
    return parsed if str(parsed) == text else None


async def record_heartbeat(
    conn: asyncpg.Connection,
    temporal: Client,
    box: NodeBox,
    *,
    agent_version: str,
    draining: bool,
    offline_after_s: float,
    session: str | None = None,
) -> asyncpg.Record:
    """The agent's liveness report, in its session when it names one (Conflict if that is not the
    box's live session). A box that comes back (or stops draining) wakes the jobs waiting for it.
    Returns the box row."""
    if session is not None and _canonical_uuid(session) is None:
        await check_session(conn, box, session)  # not a session id as the API issues them: Conflict
    in_session = None if session is None else uuid.UUID(session)
    row = await conn.fetchrow(Q.box_report, box.id, agent_version, offline_after_s, draining, in_session)
    if row is None:
        if session is not None:
            await check_session(conn, box, session)  # Conflict unless the session is live after all
        raise NotFound(f"box {box.name} not found")  # deleted since its token was checked
    if not row["was_live"] and not draining:
        await wake_waiters(conn, temporal, box.id, row["capacity"])
    return row


def _window(row: asyncpg.Record) -> WindowPublic:
    return WindowPublic(
        id=row["id"],
        starts_at=row["starts_at"],
        ends_at=row["ends_at"],
        reason=row["reason"],
        created_by=row["created_by"],
    )
