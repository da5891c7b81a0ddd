"""What every user command shares: the global --url/--token, the SDK client it opens, the one place
where a coroutine is run, and the one place where an error becomes one line on stderr and exit 125.

Tests replace `make_client` (an AsyncClient over an in-process app) and `run_async` (their own
event loop) here."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar

import httpx
import typer

from boxrun.cli.exitcodes import BOXRUN_FAILED, CANCELLED
from boxrun.errors import BoxrunError, InvalidInput, Unavailable
from boxrun.sdk.aio import AsyncClient

T = TypeVar("T")


@dataclass
class Globals:
    """The global options of this invocation (set by the app's callback)."""

    url: str | None = None
    token: str | None = None


GLOBALS = Globals()


def default_client(url: str | None, token: str | None) -> AsyncClient:
    """The SDK's client from --url/--token, else BOXRUN_URL/BOXRUN_TOKEN, the profile, a dev stack."""
    try:
        return AsyncClient(url, token)
    except InvalidInput as exc:  # said for the SDK: name the CLI's options instead
        raise InvalidInput(exc.reason.replace("pass url=/token=", "pass --url/--token"), field=exc.field) from None


make_client: Callable[[str | None, str | None], AsyncClient] = default_client
run_async: Callable[[Coroutine[Any, Any, Any]], Any] = asyncio.run


def fail(reason: str, code: int = BOXRUN_FAILED) -> NoReturn:
    """One line on stderr, then exit `code` (125: boxrun itself failed)."""
    sys.stdout.flush()
    typer.echo(f"boxrun: {reason}", err=True)
    raise typer.Exit(code)


def failure_reason(exc: BoxrunError) -> str:
    """The one line for an error: the API's reason; for an API that did not answer, its address
    and why in a few words ("cannot reach the boxrun API at http://127.0.0.1:1 (connection refused)")."""
    cause = exc.__cause__
    if not isinstance(exc, Unavailable) or not isinstance(cause, httpx.TransportError):
        return exc.reason
    why: str | None = None
    link: BaseException | None = cause
    for _ in range(12):  # httpx -> httpcore -> OSError -> ConnectionRefusedError(111)
        if link is None:
            break
        if isinstance(link, OSError) and link.errno:
            why = os.strerror(link.errno) if link.errno > 0 else (link.strerror or str(link))
            break
        link = link.__cause__ or link.__context__
    if why is None:
        why = "timed out" if isinstance(cause, httpx.TimeoutException) else (str(cause) or type(cause).__name__)
    try:
        url = cause.request.url
        where = f"{url.scheme}://{url.netloc.decode()}"
    except RuntimeError:  # no request attached
        return exc.reason
    return f"cannot reach the boxrun API at {where} ({why[:1].lower()}{why[1:]})"


def with_client(work: Callable[[AsyncClient], Awaitable[T]], *, detached: Callable[[], None] | None = None) -> T:
    """Run `work(client)` on a client from the global options; a boxrun error (unreachable API,
    refusal, no credentials) becomes one line and exit 125. Ctrl-C: `detached()` (what to say
    when leaving a job that goes on) and exit 130."""

    async def main() -> T:
        client = make_client(GLOBALS.url, GLOBALS.token)
        try:
            return await work(client)
        finally:
            await client.aclose()

    try:
        return run_async(main())
    except BoxrunError as exc:
        fail(failure_reason(exc))
    except KeyboardInterrupt:
        sys.stdout.flush()
        if detached is not None:
            detached()
        raise typer.Exit(CANCELLED) from None
    except OSError as exc:  # a local file that cannot be read or written
        fail(f"{exc.strerror or exc}{f': {exc.filename}' if exc.filename else ''}")


# click's UsageError, wherever this typer keeps click (newer typers vendor it as typer._click)
UsageError: type[Exception] = sys.modules[typer.BadParameter.__module__].UsageError


def usage_failed(ctx: Any, exc: Exception) -> NoReturn:
    """A usage error as one line on stderr ("boxrun run: Missing argument 'SCRIPT'."), exit 125."""
    where = " ".join(str(ctx.command_path).split()[1:])
    message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
    typer.echo(f"boxrun {where}: {message}" if where else f"boxrun: {message}", err=True)
    raise typer.Exit(BOXRUN_FAILED)


class UserCommand(typer.core.TyperCommand):
    """A user command: a usage error is one line on stderr and exit 125 (click's would be 2, which a
    script could exit with itself)."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except UsageError as exc:
            usage_failed(ctx, exc)


class UserGroup(typer.core.TyperGroup):
    """A group of user commands: the same one-line usage errors, exit 125 (its help when called
    without a command)."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except UsageError as exc:
            if type(exc).__name__ == "NoArgsIsHelpError":
                raise
            usage_failed(ctx, exc)

    def resolve_command(self, ctx: Any, args: list[str]) -> Any:
        try:
            return super().resolve_command(ctx, args)
        except UsageError as exc:
            usage_failed(ctx, exc)


class ShowByDefault(UserGroup):
    """A group whose first argument, when it names no command, is the id of a thing to show:
    `boxrun box bench-1` is `boxrun box show bench-1`, `boxrun pipeline ID` is `pipeline show ID`."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if args and not args[0].startswith("-") and args[0] not in self.commands:
            args = ["show", *args]
        return super().parse_args(ctx, args)
