"""Dashboard sessions: sign in with an API token for an HttpOnly, SameSite=Strict cookie; sign out.

The cookie holds a random secret; Postgres keeps only its hash, in a ui_sessions row that hangs
off the token the session was opened with (a request by cookie is checked as the token would be:
revoke the token or disable its user and the session is refused at once; its open streams are
closed by the stream guard, which watches the token id and the session, so signing out closes
them too). The page reads the session's
CSRF token from the sign-in answer or GET /api/session and sends it in `X-CSRF-Token` on every
state-changing request (api/limits.py refuses one without it, 403)."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Request, Response, status
from pydantic import BaseModel, ConfigDict, Field

from boxrun.api.auth import SESSION_SCOPE_KEY, Session, authenticate, hash_token
from boxrun.api.deps import ConnDep, CurrentUser, StreamGuardDep
from boxrun.api.errors import responses
from boxrun.api.limits import SECURE_SESSION_COOKIE, session_cookie_name
from boxrun.db import Q
from boxrun.errors import Unauthorized
from boxrun.schemas.people import MePublic

router = APIRouter(prefix="/session", tags=["session"])

# A session lasts a working day at most (and never longer than its token).
SESSION_TTL_S = 12 * 3600


class SessionCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    token: Annotated[str, Field(min_length=1, max_length=200, description="a user API token")]


class SessionPublic(BaseModel):
    user: MePublic
    csrf_token: str | None = Field(
        description="send it in the X-CSRF-Token header on every state-changing request; null when the "
        "request came with a bearer token (no session, no CSRF)"
    )
    expires_at: datetime | None = None


def _me(user: CurrentUser) -> MePublic:
    return MePublic(
        name=user.name, org=user.org_id, role=user.role, platform_admin=user.platform_admin, token_id=user.token_id
    )


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=SessionPublic,
    responses=responses(401, 422, e401="the token is not valid"),
)
async def sign_in(body: SessionCreate, request: Request, response: Response, conn: ConnDep) -> SessionPublic:
    """Sign in with a token: sets the `boxrun_session` cookie (HttpOnly, SameSite=Strict, Secure
    over https, path /) and answers the session's CSRF token."""
    # (over https the cookie is named __Host-boxrun_session: api/limits.py says why)
    user = await authenticate(conn, body.token)
    if user.token_id is None:  # every token row has an id; a test-built user has none
        raise Unauthorized("this token cannot open a session")
    ttl = SESSION_TTL_S
    token = await conn.fetchrow(Q.get_api_token, user.token_id)
    if token is not None and token["expires_at"] is not None:  # never longer than its token
        ttl = max(1, min(ttl, int((token["expires_at"] - datetime.now(UTC)).total_seconds())))
    secret = secrets.token_urlsafe(32)
    csrf = secrets.token_urlsafe(24)
    expires_at = await conn.fetchval(Q.create_session, hash_token(secret), user.token_id, csrf, float(ttl))
    name = session_cookie_name(request.url.scheme)
    response.set_cookie(
        name,
        secret,
        max_age=ttl,
        path="/",
        httponly=True,
        samesite="strict",
        secure=name == SECURE_SESSION_COOKIE,
    )
    return SessionPublic(user=_me(user), csrf_token=csrf, expires_at=expires_at)


@router.get("", response_model=SessionPublic, responses=responses(401, e401="no valid session cookie or token"))
async def current_session(request: Request, user: CurrentUser) -> SessionPublic:
    """Who the session cookie names, and its CSRF token (the page asks after a reload)."""
    session: Session | None = request.scope.get(SESSION_SCOPE_KEY)
    return SessionPublic(user=_me(user), csrf_token=session.csrf if session is not None else None)


@router.delete(
    "",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=responses(401, 403, e403="missing or wrong X-CSRF-Token header"),
)
async def sign_out(
    request: Request,
    conn: ConnDep,
    guard: StreamGuardDep,
    user: CurrentUser,  # noqa: ARG001
) -> Response:
    """Sign out: the session row is deleted and the cookie cleared (with a bearer token: nothing to
    do). The session's open streams end with `event: revoked` {"reason": "signed out"}: at once on
    this API process, within `auth_recheck_s` on the others."""
    session: Session | None = request.scope.get(SESSION_SCOPE_KEY)
    if session is not None:
        await conn.execute(Q.delete_session, session.id)
        guard.kick()
    response = Response(status_code=status.HTTP_204_NO_CONTENT)
    name = session_cookie_name(request.url.scheme)
    response.delete_cookie(name, path="/", secure=name == SECURE_SESSION_COOKIE, httponly=True, samesite="strict")
    return response
