"""Pipeline definitions as submitted (JSON or YAML), validated and expanded into an ExpandedPipeline.

`parse_definition` is the one entry point. Every problem is a `boxrun.errors.InvalidInput` (422)
whose `field` names the place (`steps.flash.timeout_s`, `steps.test.matrix`, `body` for the
document itself) and whose reason starts with it and says what is wrong, repeating at most ~80
characters of anything sent. docs/pipelines.md is the reference for the format.
"""

from __future__ import annotations

from typing import Any

from boxrun.pipelines.document import Kind, load_document
from boxrun.pipelines.expand import expand
from boxrun.pipelines.model import ExpandedPipeline
from boxrun.pipelines.spec import (
    JOB_KEYS,
    PIPELINE_KEYS,
    STEP_KEYS,
    PipelineDefinition,
    check_keys,
    field_name,
    refuse,
    shown,
    validate,
)

JSON_MEDIA_TYPES = frozenset({"application/json"})
YAML_MEDIA_TYPES = frozenset({"application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml"})


def media_kind(content_type: str | None) -> Kind | None:
    """'json' or 'yaml' for a Content-Type a definition may be sent with (parameters such as
    `charset` ignored, `+json`/`+yaml` suffixes accepted); None for any other (a route may answer
    415 for those before calling parse_definition)."""
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media in JSON_MEDIA_TYPES or media.endswith("+json"):
        return "json"
    if media in YAML_MEDIA_TYPES or media.endswith("+yaml"):
        return "yaml"
    return None


def parse_definition(raw: bytes, content_type: str) -> ExpandedPipeline:
    """The pipeline `raw` defines: validated, matrix steps expanded (one step per combination),
    the pipeline env merged under each step's, steps in a stable topological order (among the
    steps ready at each point, the one defined first)."""
    kind = media_kind(content_type)
    if kind is None:
        raise refuse(
            "content-type",
            f"a pipeline definition is sent as application/json or application/yaml, not {shown(content_type)}",
        )
    document = load_document(raw, kind)
    if not isinstance(document, dict):
        raise refuse(
            "body", f"a pipeline definition is a mapping (name, timeout_s, env, labels, steps), not {_a(document)}"
        )
    check_keys(document, PIPELINE_KEYS, "")
    top = validate(PipelineDefinition, {k: v for k, v in document.items() if k != "steps"}, "")
    steps = document.get("steps")
    if not isinstance(steps, dict) or not steps:
        raise refuse("steps", "a mapping of step name -> step, with at least one step")
    for name, body in steps.items():
        where = field_name("steps", name)
        if not isinstance(body, dict):
            raise refuse(where, f"a step is a mapping of its fields, not {_a(body)}")
        check_keys(body, STEP_KEYS + JOB_KEYS, where)
    return expand(name=top.name, timeout_s=top.timeout_s, env=top.env, labels=top.labels, steps=steps)


def _a(value: Any) -> str:
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if value is None:
        return "null"
    return "a number"
