"""Webhook activities: one signed POST of a delivery per attempt, every attempt recorded."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import httpx
from temporalio import activity
from temporalio.exceptions import ApplicationError

from boxrun import __version__
from boxrun.db import Q
from boxrun.messages import DeliveryInput, DeliveryResult, GiveUpInput
from boxrun.secretbox import SecretBoxError
from boxrun.services.webhooks import delivery_body, start_deliveries_of
from boxrun.settings import Settings
from boxrun.webhook_target import (
    DELIVERY_HEADER,
    EVENT_HEADER,
    SIGNATURE_HEADER,
    Target,
    TargetRefused,
    check_url,
    sign,
)

log = logging.getLogger(__name__)

MAX_RESPONSE = 1024  # bytes of the receiver's answer kept on the attempt row
WEBHOOK_GONE = "WebhookGone"
WEBHOOK_REJECTED = "WebhookRejected"


class WebhookActivities:
    """Bound to one Postgres pool and the settings (secret box, allowed networks, timeout)."""

    def __init__(self, pool: asyncpg.Pool, settings: Settings) -> None:
        self.pool = pool
        self.settings = settings

    def control(self) -> list[Callable[..., Awaitable[Any]]]:
        """The control queue's: the short Postgres step when a delivery gives up."""
        return [self.give_up_delivery]

    def delivery(self) -> list[Callable[..., Awaitable[Any]]]:
        """The webhook queue's (WEBHOOK_TASK_QUEUE): the attempts, with their own slots."""
        return [self.deliver_webhook]

    @activity.defn
    async def deliver_webhook(self, inp: DeliveryInput) -> DeliveryResult:
        """One attempt: freeze the body (first send only), resolve and check the target, POST it
        signed, record the attempt. Non-2xx, timeouts and refused targets raise (retried by the
        workflow's policy); a webhook deleted meanwhile is non-retryable."""
        async with self.pool.acquire() as conn:
            row = await conn.fetchrow(Q.delivery_to_send, inp.delivery_id)
            if row is None:
                raise ApplicationError("the webhook was deleted", type=WEBHOOK_GONE, non_retryable=True)
            if row["state"] != "pending":
                return DeliveryResult(skipped=True)  # a run after the one that ended it
            body = row["body"]
            if body is None:
                body = await conn.fetchval(
                    Q.freeze_delivery_body, row["id"], await delivery_body(conn, self.settings, row)
                )
        try:
            secret = self.settings.secret_box().open(row["secret_sealed"])
        except SecretBoxError as exc:
            # the key that sealed it is no longer in secrets_key: retrying cannot help
            await self._record(inp.delivery_id, None, "the signing secret cannot be opened (secrets_key?)", 0, None)
            raise ApplicationError(
                "the webhook's signing secret cannot be opened with the configured secrets_key",
                type="SecretBoxError",
                non_retryable=True,
            ) from exc
        raw = body.encode()
        began = time.monotonic()
        try:
            async with asyncio.timeout(self.settings.webhook_timeout_s):
                target = await check_url(row["url"], self.settings.webhook_networks())
                status, text = await self._post(target, row["event"], inp.delivery_id, secret, raw)
        except TargetRefused as exc:
            await self._record(inp.delivery_id, None, exc.reason, _ms(began), None)
            raise ApplicationError(exc.reason, type="TargetRefused") from None
        except (httpx.TimeoutException, TimeoutError):
            reason = f"no answer within {self.settings.webhook_timeout_s:g} s"
            await self._record(inp.delivery_id, None, reason, _ms(began), None)
            raise ApplicationError(reason, type="WebhookTimeout") from None
        except httpx.HTTPError as exc:
            reason = f"{type(exc).__name__}: {exc}"[:500] or type(exc).__name__
            await self._record(inp.delivery_id, None, reason, _ms(began), None)
            raise ApplicationError(reason, type="WebhookUnreachable") from None
        took = _ms(began)
        if 200 <= status < 300:
            async with self.pool.acquire() as conn, conn.transaction():
                await conn.execute(Q.insert_attempt, inp.delivery_id, status, None, took, text)
                await conn.execute(Q.end_delivery, inp.delivery_id, "delivered", None)
            return DeliveryResult(status_code=status)
        reason = f"HTTP {status}" + (" (redirects are not followed)" if 300 <= status < 400 else "")
        await self._record(inp.delivery_id, status, reason, took, text)
        raise ApplicationError(reason, type=WEBHOOK_REJECTED)

    @activity.defn
    async def give_up_delivery(self, inp: GiveUpInput) -> None:
        """The retries are spent (24 h) or a permanent failure: the delivery ends failed."""
        async with self.pool.acquire() as conn:
            await conn.execute(Q.end_delivery, inp.delivery_id, "failed", inp.error[:1000])

    async def _post(self, target: Target, event: str, delivery_id: str, secret: str, raw: bytes) -> tuple[int, str]:
        """POST to a checked address itself (the name is not resolved again behind the check),
        Host and TLS server name set to the URL's host; no redirects, no proxies; the first
        MAX_RESPONSE bytes of the answer as sent (not decompressed). The addresses are tried in
        the resolver's order while connecting fails (an IPv6 address first on an IPv4-only
        worker); once a connection is made, its outcome is the attempt's."""
        url = httpx.URL(target.url)
        headers = {
            "Content-Type": "application/json",
            "User-Agent": f"boxrun-webhooks/{__version__}",
            EVENT_HEADER: event,
            DELIVERY_HEADER: delivery_id,
            SIGNATURE_HEADER: sign(secret, int(time.time()), raw),
            "Host": url.netloc.decode(),
            # the answer is kept as received, never inflated (a gzip bomb of a few hundred KiB
            # grows to tens of MiB per network read): ask for it plain
            "Accept-Encoding": "identity",
        }
        extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
        async with httpx.AsyncClient(
            timeout=self.settings.webhook_timeout_s, follow_redirects=False, trust_env=False
        ) as client:
            for i, addr in enumerate(target.addresses):
                request = client.build_request(
                    "POST", url.copy_with(host=str(addr)), content=raw, headers=headers, extensions=extensions
                )
                try:
                    response = await client.send(request, stream=True)
                    break
                except httpx.ConnectError:
                    if i == len(target.addresses) - 1:
                        raise
            try:
                kept = b""
                async for chunk in response.aiter_raw():  # not decoded (Content-Encoding ignored)
                    kept += chunk[: MAX_RESPONSE - len(kept)]
                    if len(kept) >= MAX_RESPONSE:
                        break
            finally:
                await response.aclose()
        return response.status_code, kept.decode("utf-8", "replace").replace("\x00", "\ufffd")  # see _storable

    async def _record(
        self, delivery_id: str, status: int | None, error: str | None, took_ms: int, response: str | None
    ) -> None:
        async with self.pool.acquire() as conn:
            await conn.execute(Q.insert_attempt, delivery_id, status, _storable(error), took_ms, _storable(response))


async def start_deliveries_after(pool: asyncpg.Pool, subject: str) -> None:
    """Called by the control activity that ended a job or a pipeline, after its commit: start the
    delivery workflows its triggers wrote. Never fails the caller: what is not started here the
    reaper's sweep starts a few seconds later."""
    try:
        client = activity.client()
    except RuntimeError:
        return  # called outside a worker (a test driving the activity directly): the sweep starts them
    try:
        await start_deliveries_of(pool, client, subject)
    except (asyncpg.PostgresError, OSError) as exc:
        log.warning("could not start the webhook deliveries of %s (the reaper will): %s", subject, exc)


def _storable(text: str | None) -> str | None:
    """Text a receiver chose (its answer's body, an error quoting what it sent) as Postgres text
    holds it: no NUL (U+FFFD instead). A NUL would fail the attempt's INSERT: after a 2xx the
    delivery would never be marked delivered and would be sent again for a day, recorded nowhere."""
    return None if text is None else text.replace("\x00", "\ufffd")


def _ms(began: float) -> int:
    return int((time.monotonic() - began) * 1000)
