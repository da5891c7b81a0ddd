"""One LISTEN connection per API process, fanned out to the followers of each job (through its tail)."""

from __future__ import annotations

import asyncio
import json
import logging
from collections import defaultdict

import asyncpg

from boxrun.constants import CHANNEL_JOBS, CHANNEL_LOGS
from boxrun.db import connect

log = logging.getLogger(__name__)


class Subscription:
    """Set whenever something new happened to the job; its reader (the job's tail) re-reads Postgres then."""

    def __init__(self, hub: Notifier, job_id: str) -> None:
        self._hub = hub
        self.job_id = job_id
        self.event = asyncio.Event()

    async def wait(self, timeout: float) -> bool:
        try:
            async with asyncio.timeout(timeout):
                await self.event.wait()
            return True
        except TimeoutError:
            return False

    def close(self) -> None:
        subs = self._hub._subs.get(self.job_id)
        if subs is not None:
            subs.discard(self)
            if not subs:
                del self._hub._subs[self.job_id]


class Notifier:
    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self._subs: dict[str, set[Subscription]] = defaultdict(set)
        self._task: asyncio.Task | None = None
        self._ready = asyncio.Event()

    def subscribe(self, job_id: str) -> Subscription:
        sub = Subscription(self, job_id)
        self._subs[job_id].add(sub)
        return sub

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="notifier")
        await asyncio.wait_for(self._ready.wait(), 30)

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def _on_notify(self, _conn: object, _pid: int, channel: str, payload: object) -> None:
        text = str(payload)
        job_id = json.loads(text)["job_id"] if channel == CHANNEL_JOBS else text
        for sub in self._subs.get(job_id, ()):
            sub.event.set()

    def _wake_all(self) -> None:
        for subs in self._subs.values():
            for sub in subs:
                sub.event.set()

    async def _run(self) -> None:
        """Keep one LISTEN connection up; after a reconnect wake everyone (they re-read, so a
        notification missed while the connection was down loses nothing)."""
        while True:
            conn: asyncpg.Connection | None = None
            try:
                conn = await connect(self._dsn)
                lost = asyncio.Event()
                conn.add_termination_listener(lambda _c, lost=lost: lost.set())
                await conn.add_listener(CHANNEL_LOGS, self._on_notify)
                await conn.add_listener(CHANNEL_JOBS, self._on_notify)
                self._ready.set()
                self._wake_all()
                await lost.wait()
                log.warning("LISTEN connection lost; reconnecting")
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("LISTEN connection failed (%s); retrying", exc)
                await asyncio.sleep(0.5)
            finally:
                if conn is not None and not conn.is_closed():
                    await conn.close()
