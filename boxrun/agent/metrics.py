"""The agent's own Prometheus metrics (off unless BOXRUN_AGENT_METRICS_PORT is set): jobs run by
result, log bytes and lines sent, and how often it lost the API. Counted from the agent's HTTP
answers (an httpx response hook on its one client), so the runner and the log pump stay as they are.

Off by default: a box is a machine many people log into, and its port would tell them what the
box runs; an operator who scrapes boxes opens it on an address only Prometheus reaches.
"""

from __future__ import annotations

import json
import logging
import re

import httpx
from prometheus_client import CollectorRegistry, Counter, ProcessCollector

from boxrun import metrics
from boxrun.metrics import MetricsServer

log = logging.getLogger(__name__)

REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=REGISTRY)

JOBS_RUN = Counter(
    "boxrun_agent_jobs_run", "Jobs this agent ran to their end, by result", ["result"], registry=REGISTRY
)
LOG_BYTES_SENT = Counter("boxrun_agent_log_bytes_sent", "Bytes of log batches the API accepted", registry=REGISTRY)
LOG_LINES_SENT = Counter("boxrun_agent_log_lines_sent", "Log lines in the batches the API accepted", registry=REGISTRY)
RECONNECTS = Counter(
    "boxrun_agent_reconnects", "Times the agent lost the API (a long-poll failed) and tried again", registry=REGISTRY
)

_LOGS = re.compile(r"^/api/agent/jobs/[^/]+/logs$")
_RESULT = re.compile(r"^/api/agent/jobs/[^/]+/result$")


def result_of(report: dict[str, object]) -> str:
    """completed, failed, timed_out or cancelled, as the API will record the report."""
    if report.get("timed_out"):
        return "timed_out"
    if report.get("cancelled"):
        return "cancelled"
    if report.get("error") or report.get("exit_code") != 0:
        return "failed"
    return "completed"


async def count_answer(response: httpx.Response) -> None:
    """httpx response hook: count what an accepted request carried."""
    request = response.request
    if request.method != "POST" or not response.is_success:
        return
    path = request.url.path
    if _LOGS.match(path):
        body = request.content
        LOG_BYTES_SENT.inc(len(body))
        LOG_LINES_SENT.inc(max(0, body.count(b"\n") - 1))  # a header line, then the lines
    elif _RESULT.match(path):
        try:
            report = json.loads(request.content)
        except ValueError:
            return
        JOBS_RUN.labels(result_of(report if isinstance(report, dict) else {})).inc()


def instrument(http: httpx.AsyncClient) -> None:
    """Count the answers of the agent's client."""
    http.event_hooks["response"] = [*http.event_hooks["response"], count_answer]


def serve(host: str, port: int) -> MetricsServer:
    """The agent's registry on host:port/metrics."""
    return metrics.serve(host, port, REGISTRY)
