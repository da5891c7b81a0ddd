"""Webhooks: create, list, delete, deliveries and redelivery; the body a delivery sends; starting
delivery workflows after the change that wrote them committed (docs/webhooks.md)."""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import uuid
from collections.abc import Sequence
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

import asyncpg
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.common import WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError

from boxrun.api.to_public import box_public, job_public, pipeline_public
from boxrun.constants import CONTROL_TASK_QUEUE
from boxrun.db import Conn, Q
from boxrun.errors import Conflict, InvalidInput, NotFound
from boxrun.messages import DeliveryInput
from boxrun.schemas.webhooks import WebhookCreate
from boxrun.services.identity import User
from boxrun.settings import Settings
from boxrun.webhook_target import TargetRefused, check_url, parse_url

log = logging.getLogger(__name__)

WORKFLOW_TYPE = "WebhookDeliveryWorkflow"
MAX_WEBHOOKS_PER_ORG = 100
MAX_PAGE = 200


def workflow_id(delivery_id: str) -> str:
    return f"webhook-{delivery_id}"


def _parse_id(value: str, what: str) -> uuid.UUID:
    """Ids are UUIDs; anything else names nothing: NotFound (404), never a database error."""
    try:
        return uuid.UUID(value)
    except ValueError:
        raise NotFound(f"{what} {value[:80]!r} not found") from None


def _origin(url: str) -> str:
    """scheme://host[:port] of a URL: what the audit keeps (a path or query may hold the receiver's
    credentials, and audit rows are kept forever)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def new_secret() -> str:
    return f"whsec_{secrets.token_urlsafe(32)}"


async def create_webhook(
    conn: asyncpg.Connection, user: User, settings: Settings, body: WebhookCreate
) -> tuple[asyncpg.Record, str]:
    """A new webhook of the caller's org (the route admits admins only) and its signing secret,
    stored sealed and returned this once. The URL is checked here (and again at every delivery)."""
    try:
        # bounded as an attempt is: a name whose DNS never answers must not hold the request
        async with asyncio.timeout(settings.webhook_timeout_s):
            await check_url(body.url, settings.webhook_networks())
    except TimeoutError:
        raise TargetRefused(
            f"{parse_url(body.url).host} did not resolve within {settings.webhook_timeout_s:g} s", field="body.url"
        ) from None
    secret = new_secret()
    sealed = settings.secret_box().seal(secret)
    async with conn.transaction():
        # creates of one org in turn: count-then-insert alone lets simultaneous ones all fit
        await conn.execute(Q.lock_org, user.org_id)
        count = await conn.fetchval(Q.count_webhooks, user.org_id)
        if count >= MAX_WEBHOOKS_PER_ORG:
            raise Conflict(f"org {user.org_id} has {MAX_WEBHOOKS_PER_ORG} webhooks already: delete one first")
        row = await conn.fetchrow(
            Q.insert_webhook, uuid.uuid4(), user.org_id, body.url, list(body.events), sealed, user.name
        )
        assert row is not None  # INSERT ... RETURNING
        await conn.execute(
            Q.audit,
            user.org_id,
            user.name,
            "webhook.create",
            None,
            None,
            {"id": str(row["id"]), "target": _origin(body.url), "events": list(body.events)},
        )
    return row, secret


async def list_webhooks(conn: Conn, user: User) -> list[asyncpg.Record]:
    return list(await conn.fetch(Q.list_webhooks, user.org_id))


async def load_webhook(conn: Conn, user: User, webhook_id: str) -> asyncpg.Record:
    """The webhook, if it is of the caller's org; NotFound otherwise."""
    row: asyncpg.Record | None = await conn.fetchrow(Q.get_webhook, user.org_id, _parse_id(webhook_id, "webhook"))
    if row is None:
        raise NotFound(f"webhook {webhook_id} not found")
    return row


async def delete_webhook(conn: asyncpg.Connection, user: User, webhook_id: str) -> None:
    """Delete the webhook with its deliveries and attempts, audited. A delivery still retrying
    finds it gone at its next attempt and stops (non-retryable)."""
    wid = _parse_id(webhook_id, "webhook")
    async with conn.transaction():
        row = await conn.fetchrow(Q.delete_webhook, user.org_id, wid)
        if row is None:
            raise NotFound(f"webhook {webhook_id} not found")
        await conn.execute(
            Q.audit,
            user.org_id,
            user.name,
            "webhook.delete",
            None,
            None,
            {"id": str(wid), "target": _origin(row["url"])},
        )


async def list_deliveries(
    conn: Conn, user: User, webhook_id: str, *, limit: int, cursor: str | None
) -> tuple[list[asyncpg.Record], dict[uuid.UUID, list[asyncpg.Record]], str | None]:
    """A page of the webhook's deliveries, newest first, each with its attempts in order, and the
    cursor of the next page (None: no more)."""
    hook = await load_webhook(conn, user, webhook_id)
    after_at, after_id = None, None
    if cursor is not None:
        try:
            after = uuid.UUID(cursor)
        except ValueError:
            raise InvalidInput("not a cursor this API gave", field="query.cursor") from None
        prev = await conn.fetchrow(Q.get_delivery, hook["id"], after)
        if prev is None:
            raise InvalidInput("not a cursor this API gave", field="query.cursor")
        after_at, after_id = prev["created_at"], prev["id"]
    rows = list(await conn.fetch(Q.list_deliveries, hook["id"], limit + 1, after_at, after_id))
    more = len(rows) > limit
    rows = rows[:limit]
    attempts: dict[uuid.UUID, list[asyncpg.Record]] = {r["id"]: [] for r in rows}
    for a in await conn.fetch(Q.delivery_attempts, list(attempts)):
        attempts[a["delivery_id"]].append(a)
    return rows, attempts, (str(rows[-1]["id"]) if more and rows else None)


async def redeliver(
    conn: asyncpg.Connection, temporal: Client, user: User, webhook_id: str, delivery_id: str
) -> tuple[asyncpg.Record, list[asyncpg.Record]]:
    """A new run of the same delivery: same id, same frozen body (a fresh timestamp and signature),
    audited; returns it and its attempts so far. Conflict while a run of it is still attempting.
    If Temporal cannot be reached the delivery stays pending and the reaper's sweep starts it."""
    hook = await load_webhook(conn, user, webhook_id)
    did = _parse_id(delivery_id, "delivery")
    row = await conn.fetchrow(Q.get_delivery, hook["id"], did)
    if row is None:
        raise NotFound(f"webhook {webhook_id} has no delivery {delivery_id}")
    if row["state"] == "pending" and row["run_started_at"] is not None and await _running(temporal, str(did)):
        raise Conflict(f"delivery {did} is still being attempted: wait for it to end (see its attempts)")
    async with conn.transaction():
        await conn.execute(Q.reopen_delivery, did)
        await conn.execute(
            Q.audit,
            user.org_id,
            user.name,
            "webhook.redeliver",
            None,
            None,
            {"id": str(hook["id"]), "delivery": str(did), "event": row["event"]},
        )
    await start_deliveries(conn, temporal, [did])
    reopened = await conn.fetchrow(Q.get_delivery, hook["id"], did)
    if reopened is None:
        raise NotFound(f"webhook {webhook_id} has no delivery {delivery_id}")  # deleted meanwhile
    return reopened, list(await conn.fetch(Q.delivery_attempts, [did]))


async def _running(temporal: Client, delivery_id: str) -> bool:
    try:
        desc = await temporal.get_workflow_handle(workflow_id(delivery_id)).describe()
    except RPCError:
        return False
    return desc.status == WorkflowExecutionStatus.RUNNING


async def start_deliveries(db: Conn | asyncpg.Pool, temporal: Client, ids: Sequence[uuid.UUID | str]) -> int:
    """Start the delivery workflows of committed deliveries (workflow id webhook-<delivery id>) and
    mark them started. A run already going is left alone; a new run after a closed one is harmless
    (the activity sends nothing for a delivery no longer pending). A failure to start is logged and
    left to the reaper's sweep. Returns how many were started (or found running)."""
    started: list[str] = []
    for did in ids:
        try:
            await temporal.start_workflow(
                WORKFLOW_TYPE,
                DeliveryInput(delivery_id=str(did)),
                id=workflow_id(str(did)),
                task_queue=CONTROL_TASK_QUEUE,
                id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
                task_timeout=timedelta(seconds=5),
            )
        except WorkflowAlreadyStartedError:
            pass  # running already (a retried activity, the sweep): the same delivery
        except RPCError as exc:
            log.warning("could not start webhook delivery %s (the reaper will): %s", did, exc)
            continue
        started.append(str(did))
    if started:
        await db.execute(Q.mark_delivery_started, started)
    return len(started)


async def start_deliveries_of(pool: asyncpg.Pool, temporal: Client, subject: str) -> int:
    """After a job's or pipeline's end committed: start the deliveries its triggers wrote."""
    ids = [r["id"] for r in await pool.fetch(Q.unstarted_deliveries_of, subject)]
    return await start_deliveries(pool, temporal, ids) if ids else 0


# ---------------------------------------------------------------- what a delivery sends


async def event_data(conn: Conn, settings: Settings, org_id: str, event: str, subject: str) -> dict[str, Any]:
    """`data`: the job as GET /api/jobs/{id} shows it, the pipeline as GET /api/pipelines/{id},
    the box as GET /api/boxes/{name} (to its org's admin). A subject gone meanwhile: its id only."""
    kind = event.split(".", 1)[0]
    if kind == "job":
        row = await conn.fetchrow(Q.get_job, org_id, uuid.UUID(subject))
        if row is not None:
            return job_public(row, settings).model_dump(mode="json")
        return {"id": subject}
    if kind == "pipeline":
        row = await conn.fetchrow(Q.get_pipeline, org_id, uuid.UUID(subject))
        if row is not None:
            steps = await conn.fetch(Q.pipeline_steps, row["id"])
            attempts = await conn.fetch(Q.pipeline_step_attempts, row["id"])
            return pipeline_public(row, steps, attempts, settings).model_dump(mode="json")
        return {"id": subject}
    row = await conn.fetchrow(Q.get_box, org_id, subject, None)
    if row is not None:
        return box_public(row, settings).model_dump(mode="json")
    return {"name": subject}


async def delivery_body(conn: Conn, settings: Settings, delivery: asyncpg.Record) -> str:
    """{"id", "event", "created_at", "data"} as compact JSON (frozen into the row at first send)."""
    data = await event_data(conn, settings, delivery["org_id"], delivery["event"], delivery["subject"])
    doc = {
        "id": str(delivery["id"]),
        "event": delivery["event"],
        "created_at": delivery["created_at"].isoformat(),
        "data": data,
    }
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False)
