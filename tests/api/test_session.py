"""Dashboard sessions: sign in with a token for an HttpOnly, SameSite=Strict cookie; a request by
cookie is the token's user; state changes by cookie need the session's CSRF header (403 without);
sign-out, a revoked token or a disabled user end the session; an SSE stream opened with the cookie
is closed by the stream guard when the token is revoked, and when that session signs out. In-process,
on the real parts."""

from __future__ import annotations

from collections.abc import Callable

import asyncpg
import httpx
from fastapi import FastAPI

from boxrun.api.limits import SESSION_COOKIE
from tests.api.conftest import BASE_URL
from tests.api.test_revocation import base_url, open_streams, rest_of, revoked_event, user_token
from tests.integration.helpers import add_job

__all__ = ["base_url", "user_token"]  # fixtures used here


def _browser(app: FastAPI, base: str = BASE_URL) -> httpx.AsyncClient:
    """A client that, like a browser, sends no Authorization header: only the cookies it was given."""
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=base)


async def _sign_in(client: httpx.AsyncClient, token: str) -> str:
    resp = await client.post("/api/session", json={"token": token})
    assert resp.status_code == 201, resp.text
    csrf: str = resp.json()["csrf_token"]
    return csrf


async def test_signing_in_sets_an_httponly_strict_cookie_that_authenticates(app: FastAPI) -> None:
    async with _browser(app) as browser:
        assert (await browser.get("/api/me")).status_code == 401
        resp = await browser.post("/api/session", json={"token": "test-admin-token"})
        assert resp.status_code == 201, resp.text
        body = resp.json()
        assert body["user"]["role"] == "admin" and body["csrf_token"]
        cookie = resp.headers["set-cookie"]
        assert cookie.startswith(f"{SESSION_COOKIE}=")
        flags = {part.strip().lower() for part in cookie.split(";")[1:]}
        assert {"httponly", "samesite=strict", "path=/"} <= flags
        assert "secure" not in flags  # plain http here
        me = await browser.get("/api/me")
        assert me.status_code == 200, me.text
        assert me.json()["token_id"] == "tok_bootstrap"  # the session stands for its token
        again = await browser.get("/api/session")
        assert again.json()["csrf_token"] == body["csrf_token"]


async def test_the_cookie_is_secure_over_https(app: FastAPI) -> None:
    async with _browser(app, "https://boxrun.test") as browser:
        resp = await browser.post("/api/session", json={"token": "test-admin-token"})
        assert resp.status_code == 201
        assert "secure" in {p.strip().lower() for p in resp.headers["set-cookie"].split(";")}


async def test_a_bad_token_gets_no_session(app: FastAPI, db: asyncpg.Connection) -> None:
    async with _browser(app) as browser:
        resp = await browser.post("/api/session", json={"token": "brt_nope"})
        assert resp.status_code == 401
        assert "set-cookie" not in resp.headers
        assert (await browser.post("/api/session", json={"token": 5})).status_code == 422
    assert await db.fetchval("SELECT count(*) FROM ui_sessions") == 0


async def test_only_the_hash_of_the_cookie_is_stored(app: FastAPI, db: asyncpg.Connection) -> None:
    async with _browser(app) as browser:
        await _sign_in(browser, "test-admin-token")
        secret = browser.cookies[SESSION_COOKIE]
    rows = await db.fetch("SELECT id, token_id FROM ui_sessions")
    assert len(rows) == 1 and rows[0]["token_id"] == "tok_bootstrap"
    assert rows[0]["id"] != secret and len(rows[0]["id"]) == 64


async def test_state_changes_by_cookie_need_the_csrf_header(app: FastAPI, make_box: Callable) -> None:
    await make_box("b1")
    async with _browser(app) as browser:
        csrf = await _sign_in(browser, "test-admin-token")
        job = {"box": "b1", "script": "echo hi"}
        refused = await browser.post("/api/jobs", json=job)
        assert refused.status_code == 403, refused.text
        assert "X-CSRF-Token" in refused.json()["detail"]
        wrong = await browser.post("/api/jobs", json=job, headers={"X-CSRF-Token": csrf + "x"})
        assert wrong.status_code == 403
        maintenance = await browser.put("/api/boxes/b1/maintenance", json={"on": True})
        assert maintenance.status_code == 403
        made = await browser.post("/api/jobs", json=job, headers={"X-CSRF-Token": csrf})
        assert made.status_code == 201, made.text
        # reads need no header
        assert (await browser.get(f"/api/jobs/{made.json()['id']}")).status_code == 200


async def test_a_bearer_token_needs_no_csrf_and_wins_over_a_cookie(app: FastAPI, api: httpx.AsyncClient) -> None:
    async with _browser(app) as browser:
        await _sign_in(browser, "test-admin-token")
        # an invalid bearer token beside a valid cookie is refused: the header is what counts
        resp = await browser.get("/api/me", headers={"Authorization": "Bearer brt_wrong"})
        assert resp.status_code == 401
    assert (await api.put("/api/boxes/nope/maintenance", json={"on": True})).status_code == 404  # not 403


async def test_agent_routes_ignore_the_cookie(app: FastAPI) -> None:
    async with _browser(app) as browser:
        await _sign_in(browser, "test-admin-token")
        assert (await browser.get("/api/agent/me")).status_code == 401


async def test_signing_out_ends_the_session(app: FastAPI, db: asyncpg.Connection) -> None:
    async with _browser(app) as browser:
        csrf = await _sign_in(browser, "test-admin-token")
        secret = browser.cookies[SESSION_COOKIE]
        assert (await browser.delete("/api/session")).status_code == 403  # CSRF here too
        out = await browser.delete("/api/session", headers={"X-CSRF-Token": csrf})
        assert out.status_code == 204
        assert f"{SESSION_COOKIE}=" in out.headers["set-cookie"] and "max-age=0" in out.headers["set-cookie"].lower()
        assert (await browser.get("/api/me")).status_code == 401
    assert await db.fetchval("SELECT count(*) FROM ui_sessions") == 0
    async with _browser(app) as replay:  # the old cookie, sent again by hand, names nothing
        resp = await replay.get("/api/me", headers={"Cookie": f"{SESSION_COOKIE}={secret}"})
        assert resp.status_code == 401
        assert "no such session" in resp.json()["detail"]


async def test_revoking_the_token_or_disabling_the_user_ends_the_session(
    app: FastAPI, api: httpx.AsyncClient, user_token: Callable
) -> None:
    token_id, token = await user_token("val", "operator")
    _, other = await user_token("val")
    async with _browser(app) as first, _browser(app) as second:
        await _sign_in(first, token)
        await _sign_in(second, other)
        assert (await api.delete(f"/api/tokens/{token_id}")).status_code == 204
        resp = await first.get("/api/me")
        assert (resp.status_code, resp.json()["detail"]) == (401, "token revoked")
        assert (await second.get("/api/me")).status_code == 200
        assert (await api.patch("/api/users/val", json={"disabled": True})).status_code == 200
        resp = await second.get("/api/me")
        assert (resp.status_code, resp.json()["detail"]) == (401, "user val is disabled")


async def test_an_expired_session_is_refused(app: FastAPI, db: asyncpg.Connection) -> None:
    async with _browser(app) as browser:
        await _sign_in(browser, "test-admin-token")
        await db.execute("UPDATE ui_sessions SET expires_at = now() - interval '1 second'")
        resp = await browser.get("/api/me")
        assert (resp.status_code, resp.json()["detail"]) == (401, "session expired")


async def test_an_sse_stream_opened_with_the_cookie_ends_when_its_token_is_revoked(
    app: FastAPI, base_url: str, api: httpx.AsyncClient, db: asyncpg.Connection, user_token: Callable
) -> None:
    job_id = await add_job(db, group="g")  # queued, no workflow: its stream never ends by itself
    token_id, token = await user_token("vera")
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as browser:
        await _sign_in(browser, token)
        async with browser.stream("GET", f"/api/jobs/{job_id}/logs/stream") as resp:
            assert resp.status_code == 200, await resp.aread()
            assert resp.headers["content-type"].startswith("text/event-stream")
            await open_streams(app, 1)
            assert (await api.delete(f"/api/tokens/{token_id}")).status_code == 204
            text, _ = await rest_of(resp)
            assert revoked_event(text) == {"reason": "token revoked"}
    await open_streams(app, 0)


async def test_signing_out_ends_that_sessions_streams_and_no_other(
    app: FastAPI, base_url: str, db: asyncpg.Connection, user_token: Callable
) -> None:
    """Two sessions and a bearer stream on one token: signing out of one session closes its stream
    with "signed out"; the other session's stream and the bearer stream stay open."""
    job_id = await add_job(db, group="g")  # queued, no workflow: its streams never end by themselves
    _, token = await user_token("sol")
    path = f"/api/jobs/{job_id}/logs/stream"
    async with (
        httpx.AsyncClient(base_url=base_url, timeout=30) as leaving,
        httpx.AsyncClient(base_url=base_url, timeout=30) as staying,
        httpx.AsyncClient(base_url=base_url, timeout=30, headers={"Authorization": f"Bearer {token}"}) as bearer,
    ):
        csrf = await _sign_in(leaving, token)
        await _sign_in(staying, token)
        async with (
            leaving.stream("GET", path) as gone,
            staying.stream("GET", path) as kept,
            bearer.stream("GET", path) as plain,
        ):
            assert (gone.status_code, kept.status_code, plain.status_code) == (200, 200, 200)
            await open_streams(app, 3)
            # sign out with a second client holding the same cookie (the first is busy streaming)
            async with httpx.AsyncClient(base_url=base_url, cookies=leaving.cookies) as same_browser:
                resp = await same_browser.delete("/api/session", headers={"X-CSRF-Token": csrf})
                assert resp.status_code == 204, resp.text
            text, _ = await rest_of(gone)
            assert revoked_event(text) == {"reason": "signed out"}
            await open_streams(app, 2)  # the other session's stream and the bearer stream stay
            assert (await staying.get("/api/me")).status_code == 200
            assert (await leaving.get("/api/me")).status_code == 401
