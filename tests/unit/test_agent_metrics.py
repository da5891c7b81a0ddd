"""The agent's counters, from the answers its HTTP client gets (boxrun/agent/metrics.py): only
accepted requests count; a job's result is counted as the API will record it."""

from __future__ import annotations

import httpx

from boxrun import logbatch
from boxrun.agent import metrics as agent_metrics


def value(name: str, **labels: str) -> float:
    return agent_metrics.REGISTRY.get_sample_value(name, labels) or 0.0


def answering(status: int) -> httpx.AsyncClient:
    http = httpx.AsyncClient(base_url="http://api", transport=httpx.MockTransport(lambda _r: httpx.Response(status)))
    agent_metrics.instrument(http)
    return http


async def test_accepted_batches_and_results_are_counted_refused_ones_not() -> None:
    body = logbatch.encode(1, [(2, "stdout", 1.0)], b"one\ntwo\n")
    lines, size = value("boxrun_agent_log_lines_sent_total"), value("boxrun_agent_log_bytes_sent_total")
    completed = value("boxrun_agent_jobs_run_total", result="completed")
    timed_out = value("boxrun_agent_jobs_run_total", result="timed_out")
    async with answering(200) as ok:
        await ok.post("/api/agent/jobs/j1/logs", content=body)
        await ok.post("/api/agent/jobs/j1/result", json={"exit_code": 0})
        await ok.post("/api/agent/jobs/j2/result", json={"exit_code": None, "timed_out": True})
        await ok.post("/api/agent/heartbeat", json={"agent_version": "t"})  # not counted
    async with answering(503) as down:
        await down.post("/api/agent/jobs/j1/logs", content=body)
        await down.post("/api/agent/jobs/j3/result", json={"exit_code": 0})
    assert value("boxrun_agent_log_lines_sent_total") == lines + 2
    assert value("boxrun_agent_log_bytes_sent_total") == size + len(body)
    assert value("boxrun_agent_jobs_run_total", result="completed") == completed + 1
    assert value("boxrun_agent_jobs_run_total", result="timed_out") == timed_out + 1


def test_results_as_the_api_records_them() -> None:
    assert agent_metrics.result_of({"exit_code": 0}) == "completed"
    assert agent_metrics.result_of({"exit_code": 3}) == "failed"
    assert agent_metrics.result_of({"exit_code": None, "error": "could not start"}) == "failed"
    assert agent_metrics.result_of({"exit_code": None, "cancelled": True}) == "cancelled"
    assert agent_metrics.result_of({"exit_code": -15, "timed_out": True}) == "timed_out"
