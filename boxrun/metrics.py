"""Prometheus metrics of boxrun's own (docs/operations.md): what each process counts, and serving them.

Every process counts what it does itself, so the sums over replicas are exact: the API counts the
jobs it accepts, the log lines it takes in, its open followers and connected agents; whoever
records a state change (the control worker, or the API for what a box reports) counts it there.

The API serves its registry (`REGISTRY`) on a port of its own (`serve`). The control worker serves
its Temporal runtime's Prometheus exporter instead; `bind_temporal_meter` makes the counters the
worker touches (jobs finished, webhook deliveries) appear there as well, under the same names.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from temporalio.common import MetricCounter, MetricHistogramFloat, MetricMeter

log = logging.getLogger(__name__)

# One registry per process, not prometheus_client's global one: a library imported next to boxrun
# cannot add to (or collide with) what boxrun serves.
REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=REGISTRY)  # process_cpu_seconds_total, process_resident_memory_bytes, ...

# Submit -> running: from the row's creation to the box's `running` (placement, dispatch, claim
# and the process start). Buckets from the 60 ms goal up to a long wait for a busy box.
SUBMIT_TO_RUNNING_BUCKETS = (0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 3600)


class _Counted:
    """A prometheus_client counter that is also added to the Temporal runtime's meter once the
    worker binds one (names match: the worker's exporter adds the same `_total` suffix)."""

    def __init__(self, name: str, doc: str, labels: Sequence[str] = ()) -> None:
        self.name, self.doc = name, doc
        self.prom = Counter(name, doc, labels, registry=REGISTRY)
        self._temporal: MetricCounter | None = None

    def bind(self, meter: MetricMeter | None) -> None:
        self._temporal = meter.create_counter(self.name, self.doc) if meter is not None else None

    def inc(self, amount: int = 1, **labels: str) -> None:
        (self.prom.labels(**labels) if labels else self.prom).inc(amount)
        if self._temporal is not None:
            self._temporal.add(amount, labels or None)


class _Timed:
    """A histogram (seconds), also recorded to the Temporal runtime's meter once bound."""

    def __init__(self, name: str, doc: str, buckets: Sequence[float]) -> None:
        self.name, self.doc = name, doc
        self.prom = Histogram(name, doc, buckets=buckets, registry=REGISTRY)
        self._temporal: MetricHistogramFloat | None = None

    def bind(self, meter: MetricMeter | None) -> None:
        self._temporal = meter.create_histogram_float(self.name, self.doc, "s") if meter is not None else None

    def observe(self, seconds: float) -> None:
        self.prom.observe(seconds)
        if self._temporal is not None:
            self._temporal.record(seconds)


JOBS_SUBMITTED = _Counted("boxrun_jobs_submitted", "Jobs accepted (the row written and its workflow started)")
JOBS_FINISHED = _Counted("boxrun_jobs_finished", "Jobs that reached a terminal state, by that state", ["state"])
SUBMIT_TO_RUNNING = _Timed(
    "boxrun_job_submit_to_running_seconds",
    "From a job's submission to its box reporting it running",
    SUBMIT_TO_RUNNING_BUCKETS,
)
LOG_BYTES = _Counted("boxrun_log_ingest_bytes", "Bytes of log batches the agents sent (accepted batches, resends too)")
LOG_LINES = _Counted("boxrun_log_ingest_lines", "Log lines in the batches the agents sent (resends too)")
WEBHOOK_DELIVERIES = _Counted(
    "boxrun_webhook_deliveries", "Webhook delivery attempts, by outcome (delivered, failed, refused)", ["outcome"]
)
FOLLOWERS = Gauge(
    "boxrun_log_followers",
    "Open log streams of this API process, by kind (sse, websocket)",
    ["kind"],
    registry=REGISTRY,
)
CONNECTED_AGENTS = Gauge(
    "boxrun_connected_agents", "Boxes whose agent holds a long-poll on this API process", registry=REGISTRY
)

_BOUND = (JOBS_SUBMITTED, JOBS_FINISHED, SUBMIT_TO_RUNNING, LOG_BYTES, LOG_LINES, WEBHOOK_DELIVERIES)


def bind_temporal_meter(meter: MetricMeter | None) -> None:
    """Report the shared counters through a Temporal runtime's meter as well (the control worker,
    whose metrics port is that runtime's Prometheus exporter); None unbinds."""
    for metric in _BOUND:
        metric.bind(meter)


def job_changed(to_state: str, *, terminal: bool, created_at: datetime | None) -> None:
    """A job state change this process recorded (boxrun.transitions)."""
    if terminal:
        JOBS_FINISHED.inc(state=to_state)
    elif to_state == "running" and created_at is not None:
        SUBMIT_TO_RUNNING.observe(max(0.0, (datetime.now(UTC) - created_at).total_seconds()))


def job_submitted() -> None:
    JOBS_SUBMITTED.inc()


def logs_ingested(body: bytes | int, lines: int) -> None:
    LOG_BYTES.inc(body if isinstance(body, int) else len(body))
    LOG_LINES.inc(lines)


def webhook_delivery(outcome: str) -> None:
    WEBHOOK_DELIVERIES.inc(outcome=outcome)


# (org, kind, name, count): kind "box" or "group"
WaitingRow = tuple[str, str, str, int]


class WaitingJobs(Collector):
    """`boxrun_jobs_waiting{org, box|group}`: computed at scrape time by `source` (one bounded query
    of the API's; see api/observe.py). Only the API sets a source; elsewhere it reports nothing."""

    def __init__(self) -> None:
        self.source: Callable[[], Iterable[WaitingRow]] | None = None

    def collect(self) -> Iterable[Metric]:
        family = GaugeMetricFamily(
            "boxrun_jobs_waiting",
            "Jobs waiting for a box, per named box and per box group (at most metrics_waiting_max_series each)",
            labels=["org", "kind", "name"],
        )
        source = self.source
        if source is not None:
            try:
                for org, kind, name, count in source():
                    family.add_metric([org, kind, name], count)
            except Exception as exc:  # a scrape must answer; the gap in the series says the rest
                log.warning("jobs waiting not counted this scrape: %s", exc)
        yield family


WAITING = WaitingJobs()
REGISTRY.register(WAITING)


class MetricsServer:
    """GET /metrics of a registry on host:port, in a thread of prometheus_client's (a scrape never
    waits for the event loop, but for the API's waiting-jobs query)."""

    def __init__(self, host: str, port: int, registry: CollectorRegistry = REGISTRY) -> None:
        self.server, self.thread = start_http_server(port, addr=host, registry=registry)
        self.port: int = self.server.server_port

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def serve(host: str, port: int, registry: CollectorRegistry = REGISTRY) -> MetricsServer:
    """Serve `registry`; OSError (address in use, ...) is the caller's to report."""
    server = MetricsServer(host, port, registry)
    log.info("metrics on http://%s:%d/metrics", host, server.port)
    return server


def metrics_url(host: str, port: int) -> str:
    return f"http://{host}:{port}/metrics"
