"""`boxrun schedule ...`: a template run on a cron by a Temporal Schedule (docs/templates.md)."""

from __future__ import annotations

from typing import Annotated

import typer

from boxrun.cli import context
from boxrun.cli.args import ArgumentError, template_params
from boxrun.cli.context import ShowByDefault, UserCommand
from boxrun.cli.output import answer, print_fields, print_json, print_table
from boxrun.cli.templates import PARAMS, VERSION, param_types
from boxrun.schemas.schedules import SchedulePublic
from boxrun.sdk.aio import AsyncClient

app = typer.Typer(
    cls=ShowByDefault,
    no_args_is_help=True,
    help="Schedules: a template run on a cron, UTC (docs/templates.md). `boxrun schedule ID` shows one.",
)
JSON = Annotated[bool, typer.Option("--json", help="print the API's JSON")]
SCHEDULE = Annotated[str, typer.Argument(help="the schedule's id")]


def show_schedule(model: SchedulePublic) -> None:
    fields: list[tuple[str, object]] = [
        ("id", model.id),
        ("template", model.template if model.version is None else f"{model.template} v{model.version}"),
        ("cron", f"{model.cron} (UTC)"),
        ("params", model.params),
        ("paused", model.paused),
        ("runs owned by", model.owner),
        ("temporal", model.temporal_schedule_id),
        ("created", f"{model.created_at:%Y-%m-%d %H:%M:%S} by {model.created_by}"),
    ]
    if model.next_runs is not None:  # GET /api/schedules/{id} gives them
        fields.append(("next runs (UTC)", [f"{t:%Y-%m-%d %H:%M}" for t in model.next_runs] or None))
    print_fields(fields)


@app.command("create", cls=UserCommand)
def create(
    template: Annotated[str, typer.Argument(help="the template's name")],
    cron: Annotated[str, typer.Option("--cron", "-c", help="when, UTC: '0 3 * * *', @daily, @hourly ...")],
    params: PARAMS = None,
    version: VERSION = None,
    as_json: JSON = False,
) -> None:
    """Run a template on a cron (operators and admins); prints the schedule's id. Without
    --version each run takes the template's latest version at that time."""

    async def work(client: AsyncClient) -> SchedulePublic:
        values = template_params(params, await param_types(client, template, version))
        return await client.schedules.create(template=template, cron=cron, params=values, version=version)

    try:
        made = context.with_client(work)
    except ArgumentError as exc:
        context.fail(str(exc))
    answer(made, as_json, made.id)


@app.command("ls", cls=UserCommand)
def ls(as_json: JSON = False) -> None:
    """List your org's schedules, oldest first."""

    async def work(client: AsyncClient) -> list[SchedulePublic]:
        return await client.schedules.list()

    found = context.with_client(work)
    if as_json:
        print_json(found)
        return
    rows = [
        [s.id, s.template, s.version if s.version is not None else "latest", s.cron, s.paused, s.params, s.created_by]
        for s in found
    ]
    print_table(["ID", "TEMPLATE", "VERSION", "CRON (UTC)", "PAUSED", "PARAMS", "CREATED BY"], rows)


@app.command("show", cls=UserCommand)
def show(schedule_id: SCHEDULE, as_json: JSON = False) -> None:
    """One schedule, with its next run times."""

    async def work(client: AsyncClient) -> SchedulePublic:
        return await client.schedules.get(schedule_id)

    model = context.with_client(work)
    answer(model, as_json, lambda: show_schedule(model))


def switch(schedule_id: str, paused: bool, as_json: bool) -> None:
    async def work(client: AsyncClient) -> SchedulePublic:
        if paused:
            return await client.schedules.pause(schedule_id)
        return await client.schedules.unpause(schedule_id)

    model = context.with_client(work)
    answer(model, as_json, f"schedule {model.id}: {'paused' if model.paused else 'running'}")


@app.command("pause", cls=UserCommand)
def pause(schedule_id: SCHEDULE, as_json: JSON = False) -> None:
    """No runs until unpaused (its creator or an admin)."""
    switch(schedule_id, True, as_json)


@app.command("unpause", cls=UserCommand)
def unpause(schedule_id: SCHEDULE, as_json: JSON = False) -> None:
    """Run on the cron again (its creator or an admin)."""
    switch(schedule_id, False, as_json)


@app.command("rm", cls=UserCommand)
def rm(schedule_id: SCHEDULE) -> None:
    """Delete a schedule and its Temporal Schedule (its creator or an admin); its runs stay."""

    async def work(client: AsyncClient) -> None:
        await client.schedules.delete(schedule_id)

    context.with_client(work)
    typer.echo(f"schedule {schedule_id} deleted")
