"""`boxrun agent --box NAME`: a Temporal worker on the box's own task queue, plus liveness to the API.

SIGTERM drains: the agent stops taking jobs (and reports `draining`, so placement skips the box),
keeps heartbeating its running job and lets it finish for up to BOXRUN_AGENT_DRAIN_S, after which
the job's process group is terminated and the job fails with "agent stopped (drain limit reached)".
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
from datetime import timedelta

from temporalio.worker import Worker

from boxrun import __version__
from boxrun.agent.activities import BoxActivities
from boxrun.agent.api_client import AgentApi
from boxrun.agent.workspace import sweep_stale
from boxrun.client import AgentClient
from boxrun.constants import box_task_queue
from boxrun.errors import BoxrunError, Unauthorized
from boxrun.settings import Settings
from boxrun.temporal import connect

log = logging.getLogger(__name__)


class Liveness:
    """Reports to the API every interval (and at once when asked); the API marks the box offline
    when reports stop, and skips it for placement while it is draining."""

    def __init__(self, client: AgentClient, interval_s: float) -> None:
        self.client = client
        self.interval_s = interval_s
        self.draining = False
        self._now = asyncio.Event()
        self._stop = asyncio.Event()

    def report_now(self) -> None:
        self._now.set()

    def stop(self) -> None:
        self._stop.set()
        self._now.set()

    async def run(self) -> None:
        while not self._stop.is_set():
            self._now.clear()
            try:
                await self.client.heartbeat(__version__, draining=self.draining)
            except Unauthorized:
                log.error("the API rejects this box's node token (401); check BOXRUN_NODE_TOKEN")
            except BoxrunError as exc:
                log.warning("liveness report failed: %s", exc)
            try:
                await asyncio.wait_for(self._now.wait(), self.interval_s)
            except TimeoutError:
                pass


def resolve_python(python: str) -> str:
    """The real interpreter behind `python` (a pyenv/asdf shim costs ~80 ms on every job start)."""
    try:
        done = subprocess.run(
            [python, "-c", "import sys; print(sys.executable)"], capture_output=True, text=True, timeout=30, check=True
        )
    except (OSError, subprocess.SubprocessError) as exc:
        log.error("cannot run the box's python (%s): %s; jobs will fail to start", python, exc)
        return python
    return done.stdout.strip() or python


async def run_agent(settings: Settings, stop: asyncio.Event) -> int:
    try:
        token = settings.resolved_node_token()
    except (OSError, ValueError) as exc:
        log.error("cannot read the node token: %s", exc)
        return 2
    if not settings.box_name or not token:
        log.error("an agent needs BOXRUN_BOX_NAME (--box) and BOXRUN_NODE_TOKEN_FILE or BOXRUN_NODE_TOKEN")
        return 2
    agent_client = AgentClient(settings.api_url, token, timeout=10.0)
    client = await connect(settings.temporal_address, settings.temporal_namespace)
    workdir = settings.agent_workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    if swept := sweep_stale(workdir):
        log.warning("removed %d workspace(s) left by a previous agent run: %s", len(swept), ", ".join(swept))
    api = AgentApi(agent_client)
    activities = BoxActivities(
        sink=api,
        claimer=api,
        workdir=workdir,
        python=resolve_python(settings.agent_python),
        heartbeat_s=settings.agent_activity_heartbeat_s,
        pump_options={
            "max_lines": settings.log_batch_max_lines,
            "max_bytes": settings.log_batch_max_bytes,
            "memory_limit": settings.log_memory_limit_bytes,
        },
    )
    liveness = Liveness(agent_client, settings.agent_heartbeat_interval_s)
    reporting = asyncio.create_task(liveness.run())
    queue = box_task_queue(settings.box_name)
    # The SDK sends heartbeats to Temporal at most this often; a cancel arrives with the answer.
    throttle = timedelta(seconds=settings.agent_activity_heartbeat_s)
    worker = Worker(
        client,
        task_queue=queue,
        activities=activities.all(),
        max_concurrent_activities=100,
        max_heartbeat_throttle_interval=throttle,
        default_heartbeat_throttle_interval=throttle,
        graceful_shutdown_timeout=timedelta(seconds=settings.agent_drain_s),
    )
    try:
        async with worker:
            log.info("agent for box %s polling %s", settings.box_name, queue)
            await stop.wait()
            log.info("agent draining: no new jobs; running ones get up to %.0fs", settings.agent_drain_s)
            liveness.draining = True
            liveness.report_now()
        log.info("agent stopped")
    finally:
        liveness.stop()
        await asyncio.wait({reporting}, timeout=5)
        reporting.cancel()
        await agent_client.aclose()
    return 0
