"""The API's routers are laid out for the cost of matching a request (FastAPI 0.165 matches an
included router's routes again at each level of inclusion, ~8 us a route; bench/routing_cost.py):
every module router is included into the app itself, one level deep, and the agents' router,
which gets most requests from a fleet (liveness, long-polls), is the first one tried."""

from __future__ import annotations

from typing import Any

from boxrun.api.app import create_app
from boxrun.api.routes import agent
from boxrun.settings import Settings


def _included(routes: list[Any]) -> list[Any]:
    return [r for r in routes if getattr(r, "original_router", None) is not None]


def test_module_routers_are_included_one_level_deep_agents_first() -> None:
    app = create_app(Settings())
    included = _included(app.routes)
    assert len(included) >= 15  # every module's router, each straight into the app
    assert included[0].original_router is agent.router
    nested = [r for r in included if _included(r.original_router.routes)]
    assert not nested, "a router that includes routers is matched twice per request"
