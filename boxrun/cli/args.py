"""Parsing of the CLI's compound arguments (--file PATH[:DEST], --env K=V, --label K=V) and of
sizes (10G) and day counts, both of which may be `none`."""

from __future__ import annotations

import re
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


UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50}
SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*(?:([KMGTP])(?:I?B)?|B)?", re.IGNORECASE | re.ASCII)
NONE_WORDS = ("none", "off", "null")


def size(raw: str, option: str) -> int | None:
    """A byte count: `1048576`, `512B`, `500M`, `10G`, `1.5T` (K, M, G, T, P are powers of 1024;
    `10GiB`, `10GB`, `10g` read the same), or `none` (no value: None)."""
    text = raw.strip()
    if text.lower() in NONE_WORDS:
        return None
    found = SIZE.fullmatch(text)
    if found is None:
        raise ArgumentError(f"{option} {raw!r}: expected bytes such as 1048576, 500M, 10G or none")
    number, unit = found.group(1), (found.group(2) or "").upper()
    if "." in number and not unit:
        raise ArgumentError(f"{option} {raw!r}: a byte count is a whole number")
    return int(float(number) * UNITS[unit]) if "." in number else int(number) * UNITS[unit]


def days(raw: str, option: str) -> int | None:
    """A number of days (`30`), or `none` (kept forever: None)."""
    text = raw.strip()
    if text.lower() in NONE_WORDS:
        return None
    if not (text.isascii() and text.isdigit()):
        raise ArgumentError(f"{option} {raw!r}: expected a whole number of days or none")
    return int(text)


TRUE_WORDS = ("true", "yes", "on", "1")
FALSE_WORDS = ("false", "no", "off", "0")


def typed_value(name: str, kind: str, raw: str) -> str | int | bool:
    """A `-p NAME=VALUE` value as the JSON of the param's declared type: an int for `int`, a bool
    for `bool` (true/false, yes/no, on/off, 1/0), the text for `string` and `choice` (whose
    values the API checks)."""
    if kind == "int":
        text = raw.strip()
        body = text[1:] if text[:1] in "+-" else text
        if not (body.isascii() and body.isdigit()):
            raise ArgumentError(f"-p {name}={raw!r}: {name} is an int param, give a whole number")
        return int(text)
    if kind == "bool":
        word = raw.strip().lower()
        if word in TRUE_WORDS:
            return True
        if word in FALSE_WORDS:
            return False
        raise ArgumentError(f"-p {name}={raw!r}: {name} is a bool param, give true or false")
    return raw


def template_params(raws: list[str] | None, types: dict[str, str]) -> dict[str, str | int | bool]:
    """Every `-p NAME=VALUE`, typed by `types` (param name -> declared type). A name the template
    does not declare, or one given twice, is an error naming the declared ones."""
    found: dict[str, str | int | bool] = {}
    for name, raw in key_values(raws, "-p").items():
        if name not in types:
            known = ", ".join(sorted(types)) or "none"
            raise ArgumentError(f"-p {name}: the template has no param {name!r} (its params: {known})")
        found[name] = typed_value(name, types[name], raw)
    return found
