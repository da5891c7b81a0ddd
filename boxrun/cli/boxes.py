"""Box commands: `boxrun boxes`, `boxrun box show NAME`, `boxrun box maintenance NAME on|off`."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

import typer

from boxrun.cli import context
from boxrun.cli.context import ShowByDefault, UserCommand
from boxrun.cli.output import print_fields, print_json, print_table
from boxrun.schemas import BoxPublic, BoxQueuePublic, MaintenancePublic
from boxrun.sdk.aio import AsyncClient

app = typer.Typer(
    cls=ShowByDefault,
    no_args_is_help=True,
    help="One box: `boxrun box NAME` (or `box show NAME`) shows it; `box maintenance NAME on|off`.",
)
JSON = Annotated[bool, typer.Option("--json", help="print the API's JSON")]
NAME = Annotated[str, typer.Argument(help="the box's name")]


class Switch(StrEnum):
    ON = "on"
    OFF = "off"


def boxes(as_json: JSON = False) -> None:
    """List the boxes you may use: status, maintenance, groups, capabilities."""

    async def work(client: AsyncClient) -> list[BoxPublic]:
        return await client.boxes.list()

    found = context.with_client(work)
    if as_json:
        print_json(found)
        return
    rows = [
        [b.name, b.status, b.maintenance, b.draining, b.capacity, b.groups, b.capabilities, b.last_seen_at]
        for b in found
    ]
    print_table(["NAME", "STATUS", "MAINTENANCE", "DRAINING", "CAPACITY", "GROUPS", "CAPABILITIES", "SEEN (UTC)"], rows)


@app.command("show", cls=UserCommand)
def show(name: NAME, as_json: JSON = False) -> None:
    """Show a box and its queue (the jobs holding it, the jobs waiting for it, the pipelines
    holding it between steps: keep_box)."""

    async def work(client: AsyncClient) -> tuple[BoxPublic, BoxQueuePublic]:
        return await client.boxes.get(name), await client.boxes.queue(name)

    box, queue = context.with_client(work)
    if as_json:
        print_json({**box.model_dump(mode="json"), "queue": queue})
        return
    print_fields(
        [
            ("name", box.name),
            ("status", box.status),
            ("maintenance", box.maintenance),
            ("draining", box.draining),
            ("capacity", box.capacity),
            ("groups", box.groups),
            ("capabilities", box.capabilities),
            ("allowed users", box.allowed_users if box.allowed_users is not None else "everyone"),
            ("agent", box.agent_version),
            ("last seen", box.last_seen_at),
            ("running", [lease.job_id for lease in queue.leases]),
            ("waiting", [w.job_id for w in queue.waiting]),
        ]
    )
    if queue.holds:
        print_table(
            ["HELD BY PIPELINE", "STEP", "ADMITS", "JOB", "SINCE (UTC)"],
            [[hold.pipeline_id, hold.step, hold.steps, hold.job_id, hold.since] for hold in queue.holds],
        )


@app.command("maintenance", cls=UserCommand)
def maintenance(
    name: NAME,
    switch: Annotated[Switch, typer.Argument(help="on: no new job is dispatched to it; off: back in service")],
    reason: Annotated[str, typer.Option("--reason", help="why (kept with the window)")] = "manual",
    as_json: JSON = False,
) -> None:
    """Switch a box's maintenance on or off (admins)."""

    async def work(client: AsyncClient) -> MaintenancePublic:
        return await client.boxes.maintenance(name, switch is Switch.ON, reason=reason)

    state = context.with_client(work)
    if as_json:
        print_json(state)
    else:
        typer.echo(f"box {name}: maintenance {'on' if state.maintenance else 'off'}")
