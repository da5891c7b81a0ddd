"""Box activities, run by `boxrun agent` on the box's own task queue: run_job and upload_artifacts."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import Protocol

import httpx
from temporalio import activity
from temporalio.exceptions import ApplicationError

from boxrun.agent.logpump import LogPump, LogRejected, LogSink
from boxrun.agent.process import JobProcess, child_env
from boxrun.agent.workspace import Workspace
from boxrun.errors import BoxrunError
from boxrun.messages import JobStarted, RunJobInput, RunJobResult, UploadInput, UploadResult

log = logging.getLogger(__name__)

TIMEOUT_GRACE_S = 5.0


class Claimer(Protocol):
    async def claim(self, job_id: str) -> str | None: ...


class BoxActivities:
    def __init__(
        self,
        *,
        sink: LogSink,
        workdir: Path,
        python: str,
        heartbeat_s: float = 1.0,
        claimer: Claimer | None = None,
        upload_http: httpx.AsyncClient | None = None,
        pump_options: dict | None = None,
    ) -> None:
        self.sink = sink
        self.claimer = claimer
        self.workdir = workdir
        self.python = python
        self.heartbeat_s = heartbeat_s
        self.upload_http = upload_http or httpx.AsyncClient(timeout=httpx.Timeout(60.0))
        self.pump_options = pump_options or {}

    def all(self) -> list:
        return [self.run_job, self.upload_artifacts]

    @activity.defn
    async def run_job(self, inp: RunJobInput) -> RunJobResult:
        spec = inp.spec
        refused = await self._claim(spec.job_id)
        if refused is not None:
            return RunJobResult(exit_code=None, error=f"not started: {refused}")
        ws = Workspace.for_job(self.workdir, spec.job_id)
        try:
            ws.create(spec)
        except (OSError, ValueError) as exc:
            ws.remove()
            return RunJobResult(exit_code=None, error=f"could not prepare the workspace: {exc}")

        pump = LogPump(self.sink, spec.job_id, spill_path=ws.root / "logs.spill", **self.pump_options)
        pump.start()
        job = JobProcess(pump)
        env = child_env(os.environ, spec.env, {"BOXRUN_JOB_ID": spec.job_id, "BOXRUN_ARTIFACTS_DIR": str(ws.artifacts)})
        try:
            pid = await job.spawn(self.python, ws.script, ws.work, env)
        except OSError as exc:
            await pump.close()
            ws.remove()
            return RunJobResult(exit_code=None, error=f"could not start {self.python}: {exc}")
        ws.record_pgid(pid)  # the process leads its own group (new session)
        announce = asyncio.create_task(self._announce(pid))
        try:
            code, timed_out = await self._supervise(job, spec.timeout_s)
        except asyncio.CancelledError:
            # A user cancel, the server timing the activity out, or this agent's drain limit.
            shutdown = activity.is_worker_shutdown()
            await job.terminate(spec.cancel_grace_s)
            await job.finish_output()
            why = "agent stopped (drain limit reached)" if shutdown else "job cancelled"
            pump.add("system", f"boxrun: {why}; process group terminated")
            await pump.close(tick_s=self.heartbeat_s, on_tick=activity.heartbeat)
            ws.remove()
            if shutdown:
                raise ApplicationError(why, type="AgentStopped", non_retryable=True) from None
            raise
        finally:
            announce.cancel()
        await job.finish_output()
        if timed_out:
            pump.add("system", f"boxrun: timed out after {spec.timeout_s}s; process group killed")
        try:
            await pump.close(tick_s=self.heartbeat_s, on_tick=lambda: activity.heartbeat({"lines": pump.acked}))
        except LogRejected as exc:
            ws.remove()
            raise ApplicationError(str(exc), type="LogRejected", non_retryable=True) from exc
        artifacts = await asyncio.to_thread(ws.manifest)
        if not artifacts:
            ws.remove()
        return RunJobResult(exit_code=code, timed_out=timed_out, pid=pid, log_lines=pump.last_seq, artifacts=artifacts)

    async def _claim(self, job_id: str) -> str | None:
        """The last check before a process starts: is the job still dispatched to this box (not
        cancelled, lease held)? A task that sat in a frozen agent must not start late."""
        if self.claimer is None:
            return None
        delay = 0.1
        while True:
            try:
                return await self.claimer.claim(job_id)
            except (BoxrunError, httpx.HTTPError) as exc:  # API unreachable: wait for it (a cancel still gets through)
                log.warning("cannot claim job %s yet: %s", job_id, exc)
                activity.heartbeat()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    async def _supervise(self, job: JobProcess, timeout_s: float) -> tuple[int, bool]:
        """Wait for the process while heartbeating; kill the group at the deadline."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            activity.heartbeat({"lines": job.pump.last_seq})
            remaining = deadline - loop.time()
            if remaining <= 0:
                return await job.terminate(TIMEOUT_GRACE_S), True
            code = await job.wait(min(self.heartbeat_s, remaining))
            if code is not None:
                return code, False

    async def _announce(self, pid: int) -> None:
        """Tell the workflow the process is up, so the job shows `running` at once."""
        info = activity.info()
        if info.workflow_id is None:  # run_job is only ever scheduled by JobWorkflow
            return
        try:
            handle = activity.client().get_workflow_handle(info.workflow_id, run_id=info.workflow_run_id)
            await handle.signal("started", JobStarted(pid=pid))
        except Exception as exc:  # the result carries the pid too; the workflow catches up then
            log.warning("could not signal start of job %s: %s", info.workflow_id, exc)

    @activity.defn
    async def upload_artifacts(self, inp: UploadInput) -> UploadResult:
        """PUT each artifact straight to storage with its presigned URL and checksum headers."""
        ws = Workspace.for_job(self.workdir, inp.job_id)
        if not ws.artifacts.is_dir():
            raise ApplicationError(f"workspace of job {inp.job_id} is gone from this box", non_retryable=True)
        # Heartbeat all along, not per file: a big file or a slow store must not look like a dead
        # box, and a cancel must still reach the upload while a PUT is waiting.
        beating = asyncio.create_task(self._heartbeat_forever())
        try:
            for target in inp.targets:
                path = ws.artifacts / target.path
                with path.open("rb") as fh:
                    resp = await self.upload_http.put(target.url, content=_chunks(fh), headers=target.headers)
                if resp.status_code >= 300:
                    raise ApplicationError(
                        f"upload of {target.path} refused: HTTP {resp.status_code} {resp.text[:200]}"
                    )
        finally:
            beating.cancel()
        ws.remove()
        return UploadResult(uploaded=len(inp.targets))

    async def _heartbeat_forever(self) -> None:
        while True:
            activity.heartbeat()
            await asyncio.sleep(self.heartbeat_s)


async def _chunks(fh, size: int = 1 << 20):
    while chunk := await asyncio.to_thread(fh.read, size):
        yield chunk
