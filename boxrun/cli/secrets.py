"""`boxrun secrets ...`: your org's secrets by name (operators and admins); set and rm (admins).
A value is read from standard input, a file or a hidden prompt, never from the command line
(where `ps` and the shell's history would keep it), and is never printed."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from boxrun.cli import context
from boxrun.cli.context import UserCommand, UserGroup
from boxrun.cli.output import print_json, print_table
from boxrun.schemas.secrets import SecretPublic
from boxrun.sdk.aio import AsyncClient

JSON = Annotated[bool, typer.Option("--json", help="print the API's JSON")]
NAME = Annotated[str, typer.Argument(help="the secret's name (A-Z, 0-9 and _, not starting with a digit)")]

secrets_app = typer.Typer(
    cls=UserGroup,
    help="Secrets of your org: names only (operators and admins); set and rm (admins). Without a command: ls.",
)


def list_secrets(as_json: bool) -> None:
    async def work(client: AsyncClient) -> list[SecretPublic]:
        return await client.secrets.list()

    found = context.with_client(work)
    if as_json:
        print_json(found)
    else:
        rows = [[s.name, s.updated_at, s.updated_by, s.created_at] for s in found]
        print_table(["NAME", "UPDATED (UTC)", "BY", "CREATED (UTC)"], rows)


@secrets_app.callback(invoke_without_command=True)
def secrets(ctx: typer.Context, as_json: JSON = False) -> None:
    """Secrets of your org. Without a command: list their names."""
    if ctx.invoked_subcommand is None:
        list_secrets(as_json)


@secrets_app.command("ls", cls=UserCommand)
def secrets_ls(as_json: JSON = False) -> None:
    """List the secrets' names (never a value)."""
    list_secrets(as_json)


def read_value(file: Path | None) -> str:
    """The value: the file's text as it is; else standard input (one trailing newline dropped, as
    `echo` adds it); else, on a terminal, a hidden prompt asked twice."""
    if file is not None:
        try:
            value = file.read_text()
        except OSError as exc:
            context.fail(f"cannot read {file}: {exc.strerror or exc}")
        except UnicodeDecodeError:
            context.fail(f"{file} is not UTF-8 text")
    elif sys.stdin.isatty():
        try:
            value = str(typer.prompt("value", hide_input=True, confirmation_prompt=True))
        except typer.Abort:
            context.fail("no value given")
    else:
        value = sys.stdin.read()
        if value.endswith("\n"):
            value = value.removesuffix("\n").removesuffix("\r")
    if not value:
        context.fail("the value is empty")
    return value


@secrets_app.command("set", cls=UserCommand)
def secrets_set(
    name: NAME,
    file: Annotated[
        Path | None, typer.Option("--file", help="read the value from this file, as it is (a key file)")
    ] = None,
) -> None:
    """Create or replace a secret (admins). The value comes from --file, else standard input
    (`printf %s "$PW" | boxrun secrets set DB_PASSWORD`), else a hidden prompt. A job uses it as
    `${{ secrets.NAME }}` in an env value."""
    value = read_value(file)

    async def work(client: AsyncClient) -> None:
        await client.secrets.put(name, value)

    context.with_client(work)
    typer.echo(f"secret {name} set")


@secrets_app.command("rm", cls=UserCommand)
def secrets_rm(name: NAME) -> None:
    """Delete a secret (admins). Jobs that refer to it and have not started fail at their claim."""

    async def work(client: AsyncClient) -> None:
        await client.secrets.delete(name)

    context.with_client(work)
    typer.echo(f"secret {name} deleted")
