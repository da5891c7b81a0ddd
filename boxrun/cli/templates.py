"""`boxrun template ...`: templates (presets with params), their trigger secret, and runs of them
(docs/templates.md)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from boxrun.cli import context
from boxrun.cli.args import ArgumentError, template_params
from boxrun.cli.context import ShowByDefault, UserCommand
from boxrun.cli.exitcodes import pipeline_exit_code, table_text
from boxrun.cli.follow import detach_note, follow_job
from boxrun.cli.output import answer, notice, print_fields, print_json, print_table
from boxrun.cli.pipelines import follow_pipeline
from boxrun.schemas.templates import ParamSpec, TemplatePublic
from boxrun.sdk.aio import AsyncClient, Job, Pipeline

app = typer.Typer(
    cls=ShowByDefault,
    no_args_is_help=True,
    help="Templates: presets of a job or pipeline with params (docs/templates.md). `boxrun template NAME` shows one.",
)
JSON = Annotated[bool, typer.Option("--json", help="print the API's JSON")]
NAME = Annotated[str, typer.Argument(help="the template's name")]
VERSION = Annotated[int | None, typer.Option("--version", "-v", min=1, help="this version (default: the latest)")]
PARAMS = Annotated[
    list[str] | None,
    typer.Option("--param", "-p", help="NAME=VALUE (repeat), typed by the template's declaration: int, bool, text"),
]


def read_body(file: Path) -> dict[str, Any]:
    """The PUT body from a .json or .yaml/.yml file."""
    try:
        text = file.read_text()
    except OSError as exc:
        raise ArgumentError(f"cannot read {file}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ArgumentError(f"{file} is not UTF-8 text") from None
    if file.suffix.lower() == ".json":
        try:
            body = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ArgumentError(f"{file}: not JSON ({exc.msg}, line {exc.lineno})") from None
    elif file.suffix.lower() in (".yaml", ".yml"):
        try:
            from boxrun.pipelines.yamlload import YamlError, load_yaml
        except ImportError:
            raise ArgumentError(f"{file}: reading YAML needs PyYAML (pip install pyyaml), or give JSON") from None
        try:
            body = load_yaml(text)
        except YamlError as exc:
            raise ArgumentError(f"{file}: {exc}") from None
    else:
        raise ArgumentError(f"{file}: expected a .json, .yaml or .yml file")
    if not isinstance(body, dict):
        raise ArgumentError(f"{file}: expected a mapping with description, params and job or pipeline")
    return body


def param_text(spec: ParamSpec) -> str:
    """`int = 2`, `choice [stable|nightly] = stable`, `string (required)`."""
    text: str = spec.type
    if spec.choices:
        text += f" [{'|'.join(spec.choices)}]"
    if spec.default is not None:
        shown = json.dumps(spec.default) if isinstance(spec.default, bool) else spec.default
        text += f" = {shown}"
    elif spec.is_required:
        text += " (required)"
    if spec.description:
        text += f"  {spec.description}"
    return text


def trigger_url(base: str, name: str) -> str:
    return f"{base.rstrip('/')}/api/templates/{name}/trigger"


BODY_KEYS = ("description", "params", "job", "pipeline")


@app.command("put", cls=UserCommand)
def put(
    name: NAME,
    file: Annotated[Path, typer.Option("--file", "-f", help="the body: description, params, job or pipeline")],
    as_json: JSON = False,
) -> None:
    """Create a template or add a version (operators and admins); prints its version."""
    try:
        body = read_body(file)
        unknown = sorted(set(body) - set(BODY_KEYS))
        if unknown:
            raise ArgumentError(f"{file}: unknown key {unknown[0]!r} (a template has {', '.join(BODY_KEYS)})")
    except ArgumentError as exc:
        context.fail(str(exc))

    async def work(client: AsyncClient) -> tuple[TemplatePublic, str]:
        made = await client.templates.put(
            name,
            job=body.get("job"),
            pipeline=body.get("pipeline"),
            params=body.get("params"),
            description=body.get("description"),
        )
        return made, client.url

    made, base = context.with_client(work)
    if as_json:
        print_json(made)
        return
    typer.echo(f"template {made.name} version {made.version}")
    if made.version == 1 and made.trigger_secret is not None:
        typer.echo(
            f"CI triggers it at {trigger_url(base, made.name)}, signed with its trigger secret: "
            f"see `boxrun template show {made.name}` (admins)",
            err=True,
        )


@app.command("ls", cls=UserCommand)
def ls(as_json: JSON = False) -> None:
    """List your org's templates (latest versions), by name."""

    async def work(client: AsyncClient) -> list[TemplatePublic]:
        return await client.templates.list()

    found = context.with_client(work)
    if as_json:
        print_json(found)
        return
    rows = [[t.name, t.kind, t.latest_version, ",".join(t.params), t.updated_by, t.updated_at] for t in found]
    print_table(["NAME", "KIND", "VERSION", "PARAMS", "UPDATED BY", "UPDATED (UTC)"], rows)


@app.command("show", cls=UserCommand)
def show(name: NAME, version: VERSION = None, as_json: JSON = False) -> None:
    """One template: its params and body; org admins also see the trigger secret and URL."""

    async def work(client: AsyncClient) -> tuple[TemplatePublic, str]:
        return await client.templates.get(name, version=version), client.url

    tpl, base = context.with_client(work)

    def plain() -> None:
        fields: list[tuple[str, object]] = [
            ("name", tpl.name),
            ("version", f"{tpl.version} of {tpl.latest_version}"),
            ("kind", tpl.kind),
            ("description", tpl.description or None),
            ("created", f"{tpl.created_at:%Y-%m-%d %H:%M:%S} by {tpl.created_by}"),
            ("this version", f"{tpl.version_created_at:%Y-%m-%d %H:%M:%S} by {tpl.version_created_by}"),
        ]
        fields += [(f"param {p}", param_text(spec)) for p, spec in tpl.params.items()]
        if tpl.trigger_secret is not None:
            fields += [("trigger secret", tpl.trigger_secret), ("trigger url", trigger_url(base, tpl.name))]
        print_fields(fields)
        typer.echo(json.dumps(tpl.job if tpl.job is not None else tpl.pipeline, indent=2))

    answer(tpl, as_json, plain)


@app.command("rm", cls=UserCommand)
def rm(name: NAME) -> None:
    """Delete a template with every version (its creator or an admin; runs made from it stay)."""

    async def work(client: AsyncClient) -> None:
        await client.templates.delete(name)

    context.with_client(work)
    typer.echo(f"template {name} deleted")


@app.command("rotate-secret", cls=UserCommand)
def rotate_secret(name: NAME, as_json: JSON = False) -> None:
    """A new trigger secret (org admins), printed on stdout; the old one is refused from now on."""

    async def work(client: AsyncClient) -> str:
        return await client.templates.rotate_trigger_secret(name)

    secret = context.with_client(work)
    if as_json:
        print_json({"trigger_secret": secret})
    else:
        typer.echo(secret)
        typer.echo(f"template {name}: a new trigger secret; give it to the CI webhook", err=True)


async def param_types(client: AsyncClient, name: str, version: int | None) -> dict[str, str]:
    """Each declared param's type, from the template (at `version`)."""
    tpl = await client.templates.get(name, version=version)
    return {p: spec.type for p, spec in tpl.params.items()}


RUN_HELP = f"""Run a template with params (operators and admins); prints the job's or the pipeline's id.

Each `-p NAME=VALUE` is typed by the template's declaration: an int param takes a whole number, a
bool param true/false (yes/no, on/off, 1/0), a string or choice param the text. With --wait: follow
it until it ends (a job's log, a pipeline's steps) and exit as it ended.

{table_text()}"""


@app.command("run", cls=UserCommand, help=RUN_HELP)
def run(
    name: NAME,
    params: PARAMS = None,
    version: VERSION = None,
    wait: Annotated[
        bool, typer.Option("--wait", "-w", help="follow it until it ends (a job's log, a pipeline's steps)")
    ] = False,
    as_json: JSON = False,
) -> None:
    made: list[tuple[str, str]] = []  # (kind, id) once made

    async def work(client: AsyncClient) -> int:
        values = template_params(params, await param_types(client, name, version))
        handle = await client.templates.run(name, values, version=version)
        made.append(("job" if isinstance(handle, Job) else "pipeline", handle.id))
        if not wait:
            answer(handle.model, as_json, handle.id)
            return 0
        if not as_json:
            typer.echo(handle.id)
        if isinstance(handle, Job):
            code = await follow_job(handle, quiet=as_json)
        else:
            assert isinstance(handle, Pipeline)
            await follow_pipeline(handle, quiet=as_json)
            code = pipeline_exit_code(handle.state)
        if as_json:
            print_json(handle.model)
        return code

    def detached() -> None:
        if made and made[0][0] == "job":
            detach_note(made[0][1])
        elif made:
            notice(f"detached from pipeline {made[0][1]}; it goes on. boxrun pipeline cancel {made[0][1]} cancels it")

    try:
        code = context.with_client(work, detached=detached)
    except ArgumentError as exc:
        context.fail(str(exc))
    raise typer.Exit(code)
