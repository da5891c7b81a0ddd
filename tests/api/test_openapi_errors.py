"""Every error answer a route can give is in the OpenAPI document, with the ErrorBody schema."""

from __future__ import annotations

from typing import Any

from boxrun.api.app import create_app
from boxrun.settings import Settings

ADMIN_ONLY = {
    ("post", "/api/boxes"),
    ("post", "/api/boxes/{name}/token"),
    ("put", "/api/boxes/{name}/maintenance"),
    ("post", "/api/boxes/{name}/maintenance/windows"),
    ("delete", "/api/boxes/{name}/maintenance/windows/{window_id}"),
    ("put", "/api/secrets/{name}"),
    ("delete", "/api/secrets/{name}"),
}
# Routes whose {name} is created when missing (create or replace): they cannot answer 404.
CREATE_BY_NAME = {("put", "/api/secrets/{name}"), ("put", "/api/templates/{name}")}
# Routes that answer a name they do not know as they answer a bad credential (401): a template's
# CI trigger tells nobody which names exist.
NAME_UNKNOWN_IS_401 = {
    ("post", "/api/orgs/{org}/templates/{name}/trigger"),
    ("post", "/api/templates/{name}/trigger"),
}


def _operations() -> list[tuple[str, str, dict[str, Any]]]:
    spec = create_app(Settings()).openapi()
    return [(method, path, op) for path, ops in spec["paths"].items() for method, op in ops.items()]


def test_every_error_response_has_the_error_body_schema() -> None:
    wrong = [
        f"{method.upper()} {path} {code}"
        for method, path, op in _operations()
        for code, answer in op["responses"].items()
        if code[0] in "45"
        and answer["content"]["application/json"]["schema"] != {"$ref": "#/components/schemas/ErrorBody"}
    ]
    assert not wrong, wrong
    schemas = create_app(Settings()).openapi()["components"]["schemas"]
    assert "HTTPValidationError" not in schemas, "FastAPI's own 422 body is never sent"


def test_routes_document_401_403_and_404_where_they_can_answer_them() -> None:
    for method, path, op in _operations():
        codes = set(op["responses"])
        if op.get("security") or (method, path) in NAME_UNKNOWN_IS_401:
            assert "401" in codes, (method, path)
        if (method, path) in ADMIN_ONLY:
            assert "403" in codes, (method, path)
        if ("{job_id}" in path or "{name}" in path) and (method, path) not in CREATE_BY_NAME | NAME_UNKNOWN_IS_401:
            assert "404" in codes, (method, path)
        if op.get("parameters") or op.get("requestBody"):
            assert "422" in codes, (method, path)
    ingest = {(m, p): op for m, p, op in _operations()}[("post", "/api/agent/jobs/{job_id}/logs")]
    # another box's job is 404 for a node token (it does not exist for it), never 403
    assert {"404", "409", "413", "422"} <= set(ingest["responses"]) and "403" not in ingest["responses"]
