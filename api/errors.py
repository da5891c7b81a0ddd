"""The one place where errors become HTTP answers: each domain error class has one status, and
every error answer (domain, validation, routing, an unavailable dependency) has the body
`boxrun.schemas.ErrorBody`."""

from __future__ import annotations

import logging
from typing import Any

import asyncpg
from fastapi import FastAPI, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from boxrun.errors import (
    BoxrunError,
    Conflict,
    Forbidden,
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
    413: "too_large",
    415: "unsupported_media_type",
    422: "invalid_input",
    503: "unavailable",
}
_DESCRIPTIONS = {
    401: "missing, unknown, expired or revoked token",
    403: "the caller may not do this",
    404: "no such resource (or not one the caller may see)",
    409: "conflicts with the resource's current state",
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
    body = ErrorBody(
        detail=detail[: MAX_MESSAGE * 4], code=code or _CODES.get(status_code, "error"), errors=errors or []
    )
    return JSONResponse(body.model_dump(), status_code=status_code, headers=headers)


def responses(*codes: int, **described: str) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses=` for routes: each code documented with the ErrorBody schema.
    `described` overrides a description: responses(404, 409, e409="the job already ended")."""
    out: dict[int | str, dict[str, Any]] = {}
    for code in codes:
        out[code] = {"model": ErrorBody, "description": described.get(f"e{code}", _DESCRIPTIONS.get(code, "error"))}
    return out


def _field(loc: tuple[Any, ...] | list[Any]) -> str:
    return ".".join(str(part) for part in loc) or "body"


def _validation_errors(exc: RequestValidationError) -> list[FieldError]:
    """Each error's place and message, never the submitted value (a 50 MB script is not echoed)."""
    out = []
    for err in exc.errors()[:MAX_FIELD_ERRORS]:
        message = str(err.get("msg", "invalid"))
        out.append(FieldError(field=_field(err.get("loc", ())), message=message[:MAX_MESSAGE]))
    return out


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
    async def _http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        return error_response(exc.status_code, detail, headers=getattr(exc, "headers", None))

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
