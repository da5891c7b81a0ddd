"""The agents' long-polls: one LISTEN connection per API process on boxrun_dispatch, waking the
waiting long-poll of the box a NOTIFY names. No database connection is held while a box waits."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import defaultdict
from collections.abc import Iterator

import asyncpg

from boxrun.db import connect
from boxrun.services.dispatch import CHANNEL_DISPATCH

log = logging.getLogger(__name__)


class DispatchHub:
    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self._waiters: dict[int, set[asyncio.Event]] = defaultdict(set)
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()

    @contextlib.contextmanager
    def watch(self, box_id: int) -> Iterator[asyncio.Event]:
        """An event set when something is dispatched to (or cancelled on) `box_id`. Register
        before reading Postgres, so a NOTIFY between the read and the wait is not lost."""
        event = asyncio.Event()
        self._waiters[box_id].add(event)
        try:
            yield event
        finally:
            waiters = self._waiters.get(box_id)
            if waiters is not None:
                waiters.discard(event)
                if not waiters:
                    del self._waiters[box_id]

    @property
    def waiting_boxes(self) -> int:
        return len(self._waiters)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="dispatch-hub")
        await asyncio.wait_for(self._ready.wait(), 30)

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def _on_notify(self, _conn: object, _pid: int, _channel: str, payload: object) -> None:
        try:
            box_id = int(json.loads(str(payload))["box_id"])
        except (ValueError, KeyError, TypeError):
            log.warning("ignoring malformed dispatch notification %r", payload)
            return
        for event in self._waiters.get(box_id, ()):
            event.set()

    def _wake_all(self) -> None:
        for waiters in self._waiters.values():
            for event in waiters:
                event.set()

    async def _run(self) -> None:
        """Keep the LISTEN up; after a reconnect wake every waiter (they re-read Postgres)."""
        while True:
            conn: asyncpg.Connection | None = None
            try:
                conn = await connect(self._dsn)
                lost = asyncio.Event()
                conn.add_termination_listener(lambda _c, lost=lost: lost.set())
                await conn.add_listener(CHANNEL_DISPATCH, self._on_notify)
                self._ready.set()
                self._wake_all()
                await lost.wait()
                log.warning("dispatch LISTEN connection lost; reconnecting")
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("dispatch LISTEN connection failed (%s); retrying", exc)
                await asyncio.sleep(0.5)
            finally:
                if conn is not None and not conn.is_closed():
                    await conn.close()
