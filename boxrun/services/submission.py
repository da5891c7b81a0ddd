"""Accepting a job: validate the target, freeze the spec, insert it queued, start its workflow."""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from typing import Any

import asyncpg
from temporalio.client import Client
from temporalio.service import RPCError

from boxrun import logcontext, metrics
from boxrun.db import Q
from boxrun.errors import BoxrunError, Conflict, InvalidInput, Unavailable
from boxrun.messages import AcquireResult
from boxrun.placement import acquire, release
from boxrun.schemas import JobCreate
from boxrun.services import secrets
from boxrun.services.files import resolve_file_refs
from boxrun.services.identity import User
from boxrun.services.wakeups import wake_jobs
from boxrun.services.workflow_start import job_input, start_job_workflow
from boxrun.settings import Settings
from boxrun.storage import Storage

log = logging.getLogger(__name__)


def spec_hash(spec: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


async def submit_job(
    conn: asyncpg.Connection,
    temporal: Client,
    settings: Settings,
    user: User,
    body: JobCreate,
    *,
    storage: Storage,
    rerun_of: str | None = None,
    inputs: list[dict[str, Any]] | None = None,
    template: dict[str, Any] | None = None,
) -> tuple[str, bool]:
    """Returns (job id, created). A repeated idempotency key returns the first job (created=False).

    InvalidInput(field="box") for a box that does not exist or that the user may not see;
    InvalidInput(field="env.KEY") for an env value referring to a secret the org does not have;
    InvalidInput naming the file for a referenced upload that is not in storage (with that size),
    or files over max_job_files_bytes in all; Conflict for an idempotency key used before with
    another spec; Unavailable if Temporal (or storage) refuses (nothing is kept). `template`
    ({"name", "version"}: a template run, docs/templates.md) is frozen into the spec."""
    # a box the submitter may not see (allowed_users) is refused exactly as a box that does not exist
    viewer = None if user.is_admin else user.name
    if body.box is not None and await conn.fetchrow(Q.get_box, user.org_id, body.box, viewer) is None:
        raise InvalidInput(f"box {body.box!r} does not exist", field="box")
    # `${{ secrets.NAME }}` in an env value: the org must have NAME (the spec keeps the reference;
    # the value is read only into the bundle of the box that claims the job)
    await secrets.check_references(conn, user.org_id, body.env)
    spec = body.frozen_spec(await resolve_file_refs(storage, settings, user, body))
    if inputs:  # a re-run of a pipeline step job: the upstream artifacts it was given, as resolved
        spec["inputs"] = inputs
    if template:
        spec["template"] = template
    digest = spec_hash(spec)
    if body.idempotency_key is not None:
        existing = await _by_key(conn, user, body.idempotency_key, digest)
        if existing is not None:
            return existing, False

    job_id = str(uuid.uuid4())
    try:
        async with conn.transaction():
            row = await conn.fetchrow(
                Q.insert_job,
                job_id,
                user.org_id,
                user.name,
                body.box,
                body.box_group,
                body.requires,
                spec,
                digest,
                body.timeout_s,
                body.lock,
                body.priority,
                body.idempotency_key,
                body.cancel_grace_s,
                rerun_of,
            )
            assert row is not None  # INSERT ... RETURNING
            await conn.execute(
                Q.insert_first_event,
                user.org_id,
                job_id,
                {"owner": user.name, **({"rerun_of": rerun_of} if rerun_of else {})},
            )
    except asyncpg.UniqueViolationError:
        # A concurrent submission with the same idempotency key won the race.
        existing = await _by_key(conn, user, body.idempotency_key or "", digest)
        if existing is None:
            raise
        return existing, False

    # The row is committed before the workflow starts, so the workflow's first activity always
    # finds it. A free box is leased and offered the job at once (offer_at_submission), so the box
    # starts it while the workflow starts. If Temporal refuses, the job is withdrawn again: nothing
    # half-written remains, unless its box already claimed it (then it is accepted and the reaper
    # starts its workflow, as it does when this process dies right here).
    offered = await offer_at_submission(conn, settings, row, spec) if settings.offer_at_submission else None
    try:
        await start_job_workflow(temporal, job_input(row, settings))
    except RPCError as exc:
        log.error("could not start the workflow of job %s: %s", job_id, exc)
        if await _withdraw(conn, temporal, job_id, offered=offered is not None):
            raise Unavailable("the workflow engine is unavailable; job not accepted") from exc
        log.warning("job %s was claimed by its box before its workflow could start; the reaper starts it", job_id)
    if offered is not None and offered.wake_job_ids:  # the grant's hand-on, after the start
        await wake_jobs(temporal, offered.wake_job_ids)
    metrics.job_submitted()
    return job_id, True


async def offer_at_submission(
    conn: asyncpg.Connection, settings: Settings, row: asyncpg.Record, spec: dict[str, Any]
) -> AcquireResult | None:
    """Lease a box for the job now, if one is free (the same placement.acquire its workflow would
    run: target, access, capabilities, liveness, maintenance, locks, priority and FIFO), and offer
    the job to it without a task token: the box's long-poll is answered as this commits, and the
    job's run_job adopts the offer (offer_dispatch). Returns the grant (its waiters to wake once
    the workflow started), or None when the workflow places the job as before, with nothing
    written: no box free now (the job stays `queued`), the job refers to secrets (a secret gone at
    the claim fails the job through its run_job, which must exist by then), or other jobs for its
    target wait to be placed. Best effort: a failure here leaves the job to its workflow."""
    job_id = str(row["id"])
    if secrets.env_references(spec.get("env") or {}):
        return None
    from boxrun.services.dispatch import notify  # here: dispatch imports jobs, which imports this module

    try:
        if await conn.fetchval(Q.target_has_pending, row["org_id"], row["box_name"], row["box_group"], row["id"]):
            return None  # a backlog: the workflow places it in turn
        async with conn.transaction():
            got = await acquire(conn, job_id, offline_after_s=settings.box_offline_after_s)
            if got.box is None:
                raise _NoOffer("no box free")  # the wait is the workflow's to record: rolled back
            box_id: int | None = await conn.fetchval(Q.box_id_by_name, job_id, got.box)
            if box_id is None:
                raise _NoOffer(f"box {got.box} is gone")
            offered = await conn.fetchval(
                Q.pre_offer, job_id, box_id, settings.dispatch_timeout_s, logcontext.get("request_id")
            )
            if offered is None:
                raise _NoOffer("already offered")
            await notify(conn, box_id, job_id, "offer")
    except _NoOffer:
        return None
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, BoxrunError) as exc:
        log.warning("job %s: no offer at submission (%r); its workflow places it", job_id, exc)
        return None
    return got


class _NoOffer(Exception):
    """No offer now (rolls back the placement's writes with it: the job stays `queued`)."""


async def _withdraw(conn: asyncpg.Connection, temporal: Client, job_id: str, *, offered: bool) -> bool:
    """The workflow could not be started: delete the job, its lease and its offer, unless its box
    already claimed the offer (False: the job runs and is kept)."""
    if not offered:
        await conn.execute(Q.delete_job, job_id)
        return True
    async with conn.transaction():
        if await conn.fetchval(Q.withdraw_pre_offer, job_id) is None:
            return False
        freed = await release(conn, job_id)
        await conn.execute(Q.delete_offered_job, job_id)
    await wake_jobs(temporal, freed.wake_job_ids)
    return True


async def _by_key(conn: asyncpg.Connection, user: User, key: str, digest: str) -> str | None:
    row = await conn.fetchrow(Q.job_by_idempotency_key, user.org_id, user.name, key)
    if row is None:
        return None
    if row["spec_hash"] != digest:
        raise Conflict(f"idempotency key {key!r} was used for a different job spec")
    return str(row["id"])
