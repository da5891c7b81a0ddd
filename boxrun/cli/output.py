"""How the CLI prints: the API's JSON (--json), rich tables otherwise, log lines by stream."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime

import typer
from pydantic import BaseModel
from rich.console import Console
from rich.table import Table

from boxrun.schemas import LogLinePublic

WIDE = 200  # columns when stdout is not a terminal (a file, a pipe, a test): no truncated cells


def console(*, err: bool = False) -> Console:
    """A rich console on the current stdout (stderr): plain text when it is not a terminal."""
    stream = sys.stderr if err else sys.stdout
    tty = stream.isatty()
    return Console(file=stream, highlight=False, soft_wrap=False, width=None if tty else WIDE, no_color=not tty)


def plain(data: object) -> object:
    """JSON-ready data: models as the API writes them, lists and dicts item by item."""
    if isinstance(data, BaseModel):
        return data.model_dump(mode="json")
    if isinstance(data, list | tuple):
        return [plain(item) for item in data]
    if isinstance(data, dict):
        return {str(k): plain(v) for k, v in data.items()}
    return data


def as_json(data: object) -> str:
    """The API's JSON of a model, or of a list of them (an array)."""
    return json.dumps(plain(data), indent=2)


def print_json(data: object) -> None:
    typer.echo(as_json(data))


def answer(data: object, as_json: bool, plain: str | Callable[[], object]) -> None:
    """The API's JSON of `data` with --json, else the plain text (or what `plain()` prints)."""
    if as_json:
        print_json(data)
    elif isinstance(plain, str):
        typer.echo(plain)
    else:
        plain()


def cell(value: object) -> str:
    """A table cell: dates to the second in UTC, lists joined, None as '-'."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value) or "-"
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items()) or "-"
    return str(value)


def table(columns: Sequence[str], rows: Iterable[Sequence[object]], *, title: str | None = None) -> Table:
    out = Table(*columns, title=title, box=None, header_style="bold", pad_edge=False)
    for row in rows:
        out.add_row(*(cell(v) for v in row))
    return out


def print_table(columns: Sequence[str], rows: Iterable[Sequence[object]], *, title: str | None = None) -> None:
    console().print(table(columns, rows, title=title))


def print_fields(pairs: Iterable[tuple[str, object]]) -> None:
    """One `name: value` per line (a single resource)."""
    pairs = list(pairs)
    width = max((len(name) for name, _ in pairs), default=0)
    for name, value in pairs:
        typer.echo(f"{name + ':':<{width + 1}} {cell(value)}")


def show_line(line: LogLinePublic) -> None:
    """stdout lines to stdout, stderr lines to stderr, `output` as "[output] ..." on stdout, the rest
    (boxrun's notices) as "[boxrun] ..." on stderr."""
    if line.stream == "stdout":
        typer.echo(line.text)
    elif line.stream == "stderr":
        typer.echo(line.text, err=True)
    elif line.stream == "output":
        typer.echo(f"[output] {line.text}")
    else:
        typer.echo(f"[boxrun] {line.text}", err=True)


def print_line(line: LogLinePublic, as_json: bool) -> None:
    """A log line by its stream, or (--json) the API's JSON of it on one line of stdout."""
    if as_json:
        typer.echo(line.model_dump_json())
    else:
        show_line(line)


def notice(text: str) -> None:
    """boxrun's own remark while following a job: "[boxrun] ..." on stderr."""
    typer.echo(f"[boxrun] {text}", err=True)


def duration(start: datetime | None, end: datetime | None, now: datetime | None = None) -> str:
    """'1m05s', '12s', or '-' when it never started."""
    if start is None:
        return "-"
    stop = end or now
    if stop is None:
        return "-"
    secs = max(0, int((stop - start).total_seconds()))
    return f"{secs // 60}m{secs % 60:02d}s" if secs >= 60 else f"{secs}s"


def human_bytes(n: int | None) -> str:
    """`10.0 GiB (10737418240 bytes)`-style sizes, shortest first: '512 B', '1.5 MiB', '-' for None."""
    if n is None:
        return "-"
    value, unit = float(n), "B"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if value < 1024 or unit == "PiB":
            break
        value /= 1024
    return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"
