"""Jobs after submission: look one up, cancel it, re-run it from its frozen spec."""

from __future__ import annotations

import base64
import binascii
import logging
import re
import uuid
from datetime import UTC, datetime

import asyncpg
from pydantic import ValidationError
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from boxrun.constants import JobState
from boxrun.db import Q
from boxrun.errors import Conflict, Forbidden, InvalidInput, NotFound, Unavailable
from boxrun.placement import finish
from boxrun.schemas import LABEL_KEY_PATTERN, MAX_LABEL_VALUE, MAX_LABELS, JobCreate
from boxrun.services.identity import User
from boxrun.services.submission import submit_job
from boxrun.services.wakeups import wake_jobs
from boxrun.settings import Settings
from boxrun.storage import Storage
from boxrun.workspace_paths import refuse_unstorable

log = logging.getLogger(__name__)


def parse_job_id(job_id: str) -> str:
    """Job ids are UUIDs; anything else cannot name a job: NotFound (404), never a database error."""
    try:
        return str(uuid.UUID(job_id))
    except ValueError:
        raise NotFound(f"job {job_id[:80]!r} not found") from None


def encode_cursor(created_at: datetime, job_id: uuid.UUID | str) -> str:
    """The list position after a job: opaque to clients (base64url of its creation time and id)."""
    raw = f"{created_at.astimezone(UTC).isoformat()}|{job_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    """(created_at, id) of a cursor from encode_cursor; InvalidInput (field query.cursor) otherwise."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        at, _, job_id = raw.partition("|")
        when = datetime.fromisoformat(at)
        if when.tzinfo is None:
            raise ValueError("naive time")
        # in UTC, as encode_cursor wrote it: a forged time that has no UTC instant (year 1 at +14:00,
        # year 9999 at -23:59) is refused here, not by the database driver (a 500)
        return when.astimezone(UTC), uuid.UUID(job_id)
    except (ValueError, OverflowError, binascii.Error, UnicodeDecodeError):
        raise InvalidInput("not a cursor this API gave (pass next_cursor as it came)", field="query.cursor") from None


def parse_label_filters(labels: list[str]) -> dict[str, str] | None:
    """`key:value` filters as the containment the list query takes; None if a key is asked with two
    different values (no job matches). InvalidInput (field query.label) on a malformed one."""
    if len(labels) > MAX_LABELS:
        raise InvalidInput(f"at most {MAX_LABELS} label filters", field="query.label")
    wanted: dict[str, str] = {}
    conflict = False
    for item in labels:
        key, sep, value = item.partition(":")
        if not sep or not re.fullmatch(LABEL_KEY_PATTERN, key):
            raise InvalidInput(
                f"label filter {item[:80]!r} is not key:value with a key matching {LABEL_KEY_PATTERN}",
                field="query.label",
            )
        if len(value) > MAX_LABEL_VALUE:
            raise InvalidInput(f"label value longer than {MAX_LABEL_VALUE} characters", field="query.label")
        try:  # no label can hold a NUL (nor a jsonb value): a 422, not the database's error
            refuse_unstorable(value)
        except ValueError as exc:
            raise InvalidInput(f"label filter value {exc}", field="query.label") from None
        if wanted.get(key, value) != value:
            conflict = True
        wanted[key] = value
    return None if conflict else wanted


async def load_job(conn: asyncpg.Connection, user: User, job_id: str) -> asyncpg.Record:
    """The job row, if it exists in the caller's org."""
    row: asyncpg.Record | None = await conn.fetchrow(Q.get_job, user.org_id, parse_job_id(job_id))
    if row is None:
        raise NotFound(f"job {job_id} not found")
    return row


def check_may_act(user: User, job: asyncpg.Record, verb: str) -> None:
    """Operators cancel and re-run their own jobs; org admins any job of the org. Forbidden (403,
    with the reason) otherwise: the job is of the caller's org, so saying it exists leaks nothing.
    (The route's Operator dependency has already refused viewers.)"""
    if not user.is_admin and job["owner"] != user.name:
        raise Forbidden(f"you may {verb} only your own jobs (job {job['id']} belongs to {job['owner']})")


async def cancel_job(
    conn: asyncpg.Connection, temporal: Client, user: User, job_id: str, *, offline_after_s: float = 15.0
) -> asyncpg.Record:
    """Ask the job's workflow to cancel; returns the job row after the request.

    The workflow does the rest (SIGTERM, grace, `cancelled`, lease freed). If no workflow is
    running (it already ended, or never started), the job is cancelled here, in one transaction.
    Forbidden unless the job is the caller's or the caller an org admin; Conflict if the job
    already ended; Unavailable if Temporal cannot take the request."""
    row = await load_job(conn, user, job_id)
    check_may_act(user, row, "cancel")
    jid = str(row["id"])
    if JobState(row["state"]).terminal:
        raise Conflict(f"job {jid} already ended ({row['state']})")
    await conn.execute(
        Q.audit, user.org_id, user.name, "job.cancel", row["id"], row["box_name"], {"state": row["state"]}
    )
    from boxrun.services.dispatch import hold_for_the_box, request_cancel  # dispatch imports this module

    await request_cancel(conn, jid)  # fast path: push it to the box now (the workflow does too)
    try:
        await temporal.get_workflow_handle(jid).cancel()
    except RPCError as exc:
        if exc.status != RPCStatusCode.NOT_FOUND:
            raise Unavailable(f"the workflow engine refused the cancel: {exc.message}") from exc
        log.info("job %s has no running workflow; cancelling the row itself", jid)
        async with conn.transaction():
            if await hold_for_the_box(conn, jid, offline_after_s):
                # offered at submission and running, its workflow not started yet (the reaper
                # starts it): the box was told; that workflow ends the job once the box reports
                return await load_job(conn, user, jid)
            current = JobState(await conn.fetchval(Q.job_state, user.org_id, jid))
            if current.terminal:
                raise Conflict(f"job {jid} already ended ({current})") from exc
            # finish, not a bare transition: a job its submission leased keeps no lease behind
            freed = await finish(conn, jid, JobState.CANCELLED, error="cancelled (no workflow was running)")
        await wake_jobs(temporal, freed.wake_job_ids)
    return await load_job(conn, user, jid)


async def rerun_job(
    conn: asyncpg.Connection, temporal: Client, settings: Settings, storage: Storage, user: User, job_id: str
) -> str:
    """A new job from the original's frozen spec, linked by `rerun_of`; returns its id.
    Retries are never automatic; the new job belongs to the caller. Forbidden unless the job is
    the caller's or the caller an org admin; InvalidInput if the spec names a box that no longer
    exists (or that the caller may not see)."""
    row = await load_job(conn, user, job_id)
    check_may_act(user, row, "rerun")
    try:
        body = JobCreate.from_frozen(row["spec"])
    except ValidationError as exc:  # rules tightened since the job was frozen
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "spec"
        raise InvalidInput(f"the frozen spec no longer passes validation: {first['msg']}", field=field) from None
    new_id, _ = await submit_job(
        conn, temporal, settings, user, body, storage=storage, rerun_of=str(row["id"]), inputs=row["spec"].get("inputs")
    )
    return new_id
