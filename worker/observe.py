"""What the control worker tells its operators: its Temporal runtime's Prometheus exporter (the
SDK's metrics, activity durations among them, and boxrun's counters of what the worker records),
and the outcome of every webhook delivery attempt."""

from __future__ import annotations

import logging
from typing import Any

from temporalio import activity
from temporalio.exceptions import ApplicationError
from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig
from temporalio.worker import ActivityInboundInterceptor, ExecuteActivityInput, Interceptor

from boxrun import metrics
from boxrun.settings import Settings

log = logging.getLogger(__name__)

# Activity durations: temporal_activity_execution_latency (and, for local activities,
# temporal_local_activity_execution_latency), per activity_type, in seconds. Buckets:
DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
# the SDK's histograms these buckets apply to (by their names without the temporal_ prefix)
_LATENCIES = (
    "activity_execution_latency",
    "local_activity_execution_latency",
    "activity_schedule_to_start_latency",
    "workflow_task_execution_latency",
    "workflow_task_schedule_to_start_latency",
    "workflow_endtoend_latency",
)


def metrics_runtime(settings: Settings) -> Runtime | None:
    """A Temporal runtime exporting Prometheus metrics on metrics_host:worker_metrics_port, with
    boxrun's counters bound to its meter; None if worker_metrics_port is unset."""
    if settings.worker_metrics_port is None:
        return None
    address = f"{settings.metrics_host}:{settings.worker_metrics_port}"
    config = PrometheusConfig(
        bind_address=address,
        counters_total_suffix=True,  # Prometheus' names, as prometheus_client writes them
        durations_as_seconds=True,
        histogram_bucket_overrides={
            **dict.fromkeys(_LATENCIES, DURATION_BUCKETS),
            metrics.SUBMIT_TO_RUNNING.name: metrics.SUBMIT_TO_RUNNING_BUCKETS,
        },
    )
    try:
        runtime = Runtime(telemetry=TelemetryConfig(metrics=config))
    except ValueError as exc:  # "Failed starting Prometheus exporter: Address already in use (os error 98)"
        # said in lower case as the other processes say it (boxrun dev retries a start on fresh ports)
        raise RuntimeError(f"cannot serve metrics on {address} (BOXRUN_WORKER_METRICS_PORT): {exc}".lower()) from exc
    metrics.bind_temporal_meter(runtime.metric_meter)
    log.info("worker metrics on http://%s/metrics", address)
    return runtime


class _Outcomes(ActivityInboundInterceptor):
    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        if activity.info().activity_type != "deliver_webhook":
            return await super().execute_activity(input)
        try:
            result = await super().execute_activity(input)
        except ApplicationError as exc:
            metrics.webhook_delivery(exc.type or "error")
            raise
        except BaseException as exc:
            metrics.webhook_delivery(type(exc).__name__)
            raise
        metrics.webhook_delivery("skipped" if getattr(result, "skipped", False) else "delivered")
        return result


class WebhookOutcomes(Interceptor):
    """boxrun_webhook_deliveries_total{outcome}: delivered, skipped (the delivery had ended), or
    the failure's type (WebhookRejected, WebhookTimeout, WebhookUnreachable, TargetRefused,
    WebhookGone, ...). Each attempt counts once."""

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _Outcomes(next)
