"""Parsing of the CLI's compound arguments (--file PATH[:DEST], --env K=V, --label K=V)."""

from __future__ import annotations

from pathlib import Path


class ArgumentError(ValueError):
    """An argument the CLI cannot read; its message is the one line shown (exit 125)."""


def key_value(raw: str, option: str) -> tuple[str, str]:
    """`KEY=VALUE` → (KEY, VALUE); the value may be empty or hold '=', the key may not be empty."""
    key, sep, value = raw.partition("=")
    if not sep:
        raise ArgumentError(f"{option} {raw!r}: expected KEY=VALUE")
    if not key.strip() or key != key.strip():
        raise ArgumentError(f"{option} {raw!r}: the key is empty or has spaces around it")
    return key, value


def key_values(raws: list[str] | None, option: str) -> dict[str, str]:
    """Every `KEY=VALUE` of a repeated option; a key given twice is an error."""
    found: dict[str, str] = {}
    for raw in raws or []:
        key, value = key_value(raw, option)
        if key in found:
            raise ArgumentError(f"{option} {key!r} given twice")
        found[key] = value
    return found


def file_spec(raw: str) -> tuple[Path, str]:
    """`PATH` (sent as its base name) or `PATH:DEST` (sent as DEST in the job's workspace). A PATH
    that itself holds ':' is taken whole when that file exists."""
    if not raw:
        raise ArgumentError("--file '': expected PATH or PATH:DEST")
    whole = Path(raw)
    if ":" in raw and not whole.exists():
        path, _, dest = raw.partition(":")
        if not path or not dest:
            raise ArgumentError(f"--file {raw!r}: expected PATH or PATH:DEST, both non-empty")
        source = Path(path)
    else:
        source, dest = whole, whole.name
    if not source.is_file():
        raise ArgumentError(f"--file {raw!r}: {source} is not a readable file")
    return source, dest


def file_specs(raws: list[str] | None) -> dict[str, Path]:
    """{workspace path: local file} of every --file; the same destination twice is an error."""
    found: dict[str, Path] = {}
    for raw in raws or []:
        source, dest = file_spec(raw)
        if dest in found:
            raise ArgumentError(f"--file {raw!r}: {dest!r} is already given by another --file")
        found[dest] = source
    return found
