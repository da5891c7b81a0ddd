"""AgentClient: the node-token face of the API that a box agent uses (liveness, claim, log batches).

Imports only httpx, pydantic and boxrun's core modules, so a box installs no server dependency."""

from __future__ import annotations

from urllib.parse import quote

from boxrun import logbatch
from boxrun.client.base import Transport, error_from_answer, is_permanent
from boxrun.errors import BoxrunError, Conflict, Forbidden, NotFound
from boxrun.schemas import AgentHeartbeat, BoxPublic, LogBatchAck


class LogBatchRefused(BoxrunError):
    """The API refused a log batch for good (a permanent 4xx): resending it cannot help."""

    def __init__(self, reason: str, *, status: int) -> None:
        super().__init__(reason)
        self.status = status


class AgentClient(Transport):
    """The agent's calls, authenticated with the box's node token."""

    async def heartbeat(self, agent_version: str, *, draining: bool = False) -> BoxPublic:
        """Liveness: the box is up (and whether it is draining). Answers the box as the API sees it."""
        body = AgentHeartbeat(agent_version=agent_version, draining=draining)
        return await self.call(BoxPublic, "POST", "/api/agent/heartbeat", json=body.model_dump())

    async def claim(self, job_id: str) -> str | None:
        """The last check before a job's process starts: None if it may start here now, else the
        reason it may not (the job is not dispatched to this box, was cancelled, or is unknown).
        Other errors (API unreachable, token refused) raise; the caller retries."""
        try:
            await self.send("POST", f"/api/agent/jobs/{quote(job_id, safe='')}/claim")
        except (Conflict, Forbidden, NotFound) as refused:
            return refused.reason
        return None

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
