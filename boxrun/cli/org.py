"""`boxrun org ...`: your org's keeping policy (docs/retention.md): retention and quota (anyone
reads them, admins change them) and usage; `boxrun outputs rm JOB` deletes an ended job's outputs."""

from __future__ import annotations

from typing import Annotated

import typer

from boxrun.cli import context
from boxrun.cli.args import ArgumentError, days, size
from boxrun.cli.context import UserCommand, UserGroup
from boxrun.cli.output import human_bytes, print_fields, print_json
from boxrun.schemas import JobPublic
from boxrun.schemas.org import OrgQuotaPublic, OrgRetentionPublic, OrgUsage
from boxrun.sdk.aio import AsyncClient

JSON = Annotated[bool, typer.Option("--json", help="print the API's JSON")]
DAYS_HELP = "days after a job ended; `none`: keep forever"

app = typer.Typer(
    cls=UserGroup,
    help="Your org's retention, quota and usage (any member reads; admins change). Without a command: all three.",
)
outputs_app = typer.Typer(cls=UserGroup, help="A job's outputs (its transcript and artifacts).", no_args_is_help=True)


def kept(value: int | None) -> str:
    return "forever" if value is None else f"{value} day{'s' if value != 1 else ''}"


def show_retention(r: OrgRetentionPublic) -> None:
    print_fields(
        [
            ("logs", kept(r.logs_days)),
            ("artifacts", kept(r.artifacts_days)),
            ("jobs", kept(r.jobs_days)),
            ("updated", f"{r.updated_at:%Y-%m-%d %H:%M:%S} by {r.updated_by}" if r.updated_at else None),
            ("schedule", r.schedule_id),
        ]
    )


def show_quota(q: OrgQuotaPublic) -> None:
    cap = q.transcript_cap_bytes
    print_fields(
        [
            (
                "storage quota",
                "none" if q.storage_bytes is None else f"{human_bytes(q.storage_bytes)} ({q.storage_bytes} B)",
            ),
            (
                "transcript cap",
                f"{human_bytes(cap)} ({cap} B)"
                if cap is not None
                else f"default, {human_bytes(q.default_transcript_cap_bytes)}",
            ),
        ]
    )


def show_usage(u: OrgUsage) -> None:
    of = "" if u.quota_bytes is None else f" of {human_bytes(u.quota_bytes)}"
    share = "" if not u.quota_bytes else f" ({100 * u.storage_bytes / u.quota_bytes:.1f}%)"
    print_fields(
        [
            ("storage", f"{human_bytes(u.storage_bytes)}{of}{share}"),
            ("artifacts", f"{u.artifacts} ({human_bytes(u.artifact_bytes)})"),
            ("log archives", human_bytes(u.log_archive_bytes)),
            ("transcripts", f"{human_bytes(u.transcript_bytes)} (in Postgres, not in the quota)"),
            ("jobs", u.jobs),
        ]
    )


@app.callback(invoke_without_command=True)
def org(ctx: typer.Context, as_json: JSON = False) -> None:
    """Your org's keeping policy. Without a command: retention, quota and usage."""
    if ctx.invoked_subcommand is not None:
        return

    async def work(client: AsyncClient) -> tuple[OrgRetentionPublic, OrgQuotaPublic, OrgUsage]:
        return await client.org.retention(), await client.org.quota(), await client.org.usage()

    r, q, u = context.with_client(work)
    if as_json:
        print_json({"retention": r, "quota": q, "usage": u})
        return
    typer.echo("retention:")
    show_retention(r)
    typer.echo("\nquota:")
    show_quota(q)
    typer.echo("\nusage:")
    show_usage(u)


@app.command("retention", cls=UserCommand)
def retention(
    logs_days: Annotated[str | None, typer.Option("--logs-days", help=f"transcripts: {DAYS_HELP}")] = None,
    artifacts_days: Annotated[str | None, typer.Option("--artifacts-days", help=f"artifacts: {DAYS_HELP}")] = None,
    jobs_days: Annotated[str | None, typer.Option("--jobs-days", help=f"the jobs themselves: {DAYS_HELP}")] = None,
    as_json: JSON = False,
) -> None:
    """Show the retention, or change it (admins): only the days given change, the others stay.
    The retention schedule deletes what is past it on its next run."""
    try:
        given = {
            key: days(raw, option)
            for key, raw, option in (
                ("logs_days", logs_days, "--logs-days"),
                ("artifacts_days", artifacts_days, "--artifacts-days"),
                ("jobs_days", jobs_days, "--jobs-days"),
            )
            if raw is not None
        }
    except ArgumentError as exc:
        context.fail(str(exc))

    async def work(client: AsyncClient) -> OrgRetentionPublic:
        now = await client.org.retention()
        if not given:
            return now
        merged = {"logs_days": now.logs_days, "artifacts_days": now.artifacts_days, "jobs_days": now.jobs_days}
        return await client.org.set_retention(**{**merged, **given})

    got = context.with_client(work)
    if as_json:
        print_json(got)
    else:
        show_retention(got)


@app.command("quota", cls=UserCommand)
def quota(
    storage: Annotated[
        str | None,
        typer.Option("--storage", help="the most the org keeps in object storage: 10G, 500M, bytes; `none`: no quota"),
    ] = None,
    transcript_cap: Annotated[
        str | None,
        typer.Option("--transcript-cap", help="the most one job's transcript keeps: 64K at least; `none`: the default"),
    ] = None,
    as_json: JSON = False,
) -> None:
    """Show the quota, or change it (admins): only what is given changes. Sizes are bytes or take
    K, M, G, T (powers of 1024)."""
    try:
        given = {
            key: size(raw, option)
            for key, raw, option in (
                ("storage_bytes", storage, "--storage"),
                ("transcript_cap_bytes", transcript_cap, "--transcript-cap"),
            )
            if raw is not None
        }
    except ArgumentError as exc:
        context.fail(str(exc))

    async def work(client: AsyncClient) -> OrgQuotaPublic:
        now = await client.org.quota()
        if not given:
            return now
        merged = {"storage_bytes": now.storage_bytes, "transcript_cap_bytes": now.transcript_cap_bytes}
        return await client.org.set_quota(**{**merged, **given})

    got = context.with_client(work)
    if as_json:
        print_json(got)
    else:
        show_quota(got)


@app.command("usage", cls=UserCommand)
def usage(as_json: JSON = False) -> None:
    """What the org keeps now: object storage (what the quota counts) and transcripts."""

    async def work(client: AsyncClient) -> OrgUsage:
        return await client.org.usage()

    got = context.with_client(work)
    if as_json:
        print_json(got)
    else:
        show_usage(got)


@outputs_app.command("rm", cls=UserCommand)
def outputs_rm(job_id: Annotated[str, typer.Argument(help="the job's id")], as_json: JSON = False) -> None:
    """Delete an ended job's transcript and artifacts (its owner or an org admin); the job stays,
    and reading them afterwards says who deleted them and when. Deleting again is harmless."""

    async def work(client: AsyncClient) -> JobPublic:
        return (await (await client.jobs.get(job_id)).delete_outputs()).model

    model = context.with_client(work)
    if as_json:
        print_json(model)
    else:
        typer.echo(f"job {model.id}: outputs deleted (transcript and artifacts)")
