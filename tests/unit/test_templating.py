"""Template rendering and the CI payload mapping: pure functions (docs/templates.md)."""

from __future__ import annotations

import hashlib
import hmac

import pytest
from pydantic import ValidationError

from boxrun.errors import InvalidInput, Unauthorized
from boxrun.schemas.templates import ParamSpec, TemplatePut
from boxrun.services.templates import check_body
from boxrun.services.triggers import Headers, authenticate, payload_params
from boxrun.templating import placeholders, render


def _headers(**kw: str) -> Headers:
    fields = dict.fromkeys(Headers.__dataclass_fields__)
    return Headers(**{**fields, **kw})  # type: ignore[arg-type]


def test_param_declarations() -> None:
    assert ParamSpec(type="string").is_required
    assert not ParamSpec(type="string", default="a").is_required
    assert not ParamSpec(type="string", required=False).is_required
    for bad in (
        {"type": "choice"},
        {"type": "choice", "choices": ["a", "a"]},
        {"type": "string", "choices": ["a"]},
        {"type": "int", "default": True},
        {"type": "bool", "default": 1},
        {"type": "choice", "choices": ["a"], "default": "b"},
        {"type": "string", "default": "a", "required": True},
        {"type": "float"},
    ):
        with pytest.raises(ValidationError):
            ParamSpec.model_validate(bad)


def test_placeholders_and_rendering_of_nested_values() -> None:
    specs = {
        "s": ParamSpec(type="string"),
        "i": ParamSpec(type="int"),
        "b": ParamSpec(type="bool", default=True),
        "c": ParamSpec(type="choice", choices=["p", "q"]),
    }
    assert placeholders(specs) == {"s": "x", "i": 0, "b": True, "c": "p"}
    body = {"steps": {"a": {"requires": ["${{ params.c }}"], "env": {"K": "${{params.s}}-${{ params.i }}"}}}}
    assert render(body, {"s": "S", "i": "3", "c": "q"}) == {"steps": {"a": {"requires": ["q"], "env": {"K": "S-3"}}}}


def test_check_body_names_the_problem() -> None:
    put = TemplatePut.model_validate({"params": {}, "job": {"box": "b", "script": "${{ params.nope }}"}})
    with pytest.raises(InvalidInput) as err:
        check_body(put)
    assert err.value.field == "body.job" and "nope" in str(err.value)
    put = TemplatePut.model_validate({"params": {}, "pipeline": {"steps": {"a": {"box": "b"}}}})
    with pytest.raises(InvalidInput) as err:
        check_body(put)
    assert (err.value.field or "").startswith("body.pipeline")


def test_signatures() -> None:
    raw = b'{"ref": "x"}'
    sig = "sha256=" + hmac.new(b"k", raw, hashlib.sha256).hexdigest()
    assert authenticate("k", raw, _headers(hub_signature=sig)) == "github"
    assert authenticate("k", raw, _headers(gitlab_token="k")) == "gitlab"
    for h in (_headers(hub_signature=sig.upper()), _headers(gitlab_token="K"), _headers(), _headers(hub_signature="")):
        with pytest.raises(Unauthorized):
            authenticate("k", raw, h)
    with pytest.raises(Unauthorized):
        authenticate("k", raw + b" ", _headers(hub_signature=sig))


def test_payload_mapping() -> None:
    gh_push = {"ref": "refs/tags/v1", "after": "s", "repository": {"full_name": "o/r"}, "sender": {"login": "u"}}
    assert payload_params("github", "push", gh_push) == {
        "ref": "refs/tags/v1",
        "sha": "s",
        "repo": "o/r",
        "actor": "u",
        "event": "push",
    }
    gl_mr = {
        "object_kind": "merge_request",
        "object_attributes": {"source_branch": "f", "last_commit": {"id": "c"}},
        "project": {"path_with_namespace": "g/p"},
        "user": {"username": "m"},
    }
    assert payload_params("gitlab", None, gl_mr) == {"ref": "f", "sha": "c", "repo": "g/p", "actor": "m"}
    for bad in ({"zen": "x"}, {"ref": "r"}, {"ref": 5, "repository": {"full_name": "o/r"}}, "x", None):
        with pytest.raises(InvalidInput):
            payload_params("github", "push", bad)
