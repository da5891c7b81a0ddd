"""`boxrun run`: submit a script and follow it, exiting with the job's exit code."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from boxrun.cli import context
from boxrun.cli.args import ArgumentError, file_specs, key_values
from boxrun.cli.exitcodes import table_text
from boxrun.cli.follow import detach_note, follow_job
from boxrun.cli.output import notice, print_json
from boxrun.sdk.aio import AsyncClient

RUN_HELP = f"""Run a script on a box, follow it live, exit with the job's exit code.

Its stdout goes to stdout, its stderr to stderr, boxrun's notices as "[boxrun] ..." to stderr.

SCRIPT is a file (`-`: standard input). Ctrl-C while following detaches (the job goes on; boxrun
prints how to cancel it) and exits 130. With --detach: print the job's id and exit 0 at once.
With --json: print the job's JSON instead of its log (at once with --detach, else when it ends).

{table_text()}"""


def read_script(path: str) -> str:
    if path == "-":
        return sys.stdin.read()
    try:
        return Path(path).read_text()
    except OSError as exc:
        raise ArgumentError(f"cannot read the script {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ArgumentError(f"the script {path} is not UTF-8 text") from None


def run(
    script: Annotated[str, typer.Argument(help="the script's file; `-` reads it from standard input")],
    box: Annotated[str | None, typer.Option("--box", "-b", help="run on this box")] = None,
    group: Annotated[str | None, typer.Option("--group", "-g", help="run on any box of this group")] = None,
    require: Annotated[
        list[str] | None, typer.Option("--require", "-r", help="a capability the box must have (with --group)")
    ] = None,
    file: Annotated[
        list[str] | None,
        typer.Option("--file", "-f", help="PATH (sent as its base name) or PATH:DEST into the job's workspace"),
    ] = None,
    env: Annotated[list[str] | None, typer.Option("--env", "-e", help="KEY=VALUE in the script's environment")] = None,
    lock: Annotated[bool, typer.Option("--lock", help="have the box to itself while it runs")] = False,
    timeout: Annotated[int | None, typer.Option("--timeout", "-t", help="seconds before it is stopped")] = None,
    label: Annotated[list[str] | None, typer.Option("--label", "-l", help="KEY=VALUE label on the job")] = None,
    detach: Annotated[bool, typer.Option("--detach", "-d", help="print the job's id and exit")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print the job's JSON (not its log)")] = False,
) -> None:
    try:
        text = read_script(script)
        files = file_specs(file)
        environment = key_values(env, "--env")
        labels = key_values(label, "--label")
    except ArgumentError as exc:
        context.fail(str(exc))
    submitted: list[str] = []

    async def work(client: AsyncClient) -> int:
        job = await client.jobs.submit(
            text,
            box=box,
            box_group=group,
            requires=require or None,
            files=dict(files) or None,
            env=environment or None,
            timeout_s=timeout,
            lock=lock or None,
            labels=labels or None,
        )
        submitted.append(job.id)
        if detach:
            if as_json:
                print_json(job.model)
            else:
                typer.echo(job.id)
            return 0
        if not as_json:
            where = job.model.box or f"group {job.model.box_group}"
            notice(f"job {job.id} submitted to {where} (Ctrl-C detaches; boxrun cancel {job.id} cancels)")
        code = await follow_job(job, quiet=as_json)
        if as_json:
            print_json(job.model)
        return code

    def detached() -> None:
        if submitted:
            detach_note(submitted[0])

    raise typer.Exit(context.with_client(work, detached=detached))
