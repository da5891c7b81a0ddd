"""Rendering a template body with its params: `${{ params.NAME }}` in string values (docs/templates.md).

Pure functions: no I/O. Every problem is an InvalidInput naming the param (`body.params.NAME`)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from boxrun.errors import InvalidInput
from boxrun.schemas.templates import PARAM_NAME_PATTERN, ParamSpec, value_problem

# `${{ params.NAME }}`, spaces inside the braces optional; `${{ secrets.X }}` and `${{ matrix.X }}`
# do not match and pass through untouched.
PARAM_REF = re.compile(r"\$\{\{\s*params\.([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
PARAM_NAME = re.compile(PARAM_NAME_PATTERN)
# The most characters a rendered body's string values may come to (a submission's own body is at
# most 1 MiB: twice that leaves room for params without letting a few references blow it up).
MAX_RENDERED_CHARS = 2 * 1024 * 1024
# What a placeholder renders as when a PUT is checked (a param without a default).
PLACEHOLDER: dict[str, str | int | bool] = {"string": "x", "int": 0, "bool": False}


def as_text(value: str | int | bool) -> str:
    """A value inside a string: ints in decimal, bools as true/false."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _strings(node: Any) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, Mapping):
        return [s for v in node.values() for s in _strings(v)]
    if isinstance(node, list):
        return [s for v in node for s in _strings(v)]
    return []


def references(body: Any) -> set[str]:
    """The param names `body` refers to (in string values; keys are never rendered)."""
    return {m.group(1) for s in _strings(body) for m in PARAM_REF.finditer(s)}


def check_references(body: Any, params: Mapping[str, ParamSpec], *, field: str) -> None:
    """Every reference names a declared param; InvalidInput at `field` otherwise."""
    unknown = sorted(references(body) - set(params))
    if unknown:
        raise InvalidInput(
            f"the body refers to ${{{{ params.{unknown[0]} }}}} but no param {unknown[0]!r} is declared", field=field
        )


def placeholders(params: Mapping[str, ParamSpec]) -> dict[str, str | int | bool]:
    """Each param's default, or a value of its type (a choice: its first), to check a body at PUT."""
    out: dict[str, str | int | bool] = {}
    for name, spec in params.items():
        if spec.default is not None:
            out[name] = spec.default
        elif spec.type == "choice":
            out[name] = (spec.choices or ["x"])[0]
        else:
            out[name] = PLACEHOLDER[spec.type]
    return out


def resolve(params: Mapping[str, ParamSpec], given: Mapping[str, Any], *, field: str = "body.params") -> dict[str, str]:
    """The text of every declared param for a run: the value given, else its default, else "" for
    an optional one. InvalidInput at `<field>.<NAME>` for an unknown param, a missing required one,
    or a value of the wrong type, not among the choices, with NUL, too long, or holding `${{`."""
    for name in given:
        if name not in params:
            declared = ", ".join(sorted(params)) or "none"
            # the name is the caller's: in the field only when it is a name at all (a lone
            # surrogate or a NUL there could not even be encoded in the answer)
            where = f"{field}.{name}" if PARAM_NAME.fullmatch(name) else field
            raise InvalidInput(f"unknown param {name[:80]!r} (this template declares: {declared})", field=where)
    values: dict[str, str] = {}
    for name, spec in params.items():
        if name in given and given[name] is not None:
            value = given[name]
            problem = value_problem(spec, value)
            if problem is not None:
                raise InvalidInput(f"param {name!r} is {spec.type}: give {problem}", field=f"{field}.{name}")
            values[name] = as_text(value)
        elif spec.default is not None:
            values[name] = as_text(spec.default)
        elif spec.is_required:
            raise InvalidInput(f"param {name!r} is required", field=f"{field}.{name}")
        else:
            values[name] = ""
    return values


def _render_text(text: str, values: Mapping[str, str], field: str, budget: list[int]) -> str:
    matches = list(PARAM_REF.finditer(text))
    if not matches:
        budget[0] -= len(text)
    else:
        # what the text becomes, counted before it is made: 80,000 references to a value of 4,096
        # characters fit in a 1 MiB body and would make a third of a gigabyte
        budget[0] -= len(text) + sum(len(values.get(m.group(1), m.group(0))) - len(m.group(0)) for m in matches)
    if budget[0] < 0:
        raise InvalidInput(
            f"the params make the rendered body longer than {MAX_RENDERED_CHARS} characters", field=field
        )
    if not matches:
        return text
    out = PARAM_REF.sub(lambda m: values.get(m.group(1), m.group(0)), text)
    if "${{" in out:
        # One pass is not enough on its own: values harmless alone can make a `${{` side by side,
        # or with the text around them (`$` + `{{ secrets.DB }}`), which the submission would then
        # resolve. The rendered text may hold only the `${{` its pieces hold (resolve refuses a
        # value holding one), none made where they meet.
        parts = PARAM_REF.split(text)  # literal, name, literal, name, ..., literal
        names = parts[1::2]
        pieces = [*parts[::2], *(values.get(n, f"${{{{ params.{n} }}}}") for n in names)]
        if out.count("${{") > sum(piece.count("${{") for piece in pieces):
            culprit = next((n for n in names if any(c in values.get(n, "") for c in "${")), names[0])
            raise InvalidInput(
                f"param {culprit!r}: the values put into this text make a `${{{{` the template does not "
                "have (a value is never expanded again)",
                field=f"{field}.{culprit}",
            )
    return out


def _render(body: Any, values: Mapping[str, str], field: str, budget: list[int]) -> Any:
    if isinstance(body, str):
        return _render_text(body, values, field, budget)
    if isinstance(body, Mapping):
        return {k: _render(v, values, field, budget) for k, v in body.items()}
    if isinstance(body, list):
        return [_render(v, values, field, budget) for v in body]
    return body


def render(body: Any, values: Mapping[str, str], *, field: str = "body.params") -> Any:
    """`body` with every `${{ params.NAME }}` in its string values replaced by the text of NAME
    (one pass: a value is never expanded again). Keys, numbers and booleans are left as they are.
    A reference to a param not in `values` is left as it is (check_references refuses it earlier).
    InvalidInput at `<field>.NAME` when the values make a `${{` the text did not hold, and at
    `<field>` when the string values would come to more than MAX_RENDERED_CHARS characters."""
    return _render(body, values, field, [MAX_RENDERED_CHARS])
