"""A workflow and activities that report the log context they run in (tests/unit/test_worker_observe.py)."""

from __future__ import annotations

from datetime import timedelta

from temporalio import activity, workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    from boxrun import logcontext


@activity.defn
async def seen_context() -> dict[str, str]:
    return logcontext.current()


@activity.defn(name="deliver_webhook")
async def flaky_delivery() -> str:
    if activity.info().attempt == 1:
        raise ApplicationError("no answer within 1 s", type="WebhookTimeout")
    return "ok"


@workflow.defn
class ProbeWorkflow:
    @workflow.run
    async def run(self) -> list[dict[str, str]]:
        remote = await workflow.execute_activity(seen_context, start_to_close_timeout=timedelta(seconds=10))
        local = await workflow.execute_local_activity(seen_context, start_to_close_timeout=timedelta(seconds=10))
        await workflow.execute_activity(
            flaky_delivery,
            start_to_close_timeout=timedelta(seconds=10),
            retry_policy=RetryPolicy(initial_interval=timedelta(milliseconds=50)),  # the 2nd attempt delivers
        )
        return [remote, local]
