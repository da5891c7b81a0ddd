"""The transport under both client faces: one httpx connection pool, and the one place where an
API answer becomes a domain error (`boxrun.errors`) and an unreachable API becomes Unavailable."""

from __future__ import annotations

from typing import Any, TypeVar

import httpx
from pydantic import BaseModel, ValidationError

from boxrun import logcontext
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

M = TypeVar("M", bound=BaseModel)
_T = TypeVar("_T", bound="Transport")

DEFAULT_TIMEOUT_S = 30.0

# the inverse of api/errors.py's STATUS (400, 405 and 415 are malformed requests: invalid input)
ERROR_FOR_STATUS: dict[int, type[BoxrunError]] = {
    400: InvalidInput,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    405: InvalidInput,
    408: Unavailable,
    409: Conflict,
    410: Gone,
    413: TooLarge,
    415: InvalidInput,
    422: InvalidInput,
    429: Unavailable,
    502: Unavailable,
    503: Unavailable,
    504: Unavailable,
}


def is_permanent(status: int) -> bool:
    """A 4xx that the same request will get again (not 408 timeout, not 429 slow down)."""
    return 400 <= status < 500 and status not in (408, 429)


def error_from_answer(resp: httpx.Response) -> BoxrunError:
    """The domain error of an error answer, its reason the body's `detail` (ErrorBody; an older
    body with only `detail`, or no JSON at all, works too)."""
    detail: str | None = None
    field: str | None = None
    try:
        body = resp.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        raw = body.get("detail")
        detail = raw if isinstance(raw, str) else (None if raw is None else str(raw))
        errors = body.get("errors")
        if isinstance(errors, list) and errors and isinstance(errors[0], dict):
            first = errors[0].get("field")
            field = first if isinstance(first, str) else None
    reason = detail or f"HTTP {resp.status_code} from {resp.request.method} {resp.request.url.path}"
    cls = ERROR_FOR_STATUS.get(resp.status_code)
    if cls is InvalidInput:
        return InvalidInput(reason, field=field)
    if cls is Unavailable:
        retry = resp.headers.get("Retry-After", "")
        return Unavailable(reason, retry_after_s=float(retry) if retry.isdigit() else 1.0)
    if cls is not None:
        return cls(reason)
    return BoxrunError(f"{reason} (HTTP {resp.status_code})")


def unreachable(url: httpx.URL | str, exc: Exception) -> Unavailable:
    """An API that did not answer: one line with the address tried."""
    what = str(exc) or type(exc).__name__
    return Unavailable(f"cannot reach the boxrun API at {url}: {what}")


class Transport:
    """An httpx.AsyncClient with a bearer token, as an async context manager. Pass `http` to use a
    client made elsewhere (an ASGI app in a test); it is then not closed here."""

    def __init__(
        self,
        url: str,
        token: str,
        *,
        timeout: float = DEFAULT_TIMEOUT_S,
        transport: httpx.AsyncBaseTransport | None = None,
        max_connections: int = 100,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self._owned = http is None
        self.http = http or httpx.AsyncClient(
            base_url=url,
            timeout=timeout,
            headers={"Authorization": f"Bearer {token}"},
            transport=transport,
            limits=httpx.Limits(max_connections=max_connections),
        )

    @classmethod
    def over(cls: type[_T], http: httpx.AsyncClient) -> _T:
        """A client over an httpx.AsyncClient made elsewhere, with its base URL and headers (an
        ASGI app in a test, a test's raw client); closing this client leaves `http` open."""
        return cls("", "", http=http)

    @property
    def url(self) -> str:
        return str(self.http.base_url).rstrip("/")

    async def __aenter__(self: _T) -> _T:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._owned:
            await self.http.aclose()

    async def answer(self, method: str, path: str, **kw: Any) -> httpx.Response:
        """One request and whatever the API answered; Unavailable if it did not answer. Inside a
        log context with a request id (an agent's job) the request carries it as X-Request-ID."""
        request_id = logcontext.get("request_id")
        if request_id is not None:
            kw["headers"] = {logcontext.REQUEST_ID_HEADER: request_id, **(kw.get("headers") or {})}
        try:
            return await self.http.request(method, path, **kw)
        except httpx.HTTPError as exc:
            raise unreachable(self.http.base_url.join(path), exc) from exc

    async def send(self, method: str, path: str, **kw: Any) -> httpx.Response:
        """One request; a 2xx/3xx answer is returned, an error answer raised as its domain error."""
        resp = await self.answer(method, path, **kw)
        if resp.status_code >= 400:
            raise error_from_answer(resp)
        return resp

    async def call(self, model: type[M], method: str, path: str, **kw: Any) -> M:
        """One request whose answer is `model`."""
        resp = await self.send(method, path, **kw)
        try:
            return model.model_validate_json(resp.content)
        except ValidationError as exc:
            raise BoxrunError(
                f"{method} {path} answered a body that is not a {model.__name__}: {exc.error_count()} error(s)"
            ) from exc
