"""Revocation bites open streams: a live SSE stream and a live WebSocket opened with a token close
within 5 s when the token is revoked, expires, or its user is disabled, saying why; other streams
stay open. The app runs on a real uvicorn server in the test's event loop (real sockets, so the
streams are live while the test acts), on the real Postgres, Temporal and S3 of tests/conftest.py.

A revocation made through this API process kicks its stream guard at once; one written by another
process (here: straight into Postgres) is found by the guard's periodic check (auth_recheck_s)."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import asyncpg
import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed

from tests.integration.helpers import add_job

CLOSE_WITHIN_S = 5.0  # the bound


@pytest.fixture
async def base_url(app: FastAPI) -> AsyncIterator[str]:
    """The test's app (lifespan run by the `app` fixture) served by uvicorn on a free port."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(app, lifespan="off", log_level="warning", timeout_graceful_shutdown=1)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        async with asyncio.timeout(10):
            while not server.started:
                await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        await task
        sock.close()


@pytest.fixture
async def user_token(api: httpx.AsyncClient) -> Callable[..., Awaitable[tuple[str, str]]]:
    """Create a user (default org) and mint a token of theirs: (token id, secret)."""

    made: set[str] = set()

    async def make(name: str, role: str = "viewer", **token: object) -> tuple[str, str]:
        if name not in made:
            resp = await api.post("/api/users", json={"name": name, "role": role})
            assert resp.status_code == 201, resp.text
            made.add(name)
        minted = await api.post(f"/api/users/{name}/tokens", json=token)
        assert minted.status_code == 201, minted.text
        return minted.json()["id"], minted.json()["token"]

    return make


@asynccontextmanager
async def sse(base_url: str, job_id: str, token: str) -> AsyncIterator[httpx.Response]:
    """An open SSE stream of the job's logs (its headers received: the server is streaming)."""
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
        async with client.stream(
            "GET", f"/api/jobs/{job_id}/logs/stream", headers={"Authorization": f"Bearer {token}"}
        ) as resp:
            assert resp.status_code == 200, await resp.aread()
            yield resp


async def rest_of(resp: httpx.Response, within: float = CLOSE_WITHIN_S) -> tuple[str, float]:
    """What the stream sends until the server ends it, and how long that took; fails after `within` s."""
    t0 = time.monotonic()
    async with asyncio.timeout(within):
        text = b"".join([chunk async for chunk in resp.aiter_bytes()]).decode()
    return text, time.monotonic() - t0


def revoked_event(text: str) -> dict:
    """The stream's last event: `event: revoked` with its data."""
    events = [e for e in text.split("\n\n") if e.strip() and not e.startswith(":")]
    assert events, text
    lines = dict(line.split(": ", 1) for line in events[-1].splitlines())
    assert lines["event"] == "revoked", text
    data: dict = json.loads(lines["data"])
    return data


async def open_streams(app: FastAPI, n: int) -> None:
    """Wait until the guard holds n streams (a stream registers when its body starts)."""
    async with asyncio.timeout(5):
        while app.state.stream_guard.open_streams != n:
            await asyncio.sleep(0.01)


async def test_revoking_a_token_ends_its_sse_stream_and_no_other(
    app: FastAPI, base_url: str, api: httpx.AsyncClient, db: asyncpg.Connection, user_token: Callable
) -> None:
    job_id = await add_job(db, group="g")  # queued, no workflow: its stream never ends by itself
    doomed_id, doomed = await user_token("vic")
    _, kept = await user_token("vic")
    async with sse(base_url, job_id, doomed) as first, sse(base_url, job_id, kept) as second:
        await open_streams(app, 2)
        assert (await api.delete(f"/api/tokens/{doomed_id}")).status_code == 204
        text, took = await rest_of(first)
        assert revoked_event(text) == {"reason": "token revoked"}
        assert took < CLOSE_WITHIN_S
        await app.state.stream_guard.check()  # a full round: the other token's stream stays
        assert app.state.stream_guard.open_streams == 1
        assert not second.is_closed
    await open_streams(app, 0)  # every stream unregistered when it ended


async def test_a_revocation_by_another_api_process_ends_the_stream_within_the_recheck(
    app: FastAPI, base_url: str, db: asyncpg.Connection, user_token: Callable
) -> None:
    job_id = await add_job(db, group="g")
    token_id, token = await user_token("vic")
    async with sse(base_url, job_id, token) as resp:
        await open_streams(app, 1)
        # as another process would: no kick reaches this process's guard
        await db.execute("UPDATE api_tokens SET revoked_at = now() WHERE id = $1", token_id)
        text, took = await rest_of(resp)
    assert revoked_event(text) == {"reason": "token revoked"}
    assert took < CLOSE_WITHIN_S  # found by the periodic check (auth_recheck_s, 2 s by default)


async def test_an_expiring_token_ends_its_sse_stream(
    app: FastAPI, base_url: str, db: asyncpg.Connection, user_token: Callable
) -> None:
    job_id = await add_job(db, group="g")
    _, token = await user_token("vic", expires_in_s=3)
    async with sse(base_url, job_id, token) as resp:
        await open_streams(app, 1)
        text, _ = await rest_of(resp, within=3 + CLOSE_WITHIN_S)  # noticed within 5 s of expiring
    assert revoked_event(text) == {"reason": "token expired"}


async def test_disabling_a_user_closes_their_websocket_with_4401(
    app: FastAPI, base_url: str, api: httpx.AsyncClient, db: asyncpg.Connection, user_token: Callable
) -> None:
    job_id = await add_job(db, group="g")
    _, token = await user_token("olga", role="operator")
    url = base_url.replace("http", "ws", 1) + f"/api/jobs/{job_id}/logs/ws"
    async with ws_connect(url, additional_headers={"Authorization": f"Bearer {token}"}) as ws:
        await open_streams(app, 1)
        assert (await api.patch("/api/users/olga", json={"disabled": True})).status_code == 200
        t0 = time.monotonic()
        with pytest.raises(ConnectionClosed) as closed:
            async with asyncio.timeout(CLOSE_WITHIN_S):
                while True:
                    await ws.recv()  # keepalives until the server closes
        assert time.monotonic() - t0 < CLOSE_WITHIN_S
    assert closed.value.rcvd is not None
    assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (4401, "user olga is disabled")
    await open_streams(app, 0)


async def test_revoking_a_websocket_token_through_the_query_string(
    app: FastAPI, base_url: str, api: httpx.AsyncClient, db: asyncpg.Connection, user_token: Callable
) -> None:
    job_id = await add_job(db, group="g")
    token_id, token = await user_token("vic")
    url = base_url.replace("http", "ws", 1) + f"/api/jobs/{job_id}/logs/ws?token={token}"
    async with ws_connect(url) as ws:
        await open_streams(app, 1)
        assert (await api.delete(f"/api/tokens/{token_id}")).status_code == 204
        with pytest.raises(ConnectionClosed) as closed:
            async with asyncio.timeout(CLOSE_WITHIN_S):
                while True:
                    await ws.recv()
    assert closed.value.rcvd is not None
    assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (4401, "token revoked")
