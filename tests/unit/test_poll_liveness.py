"""Held long-polls as liveness, in units: the agent's Liveness leaves its periodic report out while a
poll covers it (and only then), and the events route's wait ends when its client goes away.
The API's side with Postgres is tested in tests/api/test_agent.py."""

from __future__ import annotations

import asyncio
from typing import Any

from boxrun.agent.main import Liveness
from boxrun.api.live.liveness import HeldPolls
from boxrun.api.routes.agent import _woken_while_connected
from tests.conftest import wait_for


class HeartbeatClientFake:
    """Stands in for the agent's API client: counts liveness reports."""

    def __init__(self) -> None:
        self.reports: list[bool] = []  # draining, per report

    async def heartbeat(self, agent_version: str, *, draining: bool = False) -> None:
        self.reports.append(draining)


class Coverage:
    """`covered()` as the agent answers it, counting how often Liveness asked."""

    def __init__(self, polling: bool) -> None:
        self.polling = polling
        self.asked = 0

    def __call__(self) -> bool:
        self.asked += 1
        return self.polling


async def test_a_covered_agent_reports_at_start_and_on_change_only() -> None:
    client, coverage = HeartbeatClientFake(), Coverage(polling=True)
    liveness = Liveness(client, 0.01, asyncio.Event(), coverage)  # type: ignore[arg-type]
    task = asyncio.create_task(liveness.run())
    try:
        await wait_for(lambda: coverage.asked >= 5, what="five intervals under a held poll")
        assert client.reports == [False]  # the first report only
        liveness.draining = True
        liveness.report_now()
        await wait_for(lambda: len(client.reports) == 2, what="the draining report")
        assert client.reports == [False, True]
        coverage.polling = False  # no poll in flight: the periodic reports resume
        await wait_for(lambda: len(client.reports) >= 4, what="periodic reports without a poll")
    finally:
        liveness.stop()
        await asyncio.wait_for(task, 5)


async def test_without_coverage_every_interval_reports() -> None:
    client = HeartbeatClientFake()
    liveness = Liveness(client, 0.01, asyncio.Event())  # type: ignore[arg-type]
    task = asyncio.create_task(liveness.run())
    try:
        await wait_for(lambda: len(client.reports) >= 3, what="three periodic reports")
    finally:
        liveness.stop()
        await asyncio.wait_for(task, 5)


class RequestStub:
    """Stands in for a Starlette Request: its ASGI receive yields the GET's empty body, then blocks
    until `close()` (the client went away), as uvicorn's does."""

    def __init__(self) -> None:
        self.closed = asyncio.Event()
        self._sent_body = False

    def close(self) -> None:
        self.closed.set()

    async def receive(self) -> dict[str, Any]:
        if not self._sent_body:
            self._sent_body = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await self.closed.wait()
        return {"type": "http.disconnect"}


async def test_the_wait_ends_when_the_client_goes_away() -> None:
    request, woken = RequestStub(), asyncio.Event()
    waiting = asyncio.create_task(_woken_while_connected(request, woken, 60))  # type: ignore[arg-type]
    await wait_for(lambda: request._sent_body, what="the wait to watch the connection")
    assert not waiting.done()
    request.close()
    assert await asyncio.wait_for(waiting, 5) is False


async def test_the_wait_answers_a_wake_and_times_out_quietly() -> None:
    request, woken = RequestStub(), asyncio.Event()
    waiting = asyncio.create_task(_woken_while_connected(request, woken, 60))  # type: ignore[arg-type]
    woken.set()
    assert await asyncio.wait_for(waiting, 5) is True
    assert await _woken_while_connected(RequestStub(), asyncio.Event(), 0.01) is False  # type: ignore[arg-type]


async def test_a_failing_round_does_not_stop_the_rounds() -> None:
    """Any error in a round (asyncpg's client errors, a bug) is logged and the next round runs:
    agents that no longer heartbeat rely on it."""
    held = HeldPolls(None, None, interval_s=0.01, offline_after_s=1.0)  # type: ignore[arg-type]
    rounds = 0

    async def renew_fake() -> int:
        nonlocal rounds
        rounds += 1
        if rounds == 1:
            raise RuntimeError("a round that fails")
        return 0

    held.renew = renew_fake  # type: ignore[method-assign]
    held.start()
    try:
        await wait_for(lambda: rounds >= 3, what="rounds after a failed one")
    finally:
        await held.stop()
