"""One claimed job on the box: workspace, files, process, logs, progress, artifacts, result.

Everything goes through the API (AgentClient): the box holds no Temporal, database or storage
credential. Storage is reached only through presigned URLs the API hands out."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import IO, Any

import httpx

from boxrun.agent.api_client import AgentApi
from boxrun.agent.jobusers import JobUser, SlotUsers
from boxrun.agent.logpump import LogPump, LogRejected
from boxrun.agent.mask import Masker
from boxrun.agent.process import JobProcess, child_env, starts_alike, warm_env
from boxrun.agent.workspace import ArtifactRefused, Workspace
from boxrun.agent.workspace import RefusedArtifact as RefusedPath
from boxrun.client import AgentClient
from boxrun.errors import BoxrunError, Conflict, NotFound, TooLarge, Unavailable
from boxrun.messages import JobSpec
from boxrun.schemas import JobBundle, JobResultReport, ManifestEntry, RefusedArtifact

log = logging.getLogger(__name__)

TIMEOUT_GRACE_S = 5.0
MANIFEST_PAGE = 1000
UPLOADS_IN_FLIGHT = 8
DRAIN_LIMIT = "agent stopped (drain limit reached)"


class JobEnded(Exception):
    """The control plane ended the job (its heartbeat was lost, or it was cancelled meanwhile)."""


# at most this many refused or failed artifacts travel in a result (the API keeps the rest out)
MAX_FAILURES = 20


class RunningJob:
    """Handles the main loop keeps on a running job: cancel it, or stop it at the drain limit."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        self.cancel = asyncio.Event()
        self.stop = asyncio.Event()
        self.ended = asyncio.Event()  # the API says the job is over (409/404 on progress)
        self.pid: int | None = None

    def interruptions(self) -> dict[str, asyncio.Event]:
        return {"cancel": self.cancel, "stop": self.stop, "ended": self.ended}


class JobRunner:
    def __init__(
        self,
        client: AgentClient,
        *,
        workdir: Path,
        python: str,
        progress_s: float = 1.0,
        pump_options: dict[str, Any] | None = None,
        http: httpx.AsyncClient | None = None,
        slots: SlotUsers | None = None,
        runtime: Path | None = None,
        warm: bool = False,
    ) -> None:
        self.client = client
        self.sink = AgentApi(client)
        self.workdir = workdir
        self.python = python
        self.progress_s = progress_s
        self.pump_options = pump_options or {}
        # one OS user per slot when the agent is root; None: jobs run as the agent's user
        self.slots = slots
        self.runtime = runtime
        self.http = http or httpx.AsyncClient(timeout=httpx.Timeout(60.0))
        self._uploads = asyncio.Semaphore(UPLOADS_IN_FLIGHT)
        # A warm interpreter per slot (slot index -> its pre-start), when the box has slots
        self.warm = warm and slots is not None
        self._warm: dict[int, asyncio.Task[JobProcess | None]] = {}
        self._closed = False

    def prestart_all(self) -> None:
        """Pre-start a warm interpreter for every free slot (at agent start)."""
        if self.warm and self.slots is not None:
            for index in range(self.slots.free()):
                self._prestart(index)

    def _prestart(self, index: int) -> None:
        if not self.warm or self._closed or index in self._warm or self.slots is None:
            return
        user = self.slots.user_for_slot(index)
        self._warm[index] = asyncio.create_task(self._start_warm(user), name=f"warm-slot-{index}")

    async def _start_warm(self, user: JobUser | None) -> JobProcess | None:
        proc = JobProcess()
        try:
            await proc.prestart(self.python, warm_env(os.environ), user=user, runtime=self.runtime)
        except (OSError, ValueError) as exc:
            log.warning("could not pre-start an interpreter: %s; the next job starts cold", exc)
            return None
        return proc

    async def _take_warm(self, index: int) -> JobProcess | None:
        """The slot's pre-started interpreter (waiting for one still starting), or None."""
        task = self._warm.pop(index, None)
        if task is None:
            return None
        try:
            return await task
        except asyncio.CancelledError:
            return None

    async def close(self) -> None:
        """Drop every unused warm interpreter (agent stopping)."""
        self._closed = True
        tasks, self._warm = list(self._warm.values()), {}
        for proc in await asyncio.gather(*tasks, return_exceptions=True):
            if isinstance(proc, JobProcess):
                proc.drop()

    async def run(self, job: RunningJob, bundle: JobBundle) -> JobResultReport:
        """Run a claimed job to its end and report the result; the workspace is removed whatever
        happens. Returns the report sent (or that could not be delivered)."""
        ws = Workspace.for_job(self.workdir, job.job_id)
        pump: LogPump | None = None
        slot = self.slots.acquire() if self.slots is not None else None
        reporting = asyncio.create_task(self._report_progress(job, lambda: pump))
        warm = await self._take_warm(slot.index) if slot is not None else None
        try:
            report, pump = await self._run(job, bundle, ws, slot.user if slot else None, warm)
            await self._deliver(job, report)
            return report
        finally:
            reporting.cancel()
            await asyncio.gather(reporting, return_exceptions=True)
            ws.remove()
            if warm is not None and warm.pump is None:  # not used (the job never started, or cold)
                warm.drop()
            if slot is not None and self.slots is not None:
                self.slots.release(slot)  # kills whatever the slot's user still runs
                # only now: the next job's interpreter never shares a moment with this job's processes
                self._prestart(slot.index)

    async def _run(
        self, job: RunningJob, bundle: JobBundle, ws: Workspace, user: JobUser | None, warm: JobProcess | None = None
    ) -> tuple[JobResultReport, LogPump | None]:
        spec = JobSpec(
            job_id=job.job_id,
            script=bundle.script,
            files={f.path: f.content for f in bundle.files if f.content is not None},
            env=bundle.env,
            timeout_s=bundle.timeout_s,
            cancel_grace_s=bundle.cancel_grace_s,
        )
        try:
            ws.create(spec, user=user)
        except (OSError, ValueError) as exc:
            return JobResultReport(error=f"could not prepare the workspace: {exc}"), None
        problem = await self._download(bundle, ws)
        if problem is not None:
            return JobResultReport(error=problem), None
        if user is not None:
            ws.hand_over(user)  # the downloaded files too, before the job starts

        masker = Masker(bundle.mask)
        pump = LogPump(self.sink, job.job_id, spill_path=ws.root / "logs.spill", mask=masker, **self.pump_options)
        pump.start()
        env = child_env(os.environ, spec.env, {"BOXRUN_JOB_ID": job.job_id, **ws.env()})
        proc, pid = None, 0
        if warm is not None and starts_alike(warm_env(os.environ), env):
            try:
                pid = await warm.go(pump, ws.script, ws.work, env)
                proc = warm
            except OSError as exc:
                log.warning("job %s: the warm interpreter is gone (%s); starting cold", job.job_id, exc)
        if proc is None:
            proc = JobProcess(pump)
            try:
                pid = await proc.spawn(self.python, ws.script, ws.work, env, user=user, runtime=self.runtime)
            except OSError as exc:
                await _close_quietly(pump)
                return JobResultReport(error=f"could not start {self.python}: {exc}"), None
        job.pid = pid
        ws.record_pgid(pid)  # the process leads its own group (new session)
        code, why = await self._supervise(job, proc, spec)
        await proc.finish_output()
        report = JobResultReport(exit_code=code, pid=pid)
        if why == "timeout":
            report.timed_out = True
        elif why == "cancel":
            report.cancelled = True
        elif why == "stop":
            report.error = DRAIN_LIMIT
        elif why == "ended":
            report.error = "the control plane ended the job"
        try:
            await pump.close()
        except LogRejected as exc:
            report.error = report.error or str(exc)
        report.log_seq = pump.acked
        if why in ("exit", "timeout"):
            await self._artifacts_unless_stopped(job, ws, report, masker)
        _mask_report(report, masker)
        return report, pump

    async def _artifacts_unless_stopped(
        self, job: RunningJob, ws: Workspace, report: JobResultReport, masker: Masker | None = None
    ) -> None:
        """Uploads, abandoned at once if the job is cancelled, stopped or ended meanwhile (a hung
        store must not hold a cancel)."""
        upload = asyncio.create_task(self._artifacts(job, ws, report, masker))
        signals = {why: asyncio.create_task(event.wait()) for why, event in job.interruptions().items()}
        try:
            done, _ = await asyncio.wait({upload, *signals.values()}, return_when="FIRST_COMPLETED")
        finally:
            for waiting in signals.values():
                waiting.cancel()
        if upload in done:
            upload.result()
            return
        upload.cancel()
        await asyncio.gather(upload, return_exceptions=True)
        if signals["cancel"] in done:
            report.cancelled = True
        elif signals["stop"] in done:
            report.error = DRAIN_LIMIT
        else:
            report.error = "the control plane ended the job"

    async def _supervise(self, job: RunningJob, proc: JobProcess, spec: JobSpec) -> tuple[int, str]:
        """Wait for the process, a cancel, the drain limit, the end from the control plane or the
        timeout, whichever comes first; kill the group if it is not the process's own exit."""
        waits = {why: asyncio.create_task(event.wait()) for why, event in job.interruptions().items()}
        exited = asyncio.create_task(proc.wait(None))
        try:
            done, _ = await asyncio.wait(
                {exited, *waits.values()}, timeout=spec.timeout_s, return_when="FIRST_COMPLETED"
            )
            if exited in done:
                code = exited.result()
                assert code is not None
                return code, "exit"
            for why, waited in waits.items():
                if waited in done:  # "ended": the job already failed, nobody waits for a clean stop
                    return await proc.terminate(0.0 if why == "ended" else spec.cancel_grace_s), why
            return await proc.terminate(TIMEOUT_GRACE_S), "timeout"
        finally:
            for pending in (exited, *waits.values()):
                pending.cancel()

    async def _report_progress(self, job: RunningJob, pump: Any) -> None:
        """Every progress_s until the result: the box lives and the job runs (the API relays it to
        Temporal as a heartbeat). A cancel in the answer, or the job ended, reaches the job here."""
        delay = self.progress_s
        while True:
            current = pump()
            try:
                if await self.client.progress(job.job_id, pid=job.pid, log_seq=current.acked if current else 0):
                    job.cancel.set()
                delay = self.progress_s
            except (Conflict, NotFound) as exc:
                log.warning("job %s ended on the control plane: %s", job.job_id, exc)
                job.ended.set()
                return
            except BoxrunError as exc:  # API unreachable: keep the job running and try again
                log.warning("progress of job %s not delivered: %s", job.job_id, exc)
                delay = min(delay * 2, 1.0)
            await asyncio.sleep(delay)

    async def _download(self, bundle: JobBundle, ws: Workspace) -> str | None:
        """Fetch the binary files by their presigned URLs and check each SHA-256 before the script
        starts. Returns the reason the job cannot start, naming the file, or None."""
        for f in bundle.files:
            if f.url is None:
                continue
            try:
                target = ws.file_target(f.path)
            except ValueError as exc:
                return f"file {f.path!r}: {exc}"
            target.parent.mkdir(parents=True, exist_ok=True)
            digest = hashlib.sha256()
            size = 0
            try:
                async with self.http.stream("GET", f.url) as resp:
                    if resp.status_code != 200:
                        return f"file {f.path}: download failed (HTTP {resp.status_code})"
                    with target.open("wb") as out:
                        async for chunk in resp.aiter_bytes(1 << 20):
                            digest.update(chunk)
                            size += len(chunk)
                            out.write(chunk)
            except (httpx.HTTPError, OSError) as exc:
                return f"file {f.path}: download failed ({exc})"
            if digest.hexdigest() != f.sha256 or (f.size is not None and size != f.size):
                return f"file {f.path}: SHA-256 mismatch (expected {f.sha256}, got {digest.hexdigest()}, {size} bytes)"
        return None

    async def _artifacts(
        self, job: RunningJob, ws: Workspace, report: JobResultReport, masker: Masker | None = None
    ) -> None:
        """Send the manifest page by page; PUT every file the API gives a target for. A file whose
        name holds a secret's value is refused here (its name would leave the box unmasked)."""
        try:
            entries, refused_here = await asyncio.to_thread(ws.scan_artifacts)
        except OSError as exc:
            report.error = report.error or f"could not list the artifacts: {exc}"
            return
        if masker:
            named = {e.path for e in entries if _masked(masker, e.path) != e.path}
            if named:
                entries = [e for e in entries if e.path not in named]
                refused_here = [*refused_here, *(RefusedPath(path, SECRET_IN_NAME) for path in sorted(named))]
        # links, hard links, foreign files and unstorable names the box itself refused: listed in
        # the job's error; every other artifact still goes up
        failures = [RefusedArtifact(path=r.path, reason=r.reason) for r in refused_here[:MAX_FAILURES]]
        for start in range(0, max(len(entries), 1), MANIFEST_PAGE) if entries else ():
            page = [
                ManifestEntry(path=e.path, size=e.size, sha256=e.sha256) for e in entries[start : start + MANIFEST_PAGE]
            ]
            done = start + MANIFEST_PAGE >= len(entries)
            total = sum(e.size for e in entries) if start == 0 else None  # the quota refuses before any upload
            try:
                answer = await _retrying(
                    lambda page=page, done=done, total=total: self.client.manifest(
                        job.job_id, page, done=done, total_bytes=total
                    )
                )
            except TooLarge as exc:
                report.error = report.error or exc.reason
                return
            except BoxrunError as exc:
                report.error = report.error or f"artifact manifest refused: {exc}"
                return
            sizes = {e.path: e.size for e in page}
            problems = await asyncio.gather(
                *(self._put(ws, t.path, sizes.get(t.path), t.url, t.headers) for t in answer.targets)
            )
            for target, problem in zip(answer.targets, problems, strict=True):
                if problem is None:
                    report.uploaded_count += 1
                elif len(failures) < MAX_FAILURES:
                    failures.append(RefusedArtifact(path=target.path, reason=problem))
        report.upload_failures = failures

    async def _put(self, ws: Workspace, path: str, size: int | None, url: str, headers: dict[str, str]) -> str | None:
        async with self._uploads:
            return await self._put_once(ws, path, size, url, headers)

    async def _put_once(
        self, ws: Workspace, path: str, size: int | None, url: str, headers: dict[str, str]
    ) -> str | None:
        problem = "not tried"
        for attempt in range(3):
            try:
                # no link followed, same size as hashed: a job cannot swap the file meanwhile
                with ws.open_artifact(path, size=size) as fh:
                    resp = await self.http.put(url, content=_chunks(fh), headers=headers)
                if resp.status_code < 300:
                    return None
                problem = f"HTTP {resp.status_code} {resp.text[:200]}"
                if resp.status_code < 500:
                    return problem
            except ArtifactRefused as exc:
                return str(exc)
            except (httpx.HTTPError, OSError) as exc:
                problem = str(exc) or type(exc).__name__
            await asyncio.sleep(0.5 * (attempt + 1))
        return problem

    async def _deliver(self, job: RunningJob, report: JobResultReport) -> None:
        """The result, retried through an API outage; a job the control plane already ended is
        not an error here (409/404)."""
        try:
            # retried at least every 0.5 s: after a Temporal outage the result must land before
            # the restarted server fires the heartbeat timeout of a job that in fact finished
            await _retrying(lambda: self.client.result(job.job_id, report), forever=True, max_delay_s=0.5)
        except (Conflict, NotFound) as exc:
            log.warning("result of job %s not taken: %s", job.job_id, exc)
        except BoxrunError as exc:
            log.error("result of job %s refused: %s", job.job_id, exc)


async def _retrying(call: Any, *, forever: bool = False, attempts: int = 30, max_delay_s: float = 5.0) -> Any:
    """Retry a call while the API (or Temporal behind it) is unavailable, with back-off up to
    max_delay_s; other errors raise."""
    delay = 0.2
    n = 0
    while True:
        try:
            return await call()
        except Unavailable:
            n += 1
            if not forever and n >= attempts:
                raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, max_delay_s)


async def _close_quietly(pump: LogPump) -> None:
    try:
        await pump.close()
    except LogRejected as exc:
        log.warning("log of a job that could not start refused: %s", exc)


async def _chunks(fh: IO[bytes], size: int = 1 << 20) -> AsyncIterator[bytes]:
    while chunk := await asyncio.to_thread(fh.read, size):
        yield chunk


SECRET_IN_NAME = "its name holds a secret's value"


def _masked(masker: Masker, text: str) -> str:
    return masker.mask(text.encode("utf-8", "surrogateescape")).decode("utf-8", "replace")


def _mask_report(report: JobResultReport, masker: Masker) -> None:
    """The report's own text (errors, refused artifacts' names and reasons) is masked like the
    job's output before it leaves the box."""
    if not masker:
        return
    if report.error:
        report.error = _masked(masker, report.error)
    report.upload_failures = [
        RefusedArtifact(path=_masked(masker, f.path), reason=_masked(masker, f.reason)) for f in report.upload_failures
    ]
