"""Held long-polls as liveness. An agent waiting in `GET /api/agent/events` is connected to this
API process, so that is what its periodic heartbeat would prove: while a poll is held, this
process marks the box seen for it, for every such box in ONE statement every `interval_s`
(a third of the offline threshold), instead of one HTTP request per agent every 5 s. An agent
told so by `GET /api/agent/me` (`poll_renews_liveness`) then reports only when its state changes
(start, draining) or when no poll of its own is in flight.

A poll counts from the moment its handler starts waiting to the moment it answers or its client
goes away (the handler watches for the disconnect, so a killed agent stops being renewed at once
and shows offline after the usual threshold; a box that vanishes without closing its connection,
a power cut, is renewed until its poll's wait ends, at most `agent_poll_max_s` more). A box held
at any moment since the last round is renewed, so the gap between one poll's answer and the
next poll does not let a box lapse. Only the box's live session is renewed: a poll of an agent
that was taken over renews nothing. A box that was offline and comes back this way wakes the jobs
waiting for it, as a heartbeat would."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import suppress

import asyncpg
from temporalio.client import Client

from boxrun.db import Q
from boxrun.services.wakeups import wake_waiters

log = logging.getLogger(__name__)

Held = tuple[int, uuid.UUID]  # (box id, agent session)


class HeldPolls:
    def __init__(self, pool: asyncpg.Pool, temporal: Client, *, interval_s: float, offline_after_s: float) -> None:
        self.pool = pool
        self.temporal = temporal
        self.interval_s = interval_s
        self.offline_after_s = offline_after_s
        self._open: Counter[Held] = Counter()  # polls waiting now
        self._since: set[Held] = set()  # held at some moment since the last round
        self._task: asyncio.Task[None] | None = None

    @contextlib.contextmanager
    def hold(self, box_id: int, session: uuid.UUID) -> Iterator[None]:
        key = (box_id, session)
        self._open[key] += 1
        self._since.add(key)
        try:
            yield
        finally:
            self._since.add(key)  # held since the last round, whenever that round ran
            self._open[key] -= 1
            if self._open[key] <= 0:
                del self._open[key]

    @property
    def held_boxes(self) -> int:
        return len({box for box, _ in self._open})

    async def renew(self) -> int:
        """One round: every box held since the last round is seen now. Returns how many were renewed."""
        keys = self._since | set(self._open)
        self._since = set()
        if not keys:
            return 0
        held = sorted(keys)
        try:
            async with self.pool.acquire() as conn:
                rows = await conn.fetch(
                    Q.renew_held_polls, [box for box, _ in held], [session for _, session in held], self.offline_after_s
                )
        except BaseException:
            self._since |= keys  # not renewed: still owed at the next round
            raise
        async with self.pool.acquire() as conn:
            for row in rows:
                if row["was_live"] or row["draining"]:
                    continue
                try:  # it was offline: its waiting jobs may now be placed on it
                    await wake_waiters(conn, self.temporal, row["id"], row["capacity"])
                except Exception:  # one box's wake-up must not stop the others' (the reaper's waiter sweep retries)
                    log.exception("held polls: waking the jobs waiting for box %s failed", row["id"])
        return len(rows)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.renew()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("held polls: could not renew the polling boxes' liveness (%s); trying again", exc)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="held-polls")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with suppress(asyncio.CancelledError):
                await self._task
            self._task = None
