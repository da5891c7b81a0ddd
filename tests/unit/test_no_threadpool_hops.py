"""No request pays a thread hand-off for nothing: FastAPI runs a plain `def` endpoint or
dependency in its thread pool (anyio's worker threads, a Condition wait and a loop wake-up each
way), so every endpoint and every dependency of the API is `async def` (or an object whose
__call__ is)."""

from __future__ import annotations

import inspect
from typing import Any

from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute, APIWebSocketRoute

from boxrun.api.app import create_app
from boxrun.settings import Settings


def _is_async(call: Any) -> bool:
    if inspect.iscoroutinefunction(call) or inspect.isasyncgenfunction(call):
        return True
    if inspect.isfunction(call) or inspect.ismethod(call):
        return False
    dunder = type(call).__call__  # an instance (HTTPBearer and friends): its __call__
    return inspect.iscoroutinefunction(dunder) or inspect.isasyncgenfunction(dunder)


def _sync_calls(dependant: Dependant, where: str, found: set[str]) -> None:
    for dep in dependant.dependencies:
        if dep.call is not None and not _is_async(dep.call):
            found.add(f"{where}: {getattr(dep.call, '__qualname__', dep.call)}")
        _sync_calls(dep, where, found)


def _api_routes(routes: list[Any]) -> list[APIRoute | APIWebSocketRoute]:
    """Every APIRoute and WebSocket route, through included routers (this FastAPI includes them
    lazily) and mounts."""
    out: list[APIRoute | APIWebSocketRoute] = []
    for route in routes:
        if isinstance(route, APIRoute | APIWebSocketRoute):
            out.append(route)
        elif getattr(route, "original_router", None) is not None:
            out.extend(_api_routes(route.original_router.routes))
        elif getattr(route, "routes", None):
            out.extend(_api_routes(route.routes))
    return out


def test_every_endpoint_and_dependency_is_async() -> None:
    found: set[str] = set()
    app = create_app(Settings())
    routes = _api_routes(app.routes)
    assert len(routes) > 50  # the whole API was looked at
    assert any(isinstance(r, APIWebSocketRoute) for r in routes)  # WebSocket routes too
    for route in routes:
        where = f"{sorted(getattr(route, 'methods', None) or ['WEBSOCKET'])} {route.path}"
        if not _is_async(route.endpoint):
            found.add(f"{where}: endpoint {route.endpoint.__qualname__}")
        _sync_calls(route.dependant, where, found)
    for key, handler in app.exception_handlers.items():  # Starlette runs a plain def one in a thread
        if not _is_async(handler):
            found.add(f"exception handler for {key}: {getattr(handler, '__qualname__', handler)}")
    assert not found, "run in the thread pool:\n" + "\n".join(sorted(found))
