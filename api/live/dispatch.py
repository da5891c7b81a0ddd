"""The agents' long-polls: NOTIFYs on boxrun_dispatch (through the API's one LISTEN connection)
wake the waiting long-poll of the box they name. No database connection is held while a box waits."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import defaultdict
from collections.abc import Iterator

from boxrun.api.live.listener import PgListener
from boxrun.services.dispatch import CHANNEL_DISPATCH

log = logging.getLogger(__name__)


class DispatchHub:
    def __init__(self, listener: PgListener) -> None:
        self._waiters: dict[int, set[asyncio.Event]] = defaultdict(set)
        # after a reconnect every waiter re-reads Postgres
        listener.listen(CHANNEL_DISPATCH, self._on_notify, self._wake_all)

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
