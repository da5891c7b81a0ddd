"""Simulated box agents: N agents in one asyncio process, speaking the real agent protocol.

What each `SimAgent` does is what `boxrun agent` does (boxrun/agent/main.py, runner.py,
boxrun/client/agent.py), minus the job's process:

- `POST /api/agent/session` (becomes the box's live agent);
- `POST /api/agent/heartbeat` at start, then every `heartbeat_s` (the agent's
  BOXRUN_AGENT_HEARTBEAT_INTERVAL_S, 5 s by default) in which no long-poll is in flight: the API
  renews the liveness of a box whose poll it holds (api/live/liveness.py; `GET /api/agent/me`
  says so with `poll_renews_liveness`), and a poll out for 1 s is held. `poll_liveness=False` reports every interval whatever,
  as the agent does against an API without that;
- `GET /api/agent/events?wait=25` one long-poll after another (the session header);
- with `run_jobs`: on an offer, `POST /api/agent/jobs/{id}/claim` (the job becomes `running`; the
  answer is its bundle), one `progress` report at once (the agent's first one, with a pid) and
  every `progress_s` while the job "runs" (`job_s`), `job_lines` log lines in one batch
  (`application/x-boxrun-logbatch`, each line `sim <job> <i> <time.time()>`), then
  `POST .../result` with exit code 0 and the batch's last seq. A job with no artifacts sends no
  manifest (as the real agent). A cancel event ends the job with `cancelled: true`.

A minimal HTTP/1.1 client on asyncio streams (Content-Length bodies, keep-alive) keeps the
simulation cheap: the bench shares the machine's cores with the stack it measures. Each agent holds
two connections, like the real agent's httpx pool while it long-polls: one for the long-poll, one
for everything else (reopened when idle for longer than the server's keep-alive timeout).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from dataclasses import dataclass, field

from boxrun import logbatch
from boxrun.agent.main import poll_held

KEEPALIVE_S = 4.0  # uvicorn closes an idle keep-alive connection after 5 s
VERSION = "sim"


class SimProblem(RuntimeError):
    """The API answered a simulated agent with something the real agent would not accept."""


class Conn:
    """One keep-alive HTTP/1.1 connection (requests one at a time)."""

    def __init__(self, host: str, port: int, headers: dict[str, str]) -> None:
        self.host, self.port, self.headers = host, port, headers
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.used_at = 0.0
        self.lock = asyncio.Lock()

    async def _open(self) -> None:
        self.close()
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None

    async def request(
        self, method: str, path: str, body: bytes = b"", content_type: str = "application/json", extra: str = ""
    ) -> tuple[int, bytes]:
        async with self.lock:
            for attempt in (0, 1):
                if self.writer is None or time.monotonic() - self.used_at > KEEPALIVE_S:
                    await self._open()
                try:
                    return await self._once(method, path, body, content_type, extra)
                except (ConnectionError, asyncio.IncompleteReadError, ValueError):
                    self.close()
                    if attempt:
                        raise
            raise AssertionError("unreachable")

    async def _once(self, method: str, path: str, body: bytes, content_type: str, extra: str) -> tuple[int, bytes]:
        assert self.reader is not None and self.writer is not None
        head = f"{method} {path} HTTP/1.1\r\nHost: {self.host}\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in self.headers.items())
        head += f"{extra}Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n"
        self.writer.write(head.encode() + body)
        await self.writer.drain()
        status_line = await self.reader.readline()
        if not status_line:
            raise ConnectionError("the server closed the connection")
        length, close = 0, False
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            name = name.lower()
            if name == "content-length":
                length = int(value)
            elif name == "connection" and value.strip().lower() == "close":
                close = True
        data = await self.reader.readexactly(length) if length else b""
        self.used_at = time.monotonic()
        if close:
            self.close()
        return int(status_line.split()[1]), data


@dataclass
class SimJob:
    job_id: str
    offered_at: float
    claimed_at: float = 0.0
    result_at: float = 0.0
    outcome: str = ""


@dataclass
class SimStats:
    polls: int = 0
    heartbeats: int = 0
    progress: int = 0
    batches: int = 0
    jobs: list[SimJob] = field(default_factory=list)
    not_claimed: int = 0  # offers another agent or the control plane took back first (409)
    ended_by_control_plane: int = 0  # progress answered 404/409: the job ended meanwhile (as the agent, stop it)
    job_errors: list[str] = field(default_factory=list)  # anything else the API refused


class SimAgent:
    """One simulated box agent (see the module's docstring)."""

    def __init__(
        self,
        host: str,
        port: int,
        token: str,
        *,
        heartbeat_s: float = 5.0,
        poll_wait_s: float = 25.0,
        run_jobs: bool = False,
        job_s: float = 0.0,
        job_lines: int = 1,
        progress_s: float = 1.0,
        slots: int = 1,
        poll_liveness: bool = True,
    ) -> None:
        auth = {"Authorization": f"Bearer {token}"}
        self.poll_conn = Conn(host, port, auth)
        self.conn = Conn(host, port, auth)
        self.heartbeat_s, self.poll_wait_s = heartbeat_s, poll_wait_s
        self.run_jobs, self.job_s, self.job_lines, self.progress_s = run_jobs, job_s, job_lines, progress_s
        self.slots = slots
        self.poll_liveness = poll_liveness
        self.poll_sent_at: float | None = None  # the long-poll in flight went out (time.monotonic())
        self.session = ""
        self.ready = asyncio.Event()
        self.stats = SimStats()
        self.running: dict[str, asyncio.Event] = {}  # job id -> its cancel
        self._tasks: set[asyncio.Task] = set()

    def _session(self) -> str:
        return f"X-Boxrun-Session: {self.session}\r\n"

    async def _call(self, method: str, path: str, payload: object | None = None, ok: tuple[int, ...] = (200,)) -> dict:
        body = b"" if payload is None else json.dumps(payload).encode()
        status, data = await self.conn.request(method, path, body, extra=self._session())
        if status not in ok:
            raise SimProblem(f"{method} {path} answered {status}: {data[:300]!r}")
        return json.loads(data) if data else {}

    async def run(self) -> None:
        """Session, then heartbeats and long-polls until cancelled; raises SimProblem on a refusal."""
        got = await self._call("POST", "/api/agent/session", {"agent_version": VERSION, "slots": self.slots}, (201,))
        self.session = got["session"]
        beat = asyncio.create_task(self._heartbeats())
        try:
            await self._poll(beat)
        finally:
            beat.cancel()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(beat, *self._tasks, return_exceptions=True)
            self.poll_conn.close()
            self.conn.close()

    async def _heartbeats(self) -> None:
        first = True
        while True:
            if first or not (self.poll_liveness and poll_held(self.poll_sent_at)):
                await self._call("POST", "/api/agent/heartbeat", {"agent_version": VERSION, "draining": False})
                self.stats.heartbeats += 1
            # the first pause is drawn at random so that a fleet started at once does not beat in step
            await asyncio.sleep(self.heartbeat_s * (random.random() if first else 1.0))
            first = False

    async def _poll(self, beat: asyncio.Task) -> None:
        path = f"/api/agent/events?wait={self.poll_wait_s:g}"
        while True:
            self.ready.set()
            self.poll_sent_at = time.monotonic()
            try:
                status, data = await self.poll_conn.request("GET", path, extra=self._session())
            finally:
                self.poll_sent_at = None
            if beat.done():
                beat.result()  # a refused heartbeat stops the agent, as the real one
            if status != 200:
                raise SimProblem(f"long-poll answered {status}: {data[:300]!r}")
            self.stats.polls += 1
            events = json.loads(data)["events"]
            acted = False
            for event in events:
                acted = self._on_event(event) or acted
            if events and not acted:
                await asyncio.sleep(0.2)  # only events already handled (re-sent until acted on)

    def _on_event(self, event: dict) -> bool:
        job_id = event["job_id"]
        if event["kind"] == "cancel":
            cancel = self.running.get(job_id)
            if cancel is None or cancel.is_set():
                return False
            cancel.set()
            return True
        if not self.run_jobs or job_id in self.running or len(self.running) >= self.slots:
            return False
        self.running[job_id] = asyncio.Event()
        task = asyncio.create_task(self._job(SimJob(job_id, time.time())))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    async def _job(self, job: SimJob) -> None:
        base = f"/api/agent/jobs/{job.job_id}"
        cancel = self.running[job.job_id]
        try:
            status, data = await self.conn.request("POST", f"{base}/claim", extra=self._session())
            if status in (404, 409):
                self.stats.not_claimed += 1
                return
            if status != 200:
                raise SimProblem(f"claim of {job.job_id} answered {status}: {data[:300]!r}")
            job.claimed_at = time.time()
            self.stats.jobs.append(job)
            if not await self._progress(job, os.getpid()):
                return
            deadline = time.monotonic() + self.job_s
            while (left := deadline - time.monotonic()) > 0 and not cancel.is_set():
                try:
                    await asyncio.wait_for(cancel.wait(), min(left, self.progress_s))
                except TimeoutError:
                    if not await self._progress(job, None):
                        return
            seq = 0
            if self.job_lines:
                now = time.time()
                data = "".join(f"sim {job.job_id} {i} {now:.6f}\n" for i in range(self.job_lines)).encode()
                status, answer = await self.conn.request(
                    "POST",
                    f"{base}/logs",
                    logbatch.encode(1, [(self.job_lines, "stdout", now)], data),
                    content_type=logbatch.MEDIA_TYPE,
                )
                if status != 200:
                    raise SimProblem(f"log batch of {job.job_id} answered {status}: {answer[:300]!r}")
                seq = json.loads(answer)["stored_through"]
                self.stats.batches += 1
            report = {"exit_code": None if cancel.is_set() else 0, "cancelled": cancel.is_set(), "log_seq": seq}
            status, answer = await self.conn.request("POST", f"{base}/result", json.dumps(report).encode())
            if status not in (204, 409, 404):
                raise SimProblem(f"result of {job.job_id} answered {status}: {answer[:300]!r}")
            job.result_at = time.time()
            job.outcome = "cancelled" if cancel.is_set() else ("reported" if status == 204 else f"refused {status}")
        except (SimProblem, OSError, asyncio.IncompleteReadError) as exc:
            self.stats.job_errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            self.running.pop(job.job_id, None)

    async def _progress(self, job: SimJob, pid: int | None) -> bool:
        """One progress report; False if the control plane ended the job meanwhile (the agent
        then stops it and reports nothing more)."""
        status, data = await self.conn.request(
            "POST", f"/api/agent/jobs/{job.job_id}/progress", json.dumps({"pid": pid, "log_seq": 0}).encode()
        )
        if status in (404, 409):
            self.stats.ended_by_control_plane += 1
            job.outcome = "ended by the control plane"
            return False
        if status != 200:
            raise SimProblem(f"progress of {job.job_id} answered {status}: {data[:300]!r}")
        self.stats.progress += 1
        return True


class Fleet:
    """Many SimAgents started together; `problems` collects every agent that stopped."""

    def __init__(self, agents: list[SimAgent]) -> None:
        self.agents = agents
        self.tasks: list[asyncio.Task] = []

    async def start(self, timeout: float = 300.0, wave: int = 100) -> float:
        """Open every agent's session and first long-poll (in waves, so the accept queue never
        overflows); the seconds it took. SimProblem if an agent stops or they are not all up in time."""
        t0 = time.perf_counter()
        deadline = time.monotonic() + timeout
        for k in range(0, len(self.agents), wave):
            batch = self.agents[k : k + wave]
            self.tasks += [asyncio.create_task(a.run()) for a in batch]
            ready = asyncio.ensure_future(asyncio.gather(*(a.ready.wait() for a in batch)))
            done, _ = await asyncio.wait(
                {ready, *self.tasks}, timeout=max(1.0, deadline - time.monotonic()), return_when="FIRST_COMPLETED"
            )
            self.check()
            if ready not in done:
                ready.cancel()
                raise SimProblem(f"not all {len(self.agents)} simulated agents connected within {timeout:.0f}s")
        return time.perf_counter() - t0

    def problems(self) -> list[str]:
        out = []
        for task in self.tasks:
            if task.done() and not task.cancelled():
                exc = task.exception()
                out.append(f"{type(exc).__name__}: {exc}" if exc else "an agent returned")
        return out

    def check(self) -> None:
        problems = self.problems()
        if problems:
            raise SimProblem(f"{len(problems)} simulated agent(s) stopped; first: {problems[0]}")

    def totals(self) -> dict:
        s = [a.stats for a in self.agents]
        return {
            "polls": sum(x.polls for x in s),
            "heartbeats": sum(x.heartbeats for x in s),
            "progress": sum(x.progress for x in s),
            "log_batches": sum(x.batches for x in s),
            "jobs": sum(len(x.jobs) for x in s),
            "not_claimed": sum(x.not_claimed for x in s),
            "ended_by_control_plane": sum(x.ended_by_control_plane for x in s),
            "job_errors": sum(len(x.job_errors) for x in s),
            "first_job_error": next((x.job_errors[0] for x in s if x.job_errors), None),
        }

    def jobs(self) -> list[SimJob]:
        return [j for a in self.agents for j in a.stats.jobs]

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
