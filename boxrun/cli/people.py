"""`boxrun users ...` and `boxrun tokens ...` (user admins; anyone for their own tokens)."""

from __future__ import annotations

from typing import Annotated

import typer

from boxrun.cli import context
from boxrun.cli.context import UserCommand, UserGroup
from boxrun.cli.output import answer, print_json, print_table
from boxrun.schemas.people import Role, TokenCreated, TokenPublic, UserCreated, UserPublic
from boxrun.sdk.aio import AsyncClient

JSON = Annotated[bool, typer.Option("--json", help="print the API's JSON")]
USER = Annotated[str, typer.Argument(help="the user's name")]

users_app = typer.Typer(cls=UserGroup, help="Users of your org (user admins). Without a command: ls.")
tokens_app = typer.Typer(
    cls=UserGroup, help="API tokens: yours, or any of your org's (user admins). Without a command: ls."
)


def list_users(as_json: bool) -> None:
    async def work(client: AsyncClient) -> list[UserPublic]:
        return await client.users.list()

    found = context.with_client(work)
    if as_json:
        print_json(found)
    else:
        print_table(
            ["NAME", "ROLE", "ORG", "DISABLED", "CREATED (UTC)"],
            [[u.name, u.role, u.org, u.disabled, u.created_at] for u in found],
        )


@users_app.callback(invoke_without_command=True)
def users(ctx: typer.Context, as_json: JSON = False) -> None:
    """Users of your org (user admins). Without a command: list them."""
    if ctx.invoked_subcommand is None:
        list_users(as_json)


@users_app.command("ls", cls=UserCommand)
def users_ls(as_json: JSON = False) -> None:
    """List the users."""
    list_users(as_json)


@users_app.command("create", cls=UserCommand)
def users_create(
    name: USER,
    role: Annotated[Role, typer.Option("--role", help="viewer, operator or admin")] = Role.OPERATOR,
    as_json: JSON = False,
) -> None:
    """Create a user (then `boxrun tokens create NAME` gives them a token)."""

    async def work(client: AsyncClient) -> UserCreated:
        return await client.users.create(name, str(role))

    made = context.with_client(work)
    answer(made, as_json, f"user {made.name} created ({made.role}, org {made.org})")


@users_app.command("disable", cls=UserCommand)
def users_disable(name: USER, as_json: JSON = False) -> None:
    """Disable a user: their tokens stop working at once."""

    async def work(client: AsyncClient) -> UserPublic:
        return await client.users.disable(name)

    user = context.with_client(work)
    answer(user, as_json, f"user {user.name} disabled")


@users_app.command("set-role", cls=UserCommand)
def users_set_role(
    name: USER, role: Annotated[Role, typer.Argument(help="the new role")], as_json: JSON = False
) -> None:
    """Change a user's role."""

    async def work(client: AsyncClient) -> UserPublic:
        return await client.users.update(name, role=str(role))

    user = context.with_client(work)
    answer(user, as_json, f"user {user.name}: role {user.role}")


def list_tokens(as_json: bool) -> None:
    async def work(client: AsyncClient) -> list[TokenPublic]:
        return await client.tokens.list()

    found = context.with_client(work)
    if as_json:
        print_json(found)
        return
    rows = [[t.id, t.user, t.label, t.revoked, t.created_at, t.expires_at, t.last_used_at] for t in found]
    print_table(["ID", "USER", "LABEL", "REVOKED", "CREATED (UTC)", "EXPIRES", "LAST USED"], rows)


@tokens_app.callback(invoke_without_command=True)
def tokens(ctx: typer.Context, as_json: JSON = False) -> None:
    """API tokens. Without a command: list them."""
    if ctx.invoked_subcommand is None:
        list_tokens(as_json)


@tokens_app.command("ls", cls=UserCommand)
def tokens_ls(as_json: JSON = False) -> None:
    """List tokens (never their secrets)."""
    list_tokens(as_json)


@tokens_app.command("create", cls=UserCommand)
def tokens_create(
    user: Annotated[str | None, typer.Argument(help="whose token (default: yours)")] = None,
    label: Annotated[str, typer.Option("--label", help="what it is for")] = "",
    expires_in: Annotated[int | None, typer.Option("--expires-in", min=1, help="seconds until it expires")] = None,
    as_json: JSON = False,
) -> None:
    """Create a token; its secret is printed this once (only its hash is kept)."""

    async def work(client: AsyncClient) -> TokenCreated:
        return await client.tokens.create(user, label=label, expires_in_s=expires_in)

    made = context.with_client(work)
    if as_json:
        print_json(made)
    else:
        typer.echo(made.token)
        typer.echo(f"token {made.id}: shown this once, keep it safe", err=True)


@tokens_app.command("revoke", cls=UserCommand)
def tokens_revoke(token_id: Annotated[str, typer.Argument(help="the token's id")]) -> None:
    """Revoke a token: it stops working at once."""

    async def work(client: AsyncClient) -> None:
        await client.tokens.revoke(token_id)

    context.with_client(work)
    typer.echo(f"token {token_id} revoked")
