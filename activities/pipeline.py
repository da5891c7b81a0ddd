"""Pipeline activities: step and pipeline state changes (row + event + NOTIFY) and an attempt's
job row. Each is one short Postgres transaction and idempotent, so Temporal may retry it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
from temporalio import activity
from temporalio.exceptions import ApplicationError

from boxrun.activities.webhooks import start_deliveries_after
from boxrun.errors import InvalidTransition, NotFound
from boxrun.messages import PrepareAttemptInput, PreparedAttempt, RecordPipelineInput, RecordStepInput
from boxrun.services import pipelines
from boxrun.settings import Settings


class PipelineActivities:
    """Bound to one Postgres pool and the worker's settings (a step job's workflow input)."""

    def __init__(self, pool: asyncpg.Pool, settings: Settings) -> None:
        self.pool = pool
        self.settings = settings

    def all(self) -> list[Callable[..., Awaitable[Any]]]:
        return [self.record_pipeline, self.record_step, self.prepare_attempt]

    @activity.defn
    async def record_pipeline(self, inp: RecordPipelineInput) -> bool:
        async with self.pool.acquire() as conn:
            changed = await pipelines.record_pipeline(conn, inp)
            if inp.state.terminal:  # a hold never outlives its pipeline (the workflow released them already)
                await pipelines.release_pipeline_holds(conn, activity.client(), inp.pipeline_id, by="pipeline_ended")
        if inp.state.terminal:
            await start_deliveries_after(self.pool, inp.pipeline_id)  # the pipeline.<state> webhooks
        return changed

    @activity.defn
    async def record_step(self, inp: RecordStepInput) -> bool:
        async with self.pool.acquire() as conn:
            return await pipelines.record_step(conn, inp)

    @activity.defn
    async def prepare_attempt(self, inp: PrepareAttemptInput) -> PreparedAttempt:
        async with self.pool.acquire() as conn:
            try:
                return await pipelines.prepare_attempt(conn, self.settings, inp.pipeline_id, inp.step, inp.attempt)
            except (NotFound, InvalidTransition) as exc:
                raise ApplicationError(str(exc), type=type(exc).__name__, non_retryable=True) from exc
