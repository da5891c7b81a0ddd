"""The one place where errors become HTTP answers: each domain error class has one status, and
every error answer (domain, validation, routing, an unavailable dependency) has the body
`boxrun.schemas.ErrorBody`."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import asyncpg
from fastapi import FastAPI, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from boxrun.errors import (
    BoxrunError,
    Conflict,
    Forbidden,
    Gone,
    InvalidInput,
    NotFound,
    TooLarge,
    Unauthorized,
    Unavailable,
)
from boxrun.schemas import ErrorBody, FieldError

log = logging.getLogger(__name__)

STATUS: dict[type[BoxrunError], int] = {
    NotFound: status.HTTP_404_NOT_FOUND,
    Conflict: status.HTTP_409_CONFLICT,
    Gone: status.HTTP_410_GONE,
    Unauthorized: status.HTTP_401_UNAUTHORIZED,
    Forbidden: status.HTTP_403_FORBIDDEN,
    InvalidInput: status.HTTP_422_UNPROCESSABLE_CONTENT,
    TooLarge: status.HTTP_413_CONTENT_TOO_LARGE,
    Unavailable: status.HTTP_503_SERVICE_UNAVAILABLE,
}
_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    410: "gone",
    413: "too_large",
    415: "unsupported_media_type",
    422: "invalid_input",
    503: "unavailable",
}
_DESCRIPTIONS = {
    400: "the body could not be read as JSON (e.g. it is not UTF-8)",
    401: "missing, unknown, expired or revoked token",
    403: "the caller may not do this",
    404: "no such resource (or not one the caller may see)",
    409: "conflicts with the resource's current state",
    410: "deleted on purpose (by a person or the org's retention): `detail` says who or what, and when",
    413: "the request body is over the limit",
    422: "invalid input: `errors` names each field",
    503: "a dependency (Postgres, Temporal, storage) is unavailable; nothing was written; retry",
}
MAX_FIELD_ERRORS = 20
MAX_MESSAGE = 300


def status_of(exc: BoxrunError) -> int:
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return status.HTTP_500_INTERNAL_SERVER_ERROR


def error_response(
    status_code: int,
    detail: str,
    *,
    code: str | None = None,
    errors: list[FieldError] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    text = detail[: MAX_MESSAGE * 4].encode("utf-8", "backslashreplace").decode()  # no lone surrogate
    body = ErrorBody(detail=text, code=code or _CODES.get(status_code, "error"), errors=errors or [])
    return JSONResponse(body.model_dump(), status_code=status_code, headers=headers)


def responses(*codes: int, **described: str) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses=` for routes: each code documented with the ErrorBody schema.
    `described` overrides a description: responses(404, 409, e409="the job already ended")."""
    out: dict[int | str, dict[str, Any]] = {}
    for code in codes:
        out[code] = {"model": ErrorBody, "description": described.get(f"e{code}", _DESCRIPTIONS.get(code, "error"))}
    return out


_METHODS = ("get", "put", "post", "delete", "patch", "head", "options")


def document_errors(spec: dict[str, Any], *, authenticated: Callable[[str], bool]) -> dict[str, Any]:
    """Complete an OpenAPI document's error answers, the same way on every operation: 401 where a
    token is needed, 400/413 where a body is read, 422 where anything is validated, and every
    4xx/5xx with the ErrorBody schema (FastAPI's own HTTPValidationError is never sent)."""
    error_body = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
    for path, item in spec.get("paths", {}).items():
        for method in _METHODS:
            op = item.get(method)
            if op is None:
                continue
            answers: dict[str, Any] = op.setdefault("responses", {})
            wanted = []
            if authenticated(path):
                wanted.append(401)
            if "requestBody" in op:
                wanted.append(413)
                if "application/json" in op["requestBody"].get("content", {}):
                    wanted.append(400)  # FastAPI's answer to a body it cannot decode
            if "requestBody" in op or op.get("parameters"):
                wanted.append(422)
            for wanted_code in wanted:
                answers.setdefault(str(wanted_code), {"description": _DESCRIPTIONS[wanted_code]})
            for code, answer in answers.items():
                if code[0] in "45":
                    if code == "422" and answer.get("description") == "Validation Error":  # FastAPI's
                        answer["description"] = _DESCRIPTIONS[422]
                    answer["content"] = error_body
    schemas = spec.get("components", {}).get("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    schemas.setdefault("ErrorBody", ErrorBody.model_json_schema(ref_template="#/components/schemas/{model}"))
    for name, schema in (
        ErrorBody.model_json_schema(ref_template="#/components/schemas/{model}").get("$defs", {}).items()
    ):
        schemas.setdefault(name, schema)
    schemas["ErrorBody"].pop("$defs", None)
    return spec


MAX_FIELD_PART = 80


def _field(loc: tuple[Any, ...] | list[Any]) -> str:
    """body.files.<key>.[key]: a dict key is part of the place, so it is shortened (it may be
    the submitted value at fault) and anything that is not text is escaped."""
    parts = []
    for part in loc:
        text = str(part).encode("utf-8", "backslashreplace").decode()
        parts.append(text if len(text) <= MAX_FIELD_PART else f"{text[:MAX_FIELD_PART]}...")
    return ".".join(parts) or "body"


def _validation_errors(exc: RequestValidationError) -> list[FieldError]:
    """Each error's place and message, never the submitted value (a 50 MB script is not echoed)."""
    out = []
    for err in exc.errors()[:MAX_FIELD_ERRORS]:
        message = str(err.get("msg", "invalid"))[:MAX_MESSAGE].encode("utf-8", "backslashreplace").decode()
        out.append(FieldError(field=_field(err.get("loc", ())), message=message))
    return out


def _allowed_methods(request: Request) -> list[str]:
    methods: set[str] = set()
    for route in request.app.router.routes:
        match, _ = route.matches(request.scope)
        if match != Match.NONE:
            methods |= getattr(route, "methods", None) or set()
    return sorted(methods)


def install(app: FastAPI) -> None:
    """Register the handlers on `app`."""

    @app.exception_handler(BoxrunError)
    async def _domain(request: Request, exc: BoxrunError) -> JSONResponse:
        code = status_of(exc)
        errors = None
        if isinstance(exc, InvalidInput) and exc.field:
            errors = [FieldError(field=exc.field, message=exc.reason[:MAX_MESSAGE])]
        headers = None
        if isinstance(exc, Unauthorized):
            headers = {"WWW-Authenticate": "Bearer"}
        elif isinstance(exc, Unavailable):
            headers = {"Retry-After": str(max(1, round(exc.retry_after_s)))}
        if code >= 500:
            log.error("%s %s failed: %s", request.method, request.url.path, exc)
        return error_response(code, exc.reason, code=exc.code, errors=errors, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = _validation_errors(exc)
        first = errors[0] if errors else FieldError(field="body", message="invalid")
        more = f" (and {len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
        return error_response(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            f"{first.field}: {first.message}{more}",
            code="invalid_input",
            errors=errors,
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        headers = getattr(exc, "headers", None)
        if exc.status_code == status.HTTP_405_METHOD_NOT_ALLOWED:
            # Starlette names the methods of the first route matching the path only; a path
            # served by several routes (GET and POST /api/jobs) allows the union.
            headers = {**(headers or {}), "Allow": ", ".join(_allowed_methods(request))}
        return error_response(exc.status_code, detail, headers=headers)

    @app.exception_handler(asyncpg.PostgresConnectionError)
    @app.exception_handler(asyncpg.OperatorInterventionError)  # shutting down, cannot connect now
    @app.exception_handler(asyncpg.InternalClientError)  # a connection the server closed mid-use
    @app.exception_handler(asyncpg.InterfaceError)
    @app.exception_handler(ConnectionError)
    async def _database_unavailable(request: Request, exc: Exception) -> JSONResponse:
        log.warning("database unavailable during %s %s: %s", request.method, request.url.path, exc)
        return error_response(
            status.HTTP_503_SERVICE_UNAVAILABLE, "database unavailable, retry shortly", headers={"Retry-After": "1"}
        )
