"""Outgoing webhooks: endpoints, their deliveries and redelivery (docs/webhooks.md). Org admins only:
a webhook's URL may carry the receiver's credentials, and its deliveries show the receiver's answers."""

from __future__ import annotations

from typing import Annotated

import asyncpg
from fastapi import APIRouter, Query, Response, status

from boxrun.api.deps import AdminUser, ConnDep, SettingsDep, TemporalDep
from boxrun.api.errors import responses
from boxrun.schemas.webhooks import (
    WebhookAttemptPublic,
    WebhookCreate,
    WebhookCreated,
    WebhookDeliveriesPublic,
    WebhookDeliveryPublic,
    WebhookPublic,
    WebhooksPublic,
)
from boxrun.services import webhooks

router = APIRouter(prefix="/webhooks", tags=["webhooks"])

WEBHOOK_404 = "no such webhook (or one of another org)"


def _webhook(row: asyncpg.Record) -> WebhookPublic:
    return WebhookPublic(
        id=str(row["id"]),
        url=row["url"],
        events=list(row["events"]),
        created_by=row["created_by"],
        created_at=row["created_at"],
    )


def _delivery(row: asyncpg.Record, attempts: list[asyncpg.Record]) -> WebhookDeliveryPublic:
    return WebhookDeliveryPublic(
        id=str(row["id"]),
        event=row["event"],
        subject=row["subject"],
        state=row["state"],
        created_at=row["created_at"],
        finished_at=row["finished_at"],
        error=row["error"],
        attempts=[
            WebhookAttemptPublic(
                at=a["at"],
                status_code=a["status_code"],
                error=a["error"],
                duration_ms=a["duration_ms"],
                response=a["response"],
            )
            for a in attempts
        ],
    )


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=WebhookCreated,
    responses=responses(401, 403, 409, 422, e409="the org has 100 webhooks already"),
)
async def create_webhook(body: WebhookCreate, conn: ConnDep, settings: SettingsDep, user: AdminUser) -> WebhookCreated:
    """A webhook of your org: every event listed is POSTed to `url`, signed with `secret` (in this
    answer only; stored encrypted). The URL must be http(s) without a user or password; a private,
    loopback, link-local, multicast or reserved target (a literal address or a name resolving to
    one) is refused unless the webhook_allow_networks setting allows it."""
    row, secret = await webhooks.create_webhook(conn, user, settings, body)
    return WebhookCreated(**_webhook(row).model_dump(), secret=secret)


@router.get("", response_model=WebhooksPublic, responses=responses(401, 403))
async def list_webhooks(conn: ConnDep, user: AdminUser) -> WebhooksPublic:
    """Your org's webhooks, oldest first (never their secrets)."""
    return WebhooksPublic(data=[_webhook(r) for r in await webhooks.list_webhooks(conn, user)])


@router.get("/{webhook_id}", response_model=WebhookPublic, responses=responses(401, 403, 404, e404=WEBHOOK_404))
async def get_webhook(webhook_id: str, conn: ConnDep, user: AdminUser) -> WebhookPublic:
    return _webhook(await webhooks.load_webhook(conn, user, webhook_id))


@router.delete(
    "/{webhook_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=responses(401, 403, 404, e404=WEBHOOK_404),
)
async def delete_webhook(webhook_id: str, conn: ConnDep, user: AdminUser) -> Response:
    """Delete the webhook with its deliveries; a delivery still retrying stops at its next attempt."""
    await webhooks.delete_webhook(conn, user, webhook_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get(
    "/{webhook_id}/deliveries",
    response_model=WebhookDeliveriesPublic,
    responses=responses(401, 403, 404, 422, e404=WEBHOOK_404),
)
async def list_deliveries(
    webhook_id: str,
    conn: ConnDep,
    user: AdminUser,
    limit: Annotated[int, Query(ge=1, le=webhooks.MAX_PAGE)] = 50,
    cursor: Annotated[str | None, Query(max_length=64, description="next_cursor of the page before")] = None,
) -> WebhookDeliveriesPublic:
    """The webhook's deliveries, newest first, each with every attempt (time, HTTP status, error,
    duration, the first KiB of the answer)."""
    rows, attempts, next_cursor = await webhooks.list_deliveries(conn, user, webhook_id, limit=limit, cursor=cursor)
    return WebhookDeliveriesPublic(data=[_delivery(r, attempts[r["id"]]) for r in rows], next_cursor=next_cursor)


@router.post(
    "/{webhook_id}/deliveries/{delivery_id}/redeliver",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=WebhookDeliveryPublic,
    responses=responses(
        401, 403, 404, 409, e404="no such webhook or delivery", e409="the delivery is still being attempted"
    ),
)
async def redeliver(
    webhook_id: str, delivery_id: str, conn: ConnDep, temporal: TemporalDep, user: AdminUser
) -> WebhookDeliveryPublic:
    """Send the delivery again: the same delivery id and body, a fresh signature, retried as the
    first run was. Its attempts so far stay listed."""
    row, attempts = await webhooks.redeliver(conn, temporal, user, webhook_id, delivery_id)
    return _delivery(row, attempts)
