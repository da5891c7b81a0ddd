"""`boxrun pipeline ...`: run (with a live table of steps), show, ls, cancel, rerun."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.live import Live
from rich.table import Table

from boxrun.cli import context
from boxrun.cli.context import ShowByDefault, UserCommand
from boxrun.cli.exitcodes import pipeline_exit_code, table_text
from boxrun.cli.jobs import template_text
from boxrun.cli.output import answer, console, duration, print_fields, print_json, print_table, table
from boxrun.constants import PipelineState
from boxrun.schemas.pipelines import PipelinePublic, PipelineSummary
from boxrun.sdk.aio import AsyncClient, Pipeline

app = typer.Typer(
    cls=ShowByDefault,
    no_args_is_help=True,
    help="Pipelines: DAGs of steps, each step a job (docs/pipelines.md). `boxrun pipeline ID` shows one.",
)
JSON = Annotated[bool, typer.Option("--json", help="print the API's JSON")]
PIPELINE_ID = Annotated[str, typer.Argument(help="the pipeline's id")]


def step_table(model: PipelinePublic, started: dict[str, datetime], ended: dict[str, datetime]) -> Table:
    """The steps with state, duration (from the events seen), attempts and latest job."""
    now = datetime.now(UTC)
    rows = [
        [
            step.name,
            step.state,
            duration(started.get(step.name), ended.get(step.name), now),
            len(step.attempts) or ("reused" if step.reused_from else 0),
            step.job_id,
            step.needs,
        ]
        for step in model.steps
    ]
    title = f"pipeline {model.id} {model.name or ''} {model.state} {duration(model.started_at, model.finished_at, now)}"
    return table(["STEP", "STATE", "TIME", "ATTEMPTS", "JOB", "NEEDS"], rows, title=title)


async def follow_pipeline(pipe: Pipeline, *, quiet: bool = False) -> None:
    """Redraw the step table as events arrive (rich Live), until the pipeline ends."""
    if quiet:
        async for _ in pipe.follow():
            pass
        return
    started: dict[str, datetime] = {}
    ended: dict[str, datetime] = {}
    with Live(step_table(pipe.model, started, ended), console=console(), refresh_per_second=4) as live:
        async for ev in pipe.follow():
            if ev.step is not None:
                if ev.state == "running":
                    started.setdefault(ev.step, ev.at)
                elif ev.state != "pending":
                    ended[ev.step] = ev.at
            await pipe.refresh()
            live.update(step_table(pipe.model, started, ended))
        live.update(step_table(pipe.model, started, ended))


@app.command("run", cls=UserCommand, help=f"Submit a pipeline definition (YAML or JSON).\n\n{table_text()}")
def run(
    file: Annotated[Path, typer.Argument(help="the definition (.yaml, .yml or .json)")],
    follow: Annotated[bool, typer.Option("--follow", "-f", help="show its steps live; exit as it ended")] = False,
    as_json: JSON = False,
) -> None:
    if not file.is_file():
        context.fail(f"{file} is not a readable file")

    async def work(client: AsyncClient) -> int:
        pipe = await client.pipelines.submit(file)
        if not follow:
            answer(pipe.model, as_json, pipe.id)
            return 0
        await follow_pipeline(pipe, quiet=as_json)
        if as_json:
            print_json(pipe.model)
        return pipeline_exit_code(pipe.state)

    raise typer.Exit(context.with_client(work))


def show_pipeline(model: PipelinePublic) -> None:
    print_fields(
        [
            ("id", model.id),
            ("name", model.name),
            ("state", model.state),
            ("owner", model.owner),
            ("error", model.error),
            ("created", model.created_at),
            ("started", model.started_at),
            ("finished", model.finished_at),
            ("rerun of", model.rerun_of),
            ("template", template_text(model)),
            ("temporal", model.temporal_ui_url),
        ]
    )
    console().print(step_table(model, {}, {}))


@app.command("show", cls=UserCommand)
def show(pipeline_id: PIPELINE_ID, as_json: JSON = False) -> None:
    """Show a pipeline and its steps."""

    async def work(client: AsyncClient) -> PipelinePublic:
        return (await client.pipelines.get(pipeline_id)).model

    model = context.with_client(work)
    answer(model, as_json, lambda: show_pipeline(model))


@app.command("ls", cls=UserCommand)
def ls(
    state: Annotated[PipelineState | None, typer.Option("--state", "-s", help="only pipelines in this state")] = None,
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, help="at most this many, newest first")] = 20,
    as_json: JSON = False,
) -> None:
    """List pipelines, newest first."""

    async def work(client: AsyncClient) -> list[PipelineSummary]:
        return [p async for p in client.pipelines.list(state=state, limit=limit)]

    found = context.with_client(work)
    if as_json:
        print_json(found)
    else:
        rows = [[p.id, p.name, p.state, p.owner, duration(p.started_at, p.finished_at), p.created_at] for p in found]
        print_table(["ID", "NAME", "STATE", "OWNER", "TIME", "CREATED (UTC)"], rows)


@app.command("cancel", cls=UserCommand)
def cancel(pipeline_id: PIPELINE_ID, as_json: JSON = False) -> None:
    """Cancel a pipeline (its running steps are cancelled)."""

    async def work(client: AsyncClient) -> PipelinePublic:
        return (await (await client.pipelines.get(pipeline_id)).cancel()).model

    model = context.with_client(work)
    answer(model, as_json, f"pipeline {model.id}: {model.state} (cancel requested)")


@app.command("rerun", cls=UserCommand)
def rerun(
    pipeline_id: PIPELINE_ID,
    only_failed: Annotated[bool, typer.Option("--only-failed", help="reuse the steps that completed")] = False,
    as_json: JSON = False,
) -> None:
    """Run a pipeline again from its definition; prints the new pipeline's id."""

    async def work(client: AsyncClient) -> PipelinePublic:
        return (await (await client.pipelines.get(pipeline_id)).rerun(only_failed=only_failed)).model

    model = context.with_client(work)
    answer(model, as_json, model.id)
