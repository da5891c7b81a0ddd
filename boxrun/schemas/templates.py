"""Schemas of templates (presets), their runs and triggers (docs/templates.md)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from boxrun.schemas import CleanStr, JobPublic
from boxrun.schemas.pipelines import PipelinePublic

PARAM_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,63}$"
ParamName = Annotated[str, StringConstraints(pattern=PARAM_NAME_PATTERN)]
MAX_PARAMS = 50
MAX_CHOICES = 100
# A string param's value (and a choice) is at most this many characters.
MAX_PARAM_CHARS = 4096
# How deep a template's body may nest (a job or a pipeline needs a handful of levels).
MAX_BODY_DEPTH = 32
ParamType = Literal["string", "int", "bool", "choice"]
ParamValue = CleanStr | int | bool
Kind = Literal["job", "pipeline"]


class ParamSpec(BaseModel):
    """A declared param. Without a default it is required unless `required: false` says otherwise
    (then it renders as the empty string)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    type: ParamType
    default: CleanStr | int | bool | None = None
    required: bool | None = None
    choices: list[Annotated[CleanStr, Field(min_length=1, max_length=MAX_PARAM_CHARS)]] | None = Field(
        default=None, min_length=1, max_length=MAX_CHOICES, description="type choice only: the allowed values"
    )
    description: CleanStr = Field(default="", max_length=1000)

    @model_validator(mode="after")
    def _consistent(self) -> ParamSpec:
        if self.type == "choice":
            if not self.choices:
                raise ValueError("a choice param lists its `choices`")
            if len(set(self.choices)) != len(self.choices):
                raise ValueError("a choice is listed twice")
            if any("${{" in c for c in self.choices):  # a value holding `${{` is refused at every run
                raise ValueError("a choice holds `${{` (a value is never expanded again)")
        elif self.choices is not None:
            raise ValueError(f"`choices` is for type choice only, not {self.type}")
        if self.default is not None:
            if self.required:
                raise ValueError("a param with a default is not required")
            problem = value_problem(self, self.default)
            if problem is not None:
                raise ValueError(f"default: {problem}")
        return self

    @property
    def is_required(self) -> bool:
        return self.required if self.required is not None else self.default is None


def value_problem(spec: ParamSpec, value: Any) -> str | None:
    """Why `value` cannot be this param's value (JSON types as declared), or None."""
    if spec.type == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            return "an integer"
        if abs(value) > 2**53:
            return "an integer of at most 2**53"
        return None
    if spec.type == "bool":
        return None if isinstance(value, bool) else "true or false"
    if not isinstance(value, str):
        return "a string"
    if "\x00" in value:
        return "a string without NUL characters"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate (JSON's "\ud800"): no Postgres text takes it
        return "a string without lone UTF-16 surrogates"
    if len(value) > MAX_PARAM_CHARS:
        return f"a string of at most {MAX_PARAM_CHARS} characters"
    if "${{" in value:
        return "a string without `${{` (a value is never expanded again)"
    if spec.type == "choice" and value not in (spec.choices or []):
        return "one of " + ", ".join(repr(c[:40]) for c in (spec.choices or [])[:10])
    return None


def _depth(body: Any) -> int:
    """How deeply `body` nests lists and objects, found without recursion."""
    deepest, stack = 0, [(body, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict | list):
            deepest = max(deepest, depth)
            if depth > MAX_BODY_DEPTH:
                break
            stack.extend((child, depth + 1) for child in (node.values() if isinstance(node, dict) else node))
    return deepest


class TemplatePut(BaseModel):
    """PUT /api/templates/{name} body: exactly one of `job` or `pipeline`."""

    model_config = ConfigDict(extra="forbid", strict=True)

    description: CleanStr = Field(default="", max_length=4000)
    params: dict[ParamName, ParamSpec] = Field(default_factory=dict, max_length=MAX_PARAMS)
    job: dict[str, Any] | None = Field(default=None, description="a job as POST /api/jobs takes it")
    pipeline: dict[str, Any] | None = Field(
        default=None, description="a pipeline definition as POST /api/pipelines takes it (JSON form)"
    )

    @model_validator(mode="after")
    def _one_body(self) -> TemplatePut:
        if (self.job is None) == (self.pipeline is None):
            raise ValueError("give exactly one of 'job' or 'pipeline'")
        if _depth(self.body) > MAX_BODY_DEPTH:  # rendering walks it recursively
            raise ValueError(f"the {self.kind} is nested deeper than {MAX_BODY_DEPTH} levels")
        return self

    @property
    def kind(self) -> Kind:
        return "job" if self.job is not None else "pipeline"

    @property
    def body(self) -> dict[str, Any]:
        body = self.job if self.job is not None else self.pipeline
        assert body is not None  # _one_body
        return body


class TemplatePublic(BaseModel):
    name: str
    version: int = Field(description="the version shown (the latest unless ?version= asked for another)")
    latest_version: int
    description: str
    kind: Kind
    params: dict[str, ParamSpec]
    job: dict[str, Any] | None = None
    pipeline: dict[str, Any] | None = None
    created_by: str
    created_at: datetime
    updated_by: str
    updated_at: datetime
    version_created_by: str
    version_created_at: datetime
    trigger_secret: str | None = Field(
        default=None, description="org admins only: the key of the trigger's signature (docs/templates.md)"
    )


class TemplatesPublic(BaseModel):
    data: list[TemplatePublic]


class TemplateRun(BaseModel):
    """POST /api/templates/{name}/run body."""

    model_config = ConfigDict(extra="forbid", strict=True)

    params: dict[str, Any] = Field(default_factory=dict, max_length=MAX_PARAMS, description="param name -> value")
    version: int | None = Field(default=None, ge=1, description="default: the latest version")


class TemplateRunPublic(BaseModel):
    """What a template run (or a trigger) made."""

    kind: Kind
    job: JobPublic | None = None
    pipeline: PipelinePublic | None = None


class TriggerSecretPublic(BaseModel):
    trigger_secret: str


class TriggerPing(BaseModel):
    """The answer to GitHub's `ping` event (sent when a hook is created): signed, nothing run."""

    ping: Literal[True] = True
    detail: str = "signature good: nothing run for a ping"
