"""Attack probes against issue 12's dashboard sessions (POST/GET/DELETE /api/session, the cookie
and CSRF checks of api/limits.py, the stream guard on sign-out) and the new log reads (?stream=,
?tail=, logs.txt): wrong credentials of every kind, another org's job, NUL and huge values."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta

import asyncpg
import httpx
import pytest
from fastapi import FastAPI

from boxrun.api.limits import SESSION_COOKIE
from tests.api.conftest import ADMIN_TOKEN, BASE_URL, _client
from tests.api.people_fixtures import add_org, add_user
from tests.api.test_logs_text import job_with_lines
from tests.api.test_revocation import base_url, open_streams, rest_of, revoked_event, user_token
from tests.integration.helpers import add_job

__all__ = ["base_url", "user_token"]  # fixtures used here


def _browser(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE_URL)


async def _sign_in(client: httpx.AsyncClient, token: str) -> str:
    resp = await client.post("/api/session", json={"token": token})
    assert resp.status_code == 201, resp.text
    csrf: str = resp.json()["csrf_token"]
    return csrf


async def _sessions(db: asyncpg.Connection) -> int:
    n: int = await db.fetchval("SELECT count(*) FROM ui_sessions")
    return n


# ---------------------------------------------------------------- sign in


@pytest.mark.parametrize(
    "token",
    ["\x00", "brt_\x00abc", "a" * 200, "\ud800", "brt_" + "\udfff" * 10, " ", "Bearer test-admin-token"],
)
async def test_signing_in_with_a_garbage_token_is_a_4xx_and_no_session(
    app: FastAPI, db: asyncpg.Connection, token: str
) -> None:
    import json

    async with _browser(app) as browser:
        resp = await browser.post(
            "/api/session",
            content=json.dumps({"token": token}),  # ensure_ascii: a lone surrogate goes as \ud800
            headers={"Content-Type": "application/json"},
        )
        assert resp.status_code in (401, 422), (token, resp.status_code, resp.text)
        assert "set-cookie" not in resp.headers
    assert await _sessions(db) == 0


async def test_signing_in_with_an_oversized_token_or_body(app: FastAPI, db: asyncpg.Connection) -> None:
    async with _browser(app) as browser:
        resp = await browser.post("/api/session", json={"token": "a" * 201})
        assert resp.status_code == 422
        assert "a" * 201 not in resp.text  # the refusal does not echo a token back
        resp = await browser.post("/api/session", json={"token": "x" * 2_000_000})
        assert resp.status_code == 413
        resp = await browser.post("/api/session", json={"token": ADMIN_TOKEN, "role": "admin"})
        assert resp.status_code == 422  # extra fields are refused
    assert await _sessions(db) == 0


async def test_a_node_token_opens_no_session(app: FastAPI, db: asyncpg.Connection, make_box: Callable) -> None:
    box = await make_box("b1")
    async with _browser(app) as browser:
        resp = await browser.post("/api/session", json={"token": box.token})
        assert resp.status_code == 401, resp.text
        assert "set-cookie" not in resp.headers
    assert await _sessions(db) == 0


async def test_a_revoked_expired_or_disabled_token_opens_no_session(
    app: FastAPI, api: httpx.AsyncClient, db: asyncpg.Connection, user_token: Callable
) -> None:
    revoked_id, revoked = await user_token("rita", "operator")
    assert (await api.delete(f"/api/tokens/{revoked_id}")).status_code == 204
    expired_id, expired = await user_token("rita", "operator", expires_in_s=1)
    await db.execute("UPDATE api_tokens SET expires_at = now() - interval '1 second' WHERE id = $1", expired_id)
    _, disabled = await user_token("dora", "operator")
    assert (await api.patch("/api/users/dora", json={"disabled": True})).status_code == 200
    async with _browser(app) as browser:
        for token, why in ((revoked, "token revoked"), (expired, "token expired"), (disabled, "disabled")):
            resp = await browser.post("/api/session", json={"token": token})
            assert resp.status_code == 401, (why, resp.text)
            assert why in resp.json()["detail"]
    assert await _sessions(db) == 0


async def test_login_csrf_a_cross_site_form_cannot_sign_the_victim_in(app: FastAPI, db: asyncpg.Connection) -> None:
    """A page of another site may POST a form (no preflight) with enctype text/plain or
    x-www-form-urlencoded, shaped like JSON: it must not open a session (an attacker's account
    in the victim's browser)."""
    async with _browser(app) as browser:
        for ctype, body in (
            ("text/plain", '{"token": "test-admin-token", "x": "="}'),
            ("application/x-www-form-urlencoded", 'token=test-admin-token&{"token":"test-admin-token"}='),
            (
                "multipart/form-data; boundary=x",
                '--x\r\nContent-Disposition: form-data; name="token"\r\n\r\nt\r\n--x--',
            ),
        ):
            resp = await browser.post("/api/session", content=body, headers={"Content-Type": ctype})
            assert resp.status_code in (400, 415, 422), (ctype, resp.status_code, resp.text)
            assert "set-cookie" not in resp.headers
    assert await _sessions(db) == 0


async def test_the_session_never_outlives_its_token(app: FastAPI, user_token: Callable) -> None:
    """session.py: "A session lasts a working day at most (and never longer than its token)". The
    token's own expiry is checked on every request anyway; the session's expires_at and the
    cookie's Max-Age must not promise 12 hours for a token that ends in one minute."""
    _, token = await user_token("tess", "viewer", expires_in_s=60)
    async with _browser(app) as browser:
        resp = await browser.post("/api/session", json={"token": token})
        assert resp.status_code == 201
        expires_at = datetime.fromisoformat(resp.json()["expires_at"])
        assert expires_at <= datetime.now(UTC) + timedelta(seconds=61), expires_at
        max_age = int(resp.headers["set-cookie"].lower().split("max-age=")[1].split(";")[0])
        assert 1 <= max_age <= 60, max_age
    async with _browser(app) as browser:  # a token without expiry: the working day
        resp = await browser.post("/api/session", json={"token": ADMIN_TOKEN})
        assert "max-age=43200" in resp.headers["set-cookie"].lower()


# ---------------------------------------------------------------- the cookie and the CSRF header


@pytest.mark.parametrize(
    "cookie",
    [
        f"{SESSION_COOKIE}=",
        f"{SESSION_COOKIE}=\x7f",
        f"{SESSION_COOKIE}=" + "A" * 8000,
        f"{SESSION_COOKIE}=%00",
        f"{SESSION_COOKIE}=a; {SESSION_COOKIE}=b",
        f"{SESSION_COOKIE}",
        f"x={SESSION_COOKIE}=abc",
        ";;;;=;=",
    ],
)
async def test_a_garbage_cookie_is_a_401(app: FastAPI, cookie: str) -> None:
    async with _browser(app) as browser:
        resp = await browser.get("/api/me", headers={"Cookie": cookie})
        assert resp.status_code == 401, (cookie, resp.status_code, resp.text)
        resp = await browser.post("/api/jobs", json={}, headers={"Cookie": cookie, "X-CSRF-Token": "x"})
        assert resp.status_code == 401, (cookie, resp.status_code)


async def test_one_sessions_csrf_token_does_not_unlock_another_session(
    app: FastAPI, make_box: Callable, user_token: Callable
) -> None:
    await make_box("b1")
    _, token = await user_token("otto", "operator")
    async with _browser(app) as victim, _browser(app) as attacker:
        await _sign_in(victim, token)
        attacker_csrf = await _sign_in(attacker, token)  # the same token, even: a CSRF token is per session
        resp = await victim.post(
            "/api/jobs", json={"box": "b1", "script": "true"}, headers={"X-CSRF-Token": attacker_csrf}
        )
        assert resp.status_code == 403, resp.text
        for bad in ("", " ", "\x00", "null", "undefined", "a" * 5000):
            resp = await victim.delete("/api/session", headers={"X-CSRF-Token": bad})
            assert resp.status_code in (400, 403), (bad, resp.status_code)


async def test_every_state_changing_method_needs_the_csrf_header(app: FastAPI, make_box: Callable) -> None:
    """Not only POST: PUT, PATCH, DELETE (and unusual methods) by cookie are refused without it."""
    await make_box("b1")
    async with _browser(app) as browser:
        await _sign_in(browser, ADMIN_TOKEN)
        for method, path in (
            ("PUT", "/api/boxes/b1/maintenance"),
            ("PATCH", "/api/users/nobody"),
            ("DELETE", "/api/boxes/b1"),
            ("POST", "/api/users"),
            ("PROPFIND", "/api/jobs"),
            ("TRACE", "/api/jobs"),
        ):
            resp = await browser.request(method, path, json={"on": True})
            assert resp.status_code in (403, 405), (method, path, resp.status_code)
            if method in ("PUT", "PATCH", "DELETE", "POST"):
                assert resp.status_code == 403, (method, path)
        assert (await browser.get("/api/boxes/b1")).json()["maintenance"] is False


async def test_a_viewers_session_cannot_change_state_even_with_the_csrf_header(
    app: FastAPI, make_box: Callable, user_token: Callable
) -> None:
    await make_box("b1")
    _, token = await user_token("vera", "viewer")
    async with _browser(app) as browser:
        csrf = await _sign_in(browser, token)
        resp = await browser.post("/api/jobs", json={"box": "b1", "script": "true"}, headers={"X-CSRF-Token": csrf})
        assert resp.status_code == 403, resp.text
        resp = await browser.put("/api/boxes/b1/maintenance", json={"on": True}, headers={"X-CSRF-Token": csrf})
        assert resp.status_code == 403, resp.text


async def test_get_session_by_bearer_gives_no_csrf_and_reveals_no_secret(app: FastAPI, api: httpx.AsyncClient) -> None:
    resp = await api.get("/api/session")
    assert resp.status_code == 200 and resp.json()["csrf_token"] is None
    assert ADMIN_TOKEN not in resp.text
    async with _browser(app) as browser:
        signed = await browser.post("/api/session", json={"token": ADMIN_TOKEN})
        assert ADMIN_TOKEN not in signed.text
        assert browser.cookies[SESSION_COOKIE] not in signed.text  # the secret is in the cookie only


async def test_sign_out_with_a_bearer_token_or_a_dead_cookie(app: FastAPI, api: httpx.AsyncClient) -> None:
    assert (await api.delete("/api/session")).status_code == 204  # bearer: nothing to do
    async with _browser(app) as browser:
        csrf = await _sign_in(browser, ADMIN_TOKEN)
        assert (await browser.delete("/api/session", headers={"X-CSRF-Token": csrf})).status_code == 204
        again = await browser.delete("/api/session", headers={"X-CSRF-Token": csrf, "Cookie": f"{SESSION_COOKIE}=gone"})
        assert again.status_code == 401


async def test_another_orgs_session_sees_nothing_of_this_org(
    app: FastAPI, api: httpx.AsyncClient, db: asyncpg.Connection, make_box: Callable
) -> None:
    await make_box("b1")
    job = (await api.post("/api/jobs", json={"box": "b1", "script": "echo secret-of-default"})).json()
    await add_org(db, "other")
    stranger = await add_user(db, "mallory", "other", "admin")
    async with _browser(app) as browser:
        csrf = await _sign_in(browser, stranger.token)
        for path in (f"/api/jobs/{job['id']}", f"/api/jobs/{job['id']}/logs", f"/api/jobs/{job['id']}/logs.txt"):
            assert (await browser.get(path)).status_code == 404, path
        resp = await browser.post(f"/api/jobs/{job['id']}/cancel", headers={"X-CSRF-Token": csrf})
        assert resp.status_code == 404
        listing = await browser.get("/api/jobs")
        assert job["id"] not in listing.text and "secret-of-default" not in listing.text


# ---------------------------------------------------------------- the stream guard


@asynccontextmanager
async def _cookie_sse(base: str, job_id: str, cookie: str) -> AsyncIterator[httpx.Response]:
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        async with client.stream(
            "GET", f"/api/jobs/{job_id}/logs/stream", headers={"Cookie": f"{SESSION_COOKIE}={cookie}"}
        ) as resp:
            assert resp.status_code == 200, await resp.aread()
            yield resp


async def test_signing_out_one_session_closes_only_its_streams(
    app: FastAPI, base_url: str, db: asyncpg.Connection, user_token: Callable
) -> None:
    """Two sessions of ONE token (two browsers of one person) and a bearer stream of that token:
    signing out the first closes the first's stream only; revoking the token then closes the rest."""
    job_id = await add_job(db, group="g")  # queued, no workflow: its stream never ends by itself
    token_id, token = await user_token("sam")
    async with httpx.AsyncClient(base_url=base_url) as one, httpx.AsyncClient(base_url=base_url) as two:
        csrf = await _sign_in(one, token)
        await _sign_in(two, token)
        first_cookie, second_cookie = one.cookies[SESSION_COOKIE], two.cookies[SESSION_COOKIE]
        async with (
            _cookie_sse(base_url, job_id, first_cookie) as first,
            _cookie_sse(base_url, job_id, second_cookie) as second,
            httpx.AsyncClient(base_url=base_url, timeout=30) as bearer_client,
            bearer_client.stream(
                "GET", f"/api/jobs/{job_id}/logs/stream", headers={"Authorization": f"Bearer {token}"}
            ) as third,
        ):
            await open_streams(app, 3)
            assert (await one.delete("/api/session", headers={"X-CSRF-Token": csrf})).status_code == 204
            text, _ = await rest_of(first)
            assert revoked_event(text) == {"reason": "signed out"}
            await asyncio.sleep(0.3)
            assert app.state.stream_guard.open_streams == 2  # the other session and the bearer stream
            async with _client(app, ADMIN_TOKEN) as admin:
                assert (await admin.delete(f"/api/tokens/{token_id}")).status_code == 204
            for resp in (second, third):
                text, _ = await rest_of(resp)
                assert revoked_event(text) == {"reason": "token revoked"}
    await open_streams(app, 0)


# ---------------------------------------------------------------- logs: ?stream=, ?tail=, logs.txt


@pytest.mark.parametrize(
    "params",
    [
        {"tail": "0"},
        {"tail": "-1"},
        {"tail": "10001"},
        {"tail": str(2**63)},
        {"tail": "1e3"},
        {"tail": "\x00"},
        {"tail": "5", "after": "1"},
        {"tail": "5", "limit": "5"},
        {"stream": "STDOUT"},
        {"stream": "stdout\x00"},
        {"stream": "../stdout"},
        {"stream": "x" * 10_000},
        {"after": "-1"},
        {"after": str(2**64)},
        {"limit": "0"},
        {"limit": "10001"},
        {"tial": "5"},
    ],
)
async def test_bad_log_reads_are_a_422(api: httpx.AsyncClient, db: asyncpg.Connection, params: dict) -> None:
    job_id = await add_job(db, group="g")
    resp = await api.get(f"/api/jobs/{job_id}/logs", params=params)
    assert resp.status_code == 422, (params, resp.status_code, resp.text[:300])
    assert "x" * 10_000 not in resp.text


async def test_tail_of_a_stream_with_no_lines_and_of_a_huge_count(
    api: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    job_id, lines = await job_with_lines(db)
    resp = await api.get(f"/api/jobs/{job_id}/logs", params={"tail": 10_000, "stream": "output"})
    assert resp.status_code == 200 and resp.json()["data"] == []
    resp = await api.get(f"/api/jobs/{job_id}/logs", params={"tail": 10_000})
    assert [d["seq"] for d in resp.json()["data"]] == [s for s, _, _ in lines]


@pytest.mark.parametrize("params", [{"stream": "bogus"}, {"stream": "\x00"}, {"tail": "5"}, {"format": "html"}])
async def test_bad_transcript_parameters_are_a_422(
    api: httpx.AsyncClient, db: asyncpg.Connection, params: dict
) -> None:
    job_id = await add_job(db, group="g")
    resp = await api.get(f"/api/jobs/{job_id}/logs.txt", params=params)
    assert resp.status_code == 422, (params, resp.status_code, resp.text[:300])


@pytest.mark.parametrize("job_id", ["not-a-uuid", "..", "%00", "00000000-0000-0000-0000-000000000000", "a" * 5000])
async def test_transcript_of_no_such_job_is_a_404(api: httpx.AsyncClient, job_id: str) -> None:
    resp = await api.get(f"/api/jobs/{job_id}/logs.txt")
    assert resp.status_code in (404, 414, 422), (job_id, resp.status_code)
    assert "a" * 500 not in resp.text


async def test_transcript_by_role_org_and_credential(
    app: FastAPI,
    api: httpx.AsyncClient,
    db: asyncpg.Connection,
    as_token: Callable,
    make_box: Callable,
    user_token: Callable,
) -> None:
    job_id, _ = await job_with_lines(db)
    before = await db.fetchval("SELECT count(*) FROM audit_log WHERE action = 'transcript.download'")
    # a viewer of the org reads it (viewers read everything of their org)
    _, viewer = await user_token("vic", "viewer")
    resp = await as_token(viewer).get(f"/api/jobs/{job_id}/logs.txt")
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/plain")
    assert resp.headers["content-disposition"] == f'attachment; filename="{job_id}.log"'
    assert resp.headers.get("cache-control") == "no-store"
    # another org's admin: 404, nothing audited for them
    await add_org(db, "other")
    stranger = await add_user(db, "mallory", "other", "admin")
    resp = await as_token(stranger.token).get(f"/api/jobs/{job_id}/logs.txt")
    assert resp.status_code == 404 and "line 1" not in resp.text
    # a revoked token
    revoked_id, revoked = await user_token("vic", "viewer")
    assert (await api.delete(f"/api/tokens/{revoked_id}")).status_code == 204
    resp = await as_token(revoked).get(f"/api/jobs/{job_id}/logs.txt")
    assert (resp.status_code, resp.json()["detail"]) == (401, "token revoked")
    # a box's node token, on a job not its own (and on the user API at all)
    box = await make_box("b1")
    resp = await box.agent.get(f"/api/jobs/{job_id}/logs.txt")
    assert resp.status_code == 401, resp.text
    resp = await box.agent.get(f"/api/jobs/{job_id}/logs", params={"tail": 5})
    assert resp.status_code == 401, resp.text
    after = await db.fetchval("SELECT count(*) FROM audit_log WHERE action = 'transcript.download'")
    assert after == before + 1  # only the viewer's download


async def test_login_csrf_a_body_without_content_type_opens_no_session(app: FastAPI, db: asyncpg.Connection) -> None:
    """A cross-site page can send a "simple" request with NO Content-Type (fetch with a Blob body,
    mode no-cors). Signing in must need a JSON content type, which a cross-site page can send only
    after a CORS preflight this API never grants (FastAPI reads no JSON from a typeless body)."""
    async with _browser(app) as browser:
        resp = await browser.post("/api/session", content=b'{"token": "test-admin-token"}')
        assert "content-type" not in resp.request.headers
        assert resp.status_code in (415, 422), (resp.status_code, resp.text)
        assert "set-cookie" not in resp.headers
        ok = await browser.post(
            "/api/session",
            content=b'{"token": "test-admin-token"}',
            headers={"Content-Type": "application/json; charset=utf-8"},
        )
        assert ok.status_code == 201, ok.text
    assert await _sessions(db) == 1


async def test_a_websocket_is_not_opened_by_the_session_cookie_alone(
    app: FastAPI, base_url: str, db: asyncpg.Connection
) -> None:
    """Cross-site WebSocket hijacking: browsers send cookies on a WebSocket handshake from any page
    (no CORS). The log WebSocket must not take the session cookie (only a token), so a page of
    another site cannot read a signed-in user's logs through it."""
    from websockets.asyncio.client import connect as ws_connect
    from websockets.exceptions import ConnectionClosed, InvalidStatus

    job_id = await add_job(db, group="g")
    async with httpx.AsyncClient(base_url=base_url) as client:
        await _sign_in(client, ADMIN_TOKEN)
        cookie = client.cookies[SESSION_COOKIE]
    url = base_url.replace("http", "ws", 1) + f"/api/jobs/{job_id}/logs/ws"
    headers = {"Cookie": f"{SESSION_COOKIE}={cookie}", "Origin": "https://evil.example"}
    with pytest.raises((ConnectionClosed, InvalidStatus)) as refused:
        async with ws_connect(url, additional_headers=headers) as ws:
            async with asyncio.timeout(5):
                await ws.recv()
    if isinstance(refused.value, ConnectionClosed):
        assert refused.value.rcvd is not None and refused.value.rcvd.code == 1008, refused.value


async def test_an_expired_session_closes_its_stream(
    app: FastAPI, base_url: str, db: asyncpg.Connection, user_token: Callable
) -> None:
    job_id = await add_job(db, group="g")
    _, token = await user_token("ed")
    async with httpx.AsyncClient(base_url=base_url) as client:
        await _sign_in(client, token)
        cookie = client.cookies[SESSION_COOKIE]
    async with _cookie_sse(base_url, job_id, cookie) as stream:
        await open_streams(app, 1)
        await db.execute("UPDATE ui_sessions SET expires_at = now() - interval '1 second'")
        app.state.stream_guard.kick()
        text, _ = await rest_of(stream)
        assert revoked_event(text) == {"reason": "session expired"}
    await open_streams(app, 0)


async def test_signing_out_closes_a_pipeline_event_stream_opened_by_cookie(
    app: FastAPI, base_url: str, api: httpx.AsyncClient, make_box: Callable
) -> None:
    from tests.api.test_pipelines import diamond

    await make_box("pbox")
    pipeline = (await api.post("/api/pipelines", json=diamond())).json()  # no worker: it stays open
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
        csrf = await _sign_in(client, ADMIN_TOKEN)
        async with httpx.AsyncClient(base_url=base_url, timeout=30) as streamer:
            cookie = {"Cookie": f"{SESSION_COOKIE}={client.cookies[SESSION_COOKIE]}"}
            async with streamer.stream("GET", f"/api/pipelines/{pipeline['id']}/events", headers=cookie) as resp:
                assert resp.status_code == 200, await resp.aread()
                await open_streams(app, 1)
                assert (await client.delete("/api/session", headers={"X-CSRF-Token": csrf})).status_code == 204
                text, _ = await rest_of(resp)
                assert revoked_event(text) == {"reason": "signed out"}
    await open_streams(app, 0)


async def test_over_https_a_planted_plain_cookie_is_ignored(app: FastAPI, user_token: Callable) -> None:
    """Cookie tossing: a sibling subdomain (or a plain-http page of the host) can set a cookie named
    `boxrun_session` holding the ATTACKER's session, and the victim's dashboard would then act as
    the attacker (jobs, scripts and files submitted into the attacker's view). Over https the
    session cookie is `__Host-boxrun_session` (a browser accepts that name only Secure, Path=/,
    without Domain: no one else can plant it), and the plain name is not read."""
    _, attackers = await user_token("eve", "operator")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="https://boxrun.test") as attacker:
        resp = await attacker.post("/api/session", json={"token": attackers})
        assert resp.status_code == 201
        cookie = resp.headers["set-cookie"]
        assert cookie.startswith(f"__Host-{SESSION_COOKIE}="), cookie
        flags = {part.strip().lower() for part in cookie.split(";")[1:]}
        assert {"secure", "path=/", "httponly", "samesite=strict"} <= flags
        assert not any(f.startswith("domain=") for f in flags)
        planted = attacker.cookies[f"__Host-{SESSION_COOKIE}"]
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="https://boxrun.test") as victim:
        resp = await victim.get("/api/me", headers={"Cookie": f"{SESSION_COOKIE}={planted}"})
        assert resp.status_code == 401, resp.text  # the plantable name means nothing over https
        csrf = await _sign_in(victim, ADMIN_TOKEN)
        assert (await victim.get("/api/me")).json()["name"] == "admin"
        out = await victim.delete("/api/session", headers={"X-CSRF-Token": csrf})
        assert out.status_code == 204
        deleted = out.headers["set-cookie"].lower()
        assert deleted.startswith(f"__host-{SESSION_COOKIE}=") and "secure" in deleted and "max-age=0" in deleted
