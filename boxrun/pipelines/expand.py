"""Matrix expansion, `${{ matrix.AXIS }}` substitution and the step graph (needs, cycles, inputs
from ancestors): a definition's steps as the concrete steps of an ExpandedPipeline, in a stable
topological order."""

from __future__ import annotations

import heapq
import itertools
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from boxrun.pipelines.model import (
    MAX_MATRIX_COMBINATIONS,
    MAX_STEPS,
    ExpandedPipeline,
    ExpandedStep,
    StepInput,
    When,
)
from boxrun.pipelines.spec import (
    AXIS_PATTERN,
    MATRIX_VALUE_PATTERN,
    MAX_AXES,
    STEP_KEYS,
    STEP_NAME_PATTERN,
    StepDefinition,
    field_name,
    refuse,
    shown,
    suggest,
    validate,
)
from boxrun.schemas import JobCreate

MAX_CONCRETE_NAME = 200  # `test[voltage=3.0,board=f4]`
MAX_EXPANDED_TEXT_BYTES = 16 << 20  # script + env + inline files over all concrete steps

_STEP_NAME = re.compile(STEP_NAME_PATTERN)
_AXIS = re.compile(AXIS_PATTERN)
_MATRIX_VALUE = re.compile(MATRIX_VALUE_PATTERN)
# Every `${{ matrix... }}` (any other `${{ ... }}` is left as written); it must be `matrix.AXIS`.
# (The part after `matrix` is bounded and cannot hold '}', so a script full of unclosed
# `${{ matrix` costs linear time.)
_EXPRESSION = re.compile(r"\$\{\{\s*matrix\b([^}]{0,200})\}\}")
_AXIS_REFERENCE = re.compile(r"^\.([A-Za-z_][A-Za-z0-9_-]*)\s*$")
# The target a pinned step without box/box_group is validated with (replaced before it is stored).
_PINNED_STAND_IN = "same-box-as"


@dataclass
class _Step:
    """A step as defined: its body without the matrix, its matrix axes with their values as text."""

    name: str
    body: dict[str, Any]
    axes: list[tuple[str, list[str]]]

    @property
    def combinations(self) -> int:
        return math.prod(len(values) for _, values in self.axes)


@dataclass
class _Concrete:
    """One step of the expanded pipeline while its needs and inputs are resolved."""

    source: _Step
    name: str
    position: int  # definition order: steps as written, a matrix's combinations in axis order
    definition: StepDefinition
    job: JobCreate
    needs: list[str] = field(default_factory=list)
    inherits_box: bool = False  # same_box_as without box/box_group: takes the ancestor's target

    @property
    def where(self) -> str:
        return field_name("steps", self.source.name)

    @property
    def note(self) -> str:
        return f" (in {self.name})" if self.source.axes else ""


def expand(
    *,
    name: str | None,
    timeout_s: int,
    env: dict[str, str],
    steps: dict[str, dict[str, Any]],
    labels: dict[str, str] | None = None,
) -> ExpandedPipeline:
    """The concrete pipeline `steps` define (each a mapping whose keys were checked)."""
    for top_field, given in (("env", env), ("labels", labels or {})):
        for key, value in given.items():
            if _EXPRESSION.search(value):
                raise refuse(
                    field_name(top_field, key),
                    f"${{{{ matrix.AXIS }}}} is substituted in steps only, not in the pipeline {top_field}",
                )
    defined = [_read_step(step_name, body) for step_name, body in steps.items()]
    total = sum(step.combinations for step in defined)
    if total > MAX_STEPS:
        raise refuse("steps", f"the pipeline expands to {total} steps, over the limit of {MAX_STEPS}")

    concrete: dict[str, _Concrete] = {}
    text = 0  # bytes of script, env and inline files so far
    groups: dict[str, list[str]] = {}  # a defined step's name -> its concrete steps' names
    for step in defined:
        groups[step.name] = []
        axis_names = [axis for axis, _ in step.axes]
        for values in itertools.product(*(values for _, values in step.axes)):
            chosen = dict(zip(axis_names, values))
            concrete_name = step.name
            if chosen:
                concrete_name += "[" + ",".join(f"{axis}={value}" for axis, value in chosen.items()) + "]"
                if len(concrete_name) > MAX_CONCRETE_NAME:
                    raise refuse(
                        field_name("steps", step.name, "matrix"),
                        f"the step name {shown(concrete_name)} is longer than {MAX_CONCRETE_NAME} characters",
                    )
            built = _build(step, concrete_name, len(concrete), chosen, env, labels or {})
            text += _text_bytes(built.job)
            if text > MAX_EXPANDED_TEXT_BYTES:  # checked as it grows: memory stays bounded too
                raise refuse(
                    "steps",
                    f"the expanded steps hold more than {MAX_EXPANDED_TEXT_BYTES} bytes of script, env and "
                    "inline files (a matrix repeats them for every combination)",
                )
            concrete[concrete_name] = built
            groups[step.name].append(concrete_name)

    for each in concrete.values():
        each.needs = _resolve_needs(each, concrete, groups)
    order = _topological(concrete)
    # Each step's ancestors as a bit set over positions (an int): one OR per edge, where sets of
    # names would cost a copy per edge (a 500-step chain of "needs all before" took seconds).
    ancestors: dict[str, int] = {}
    for each in order:
        bits = 0
        for need in each.needs:
            bits |= ancestors[need] | (1 << concrete[need].position)
        ancestors[each.name] = bits
    done: dict[str, ExpandedStep] = {}
    for each in order:  # topological: a pinned step's ancestor is expanded before it
        done[each.name] = _expanded(each, concrete, groups, ancestors[each.name], done)
    expanded = list(done.values())
    return ExpandedPipeline(name=name, timeout_s=timeout_s, steps=expanded)


# ---------------------------------------------------------------- a step as defined


def _read_step(name: str, body: dict[str, Any]) -> _Step:
    where = field_name("steps", name)
    if not _STEP_NAME.fullmatch(name):
        raise refuse(
            where,
            f"a step name matches {STEP_NAME_PATTERN} (lower-case letters, digits, '-' and '_', "
            "at most 63 characters, starting with a letter or digit)",
        )
    rest = {k: v for k, v in body.items() if k != "matrix"}
    axes = _read_matrix(where, body["matrix"]) if "matrix" in body else []
    step = _Step(name=name, body=rest, axes=axes)
    if step.combinations > MAX_MATRIX_COMBINATIONS:
        sizes = " x ".join(str(len(values)) for _, values in axes)
        raise refuse(
            field_name(where, "matrix"),
            f"{sizes} = {step.combinations} combinations, over the limit of {MAX_MATRIX_COMBINATIONS}",
        )
    _check_expressions(step)
    return step


def _read_matrix(where: str, matrix: Any) -> list[tuple[str, list[str]]]:
    where = field_name(where, "matrix")
    if not isinstance(matrix, dict) or not matrix:
        raise refuse(where, "a matrix is a mapping of axis name -> list of values, with at least one axis")
    if len(matrix) > MAX_AXES:
        raise refuse(where, f"{len(matrix)} axes, over the limit of {MAX_AXES}")
    axes = []
    for axis, values in matrix.items():
        place = field_name(where, axis)
        if not _AXIS.fullmatch(axis):
            raise refuse(place, f"an axis name matches {AXIS_PATTERN}")
        if not isinstance(values, list) or not values:
            raise refuse(place, "an axis is a non-empty list of values")
        if len(values) > MAX_MATRIX_COMBINATIONS:
            raise refuse(place, f"{len(values)} values, over the limit of {MAX_MATRIX_COMBINATIONS} combinations")
        texts: list[str] = []
        for index, value in enumerate(values):
            text = _matrix_text(value)
            if text is None:
                raise refuse(
                    field_name(place, str(index)),
                    'a matrix value is a string, an integer or a boolean (write a decimal such as 3.3 as "3.3")',
                )
            if not _MATRIX_VALUE.fullmatch(text):
                raise refuse(
                    field_name(place, str(index)),
                    f"{shown(text)}: a matrix value matches {MATRIX_VALUE_PATTERN} (it becomes part of step names)",
                )
            if text in texts:
                raise refuse(place, f"the value {shown(text)} is listed twice")
            texts.append(text)
        axes.append((axis, texts))
    return axes


def _matrix_text(value: Any) -> str | None:
    """A matrix value as it is substituted and named: strings as they are, integers in decimal,
    booleans `true`/`false` (as JSON and YAML write them); None for anything else."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return value
    return None


def _check_expressions(step: _Step) -> None:
    """Each `${{ matrix... }}` where the step substitutes names one of its axes, so a typo is a
    422 rather than text a script receives. (Elsewhere such text fails the field's own rules.)"""
    if "${{" not in json.dumps(step.body):  # most steps: nothing to look for
        return
    axes = [axis for axis, _ in step.axes]

    def check(text: str, place: tuple[str, ...]) -> str:
        for match in _EXPRESSION.finditer(text):
            reference = _AXIS_REFERENCE.fullmatch(match.group(1))
            where = field_name("steps", step.name, *place)
            if reference is None:
                raise refuse(where, f"{shown(match.group(0))}: write ${{{{ matrix.AXIS }}}}")
            if not axes:
                raise refuse(where, f"{shown(match.group(0))}: this step has no matrix")
            if reference.group(1) not in axes:
                raise refuse(
                    where,
                    f"{shown(match.group(0))} names no axis of the step's matrix "
                    f"(axes: {', '.join(axes)}){suggest(reference.group(1), axes)}",
                )
        return text

    _render(step.body, check, field_name("steps", step.name))


def _render(body: dict[str, Any], render: Callable[[str, tuple[str, ...]], str], where: str) -> dict[str, Any]:
    """`body` with `render(text, place)` applied to each string matrix values are substituted in
    (SUBSTITUTED); anything of another shape is left for validation to refuse."""
    out = dict(body)

    def each(value: Any, place: tuple[str, ...]) -> Any:
        return render(value, place) if isinstance(value, str) else value

    for key in ("box", "box_group", "script", "same_box_as"):
        out[key] = each(out.get(key), (key,))
    for key in ("requires", "needs"):
        if isinstance(out.get(key), list):
            out[key] = [each(item, (key, str(i))) for i, item in enumerate(out[key])]
    for key in ("env", "labels"):
        if isinstance(out.get(key), dict):
            out[key] = {name: each(value, (key, name)) for name, value in out[key].items()}
    if isinstance(out.get("files"), dict):
        files: dict[str, Any] = {}
        for path, content in out["files"].items():
            rendered = render(path, ("files", path))
            if rendered in files:
                raise refuse(
                    field_name(where, "files"), f"two paths become {shown(rendered)} once the matrix is substituted"
                )
            files[rendered] = each(content, ("files", path))
        out["files"] = files
    if isinstance(out.get("inputs"), list):
        out["inputs"] = [
            {k: each(v, ("inputs", str(i), k)) for k, v in item.items()} if isinstance(item, dict) else item
            for i, item in enumerate(out["inputs"])
        ]
    return {k: v for k, v in out.items() if k in body}


# ---------------------------------------------------------------- one concrete step


def _substitute(body: dict[str, Any], chosen: dict[str, str], where: str) -> dict[str, Any]:
    """`body` with every `${{ matrix.AXIS }}` (checked before) replaced by its value in `chosen`."""

    def value_of(match: re.Match[str]) -> str:
        return chosen[match.group(1).strip().removeprefix(".")]

    def render(text: str, _place: tuple[str, ...]) -> str:
        return _EXPRESSION.sub(value_of, text) if "${{" in text else text

    return _render(body, render, where)


def _build(
    step: _Step, name: str, position: int, chosen: dict[str, str], env: dict[str, str], labels: dict[str, str]
) -> _Concrete:
    where = field_name("steps", step.name)
    note = f" (in {name})" if chosen else ""
    body = _substitute(step.body, chosen, where) if chosen else step.body
    definition = validate(StepDefinition, {k: v for k, v in body.items() if k in STEP_KEYS}, where, note=note)
    job = {k: v for k, v in body.items() if k not in STEP_KEYS}
    if env and isinstance(job.get("env", {}), dict):
        job["env"] = {**env, **job.get("env", {})}  # the step's own values win
    if labels and isinstance(job.get("labels", {}), dict):
        job["labels"] = {**labels, **job.get("labels", {})}  # the step's own values win
    if definition.when == When.ON_FAILURE and not definition.needs:
        raise refuse(field_name(where, "when"), f"on_failure needs a step to fail: this step needs none{note}")
    inherits = definition.same_box_as is not None and job.get("box") is None and job.get("box_group") is None
    if inherits:  # validated with a stand-in target; _expanded puts the ancestor's in its place
        job = {**job, "box": _PINNED_STAND_IN}
    return _Concrete(
        source=step,
        name=name,
        position=position,
        definition=definition,
        job=validate(JobCreate, job, where, note=note),
        inherits_box=inherits,
    )


def _resolve(reference: str, concrete: dict[str, _Concrete], groups: dict[str, list[str]]) -> list[str] | None:
    if reference in groups:
        return groups[reference]
    if reference in concrete:
        return [reference]
    return None


def _resolve_needs(step: _Concrete, concrete: dict[str, _Concrete], groups: dict[str, list[str]]) -> list[str]:
    """A need names a step (all of a matrix step's combinations) or one concrete step
    (`test[voltage=3.0]`, possibly through `${{ matrix.AXIS }}`)."""
    needs: list[str] = []
    for index, reference in enumerate(step.definition.needs):
        names = _resolve(reference, concrete, groups)
        if names is None:
            raise refuse(
                field_name(step.where, "needs", str(index)),
                f"unknown step {shown(reference)}{suggest(reference, [*groups, *concrete])}{step.note}",
            )
        needs.extend(names)
    return list(dict.fromkeys(needs))


def _topological(concrete: dict[str, _Concrete]) -> list[_Concrete]:
    """Kahn's algorithm, taking the ready step defined first each time, so the order is stable;
    a cycle is a 422 naming its steps."""
    waiting = {name: len(step.needs) for name, step in concrete.items()}
    dependents: dict[str, list[str]] = {name: [] for name in concrete}
    for step in concrete.values():
        for need in step.needs:
            dependents[need].append(step.name)
    ready = [(step.position, name) for name, step in concrete.items() if not step.needs]
    heapq.heapify(ready)
    order: list[_Concrete] = []
    while ready:
        _, name = heapq.heappop(ready)
        order.append(concrete[name])
        for dependent in dependents[name]:
            waiting[dependent] -= 1
            if waiting[dependent] == 0:
                heapq.heappush(ready, (concrete[dependent].position, dependent))
    if len(order) < len(concrete):
        _refuse_cycle(concrete, {name for name, count in waiting.items() if count > 0})
    return order


def _refuse_cycle(concrete: dict[str, _Concrete], stuck: set[str]) -> None:
    """Every stuck step waits on another stuck step, so following needs from one must come back
    round: the loop found is the cycle named (`a -> b -> a`: a needs b, b needs a)."""
    name = min(stuck, key=lambda n: concrete[n].position)
    path: list[str] = []
    seen: dict[str, int] = {}
    while name not in seen:
        seen[name] = len(path)
        path.append(name)
        name = next(need for need in concrete[name].needs if need in stuck)
    cycle = path[seen[name] :] + [name]
    first = concrete[cycle[0]]
    raise refuse(field_name(first.where, "needs"), "cycle: " + " -> ".join(cycle))


def _ancestor(
    step: _Concrete,
    reference: str,
    where: str,
    concrete: dict[str, _Concrete],
    groups: dict[str, list[str]],
    ancestors: int,
    *,
    own: str,
) -> str:
    """The one concrete ancestor `reference` names (inputs.from, same_box_as), or the 422 saying
    why not (unknown, a whole matrix step, the step itself, not an ancestor). `own` finishes
    "a step cannot ..." for the step naming itself."""
    names = _resolve(reference, concrete, groups)
    if names is None:
        raise refuse(where, f"unknown step {shown(reference)}{suggest(reference, [*groups, *concrete])}{step.note}")
    if len(names) > 1:
        raise refuse(
            where,
            f"{shown(reference)} is a matrix step: name one of its steps, e.g. {shown(names[0])}, "
            f"or substitute the matrix value (`{reference}[axis=${{{{ matrix.axis }}}}]`){step.note}",
        )
    source = names[0]
    if source == step.name:
        raise refuse(where, f"a step cannot {own}{step.note}")
    if not ancestors >> concrete[source].position & 1:
        raise refuse(
            where,
            f"{shown(source)} is not an ancestor of {shown(step.name)}: "
            "add it to needs (directly or through a step it needs)",
        )
    return source


def _pinned(
    step: _Concrete,
    concrete: dict[str, _Concrete],
    groups: dict[str, list[str]],
    ancestors: int,
    done: dict[str, ExpandedStep],
) -> tuple[str | None, JobCreate]:
    """The ancestor `same_box_as` names and the step's job targeting that ancestor's box or group:
    a pinned step's box and box_group are left out (it takes the ancestor's) or the same as its."""
    reference = step.definition.same_box_as
    if reference is None:
        return None, step.job
    source = _ancestor(
        step, reference, field_name(step.where, "same_box_as"), concrete, groups, ancestors, own="be pinned to itself"
    )
    target = done[source].job
    if step.inherits_box:
        return source, step.job.model_copy(update={"box": target.box, "box_group": target.box_group})
    if (step.job.box, step.job.box_group) != (target.box, target.box_group):
        theirs = f"box {shown(target.box)}" if target.box is not None else f"box_group {shown(target.box_group or '')}"
        field = "box" if step.job.box is not None else "box_group"
        raise refuse(
            field_name(step.where, field),
            f"a step with same_box_as runs on the box {shown(source)} ran on: leave box and box_group out, "
            f"or give that step's ({theirs}){step.note}",
        )
    return source, step.job


def _expanded(
    step: _Concrete,
    concrete: dict[str, _Concrete],
    groups: dict[str, list[str]],
    ancestors: int,
    done: dict[str, ExpandedStep],
) -> ExpandedStep:
    """The step with its inputs resolved: each from a single concrete ancestor, landing on a
    workspace path no other input or file of the step takes."""
    inputs: list[StepInput] = []
    taken = set(step.job.files)
    for index, spec in enumerate(step.definition.inputs):
        where = field_name(step.where, "inputs", str(index))
        source = _ancestor(
            step,
            spec.from_,
            field_name(where, "from"),
            concrete,
            groups,
            ancestors,
            own="take its own artifacts as inputs",
        )
        dest = spec.dest or spec.path
        if dest in taken:
            raise refuse(
                field_name(where, "dest"),
                f"{shown(dest)} is already a file or another input of the step{step.note}",
            )
        taken.add(dest)
        inputs.append(StepInput(from_step=source, path=spec.path, dest=dest))
    same_box_as, job = _pinned(step, concrete, groups, ancestors, done)
    retry = step.definition.retry
    return ExpandedStep(
        name=step.name,
        needs=step.needs,
        job=job,
        inputs=inputs,
        retry=retry.spec() if retry is not None else None,
        when=step.definition.when,
        allow_failure=step.definition.allow_failure,
        same_box_as=same_box_as,
        keep_box=step.definition.keep_box,
    )


def _text_bytes(job: JobCreate) -> int:
    return (
        len(job.script.encode())
        + sum(len(k.encode()) + len(v.encode()) for k, v in job.env.items())
        + sum(len(text.encode()) for text in job.inline_files().values())
    )
