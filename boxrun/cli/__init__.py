"""The `boxrun` command (docs/cli.md): user commands on the SDK, operator commands apart."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Annotated

import typer

from boxrun.cli import boxes, context, jobs, operator, org, people, pipelines, run, schedules, secrets, session
from boxrun.cli import templates as templates_cli
from boxrun.cli import webhooks as webhooks_cli
from boxrun.cli.context import UserCommand

JOBS = "Jobs"
FLEET = "Pipelines, templates and boxes"
PEOPLE = "Account, users and tokens"
OPERATOR = "Operator commands"

app = typer.Typer(
    help="boxrun: run scripts on a fleet of boxes, each job a durable Temporal workflow.",
    no_args_is_help=True,
    rich_markup_mode="markdown",
    pretty_exceptions_enable=False,
)


def package_version() -> str:
    try:
        return version("boxrun")
    except PackageNotFoundError:  # a source tree that is not installed
        return "unknown"


def show_version(value: bool) -> None:
    if value:
        typer.echo(f"boxrun {package_version()}")
        raise typer.Exit()


@app.callback()
def main_options(
    url: Annotated[
        str | None, typer.Option("--url", help="the API's URL (else BOXRUN_URL, the profile, a dev stack)")
    ] = None,
    token: Annotated[str | None, typer.Option("--token", help="an API token (else BOXRUN_TOKEN, the profile)")] = None,
    _version: Annotated[
        bool, typer.Option("--version", callback=show_version, is_eager=True, help="print the version")
    ] = False,
) -> None:
    context.GLOBALS.url, context.GLOBALS.token = url, token


def user(func: typer.models.CommandFunctionType, panel: str, name: str | None = None, **kw: object) -> None:
    app.command(name, cls=UserCommand, rich_help_panel=panel, **kw)(func)  # type: ignore[arg-type]


user(run.run, JOBS, "run", help=run.RUN_HELP)
user(jobs.jobs, JOBS)
user(jobs.job, JOBS)
user(jobs.logs, JOBS)
user(jobs.cancel, JOBS)
user(jobs.rerun, JOBS)
user(jobs.artifacts, JOBS)
user(jobs.download, JOBS)
app.add_typer(org.outputs_app, name="outputs", rich_help_panel=JOBS)
app.add_typer(pipelines.app, name="pipeline", rich_help_panel=FLEET)
app.add_typer(templates_cli.app, name="template", rich_help_panel=FLEET)
app.add_typer(schedules.app, name="schedule", rich_help_panel=FLEET)
user(boxes.boxes, FLEET)
app.add_typer(boxes.app, name="box", rich_help_panel=FLEET)
user(session.login, PEOPLE)
app.add_typer(people.users_app, name="users", rich_help_panel=PEOPLE)
app.add_typer(people.tokens_app, name="tokens", rich_help_panel=PEOPLE)
app.add_typer(secrets.secrets_app, name="secrets", rich_help_panel=PEOPLE)
app.add_typer(webhooks_cli.app, name="webhooks", rich_help_panel=PEOPLE)
app.add_typer(org.app, name="org", rich_help_panel=PEOPLE)
for command in (operator.api, operator.worker, operator.agent, operator.migrate, operator.openapi, operator.dev):
    app.command(rich_help_panel=OPERATOR)(command)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
