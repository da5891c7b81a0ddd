"""Held long-polls as liveness. An agent waiting in `GET /api/agent/events` is connected to this
API process, so that is what its periodic heartbeat would prove: while a poll is held, this
process marks the box seen for it, for every such box in ONE statement every `interval_s`
(a quarter of the offline threshold), instead of one HTTP request per agent every 5 s. An agent
told so by `GET /api/agent/me` (`poll_renews_liveness`) then reports only when its state changes
(start, draining) or when no poll of its own is in flight.

A poll counts from the moment its handler starts waiting to the moment it answers or its client
goes away (the handler watches for the disconnect, so a killed agent stops being renewed at once
and shows offline within the usual threshold; a box that vanishes without closing its connection,
a power cut, is renewed until its poll's wait ends, at most `agent_poll_max_s` more). A round
renews the polls held at that moment and those that began since the last round, so the gap
between one poll's answer and the next does not let a box lapse. Only the box's live session is
renewed: a poll of an agent that was taken over renews nothing. A box that was offline and comes
back this way wakes the jobs waiting for it, as a heartbeat would. A box row locked by a grant,
release or report at the instant of a round is skipped (never waited on); at a round every
threshold / 4, only three such skips in a row let a held box lapse."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import Counter
from collections.abc import Iterator

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
        self._since: set[Held] = set()  # polls that began since the last round
        self._task: asyncio.Task[None] | None = None
        self._wakes: set[asyncio.Task[None]] = set()

    @contextlib.contextmanager
    def hold(self, box_id: int, session: uuid.UUID) -> Iterator[None]:
        """While a poll of `session` on `box_id` waits. A poll that ends owes nothing more: its
        agent's next poll registers again, and a killed agent's box must lapse."""
        key = (box_id, session)
        self._open[key] += 1
        self._since.add(key)
        try:
            yield
        finally:
            self._open[key] -= 1
            if self._open[key] <= 0:
                del self._open[key]

    @property
    def held_boxes(self) -> int:
        return len({box for box, _ in self._open})

    async def renew(self) -> int:
        """One round: every box held now or since the last round is seen now; the jobs waiting for
        a box that was offline are woken in the background (a round never waits on Temporal).
        Returns how many boxes were renewed. A round that fails owes nothing: the polls still
        held are in the next one."""
        keys = self._since | set(self._open)
        self._since = set()
        if not keys:
            return 0
        held = sorted(keys)
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(
                Q.renew_held_polls, [box for box, _ in held], [session for _, session in held], self.offline_after_s
            )
        back = [(row["id"], row["capacity"]) for row in rows if not row["was_live"] and not row["draining"]]
        if back:
            wake = asyncio.create_task(self._wake(back), name="held-polls-wake")
            self._wakes.add(wake)
            wake.add_done_callback(self._wakes.discard)
        return len(rows)

    async def _wake(self, boxes: list[tuple[int, int]]) -> None:
        for box_id, capacity in boxes:
            try:  # it was offline: its waiting jobs may now be placed on it
                async with self.pool.acquire() as conn:
                    await wake_waiters(conn, self.temporal, box_id, capacity)
            except Exception:  # one box's wake-up must not stop the others' (the reaper's waiter sweep retries)
                log.exception("held polls: waking the jobs waiting for box %s failed", box_id)

    async def _run(self) -> None:
        """A round every interval_s, at a fixed rate (a slow round shortens the next pause)."""
        loop = asyncio.get_running_loop()
        due = loop.time()
        while True:
            due = max(due + self.interval_s, loop.time())
            await asyncio.sleep(due - loop.time())
            try:
                await self.renew()
            except Exception:  # whatever it was, the next round tries again: agents rely on it
                log.exception("held polls: could not renew the polling boxes' liveness; trying again")

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="held-polls")

    async def stop(self) -> None:
        tasks = [t for t in (self._task, *self._wakes) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._task = None
