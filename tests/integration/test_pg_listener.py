"""The API's one LISTEN connection on a real Postgres: every registered channel is delivered, and
after the connection is killed it comes back, re-listens and runs each part's re-read hook."""

from __future__ import annotations

import asyncpg

from boxrun.api.live.listener import PgListener
from tests.conftest import wait_for


async def test_one_connection_serves_every_channel_and_comes_back(db_url: str, conn: asyncpg.Connection) -> None:
    got: list[tuple[str, str]] = []
    reconnects = {"a": 0, "b": 0}
    listener = PgListener(db_url)
    listener.listen(
        "chan_a", lambda _c, _p, ch, payload: got.append((ch, str(payload))), lambda: _count(reconnects, "a")
    )
    listener.listen(
        "chan_b", lambda _c, _p, ch, payload: got.append((ch, str(payload))), lambda: _count(reconnects, "b")
    )
    await listener.start()
    try:
        assert reconnects == {"a": 1, "b": 1}
        backends = await conn.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND query LIKE 'LISTEN%'"
        )
        assert len(backends) == 1, "one connection for both channels"
        await conn.execute("SELECT pg_notify('chan_a', 'one'), pg_notify('chan_b', 'two')")
        await wait_for(lambda: len(got) == 2, timeout=10, what="both notifications")
        assert sorted(got) == [("chan_a", "one"), ("chan_b", "two")]

        await conn.execute("SELECT pg_terminate_backend($1)", backends[0]["pid"])
        await wait_for(lambda: reconnects == {"a": 2, "b": 2}, timeout=15, what="the re-read hooks after a reconnect")
        # the new connection listens on both channels again
        await wait_for(lambda: _listening(conn), timeout=10, what="the new LISTEN connection")
        await conn.execute("SELECT pg_notify('chan_b', 'three')")
        await wait_for(lambda: ("chan_b", "three") in got, timeout=10, what="a notification after the reconnect")
    finally:
        await listener.stop()


def _count(counts: dict[str, int], key: str) -> None:
    counts[key] += 1


async def _listening(conn: asyncpg.Connection) -> bool:
    return bool(
        await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND query LIKE 'LISTEN%'"
        )
    )
