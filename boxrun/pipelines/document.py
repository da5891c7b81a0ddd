"""A definition's bytes as JSON values: JSON or YAML read strictly (keys given twice refused),
bounded in depth, every string storable."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any, Literal

from boxrun.pipelines.spec import field_name, refuse, shown
from boxrun.pipelines.yamlload import MAX_DEPTH, YamlError, load_yaml
from boxrun.workspace_paths import refuse_unstorable

Kind = Literal["json", "yaml"]


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
    _check_values(document)
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


def walk(document: Any) -> Iterator[tuple[tuple[str, ...], Any]]:
    """Every value of `document` with its place (keys and list indexes), depth first in document
    order; iterative, so no document can exhaust the stack."""
    stack: list[tuple[tuple[str, ...], Any]] = [((), document)]
    while stack:
        place, value = stack.pop()
        yield place, value
        if isinstance(value, dict):
            stack.extend((place + (str(k),), v) for k, v in reversed(value.items()))
        elif isinstance(value, list):
            stack.extend((place + (str(i),), v) for i, v in reversed(list(enumerate(value))))


def _check_values(document: Any) -> None:
    """What the loaders leave to us: nesting depth, a JSON key given twice, a NUL or lone UTF-16
    surrogate in any string or key (no field takes one; Postgres could not store it)."""
    for place, value in walk(document):
        if len(place) > MAX_DEPTH:
            raise refuse(field_name(*place[:4]) or "body", f"the document nests more than {MAX_DEPTH} levels deep")
        texts: list[str] = []
        if isinstance(value, str):
            texts.append(value)
        elif isinstance(value, dict):
            if isinstance(value, _JsonObject) and value.duplicate is not None:
                raise refuse(field_name(*place) or "body", f"duplicate key {shown(value.duplicate)}")
            texts.extend(value)
        for text in texts:
            try:
                refuse_unstorable(text)
            except ValueError as exc:
                raise refuse(field_name(*place) or "body", str(exc)) from None
