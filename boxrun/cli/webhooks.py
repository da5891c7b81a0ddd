"""`boxrun webhooks ...`: your org's outgoing webhooks and their deliveries (admins; docs/webhooks.md)."""

from __future__ import annotations

from typing import Annotated

import typer

from boxrun.cli import context
from boxrun.cli.context import UserCommand, UserGroup
from boxrun.cli.output import answer, print_json, print_table
from boxrun.schemas.webhooks import WebhookCreated, WebhookDeliveryPublic, WebhookPublic
from boxrun.sdk.aio import AsyncClient

JSON = Annotated[bool, typer.Option("--json", help="print the API's JSON")]
WEBHOOK = Annotated[str, typer.Argument(help="the webhook's id")]

app = typer.Typer(cls=UserGroup, help="Outgoing webhooks of your org (admins). Without a command: ls.")


def list_webhooks(as_json: bool) -> None:
    async def work(client: AsyncClient) -> list[WebhookPublic]:
        return await client.webhooks.list()

    found = context.with_client(work)
    if as_json:
        print_json(found)
    else:
        print_table(
            ["ID", "URL", "EVENTS", "CREATED BY", "CREATED (UTC)"],
            [[w.id, w.url, ",".join(w.events), w.created_by, w.created_at] for w in found],
        )


@app.callback(invoke_without_command=True)
def webhooks(ctx: typer.Context, as_json: JSON = False) -> None:
    """Outgoing webhooks (admins). Without a command: list them."""
    if ctx.invoked_subcommand is None:
        list_webhooks(as_json)


@app.command("ls", cls=UserCommand)
def webhooks_ls(as_json: JSON = False) -> None:
    """List the webhooks (never their secrets)."""
    list_webhooks(as_json)


@app.command("create", cls=UserCommand)
def webhooks_create(
    url: Annotated[str, typer.Argument(help="where to POST: http(s), a public address")],
    events: Annotated[
        list[str],
        typer.Option("--event", "-e", help="an event to deliver (repeat): job.failed, box.offline, ..."),
    ],
    as_json: JSON = False,
) -> None:
    """Create a webhook; its signing secret is printed this once (keep it with the receiver)."""

    async def work(client: AsyncClient) -> WebhookCreated:
        return await client.webhooks.create(url, events)

    made = context.with_client(work)
    if as_json:
        print_json(made)
    else:
        typer.echo(made.secret)
        typer.echo(f"webhook {made.id}: its signing secret is shown this once, keep it safe", err=True)


@app.command("show", cls=UserCommand)
def webhooks_show(webhook_id: WEBHOOK, as_json: JSON = False) -> None:
    """One webhook."""

    async def work(client: AsyncClient) -> WebhookPublic:
        return await client.webhooks.get(webhook_id)

    hook = context.with_client(work)
    answer(hook, as_json, f"{hook.id} {hook.url} events={','.join(hook.events)} by {hook.created_by}")


@app.command("rm", cls=UserCommand)
def webhooks_rm(webhook_id: WEBHOOK) -> None:
    """Delete a webhook and its deliveries (one still retrying stops)."""

    async def work(client: AsyncClient) -> None:
        await client.webhooks.delete(webhook_id)

    context.with_client(work)
    typer.echo(f"webhook {webhook_id} deleted")


@app.command("deliveries", cls=UserCommand)
def webhooks_deliveries(
    webhook_id: WEBHOOK,
    limit: Annotated[int, typer.Option("--limit", min=1, help="at most this many, newest first")] = 20,
    as_json: JSON = False,
) -> None:
    """A webhook's deliveries, newest first: state, attempts, the last answer."""

    async def work(client: AsyncClient) -> list[WebhookDeliveryPublic]:
        return [d async for d in client.webhooks.deliveries(webhook_id, limit=limit)]

    found = context.with_client(work)
    if as_json:
        print_json(found)
        return
    rows = []
    for d in found:
        last = d.attempts[-1] if d.attempts else None
        said = "" if last is None else (str(last.status_code) if last.status_code is not None else last.error or "")
        rows.append([d.id, d.event, d.subject, d.state, len(d.attempts), said, d.created_at])
    print_table(["ID", "EVENT", "SUBJECT", "STATE", "ATTEMPTS", "LAST", "CREATED (UTC)"], rows)


@app.command("redeliver", cls=UserCommand)
def webhooks_redeliver(
    webhook_id: WEBHOOK,
    delivery_id: Annotated[str, typer.Argument(help="the delivery's id (X-Boxrun-Delivery)")],
    as_json: JSON = False,
) -> None:
    """Send a delivery again: the same id and body, a fresh signature."""

    async def work(client: AsyncClient) -> WebhookDeliveryPublic:
        return await client.webhooks.redeliver(webhook_id, delivery_id)

    d = context.with_client(work)
    answer(d, as_json, f"delivery {d.id} ({d.event} {d.subject}) queued again")
