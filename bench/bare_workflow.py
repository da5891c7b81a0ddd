"""The baseline of bench.latency: a one-activity workflow. Its own module, importing nothing but
temporalio, because the workflow sandbox re-imports the module a workflow lives in (and refuses
httpx, which the benches' client brings)."""

from __future__ import annotations

from datetime import timedelta

from temporalio import activity, workflow


@activity.defn(name="bench_echo")
async def echo(value: str) -> str:
    return value


@workflow.defn(name="BenchBareWorkflow")
class BareWorkflow:
    @workflow.run
    async def run(self, value: str) -> str:
        return await workflow.execute_activity(echo, value, start_to_close_timeout=timedelta(seconds=30))
