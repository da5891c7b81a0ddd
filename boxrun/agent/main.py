"""`boxrun agent [--box NAME]`: a plain HTTP client of the boxrun API, authenticated by its node token.

It opens the box's one live session, reports liveness, long-polls the API for offers and cancels,
claims offered jobs (the claim's answer carries the bundle) and runs each in a task (JobRunner).
It holds no Temporal address, no database and no storage credential.

SIGTERM drains: the agent stops taking jobs (and reports `draining`, so placement skips the box),
keeps reporting its running jobs and lets them finish for up to BOXRUN_AGENT_DRAIN_S, after which
their process groups are terminated and the jobs fail with "agent stopped (drain limit reached)".
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from boxrun import __version__, logcontext
from boxrun.agent import metrics as agent_metrics
from boxrun.agent.jobusers import JobUser, JobUserError, SlotUsers, check_job_user_can_run, prepare_runtime
from boxrun.agent.runner import JobRunner, RunningJob
from boxrun.agent.workspace import sweep_stale
from boxrun.client import AgentClient
from boxrun.errors import BoxrunError, Conflict, NotFound, Unauthorized, Unavailable
from boxrun.schemas import AgentEvent, JobBundle
from boxrun.settings import Settings

log = logging.getLogger(__name__)

SESSION_FILE = "agent-session"
# Each long-poll waits up to this long for an offer or a cancel (the API may cap it lower).
POLL_WAIT_S = 25.0
POLL_HELD_AFTER_S = 1.0  # a poll out this long is held by the API, which then renews the box


def poll_held(sent_at: float | None) -> bool:
    """A long-poll sent at `sent_at` (time.monotonic(); None: none out) has been out for
    POLL_HELD_AFTER_S, so the API holds it (an answer at once, events already pending, is not
    held there and does not count)."""
    return sent_at is not None and time.monotonic() - sent_at >= POLL_HELD_AFTER_S


class TokenError(Exception):
    """No usable node token: the agent cannot start."""


def load_token(settings: Settings) -> str:
    """The node token, from BOXRUN_NODE_TOKEN_FILE (refused if group or others may read it) or
    BOXRUN_NODE_TOKEN; never from argv. TokenError says what is wrong."""
    try:
        token = settings.resolved_node_token()
    except (OSError, ValueError) as exc:
        raise TokenError(f"cannot use the node token file: {exc}") from exc
    if not token:
        raise TokenError("an agent needs its node token: BOXRUN_NODE_TOKEN_FILE (mode 0600) or BOXRUN_NODE_TOKEN")
    return token


class Liveness:
    """Reports to the API every interval (and at once when asked); the API marks the box offline
    when reports stop, and skips it for placement while it is draining. A report refused because
    another agent took the session over stops this agent. With `covered` (an API that renews the
    liveness of a box whose long-poll it holds, api/live/liveness.py) the periodic report is left
    out while `covered()` says a poll is in flight: the first report, a change (draining) and any
    interval without a poll still go out."""

    def __init__(
        self,
        client: AgentClient,
        interval_s: float,
        lost: asyncio.Event,
        covered: Callable[[], bool] | None = None,
    ) -> None:
        self.client = client
        self.interval_s = interval_s
        self.draining = False
        self.lost = lost
        self.covered = covered
        self._now = asyncio.Event()
        self._stop = asyncio.Event()

    def report_now(self) -> None:
        self._now.set()

    def stop(self) -> None:
        self._stop.set()
        self._now.set()

    async def run(self) -> None:
        asked = True  # the first report goes out whatever else does
        while not self._stop.is_set():
            asked = asked or self._now.is_set()  # asked for while the wait timed out
            self._now.clear()
            if asked or self.covered is None or not self.covered():
                try:
                    await self.client.heartbeat(__version__, draining=self.draining)
                except Conflict as exc:
                    log.error("this agent's session was taken over: %s; stopping", exc)
                    self.lost.set()
                    return
                except Unauthorized:
                    log.error("the API rejects this box's node token (401); check the node token")
                except BoxrunError as exc:
                    log.warning("liveness report failed: %s", exc)
            asked = await self._wait()

    async def _wait(self) -> bool:
        """Until the next interval (False) or a report asked for (True)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._now.wait(), self.interval_s)
            return True
        return False


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


class Agent:
    def __init__(self, settings: Settings, client: AgentClient, runner: JobRunner, slots: int) -> None:
        self.settings = settings
        self.client = client
        self.runner = runner
        self.slots = slots
        self.jobs: dict[str, RunningJob] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self.changed = asyncio.Event()
        self.draining = False
        self.poll_sent_at: float | None = None  # time.monotonic() the long-poll in flight went out

    async def poll(self, stop: asyncio.Event) -> None:
        """Long-poll offers and cancels until `stop`; act on each at once."""
        delay = 0.2
        while not stop.is_set():
            poll = asyncio.create_task(self.client.events(POLL_WAIT_S))
            stopping = asyncio.create_task(stop.wait())
            self.poll_sent_at = time.monotonic()
            try:
                await asyncio.wait({poll, stopping}, return_when="FIRST_COMPLETED")
            finally:
                self.poll_sent_at = None
            stopping.cancel()
            if not poll.done():
                poll.cancel()
                await asyncio.gather(poll, return_exceptions=True)
                return
            try:
                events = poll.result()
            except Conflict as exc:
                log.error("this agent's session was taken over: %s; stopping", exc)
                stop.set()
                return
            except BoxrunError as exc:
                log.warning("cannot fetch offers: %s; retrying", exc)
                agent_metrics.RECONNECTS.inc()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            delay = 0.2
            acted = False
            for event in events:
                acted = await self.on_event(event) or acted
            if events and not acted:  # only events already handled: wait for a change, not a busy loop
                self.changed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.changed.wait(), 1.0)

    def poll_held(self) -> bool:
        return poll_held(self.poll_sent_at)

    async def on_event(self, event: AgentEvent) -> bool:
        running = self.jobs.get(event.job_id)
        if event.kind == "cancel":
            if running is None or running.cancel.is_set():
                return False
            log.info("job %s cancelled: terminating its process group", event.job_id)
            running.cancel.set()
            return True
        if running is not None or self.draining or len(self.jobs) >= self.slots:
            return False
        bundle = await self._claim(event.job_id)
        if bundle is None:
            return True
        job = RunningJob(event.job_id)
        self.jobs[event.job_id] = job
        task = asyncio.create_task(self._run(job, bundle), name=f"job-{event.job_id}")
        self.tasks.add(task)
        return True

    async def _claim(self, job_id: str) -> JobBundle | None:
        try:
            return await self.client.claim(job_id)
        except (Conflict, NotFound) as exc:
            log.info("job %s not claimed: %s", job_id, exc)
            return None
        except Unavailable as exc:  # the claim may have landed and its answer been lost
            log.warning("claim of job %s unanswered (%s); asking for its bundle", job_id, exc)
            with contextlib.suppress(BoxrunError):
                return await self.client.bundle(job_id)
            return None
        except BoxrunError as exc:
            log.warning("claim of job %s failed: %s", job_id, exc)
            return None

    async def _run(self, job: RunningJob, bundle: JobBundle) -> None:
        try:
            # on every line about the job, and (boxrun.client.base) on every call about it
            with logcontext.bound(job_id=job.job_id, request_id=bundle.request_id):
                log.info("job %s claimed: running it", job.job_id)
                await self.runner.run(job, bundle)
                log.info("job %s: its result is reported", job.job_id)
        except Exception:
            log.exception("job %s: the agent failed running it", job.job_id)
        finally:
            self.jobs.pop(job.job_id, None)
            current = asyncio.current_task()
            if current is not None:
                self.tasks.discard(current)
            self.changed.set()

    async def drain(self, limit_s: float) -> None:
        """No new jobs; running ones get `limit_s`, then are stopped and reported failed."""
        self.draining = True
        if self.tasks:
            log.info("agent draining: %d running job(s) get up to %.0fs", len(self.tasks), limit_s)
            _, pending = await asyncio.wait(set(self.tasks), timeout=limit_s)
            if pending:
                for job in self.jobs.values():
                    job.stop.set()
                await asyncio.wait(pending, timeout=60)


def _previous_session(workdir: Path) -> str | None:
    try:
        return (workdir / SESSION_FILE).read_text().strip() or None
    except OSError:
        return None


def _keep_session(workdir: Path, session: str) -> None:
    path = workdir / SESSION_FILE
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(session)


async def run_agent(settings: Settings, stop: asyncio.Event) -> int:
    try:
        token = load_token(settings)
    except TokenError as exc:
        log.error("%s", exc)
        return 2
    client = AgentClient(settings.api_url, token, timeout=30.0)
    agent_metrics.instrument(client.http)
    served = None
    if settings.agent_metrics_port is not None:
        try:
            served = agent_metrics.serve(settings.metrics_host, settings.agent_metrics_port)
        except OSError as exc:
            why = (exc.strerror or str(exc)).lower()  # "address already in use": boxrun dev retries on fresh ports
            log.error("cannot serve metrics on BOXRUN_AGENT_METRICS_PORT %s: %s", settings.agent_metrics_port, why)
            await client.aclose()
            return 2
    try:
        return await _serve(settings, client, stop)
    finally:
        await client.aclose()
        if served is not None:
            served.close()


async def _serve(settings: Settings, client: AgentClient, stop: asyncio.Event) -> int:
    delay = 0.2
    while True:  # the API may start after the agent
        try:
            me = await client.me()
            break
        except Unauthorized:
            log.error("the API rejects this node token (401)")
            return 2
        except Unavailable as exc:
            if stop.is_set():
                return 0
            log.warning("API not reachable yet: %s", exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
    if settings.box_name and settings.box_name != me.box:
        log.error("this node token belongs to box %s, not %s", me.box, settings.box_name)
        return 2
    workdir = settings.agent_workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        session = await client.open_session(__version__, me.capacity, _previous_session(workdir))
    except Conflict as exc:
        log.error("refused: %s", exc)
        return 3
    _keep_session(workdir, session)
    # Jobs run as one OS user per slot when the agent is root (boxrun/agent/jobusers.py), else as
    # the agent's own user; either way that user must reach the interpreter, the bootstrap and
    # the workspaces: checked now, with what to fix, instead of failing every job.
    python = resolve_python(settings.agent_python)
    try:
        slots = SlotUsers(me.box, me.capacity)
        slots.kill_leftovers()
        runtime = prepare_runtime(workdir)
        users: list[JobUser | None] = [*slots.users] or [None]
        for user in users:
            check_job_user_can_run(python, user, runtime=runtime, workdir=workdir)
    except JobUserError as exc:
        log.error("jobs could not run on this box: %s", exc)
        return 2
    if swept := sweep_stale(workdir):
        log.warning("removed %d workspace(s) left by a previous agent run: %s", len(swept), ", ".join(swept))
    runner = JobRunner(
        client,
        workdir=workdir,
        python=python,
        slots=slots,
        runtime=runtime,
        warm=settings.agent_warm_interpreter,
        progress_s=settings.agent_activity_heartbeat_s,
        pump_options={
            "max_lines": settings.log_batch_max_lines,
            "max_bytes": settings.log_batch_max_bytes,
            "memory_limit": settings.log_memory_limit_bytes,
        },
    )
    agent = Agent(settings, client, runner, me.capacity)
    runner.prestart_all()  # each slot's next job finds its interpreter started
    lost = asyncio.Event()
    covered = agent.poll_held if me.poll_renews_liveness else None
    liveness = Liveness(client, settings.agent_heartbeat_interval_s, lost, covered)
    reporting = asyncio.create_task(liveness.run())
    halt = asyncio.Event()

    async def halt_on(event: asyncio.Event) -> None:
        await event.wait()
        halt.set()

    watchers = [asyncio.create_task(halt_on(stop)), asyncio.create_task(halt_on(lost))]
    try:
        log.info("agent for box %s (%d slot(s)) polling %s", me.box, me.capacity, settings.api_url)
        with logcontext.bound(box=me.box):  # the box on every line (the jobs' tasks start in here)
            await agent.poll(halt)
        liveness.draining = True
        liveness.report_now()
        await agent.drain(0.0 if lost.is_set() else settings.agent_drain_s)
        log.info("agent stopped")
    finally:
        await runner.close()
        for w in watchers:
            w.cancel()
        liveness.stop()
        await asyncio.wait({reporting}, timeout=5)
        reporting.cancel()
    return 3 if lost.is_set() else 0
