"""The request guard: an ASGI middleware that answers before any route (so before FastAPI reads and
parses a body) when a request is over the body limit (413) or carries no usable credentials (401).

Order, for HTTP requests:
1. A declared Content-Length over the route's limit: 413 at once, nothing read, before auth.
2. A protected route (everything under /api but the public ones) without a bearer token, or on a
   user route with a token that names no user: 401 at once, the body unread. Node tokens (the
   /api/agent routes) are looked up in Postgres by their dependency, which runs before the log
   ingest reads its body.
3. A body sent without Content-Length (chunked) is counted while the app reads it; past the limit
   the read raises BodyTooLarge, a 413.

The limit is `max_body_bytes` (1 MiB by default), `max_log_batch_bytes` (16 MiB) for the agent's
log ingest and artifact manifest pages, and `max_job_files_bytes` (1 GiB) for an upload
(POST /api/files, a raw body streamed to storage, never held in memory). WebSocket connections
authenticate themselves (`?token=` or the header).

The dashboard authenticates by cookie instead: a request without a bearer token but with the
`boxrun_session` cookie (`__Host-boxrun_session` over https) is checked against its session row
(the session, then its token and user: api/auth.py). A state-changing request (any method but
GET, HEAD, OPTIONS) authenticated so must carry the session's CSRF token in `X-CSRF-Token`, or
it is refused 403 before the route: the cookie is SameSite=Strict already, the header is the
second lock. `POST /api/session` (sign
in, with a token in the body) is public; a bearer token always wins over a cookie.
"""

from __future__ import annotations

import hmac
import re

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from boxrun.api.auth import SESSION_SCOPE_KEY, USER_SCOPE_KEY, authenticate, authenticate_session
from boxrun.api.errors import error_response
from boxrun.errors import Unauthorized
from boxrun.settings import Settings

PUBLIC = frozenset({"/api/health", "/api/ready"})
# a template's CI trigger: authenticated by the template's trigger secret, not a token
TRIGGER = re.compile(r"^/api/(orgs/[^/]+/)?templates/[^/]+/trigger$")
# the agent's log batches, and its artifact manifest pages (1,000 names of up to 8 KiB each)
LOG_INGEST = re.compile(r"^/api/agent/jobs/[^/]+/(logs|artifacts)$")
AGENT_PREFIX = "/api/agent/"
UPLOAD = "/api/files"
SESSION_PATH = "/api/session"
SESSION_COOKIE = "boxrun_session"
# Over https the cookie's name carries the __Host- prefix: a browser keeps such a cookie only if it
# is Secure, has Path=/ and no Domain, so neither a sibling subdomain nor a plain-http page can
# plant one (cookie tossing, which would sign the victim into the attacker's session).
SECURE_SESSION_COOKIE = f"__Host-{SESSION_COOKIE}"


def session_cookie_name(scheme: str) -> str:
    """The session cookie's name for a request of this URL scheme."""
    return SECURE_SESSION_COOKIE if scheme in ("https", "wss") else SESSION_COOKIE


CSRF_HEADER = "x-csrf-token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def too_large(limit: int) -> str:
    return f"a request body here may hold at most {limit} bytes"


class BodyTooLarge(StarletteHTTPException):
    """Raised from `receive` when a streamed body passes the limit; api.errors answers it as 413."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, too_large(limit))


def needs_token(path: str) -> bool:
    """Every route under /api but the public ones."""
    return path.startswith("/api/") and path not in PUBLIC and TRIGGER.match(path) is None


def _bearer(headers: Headers) -> str | None:
    scheme, _, token = headers.get("authorization", "").partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def _cookie(headers: Headers, name: str) -> str | None:
    for header in headers.getlist("cookie"):
        for part in header.split(";"):
            key, _, value = part.strip().partition("=")
            if key == name and value:
                return value
    return None


class RequestGuard:
    def __init__(self, app: ASGIApp, *, settings: Settings) -> None:
        self.app = app
        self.settings = settings

    def limit_for(self, path: str) -> int:
        if LOG_INGEST.match(path):
            return self.settings.max_log_batch_bytes
        if path == UPLOAD:
            return self.settings.max_job_files_bytes
        return self.settings.max_body_bytes

    async def refusal(self, scope: Scope) -> tuple[int, str] | None:
        """(status, reason) if the request is refused before the app sees it. A user's token is
        checked here (one query) and the user kept in the scope for the route's dependency."""
        headers = Headers(scope=scope)
        path: str = scope["path"]
        limit = self.limit_for(path)
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            return 413, too_large(limit)
        if not needs_token(path) or (path == SESSION_PATH and scope["method"] == "POST"):
            return None
        token = _bearer(headers)
        if token is None:
            secret = _cookie(headers, session_cookie_name(scope.get("scheme", "http")))
            if secret is None or path.startswith(AGENT_PREFIX):
                return 401, "missing bearer token"
            return await self.session_refusal(scope, headers, secret)
        if not path.startswith(AGENT_PREFIX):
            try:
                async with scope["app"].state.pool.acquire() as conn:
                    scope[USER_SCOPE_KEY] = await authenticate(conn, token)
            except Unauthorized as exc:
                return 401, exc.reason
        return None

    async def session_refusal(self, scope: Scope, headers: Headers, secret: str) -> tuple[int, str] | None:
        """Authenticate a dashboard request by its session cookie; CSRF header on state changes."""
        try:
            async with scope["app"].state.pool.acquire() as conn:
                user, session = await authenticate_session(conn, secret)
        except Unauthorized as exc:
            return 401, exc.reason
        if scope["method"] not in SAFE_METHODS:
            sent = headers.get(CSRF_HEADER, "")
            if not hmac.compare_digest(sent.encode(), session.csrf.encode()):
                return 403, "missing or wrong X-CSRF-Token header (a session's state changes need it)"
        scope[USER_SCOPE_KEY] = user
        scope[SESSION_SCOPE_KEY] = session
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refused = await self.refusal(scope)
        if refused is not None:
            code, reason = refused
            # No `Connection: close`: the server discards the unread body without buffering it, so
            # a client still sending gets to read the answer (a reset socket would lose it).
            headers = {"WWW-Authenticate": "Bearer"} if code == 401 else None
            await error_response(code, reason, headers=headers)(scope, receive, send)
            return

        limit = self.limit_for(scope["path"])
        received = 0
        started = False

        async def counted_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        async def watched_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, watched_send)
        except BodyTooLarge as exc:  # read outside a route (the app's handlers answer it inside one)
            if started:
                raise
            await error_response(413, str(exc.detail))(scope, receive, send)
