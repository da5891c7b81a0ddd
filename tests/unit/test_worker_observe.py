"""The control worker's observability, in-process on the session's Temporal dev server: its
runtime's Prometheus exporter serves the SDK's metrics (activity durations among them) and
boxrun's counters; the request id set where a workflow is started reaches its activities (a
header) and its memo; webhook attempts are counted by outcome."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from boxrun import logcontext, metrics
from boxrun.dev.procs import free_port
from boxrun.propagation import MEMO, RequestIdPropagation
from boxrun.settings import Settings
from boxrun.temporal import connect
from boxrun.worker.observe import WebhookOutcomes, metrics_runtime
from tests.api.test_metrics import sample, scrape_text
from tests.conftest import wait_for
from tests.unit.observe_probe import ProbeWorkflow, flaky_delivery, seen_context


@pytest.fixture
async def observed(temporal_env: WorkflowEnvironment) -> AsyncIterator[tuple[Client, int]]:
    """A client as the control worker makes it: the metrics runtime (on a free port) and the
    propagation interceptor; boxrun's counters bound to its meter until the test ends."""
    port = free_port()
    runtime = metrics_runtime(Settings(worker_metrics_port=port))
    assert runtime is not None
    target = temporal_env.client.service_client.config.target_host
    client = await connect(target, runtime=runtime, interceptors=[RequestIdPropagation()])
    try:
        yield client, port
    finally:
        metrics.bind_temporal_meter(None)


async def test_exporter_serves_sdk_metrics_and_boxrun_counters_and_the_request_id_travels(
    observed: tuple[Client, int],
) -> None:
    client, port = observed
    queue = f"tq-{uuid.uuid4().hex[:10]}"
    timeouts = sample("boxrun_webhook_deliveries_total", outcome="WebhookTimeout")
    delivered = sample("boxrun_webhook_deliveries_total", outcome="delivered")
    async with Worker(
        client,
        task_queue=queue,
        workflows=[ProbeWorkflow],
        activities=[seen_context, flaky_delivery],
        interceptors=[WebhookOutcomes()],
    ):
        with logcontext.bound(request_id="req-from-api"):
            handle = await client.start_workflow(ProbeWorkflow.run, id=f"probe-{uuid.uuid4()}", task_queue=queue)
        remote, local = await handle.result()
    assert remote["request_id"] == local["request_id"] == "req-from-api", (remote, local)
    assert await (await handle.describe()).memo_value(MEMO) == "req-from-api"
    assert sample("boxrun_webhook_deliveries_total", outcome="WebhookTimeout") == timeouts + 1
    assert sample("boxrun_webhook_deliveries_total", outcome="delivered") == delivered + 1
    metrics.JOBS_FINISHED.inc(state="completed")  # as a transition in a control activity counts it

    url = f"http://127.0.0.1:{port}/metrics"

    async def exported() -> dict | None:
        async with httpx.AsyncClient(timeout=5) as http:
            text = (await http.get(url)).text
        samples = scrape_text(text)
        names = {name for name, _ in samples}
        return samples if "boxrun_jobs_finished_total" in names else None

    samples = await wait_for(exported, timeout=10, what="the worker's exporter")
    names = {name for name, _ in samples}
    # activity durations, per activity type, in seconds
    assert "temporal_activity_execution_latency_count" in names, sorted(names)
    # in seconds, with boxrun's buckets (1 ms ... 300 s)
    les = {dict(labels)["le"] for name, labels in samples if name == "temporal_activity_execution_latency_bucket"}
    assert {0.001, 300.0} <= {float(le) for le in les}, sorted(les)
    types = {dict(labels).get("activity_type") for name, labels in samples if name.startswith("temporal_activity_")}
    assert {"seen_context", "deliver_webhook"} <= types
    assert "temporal_local_activity_execution_latency_count" in names
    assert "temporal_workflow_completed_total" in names
    outcomes = {dict(labels).get("outcome") for name, labels in samples if name == "boxrun_webhook_deliveries_total"}
    assert {"WebhookTimeout", "delivered"} <= outcomes
