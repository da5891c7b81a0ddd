"""An unknown query parameter is a 422 naming it, on every route of the API (HTTP and WebSocket),
walked over app.routes like tests/api/test_access.py, so a new route cannot miss it. One mechanism
does it (api/app.py reject_unknown_query, a dependency of the /api router); these tests hold it to
every route, and check that it never refuses a parameter a route declares."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import MutableMapping
from contextlib import suppress
from typing import Any

import httpx
from fastapi import FastAPI, routing
from fastapi.routing import APIRoute, APIWebSocketRoute

from boxrun.api.app import query_names
from tests.api.conftest import ADMIN_TOKEN, BASE_URL
from tests.api.helpers import assert_error

TYPO = "ownr"  # as in ?ownr=me for ?owner=me


def api_routes(app: FastAPI) -> list[tuple[str, str, APIRoute | APIWebSocketRoute]]:
    """(method or WS, path, route) for every route under /api."""
    out: list[tuple[str, str, APIRoute | APIWebSocketRoute]] = []
    for context in routing.iter_route_contexts(app.routes):
        route, path = context.original_route, context.path_format
        if path is None or not path.startswith("/api/"):
            continue
        if isinstance(route, APIWebSocketRoute):
            out.append(("WS", path, route))
        elif isinstance(route, APIRoute):
            out.extend((method, path, route) for method in sorted(route.methods or ()))
    return out


def fill(path: str) -> str:
    """Path parameters with values of the right shape that name nothing."""
    return re.sub(r"\{[^}]+\}", lambda _: str(uuid.uuid4()), path)


async def ws_first_close(app: FastAPI, path: str, query: str) -> tuple[bool, int | None, str]:
    """(accepted, close code, close reason) of a WebSocket connection to the app."""
    scope = {
        "type": "websocket",
        "asgi": {"version": "3.0"},
        "scheme": "ws",
        "http_version": "1.1",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": query.encode(),
        "headers": [(b"host", b"boxrun.test"), (b"authorization", f"Bearer {ADMIN_TOKEN}".encode())],
        "client": ("127.0.0.1", 1),
        "server": ("boxrun.test", 80),
        "subprotocols": [],
        "state": {},
    }
    incoming: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    await incoming.put({"type": "websocket.connect"})
    accepted, code, reason = False, None, ""
    closed = asyncio.Event()

    async def receive() -> MutableMapping[str, Any]:
        return await incoming.get()

    async def send(message: MutableMapping[str, Any]) -> None:
        nonlocal accepted, code, reason
        if message["type"] == "websocket.accept":
            accepted = True
        elif message["type"] == "websocket.close":
            code, reason = message.get("code", 1000), message.get("reason") or ""
            closed.set()

    task = asyncio.create_task(app(scope, receive, send))
    with suppress(TimeoutError):
        async with asyncio.timeout(10):
            await closed.wait()
    await incoming.put({"type": "websocket.disconnect", "code": 1000})
    task.cancel()
    with suppress(asyncio.CancelledError):
        await task
    return accepted, code, reason


async def test_an_unknown_query_parameter_is_422_naming_it_on_every_route(app: FastAPI, api: httpx.AsyncClient) -> None:
    routes = api_routes(app)
    assert len(routes) > 40, "the walk sees the whole API"
    assert any(method == "WS" for method, _, _ in routes)
    for method, path, _route in routes:
        where = f"{method} {path}"
        if method == "WS":
            accepted, code, reason = await ws_first_close(app, fill(path), f"{TYPO}=me")
            assert not accepted and code == 1008, (where, code, reason)
            assert TYPO in reason, (where, reason)
            continue
        resp = await api.request(method, fill(path), params={TYPO: "me"})
        body = assert_error(resp, 422, "invalid_input", field=f"query.{TYPO}")
        assert f"unknown query parameter '{TYPO}'" in body["detail"], (where, body)


async def test_declared_parameters_are_never_called_unknown(app: FastAPI, api: httpx.AsyncClient) -> None:
    """Every parameter a route declares (its dependencies' too) passes the check: the answer may
    refuse a value, never the name."""
    checked = 0
    for method, path, route in api_routes(app):
        names = query_names(route.dependant)
        if method == "WS" or not names:
            continue
        resp = await api.request(method, fill(path), params=dict.fromkeys(names, "1"))
        assert "unknown query parameter" not in resp.text, (method, path, resp.text)
        checked += 1
    assert checked > 10


async def test_several_unknown_names_are_all_named_and_known_ones_still_work(api: httpx.AsyncClient) -> None:
    body = assert_error(
        await api.get("/api/jobs", params={"ownr": "me", "limt": "5", "state": "queued"}), 422, "invalid_input"
    )
    assert "'limt'" in body["detail"] and "'ownr'" in body["detail"], body
    assert "owner" in body["detail"], "the answer lists what the route takes"
    assert (await api.get("/api/jobs", params={"owner": "me", "limit": "5"})).status_code == 200


async def test_the_check_runs_before_authentication_of_the_route_but_after_the_token(app: FastAPI) -> None:
    """A request without a token is still a 401 (the token is checked first, for every /api path)."""
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE_URL) as anon:
        assert_error(await anon.get("/api/jobs", params={TYPO: "me"}), 401, "unauthorized")
