"""The log pump's sink over the shared client (boxrun.client.AgentClient, node-token auth)."""

from __future__ import annotations

from boxrun.agent.logpump import LogRejected
from boxrun.client import AgentClient, LogBatchRefused


class AgentApi:
    def __init__(self, client: AgentClient) -> None:
        self._client = client

    async def send(self, job_id: str, first_seq: int, runs: list[tuple[int, str, float]], data: bytes) -> int:
        """One log batch; returns the highest seq the API holds (LogSink). LogRejected on a
        permanent 4xx; other failures raise a BoxrunError, which the pump retries."""
        try:
            return await self._client.send_logs(job_id, first_seq, runs, data)
        except LogBatchRefused as exc:
            raise LogRejected(exc.reason) from exc
