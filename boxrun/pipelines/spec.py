"""The definition's fields as pydantic models, and how their errors become one 422 naming the place."""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Iterable
from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, field_validator, model_validator

from boxrun.errors import InvalidInput
from boxrun.pipelines.model import DEFAULT_PIPELINE_TIMEOUT_S, RetryOn, RetrySpec, When
from boxrun.schemas import (
    CLEAN_PATTERN,
    ENV_NAME_PATTERN,
    LABEL_KEY_PATTERN,
    MAX_LABEL_VALUE,
    MAX_LABELS,
    CleanStr,
    JobCreate,
    WorkspacePath,
    checked_labels,
)

MAX_PIPELINE_TIMEOUT_S = 30 * 24 * 3600
MAX_PIPELINE_NAME = 200
MAX_INPUTS = 100  # per step
MAX_REF = 300  # a `needs` or `inputs.from` entry (a concrete step name is at most 200)
MAX_ENV = 500  # as a job's env
SHOWN = 80  # characters of a submitted value (or key) an error message may repeat
STEP_NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"
AXIS_PATTERN = r"^[A-Za-z_][A-Za-z0-9_-]{0,31}$"
MATRIX_VALUE_PATTERN = r"^[A-Za-z0-9_.:+@-]{1,64}$"  # no '[', ']', ',' or '=': names stay unambiguous
MAX_AXES = 8

PIPELINE_KEYS = ("name", "timeout_s", "env", "labels", "steps")
STEP_KEYS = ("needs", "inputs", "retry", "when", "allow_failure", "same_box_as", "keep_box", "matrix")
# A step takes every job field but the idempotency key (a pipeline's steps are never submitted twice).
JOB_KEYS = tuple(name for name in JobCreate.model_fields if name != "idempotency_key")

M = TypeVar("M", bound=BaseModel)


def field_name(*parts: str) -> str:
    """A place as the API names it: parts joined by '.', each shortened (a key may be the culprit)."""
    shown = [p if len(p) <= SHOWN else f"{p[:SHOWN]}..." for p in parts if p]
    return ".".join(shown).encode("utf-8", "backslashreplace").decode()


def shown(value: str) -> str:
    """`value` quoted for a message, at most SHOWN characters of it."""
    return repr(value if len(value) <= SHOWN else f"{value[:SHOWN]}...")


def suggest(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(word[:SHOWN], list(choices), n=1)
    return f" (did you mean {shown(close[0])}?)" if close else ""


def refuse(field: str, problem: str) -> InvalidInput:
    """The 422 for `problem` at `field`; the reason starts with the place, as pydantic's do."""
    return InvalidInput(f"{field}: {problem}", field=field)


def check_keys(body: dict[str, Any], allowed: tuple[str, ...], where: str) -> None:
    """Refuse a key not in `allowed`, naming it (and the allowed key it is closest to)."""
    for key in body:
        if key not in allowed:
            raise refuse(field_name(where, key), f"unknown key{suggest(key, allowed)}; allowed: {', '.join(allowed)}")


def validate(model: type[M], body: Any, where: str, *, note: str = "") -> M:
    """`model` from JSON values, validated in JSON mode (`"always"` is a When there, as on the
    wire, and strict types hold as they do for POST /api/jobs); the first error is the 422."""
    try:
        return model.model_validate_json(json.dumps(body))
    except ValidationError as exc:
        raise invalid(exc, where, note=note) from None


def invalid(exc: ValidationError, where: str, *, note: str = "") -> InvalidInput:
    """A pydantic error as the 422 of its first problem, its place under `where` (the reason
    counts the others). pydantic's messages do not repeat the input; ours trim it."""
    errors = exc.errors(include_input=False, include_url=False)
    first = errors[0]
    field = field_name(where, *(str(p) for p in first["loc"])) or "body"
    message = str(first["msg"]).removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        message = "unknown key"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return InvalidInput(f"{field}: {message}{note}{more}", field=field)


_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class PipelineDefinition(BaseModel):
    """The pipeline's own fields (`steps` is read step by step by boxrun.pipelines.expand)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    name: Annotated[str, StringConstraints(min_length=1, max_length=MAX_PIPELINE_NAME)] | None = None
    timeout_s: int = Field(default=DEFAULT_PIPELINE_TIMEOUT_S, ge=1, le=MAX_PIPELINE_TIMEOUT_S)
    env: dict[str, CleanStr] = Field(default_factory=dict, max_length=MAX_ENV)
    # every step job's labels, under the step's own (the step's value wins)
    labels: dict[str, Annotated[CleanStr, Field(max_length=MAX_LABEL_VALUE)]] = Field(
        default_factory=dict, max_length=MAX_LABELS
    )

    @field_validator("labels")
    @classmethod
    def _label_keys(cls, labels: dict[str, str]) -> dict[str, str]:
        return checked_labels(labels)

    @field_validator("env")
    @classmethod
    def _env_names(cls, env: dict[str, str]) -> dict[str, str]:
        for name in env:
            if not _ENV_NAME.fullmatch(name):
                raise ValueError(f"env name {shown(name)} is not a valid variable name")
            if name.startswith("BOXRUN_"):
                raise ValueError(f"env name {shown(name)}: the BOXRUN_ prefix is reserved")
        return env


class RetryDefinition(RetrySpec):
    """A step's `retry` as written: RetrySpec's fields, strictly typed, unknown keys refused."""

    model_config = ConfigDict(extra="forbid", strict=True)

    on: list[RetryOn] = Field(default_factory=lambda: [RetryOn.FAILED, RetryOn.TIMED_OUT], min_length=1, max_length=3)
    exit_codes: list[Annotated[int, Field(ge=-255, le=255)]] | None = Field(default=None, min_length=1, max_length=64)

    @model_validator(mode="after")
    def _intervals(self) -> RetryDefinition:
        if self.max_interval_s is not None and self.max_interval_s < self.initial_interval_s:
            raise ValueError("max_interval_s must be at least initial_interval_s")
        return self

    def spec(self) -> RetrySpec:
        data = self.model_dump()
        data["on"] = list(dict.fromkeys(self.on))  # duplicates say nothing more
        if self.exit_codes is not None:
            data["exit_codes"] = sorted(set(self.exit_codes))
        return RetrySpec.model_validate(data)


class InputDefinition(BaseModel):
    """An artifact of an ancestor step, placed at `dest` (default: `path`) before the script starts."""

    model_config = ConfigDict(extra="forbid", strict=True)

    from_: str = Field(alias="from", min_length=1, max_length=MAX_REF)
    path: WorkspacePath
    dest: WorkspacePath | None = None


StepRef = Annotated[str, Field(min_length=1, max_length=MAX_REF)]


class StepDefinition(BaseModel):
    """A step's pipeline fields, after matrix substitution (its job fields are a JobCreate's)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    needs: list[StepRef] = Field(default_factory=list, max_length=500)
    inputs: list[InputDefinition] = Field(default_factory=list, max_length=MAX_INPUTS)
    retry: RetryDefinition | None = None
    when: When = When.ON_SUCCESS
    allow_failure: bool = False
    # run on the box step `same_box_as` (a needs ancestor) ran on; its box/box_group absent or the same
    same_box_as: StepRef | None = None
    # hold this step's box for the pipeline after it ends, until the steps pinned to it finished
    keep_box: bool = False


# ---------------------------------------------------------------- the definition as JSON Schema

# Job fields whose strings matrix values are substituted in: their patterns and maximum lengths
# hold only after substitution, so the schema leaves those out (a `${{ matrix.arch }}` in a
# box_group is not a box name yet).
_SUBSTITUTED_JOB_FIELDS = ("box", "box_group", "requires", "files")


def _loosen(schema: Any) -> None:
    """Drop every `pattern` but the no-NUL one and every `maxLength` inside `schema`, in place."""
    if isinstance(schema, dict):
        if schema.get("pattern") not in (None, CLEAN_PATTERN):
            del schema["pattern"]
        schema.pop("maxLength", None)
        for value in schema.values():
            _loosen(value)
    elif isinstance(schema, list):
        for item in schema:
            _loosen(item)


def definition_json_schema(ref_template: str = "#/$defs/{model}") -> dict[str, Any]:
    """A pipeline definition as JSON Schema (draft 2020-12, as OpenAPI 3.1 takes it), for a
    route's requestBody in JSON and YAML alike. It states keys, types, enums and bounds, and is
    a superset of what parse_definition accepts: strings matrix values are substituted in carry
    no pattern or maximum length, and what a schema cannot say (needs that exist, no cycle,
    inputs from ancestors, limits after expansion, retry intervals in order) is checked beyond
    it. So every body the schema refuses, parse_definition refuses too (a property test holds
    the two to it). Shared schemas are under `$defs`, referenced with `ref_template`."""
    job = JobCreate.model_json_schema(ref_template=ref_template)
    retry = RetryDefinition.model_json_schema(ref_template=ref_template)
    defs: dict[str, Any] = {**job.pop("$defs", {}), **retry.pop("$defs", {})}
    properties = job["properties"]
    properties.pop("idempotency_key", None)
    for name in _SUBSTITUTED_JOB_FIELDS:
        _loosen(properties[name])
    text = {"type": "string", "minLength": 1}
    properties.update(
        {
            "needs": {
                "type": "array",
                "items": text,
                "maxItems": 500,
                "description": "steps that must end first: a step's name (a matrix step: all of it) "
                "or one combination's (`test[voltage=3.0]`)",
            },
            "inputs": {
                "type": "array",
                "maxItems": MAX_INPUTS,
                "items": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["from", "path"],
                    "properties": {"from": text, "path": text, "dest": {"anyOf": [text, {"type": "null"}]}},
                },
                "description": "artifacts of an ancestor step, placed at `dest` (default: `path`)",
            },
            "retry": {"anyOf": [{"$ref": ref_template.format(model="RetryDefinition")}, {"type": "null"}]},
            "when": {"type": "string", "enum": [w.value for w in When], "default": When.ON_SUCCESS.value},
            "allow_failure": {"type": "boolean", "default": False},
            "same_box_as": {
                "anyOf": [text, {"type": "null"}],
                "description": "run on the box this ancestor step ran on (a matrix step: name one "
                "combination); box and box_group may then be left out (if given, the same as that step's)",
            },
            "keep_box": {
                "type": "boolean",
                "default": False,
                "description": "hold this step's box for the pipeline after it ends, until every step "
                "naming it in same_box_as has finished (or the pipeline ends)",
            },
            "matrix": {
                "type": "object",
                "minProperties": 1,
                "maxProperties": MAX_AXES,
                "propertyNames": {"pattern": AXIS_PATTERN},
                "additionalProperties": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "anyOf": [
                            {"type": "string", "pattern": MATRIX_VALUE_PATTERN},
                            {"type": "integer"},
                            {"type": "boolean"},
                        ]
                    },
                },
                "description": "axis -> values; one step per combination, named `step[axis=value,...]`",
            },
        }
    )
    for name in ("script", "env", "labels"):  # substituted too, but only their no-NUL pattern is stated
        properties[name].pop("maxLength", None)
    # a step pinned with same_box_as may leave out box and box_group (it takes its ancestor's)
    job["anyOf"] = [{"required": ["same_box_as"]}, {"oneOf": job.pop("oneOf")}]
    job["title"] = "PipelineStep"
    job["description"] = "A step: a job's fields (but idempotency_key) and the pipeline's. See docs/pipelines.md."
    defs["PipelineStep"] = job
    defs["RetryDefinition"] = retry
    return {
        "title": "PipelineDefinition",
        "description": "A pipeline definition, sent as JSON or YAML. See docs/pipelines.md.",
        "type": "object",
        "additionalProperties": False,
        "required": ["steps"],
        "properties": {
            "name": {"anyOf": [{"type": "string", "minLength": 1, "maxLength": MAX_PIPELINE_NAME}, {"type": "null"}]},
            "timeout_s": {
                "type": "integer",
                "minimum": 1,
                "maximum": MAX_PIPELINE_TIMEOUT_S,
                "default": DEFAULT_PIPELINE_TIMEOUT_S,
            },
            "env": {
                "type": "object",
                "maxProperties": MAX_ENV,
                "propertyNames": {"pattern": ENV_NAME_PATTERN},
                "additionalProperties": {"type": "string", "pattern": CLEAN_PATTERN},
            },
            "labels": {
                "type": "object",
                "maxProperties": MAX_LABELS,
                "propertyNames": {"pattern": LABEL_KEY_PATTERN},
                "additionalProperties": {"type": "string", "pattern": CLEAN_PATTERN, "maxLength": MAX_LABEL_VALUE},
                "description": "labels of every step job, under each step's own `labels` (the step's value wins)",
            },
            "steps": {
                "type": "object",
                "minProperties": 1,
                "maxProperties": 500,
                "propertyNames": {"pattern": STEP_NAME_PATTERN},
                "additionalProperties": {"$ref": ref_template.format(model="PipelineStep")},
            },
        },
        "$defs": defs,
    }
