"""A definition's bytes as JSON values: JSON or YAML read strictly (keys given twice refused),
bounded in depth, every string storable."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any, Literal

from boxrun.pipelines.spec import field_name, refuse, shown
from boxrun.pipelines.yamlload import MAX_DEPTH, YamlError, load_yaml
from boxrun.workspace_paths import refuse_unstorable

Kind = Literal["json", "yaml"]
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def load_document(raw: bytes, kind: Kind) -> Any:
    """The document in `raw` (UTF-8, a BOM allowed) as dicts, lists, strings, numbers, booleans
    and nulls; InvalidInput (field `body` or the place at fault) if it cannot be read."""
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise refuse("body", f"not UTF-8 text (byte {exc.start})") from None
    if kind == "yaml":
        try:
            document = load_yaml(text)
        except YamlError as exc:
            raise refuse("body", f"invalid YAML: {exc}") from None
    else:
        document = _load_json(text)
    _check_values(document, escapes="\\" in text)
    return document


class _JsonObject(dict[str, Any]):
    """A JSON object as read, remembering the first key it held twice (JSON parsers keep the
    last silently; a definition with two steps of one name is an error)."""

    duplicate: str | None = None


def _object(pairs: list[tuple[str, Any]]) -> _JsonObject:
    out = _JsonObject()
    for key, value in pairs:
        if key in out and out.duplicate is None:
            out.duplicate = key
        out[key] = value
    return out


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _load_json(text: str) -> Any:
    try:
        return json.loads(text, object_pairs_hook=_object, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        raise refuse("body", f"invalid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})") from None
    except RecursionError:
        raise refuse("body", f"the document nests more than {MAX_DEPTH} levels deep") from None
    except ValueError as exc:  # NaN, Infinity, an integer of more than 4300 digits
        raise refuse("body", f"invalid JSON: {str(exc)[:200]}") from None


def _check_values(document: Any, *, escapes: bool) -> None:
    """What the loaders leave to us: nesting depth, a JSON key given twice, a NUL or lone UTF-16
    surrogate in any string or key (no field takes one; Postgres could not store it). Neither
    can come from UTF-8 text but through a backslash escape, so without `escapes` in the text
    the strings are not looked at. Iterative; a place is only spelled out for an error."""
    Link = tuple[Any, Any] | None  # (parent link, key or index): the path, built only on error

    def place(link: Link) -> str:
        parts: list[str] = []
        while link is not None:
            link, key = link
            parts.append(str(key))
        return field_name(*reversed(parts)) or "body"

    def storable(text: str, link: Link) -> None:
        if _UNSTORABLE.search(text) is None:  # the common case, without encoding each string
            return
        try:
            refuse_unstorable(text)
        except ValueError as exc:
            raise refuse(place(link), str(exc)) from None

    stack: list[tuple[Any, int, Link]] = [(document, 1, None)]
    while stack:
        value, depth, link = stack.pop()
        if depth > MAX_DEPTH:
            raise refuse(place(link), f"the document nests more than {MAX_DEPTH} levels deep")
        if isinstance(value, dict):
            if isinstance(value, _JsonObject) and value.duplicate is not None:
                raise refuse(place(link), f"duplicate key {shown(value.duplicate)}")
            items: Iterable[tuple[Any, Any]] = value.items()
        elif isinstance(value, list):
            items = enumerate(value)
        else:
            if escapes and isinstance(value, str):
                storable(value, link)
            continue
        for key, item in items:
            if escapes and isinstance(value, dict):
                storable(key, link)
            if isinstance(item, dict | list):
                stack.append((item, depth + 1, (link, key)))
            elif escapes and isinstance(item, str):
                storable(item, (link, key))
