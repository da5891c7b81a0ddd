"""`boxrun login URL`: check a token against the API and save it as the profile."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from boxrun.cli import context
from boxrun.cli.output import print_json
from boxrun.errors import BoxrunError
from boxrun.schemas.people import MePublic
from boxrun.sdk.aio import AsyncClient
from boxrun.sdk.config import save_profile


def read_token(token_file: Path | None) -> str:
    """From --token-file, else BOXRUN_TOKEN (or --token), else a hidden prompt."""
    if token_file is not None:
        try:
            return token_file.read_text().strip()
        except OSError as exc:
            context.fail(f"cannot read the token file {token_file}: {exc.strerror or exc}")
    given = context.GLOBALS.token or os.environ.get("BOXRUN_TOKEN")
    if given:
        return given.strip()
    try:
        return str(typer.prompt("token", hide_input=True)).strip()
    except typer.Abort:
        context.fail("no token given")


def login(
    url: Annotated[str, typer.Argument(help="the API's URL, e.g. https://boxrun.example.com")],
    token_file: Annotated[
        Path | None,
        typer.Option("--token-file", help="read the token from this file (else BOXRUN_TOKEN, else a prompt)"),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print who you are as the API's JSON")] = False,
) -> None:
    """Log in to an API: check a token and save it as your profile.

    The token (from --token-file, else --token or BOXRUN_TOKEN, else a hidden prompt) is checked
    with GET /api/me; URL and token are saved to $XDG_CONFIG_HOME/boxrun/profile.json (mode 0600),
    which later commands use."""
    if not url.startswith(("http://", "https://")):
        context.fail(f"the URL must start with http:// or https://, not {url[:80]!r}")
    token = read_token(token_file)
    if not token:
        context.fail("the token is empty")

    async def work(client: AsyncClient) -> MePublic:
        return await client.me()

    context.GLOBALS.url, context.GLOBALS.token = url, token
    me = context.with_client(work)
    try:
        path = save_profile(url, token)
    except (BoxrunError, OSError) as exc:
        context.fail(f"cannot save the profile: {getattr(exc, 'reason', exc)}")
    if as_json:
        print_json(me)
    else:
        typer.echo(f"logged in to {url.rstrip('/')} as {me.name} ({me.role}, org {me.org}); profile {path}")
