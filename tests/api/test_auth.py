"""401 on every route that takes a token, read from the OpenAPI document so a new route is
covered the day it lands: no token, a wrong token, a node token on a user route, a user token on
an agent route. Each answer is the ErrorBody with code `unauthorized` and a Bearer challenge."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable

import httpx

from boxrun.api.app import create_app
from boxrun.settings import Settings
from tests.api.helpers import Box, assert_error

SAMPLE = {
    "job_id": str(uuid.uuid4()),
    "name": "somebox",
    "window_id": "1",
    "path": "out/a.txt",
    "token_id": "tok_0123456789ab",
    "pipeline_id": str(uuid.uuid4()),
    "webhook_id": str(uuid.uuid4()),
    "delivery_id": str(uuid.uuid4()),
    "schedule_id": str(uuid.uuid4()),
}


def _secured() -> list[tuple[str, str, bool]]:
    """(method, path with sample parameters, is an agent route) for every route with a token."""
    spec = create_app(Settings()).openapi()
    out = []
    for template, ops in spec["paths"].items():
        for method, op in ops.items():
            if not op.get("security"):
                continue
            path = template
            for key, value in SAMPLE.items():
                path = path.replace(f"{{{key}}}", value)
            assert "{" not in path, f"no sample value for a parameter of {template}"
            out.append((method.upper(), path, template.startswith("/api/agent/")))
    return out


SECURED = _secured()
USER_ROUTES = [(m, p) for m, p, agent in SECURED if not agent]
AGENT_ROUTES = [(m, p) for m, p, agent in SECURED if agent]


def test_the_route_list_is_complete() -> None:
    # me, session, events, heartbeat, claim, bundle, progress, logs, artifacts, result
    assert len(USER_ROUTES) >= 18 and len(AGENT_ROUTES) == 10, SECURED


def _unauthorized(resp: httpx.Response, detail: str) -> None:
    assert_error(resp, 401, "unauthorized", detail=detail)
    assert resp.headers["www-authenticate"] == "Bearer"


async def _each(client: httpx.AsyncClient, routes: list[tuple[str, str]], detail: str) -> None:
    # an empty JSON body: were the body validated before the token, this would be a 422
    for method, path in routes:
        resp = await client.request(method, path, json={})
        try:
            _unauthorized(resp, detail)
        except AssertionError as exc:
            raise AssertionError(f"{method} {path}: {exc}") from None


async def test_no_token_is_401_before_the_body_is_validated(anon: httpx.AsyncClient) -> None:
    await _each(anon, [(m, p) for m, p, _ in SECURED], "missing")


async def test_a_wrong_token_is_401(as_token: Callable[[str], httpx.AsyncClient]) -> None:
    await _each(as_token("not-a-token"), [(m, p) for m, p, _ in SECURED], "invalid")


async def test_a_node_token_on_a_user_route_is_401(make_box: Callable[..., Awaitable[Box]]) -> None:
    box = await make_box("bench-1")
    await _each(box.agent, USER_ROUTES, "invalid token")


async def test_a_user_token_on_an_agent_route_is_401(api: httpx.AsyncClient) -> None:
    await _each(api, AGENT_ROUTES, "invalid node token")


async def test_a_rotated_node_token_stops_working_at_once(
    api: httpx.AsyncClient, make_box: Callable[..., Awaitable[Box]], as_token: Callable[[str], httpx.AsyncClient]
) -> None:
    box = await make_box("bench-1")
    resp = await api.post("/api/boxes/bench-1/token")
    assert resp.status_code == 200, resp.text
    new_token = resp.json()["node_token"]
    assert new_token != box.token and resp.json()["box"]["name"] == "bench-1"
    _unauthorized(await box.agent.post("/api/agent/heartbeat", json={"agent_version": "t"}), "invalid node token")
    beat = await as_token(new_token).post("/api/agent/heartbeat", json={"agent_version": "t"})
    assert beat.status_code == 200, beat.text
