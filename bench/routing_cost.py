"""What the API spends on a request before its own work (issue 15): middleware, finding the route
among the app's routers, solving its dependencies and answering, in one process, no server.

    python -m bench.routing_cost [--requests 500] [--rounds 7] [--json] [--quick]

Each probe is sent --rounds times --requests times straight into the ASGI app (create_app with
default Settings, no lifespan, no socket, no database), timed with perf_counter around each batch;
the figure is the median over rounds of the mean time per request, in microseconds:

- `POST /api/agent/heartbeat` and `GET /api/agent/events` with a bearer token; the app's pool is a
  stand-in that refuses the connection the node-token check asks for (401 through the app's error
  handler), so nothing touches Postgres: what every liveness report and long-poll of 1,000 agents pays before its query.
- `GET /api/health`: a public route, answered in full (200), found after the routers before it.
- The reference, in the same run: a bare FastAPI app with one route answering the same `Health`
  body, through the same calls: the framework's floor on this machine.

--quick (CI): 50 requests x 3 rounds. Exits 1 if a probe answers other than expected.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from fastapi import FastAPI

from bench.common import bench_parser, hard_exit, loadavg, machine

Message = MutableMapping[str, Any]
ASGI = Callable[[MutableMapping[str, Any], Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]], Any]


async def _call(app: ASGI, method: str, path: str, headers: list[tuple[bytes, bytes]]) -> int:
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": [(b"host", b"bench"), *headers],
        "client": ("127.0.0.1", 1),
        "server": ("bench", 80),
        "root_path": "",
        "app": app,
        "state": {},
    }
    body = b"{}" if method == "POST" else b""
    pending = [{"type": "http.request", "body": body, "more_body": False}]
    status: list[int] = []

    async def receive() -> Message:
        return pending.pop() if pending else {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        if message["type"] == "http.response.start":
            status.append(message["status"])

    await app(scope, receive, send)
    return status[0]


class _RefusingPool:
    """Stands in for the asyncpg pool: taking a connection refuses the request (401), so a probe
    walks everything up to its first query. (Not FastAPI's dependency_overrides: an overridden
    dependency has its signature analysed again on every request, a cost production never pays.)"""

    def acquire(self, *args: object, **kwargs: object) -> None:
        from boxrun.errors import Unauthorized

        raise Unauthorized("bench: no database; every node token is refused")


def _boxrun_app() -> FastAPI:
    from boxrun.api.app import create_app
    from boxrun.settings import Settings

    app = create_app(Settings())
    app.state.settings = Settings()  # what the lifespan would set; nothing else is started
    app.state.pool = _RefusingPool()
    return app


def _bare_app() -> FastAPI:
    from boxrun import __version__
    from boxrun.schemas import Health

    app = FastAPI()

    @app.get("/api/health", response_model=Health)
    async def health() -> Health:
        return Health(status="ok", version=__version__)

    return app


async def measure(requests: int, rounds: int) -> dict[str, dict[str, Any]]:
    token = [(b"authorization", b"Bearer bench-token"), (b"content-type", b"application/json")]
    probes: list[tuple[str, ASGI, str, str, list[tuple[bytes, bytes]], int]] = [
        (
            "agent heartbeat (401)",
            _boxrun_app(),
            "POST",
            "/api/agent/heartbeat",
            [*token, (b"content-length", b"2")],
            401,
        ),
        ("agent events (401)", _boxrun_app(), "GET", "/api/agent/events", token, 401),
        ("health (200)", _boxrun_app(), "GET", "/api/health", [], 200),
        ("bare FastAPI, one route (200)", _bare_app(), "GET", "/api/health", [], 200),
    ]
    out: dict[str, dict[str, Any]] = {}
    for name, app, method, path, headers, expected in probes:
        got = await _call(app, method, path, headers)
        if got != expected:
            raise RuntimeError(f"{name}: {method} {path} answered {got}, expected {expected}")
        per_round = []
        for _ in range(rounds):
            t = time.perf_counter()
            for _ in range(requests):
                await _call(app, method, path, headers)
            per_round.append((time.perf_counter() - t) / requests * 1e6)
        out[name] = {
            "request": f"{method} {path}",
            "us_median": round(statistics.median(per_round), 1),
            "us_min": round(min(per_round), 1),
            "us_max": round(max(per_round), 1),
        }
    return out


def render(r: dict) -> str:
    lines = [
        "Routing cost: one request through the API's ASGI app, in process (us per request, median / min / max of rounds)",
        f"requests per round: {r['requests']}, rounds: {r['rounds']}",
    ]
    for name, got in r["probes"].items():
        lines.append(f"{name:<32} {got['request']:<28} {got['us_median']:>8} / {got['us_min']:>8} / {got['us_max']:>8}")
    lines.append(f"machine: {json.dumps(r['machine'])}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser("routing_cost", __doc__, quick="CI smoke run: 50 requests x 3 rounds")
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args(argv)
    requests, rounds = (50, 3) if args.quick else (args.requests, args.rounds)
    facts = machine()
    try:
        result: dict[str, Any] = {"requests": requests, "rounds": rounds}
        result["probes"] = asyncio.run(measure(requests, rounds))
    except Exception as exc:  # a bench reports, never hides, a failure
        print(f"routing_cost failed: {exc!r}", file=sys.stderr)
        return 1
    facts["loadavg_at_end"] = loadavg()
    result["machine"] = facts
    print(json.dumps(result, indent=2) if args.json else render(result), flush=True)
    return 0


if __name__ == "__main__":
    hard_exit(main())
