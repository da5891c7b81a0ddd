"""`boxrun agent --box NAME`: a Temporal worker on the box's own task queue, plus liveness to the API."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

import httpx
from temporalio.worker import Worker

from boxrun import __version__
from boxrun.activities.box.logpump import ApiLogSink
from boxrun.activities.box.run import BoxActivities
from boxrun.constants import box_task_queue
from boxrun.settings import Settings
from boxrun.temporal import connect

log = logging.getLogger(__name__)


async def _liveness(http: httpx.AsyncClient, interval_s: float, stop: asyncio.Event) -> None:
    """Report to the API every interval; the API marks the box offline when reports stop."""
    while not stop.is_set():
        try:
            resp = await http.post("/api/agent/heartbeat", json={"agent_version": __version__})
            if resp.status_code == 401:
                log.error("the API rejects this box's node token (401); check BOXRUN_NODE_TOKEN")
            resp.raise_for_status()
        except httpx.HTTPError as exc:
            log.warning("liveness report failed: %s", exc)
        try:
            await asyncio.wait_for(stop.wait(), interval_s)
        except TimeoutError:
            pass


async def run_agent(settings: Settings, stop: asyncio.Event) -> int:
    if not settings.box_name or not settings.node_token:
        log.error("an agent needs BOXRUN_BOX_NAME (--box) and BOXRUN_NODE_TOKEN")
        return 2
    http = httpx.AsyncClient(base_url=settings.api_url, timeout=httpx.Timeout(10.0),
                             headers={"Authorization": f"Bearer {settings.node_token}"})
    client = await connect(settings.temporal_address, settings.temporal_namespace)
    workdir = settings.agent_workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    activities = BoxActivities(
        sink=ApiLogSink(http), workdir=workdir, python=settings.agent_python,
        heartbeat_s=settings.agent_activity_heartbeat_s,
        pump_options={"max_lines": settings.log_batch_max_lines, "max_bytes": settings.log_batch_max_bytes},
    )
    liveness = asyncio.create_task(_liveness(http, settings.agent_heartbeat_interval_s, stop))
    queue = box_task_queue(settings.box_name)
    # Heartbeats reach Temporal at most 1 s apart, so a cancel reaches the box within ~1 s.
    throttle = timedelta(seconds=settings.agent_activity_heartbeat_s)
    worker = Worker(client, task_queue=queue, activities=activities.all(), max_concurrent_activities=100,
                    max_heartbeat_throttle_interval=throttle, default_heartbeat_throttle_interval=throttle,
                    graceful_shutdown_timeout=timedelta(seconds=5))
    try:
        async with worker:
            log.info("agent for box %s polling %s", settings.box_name, queue)
            await stop.wait()
            log.info("agent stopping")
    finally:
        liveness.cancel()
        await asyncio.gather(liveness, return_exceptions=True)
        await http.aclose()
    return 0
