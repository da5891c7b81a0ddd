"""AgentClient: the node-token face of the API that a box agent uses: session, liveness, offers
and cancels (long-poll), claim + bundle, progress, log batches, artifact manifest, result.

Imports only httpx, pydantic and boxrun's core modules, so a box installs no server dependency."""

from __future__ import annotations

from urllib.parse import quote

from boxrun import logbatch
from boxrun.client.base import Transport, error_from_answer, is_permanent
from boxrun.errors import BoxrunError
from boxrun.schemas import (
    AgentEvent,
    AgentEvents,
    AgentHeartbeat,
    AgentMe,
    AgentSession,
    AgentSessionCreate,
    BoxPublic,
    JobBundle,
    JobClaimed,
    JobProgress,
    JobResultReport,
    LogBatchAck,
    ManifestAnswer,
    ManifestEntry,
    ManifestPage,
    ProgressAck,
)

SESSION_HEADER = "X-Boxrun-Session"


def _job(job_id: str) -> str:
    return f"/api/agent/jobs/{quote(job_id, safe='')}"


class LogBatchRefused(BoxrunError):
    """The API refused a log batch for good (a permanent 4xx): resending it cannot help."""

    def __init__(self, reason: str, *, status: int) -> None:
        super().__init__(reason)
        self.status = status


class AgentClient(Transport):
    """The agent's calls, authenticated with the box's node token."""

    session: str | None = None

    def _session(self) -> dict[str, str]:
        return {SESSION_HEADER: self.session} if self.session else {}

    async def me(self) -> AgentMe:
        """The box this node token names."""
        return await self.call(AgentMe, "GET", "/api/agent/me")

    async def open_session(self, agent_version: str, slots: int, previous: str | None = None) -> str:
        """Become the box's live agent; Conflict while another agent with this token is live."""
        body = AgentSessionCreate(agent_version=agent_version, slots=slots, previous_session=previous)
        got = await self.call(AgentSession, "POST", "/api/agent/session", json=body.model_dump())
        self.session = got.session
        return got.session

    async def heartbeat(self, agent_version: str, *, draining: bool = False) -> BoxPublic:
        """Liveness: the box is up (and whether it is draining). Answers the box as the API sees it."""
        body = AgentHeartbeat(agent_version=agent_version, draining=draining)
        return await self.call(
            BoxPublic, "POST", "/api/agent/heartbeat", json=body.model_dump(), headers=self._session()
        )

    async def events(self, wait_s: float) -> list[AgentEvent]:
        """Offers and cancels for this box (long-poll: waits up to wait_s for one)."""
        got = await self.call(
            AgentEvents,
            "GET",
            "/api/agent/events",
            params={"wait": wait_s},
            headers=self._session(),
            timeout=wait_s + 15,
        )
        return got.events

    async def claim(self, job_id: str) -> JobBundle:
        """Take an offered job; its bundle. Conflict if it may not start, NotFound if not ours."""
        got = await self.call(JobClaimed, "POST", f"{_job(job_id)}/claim", headers=self._session())
        return got.bundle

    async def bundle(self, job_id: str) -> JobBundle:
        return await self.call(JobBundle, "GET", f"{_job(job_id)}/bundle")

    async def progress(self, job_id: str, *, pid: int | None, log_seq: int) -> bool:
        """The job runs; True if it is being cancelled."""
        body = JobProgress(pid=pid, log_seq=log_seq)
        got = await self.call(ProgressAck, "POST", f"{_job(job_id)}/progress", json=body.model_dump())
        return got.cancel

    async def manifest(
        self, job_id: str, entries: list[ManifestEntry], *, done: bool, total_bytes: int | None = None
    ) -> ManifestAnswer:
        """A page of the manifest; the first carries `total_bytes` (every artifact's size) for the quota."""
        body = ManifestPage(entries=entries, done=done, total_bytes=total_bytes)
        return await self.call(
            ManifestAnswer, "POST", f"{_job(job_id)}/artifacts", json=body.model_dump(exclude_none=True)
        )

    async def result(self, job_id: str, report: JobResultReport) -> None:
        await self.send("POST", f"{_job(job_id)}/result", json=report.model_dump())

    async def send_logs(self, job_id: str, first_seq: int, runs: list[tuple[int, str, float]], data: bytes) -> int:
        """One log batch (boxrun.logbatch); returns the highest seq the API holds. LogBatchRefused
        on a permanent 4xx; any other failure raises its BoxrunError (Unavailable, ...): retry."""
        resp = await self.answer(
            "POST",
            f"/api/agent/jobs/{quote(job_id, safe='')}/logs",
            content=logbatch.encode(first_seq, runs, data),
            headers={"content-type": logbatch.MEDIA_TYPE},
        )
        if is_permanent(resp.status_code):
            refused = error_from_answer(resp)
            raise LogBatchRefused(
                f"API refused log batch: HTTP {resp.status_code} {refused.reason[:200]}", status=resp.status_code
            )
        if resp.status_code >= 400:
            raise error_from_answer(resp)
        return LogBatchAck.model_validate_json(resp.content).stored_through
