"""The API process's one LISTEN connection (PgListener), and the Notifier that fans its job and
log notifications out to the followers of each job (through the job's tail)."""

from __future__ import annotations

import asyncio
import json
import logging
from collections import defaultdict
from collections.abc import Callable

import asyncpg

from boxrun.constants import CHANNEL_JOBS, CHANNEL_LOGS
from boxrun.db import connect

log = logging.getLogger(__name__)

# (connection, backend pid, channel, payload), as asyncpg calls a listener
OnNotify = Callable[[object, int, str, object], None]


class PgListener:
    """One LISTEN connection for every channel a part of the API registers (logs, jobs, the
    agents' dispatch, ...). After each (re)connect it runs every part's `on_connect` hook: a
    notification sent while the connection was down is lost, so the parts re-read Postgres."""

    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self._channels: dict[str, OnNotify] = {}
        self._on_connect: list[Callable[[], None]] = []
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()

    def listen(self, channel: str, on_notify: OnNotify, on_connect: Callable[[], None] | None = None) -> None:
        """Register before start()."""
        self._channels[channel] = on_notify
        if on_connect is not None and on_connect not in self._on_connect:
            self._on_connect.append(on_connect)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="pg-listener")
        await asyncio.wait_for(self._ready.wait(), 30)

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            conn: asyncpg.Connection | None = None
            try:
                conn = await connect(self._dsn)
                lost = asyncio.Event()
                conn.add_termination_listener(lambda _c, lost=lost: lost.set())
                for channel, on_notify in self._channels.items():
                    await conn.add_listener(channel, on_notify)
                self._ready.set()
                for hook in self._on_connect:
                    hook()
                await lost.wait()
                log.warning("LISTEN connection lost; reconnecting")
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("LISTEN connection failed (%s); retrying", exc)
                await asyncio.sleep(0.5)
            finally:
                if conn is not None and not conn.is_closed():
                    await conn.close()


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
    """Wakes the subscriptions of a job when its logs or its state change."""

    def __init__(self, listener: PgListener | None = None) -> None:
        self._subs: dict[str, set[Subscription]] = defaultdict(set)
        if listener is not None:  # tests deliver notifications themselves
            listener.listen(CHANNEL_LOGS, self._on_notify, self._wake_all)
            listener.listen(CHANNEL_JOBS, self._on_notify, self._wake_all)

    def subscribe(self, job_id: str) -> Subscription:
        sub = Subscription(self, job_id)
        self._subs[job_id].add(sub)
        return sub

    def _on_notify(self, _conn: object, _pid: int, channel: str, payload: object) -> None:
        text = str(payload)
        job_id = json.loads(text)["job_id"] if channel == CHANNEL_JOBS else text
        for sub in self._subs.get(job_id, ()):
            sub.event.set()

    def _wake_all(self) -> None:
        """After a reconnect: everyone re-reads (a notification missed meanwhile loses nothing)."""
        for subs in self._subs.values():
            for sub in subs:
                sub.event.set()
