"""Job commands: jobs, job, logs, cancel, rerun, artifacts, download."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, DownloadColumn, Progress, TaskID, TextColumn, TransferSpeedColumn

from boxrun.cli import context
from boxrun.cli.args import ArgumentError, key_values
from boxrun.cli.exitcodes import exit_code_for, table_text
from boxrun.cli.follow import detach_note, follow_job
from boxrun.cli.output import console, print_fields, print_json, print_line, print_table
from boxrun.constants import JobState
from boxrun.errors import NotFound
from boxrun.schemas import ArtifactPublic, JobPublic
from boxrun.schemas.pipelines import PipelinePublic
from boxrun.sdk.aio import AsyncClient

JSON = Annotated[bool, typer.Option("--json", help="print the API's JSON")]
JOB_ID = Annotated[str, typer.Argument(help="the job's id")]


def job_rows(jobs: list[JobPublic]) -> list[list[object]]:
    return [[j.id, j.state, j.box or j.box_group, j.owner, j.exit_code, j.created_at, j.labels] for j in jobs]


JOB_COLUMNS = ["ID", "STATE", "BOX", "OWNER", "EXIT", "CREATED (UTC)", "LABELS"]


def jobs(
    state: Annotated[JobState | None, typer.Option("--state", "-s", help="only jobs in this state")] = None,
    box: Annotated[str | None, typer.Option("--box", "-b", help="only jobs of this box")] = None,
    mine: Annotated[bool, typer.Option("--mine", help="only your jobs")] = False,
    label: Annotated[list[str] | None, typer.Option("--label", "-l", help="KEY=VALUE; all must match")] = None,
    pipeline: Annotated[str | None, typer.Option("--pipeline", help="only the attempts of this pipeline")] = None,
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, help="at most this many, newest first")] = 20,
    as_json: JSON = False,
) -> None:
    """List jobs, newest first."""
    try:
        labels = key_values(label, "--label")
    except ArgumentError as exc:
        context.fail(str(exc))

    async def work(client: AsyncClient) -> list[JobPublic]:
        found = client.jobs.list(state=state, box=box, mine=mine, labels=labels or None, pipeline_id=pipeline)
        out: list[JobPublic] = []
        async for job in found:
            out.append(job.model)
            if len(out) >= limit:
                break
        return out

    found = context.with_client(work)
    if as_json:
        print_json(found)
    else:
        print_table(JOB_COLUMNS, job_rows(found))


def show_job(model: JobPublic) -> None:
    print_fields(
        [
            ("id", model.id),
            ("state", model.state),
            ("owner", model.owner),
            ("box", model.box),
            ("box group", model.box_group),
            ("requires", model.requires),
            ("labels", model.labels),
            ("exit code", model.exit_code),
            ("error", model.error),
            ("error kind", model.error_kind),
            ("waiting", model.waiting_reason),
            ("created", model.created_at),
            ("started", model.started_at),
            ("finished", model.finished_at),
            ("log lines", model.log_lines),
            (
                "pipeline",
                f"{model.pipeline_id} step {model.step} attempt {model.attempt}" if model.pipeline_id else None,
            ),
            ("rerun of", model.rerun_of),
            ("template", template_text(model)),
            ("temporal", model.temporal_ui_url),
        ]
    )


def template_text(model: JobPublic | PipelinePublic) -> str | None:
    """`flash v3` for a job or pipeline made from a template, else None."""
    return None if model.template is None else f"{model.template.name} v{model.template.version}"


def job(job_id: JOB_ID, as_json: JSON = False) -> None:
    """Show one job."""

    async def work(client: AsyncClient) -> JobPublic:
        return (await client.jobs.get(job_id)).model

    model = context.with_client(work)
    if as_json:
        print_json(model)
    else:
        show_job(model)


def logs(
    job_id: JOB_ID,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="go on until the job ends")] = False,
    stderr: Annotated[bool, typer.Option("--stderr", help="only the script's stderr lines")] = False,
    tail: Annotated[int | None, typer.Option("--tail", "-n", min=0, help="only the last N lines")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="each line as the API's JSON, one a line")] = False,
) -> None:
    """Print a job's log (--follow: live, until it ends).

    stdout lines go to stdout, stderr lines to stderr, `output` lines as "[output] ..." to stdout,
    boxrun's notices as "[boxrun] ..." to stderr. Exits with the job's outcome (table below);
    without --follow a job still going exits 0. Ctrl-C stops following (the job goes on), exit 130."""
    stream = "stderr" if stderr else None

    async def work(client: AsyncClient) -> int:
        handle = await client.jobs.get(job_id)  # NotFound before anything is printed
        lines = await handle.logs(stream=stream, tail=tail) if (tail is not None or not follow) else []
        for line in lines:
            print_line(line, as_json)
        if not follow:
            await handle.refresh()
            return exit_code_for(handle.model)
        after = lines[-1].seq if lines else (handle.model.log_lines if tail is not None else 0)
        async for line in handle.follow(stream, after=after):
            print_line(line, as_json)
        return exit_code_for(handle.model)

    raise typer.Exit(context.with_client(work, detached=lambda: detach_note(job_id)))


logs.__doc__ = f"{logs.__doc__}\n\n{table_text()}"


def cancel(job_id: JOB_ID, as_json: JSON = False) -> None:
    """Ask a job to stop (it ends `cancelled`)."""

    async def work(client: AsyncClient) -> JobPublic:
        return (await (await client.jobs.get(job_id)).cancel()).model

    model = context.with_client(work)
    if as_json:
        print_json(model)
    else:
        typer.echo(f"job {model.id}: {model.state} (cancel requested)")


def rerun(
    job_id: JOB_ID,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="follow the new job; exit with its code")] = False,
    as_json: JSON = False,
) -> None:
    """Run a job again from its frozen spec; prints the new job's id."""

    async def work(client: AsyncClient) -> int:
        new = await (await client.jobs.get(job_id)).rerun()
        if as_json and not follow:
            print_json(new.model)
        elif not follow:
            typer.echo(new.id)
        if not follow:
            return 0
        code = await follow_job(new, quiet=as_json)
        if as_json:
            print_json(new.model)
        return code

    raise typer.Exit(context.with_client(work))


def artifacts(job_id: JOB_ID, as_json: JSON = False) -> None:
    """List a job's artifacts: path, size, SHA-256."""

    async def work(client: AsyncClient) -> list[ArtifactPublic]:
        return await (await client.jobs.get(job_id)).artifacts()

    found = context.with_client(work)
    if as_json:
        print_json(found)
    else:
        print_table(["PATH", "SIZE", "SHA256"], [[a.path, a.size, a.sha256] for a in found])


def download(
    job_id: JOB_ID,
    path: Annotated[str | None, typer.Argument(help="one artifact (default: all of them)")] = None,
    out: Annotated[Path, typer.Option("--output", "-o", help="the folder to save into")] = Path("."),
    as_json: JSON = False,
) -> None:
    """Download a job's artifacts (all, or PATH), each checked against its SHA-256.

    One artifact (PATH) is saved in the folder by its base name; all of them keep their paths
    under it. A progress bar shows on a terminal (stderr)."""

    async def work(client: AsyncClient) -> list[dict[str, object]]:
        handle = await client.jobs.get(job_id)
        listed = await handle.artifacts()
        chosen = [a for a in listed if path is None or a.path == path]
        if path is not None and not chosen:
            raise NotFound(f"job {job_id} has no artifact {path!r}")
        saved: list[dict[str, object]] = []
        columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn())
        with Progress(*columns, console=console(err=True), transient=True) as bar:
            for art in chosen:
                task = bar.add_task(art.path, total=art.size)
                target = out / (Path(art.path).name if path is not None else art.path)

                def advance(done: int, _total: int, task: TaskID = task) -> None:
                    bar.update(task, completed=done)

                file = await handle.download(art.path, to=target, progress=advance)
                bar.update(task, completed=art.size)
                saved.append({**art.model_dump(mode="json"), "file": str(file)})
        return saved

    saved = context.with_client(work)
    if as_json:
        print_json(saved)
    else:
        for item in saved:
            typer.echo(f"{item['file']}  {item['size']} bytes  sha256 {item['sha256']} ok")
