"""Wakes the followers of a pipeline's event stream when NOTIFY `boxrun_pipelines` names it (one
registration on the API's one LISTEN connection); they re-read pipeline_events then."""

from __future__ import annotations

import asyncio
import json
import logging
from collections import defaultdict

from boxrun.api.live.listener import PgListener
from boxrun.constants import CHANNEL_PIPELINES

log = logging.getLogger(__name__)


class PipelineWatch:
    """Set whenever something new happened to the pipeline (or the LISTEN connection came back)."""

    def __init__(self, hub: PipelineHub, pipeline_id: str) -> None:
        self._hub = hub
        self.pipeline_id = pipeline_id
        self.event = asyncio.Event()

    async def wait(self, timeout: float) -> bool:
        """True if woken within `timeout` seconds (the flag is cleared for the next wait)."""
        try:
            async with asyncio.timeout(timeout):
                await self.event.wait()
        except TimeoutError:
            return False
        self.event.clear()
        return True

    def close(self) -> None:
        self._hub._forget(self)


class PipelineHub:
    def __init__(self, listener: PgListener | None = None) -> None:
        self._watches: dict[str, set[PipelineWatch]] = defaultdict(set)
        if listener is not None:  # tests may deliver notifications themselves
            listener.listen(CHANNEL_PIPELINES, self._on_notify, self._wake_all)

    def watch(self, pipeline_id: str) -> PipelineWatch:
        w = PipelineWatch(self, pipeline_id)
        self._watches[pipeline_id].add(w)
        return w

    def _forget(self, w: PipelineWatch) -> None:
        held = self._watches.get(w.pipeline_id)
        if held is not None:
            held.discard(w)
            if not held:
                del self._watches[w.pipeline_id]

    def _on_notify(self, _conn: object, _pid: int, _channel: str, payload: object) -> None:
        try:
            pipeline_id = json.loads(str(payload))["pipeline_id"]
        except (ValueError, KeyError, TypeError):
            log.warning("ignoring a malformed %s notification: %.200s", CHANNEL_PIPELINES, payload)
            return
        self.wake(pipeline_id)

    def wake(self, pipeline_id: str) -> None:
        for w in self._watches.get(pipeline_id, ()):
            w.event.set()

    def _wake_all(self) -> None:
        """After a reconnect: everyone re-reads (a notification missed meanwhile loses nothing)."""
        for watches in self._watches.values():
            for w in watches:
                w.event.set()
