"""The activity of a scheduled run: run the schedule's template as POST /api/templates/{name}/run
does, owned by `schedule:<id>`, at most once per scheduled workflow (docs/templates.md)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, cast

import asyncpg
from temporalio import activity
from temporalio.exceptions import ApplicationError

from boxrun.db import Q
from boxrun.errors import Conflict, Forbidden, InvalidInput, NotFound
from boxrun.schemas.schedules import ScheduledRunInput, ScheduledRunResult
from boxrun.schemas.templates import TemplateRun
from boxrun.services.schedules import schedule_actor
from boxrun.services.templates import run_template_once
from boxrun.settings import Settings
from boxrun.storage import Storage

log = logging.getLogger(__name__)


class ScheduleActivities:
    """Bound to one Postgres pool, storage client and settings; registered on the control worker."""

    def __init__(self, pool: asyncpg.Pool, storage: Storage, settings: Settings) -> None:
        self.pool = pool
        self.storage = storage
        self.settings = settings

    def all(self) -> list[Callable[..., Awaitable[Any]]]:
        return [self.run_scheduled]

    @activity.defn
    async def run_scheduled(self, inp: ScheduledRunInput) -> ScheduledRunResult:
        """Submit the schedule's template run. The delivery id is the scheduled workflow's id, so a
        retried activity finds the run it made. A schedule or template gone, or params the
        template now refuses: non-retryable (the run fails, the schedule goes on)."""
        delivery = activity.info().workflow_id
        if not delivery:
            raise ApplicationError("run_scheduled runs inside a ScheduledRunWorkflow", non_retryable=True)
        async with self.pool.acquire() as pooled:
            conn = cast(asyncpg.Connection, pooled)  # a pool's proxy is a Connection to its users
            row = await conn.fetchrow(Q.schedule_to_run, inp.schedule_id)
            if row is None:
                raise ApplicationError(f"schedule {inp.schedule_id} no longer exists", non_retryable=True)
            actor = schedule_actor(row)
            template = await conn.fetchrow(Q.get_template, row["org_id"], row["template"], None)
            assert template is not None  # schedule_to_run joined it
            run = TemplateRun(params=row["params"], version=row["version"])
            try:
                kind, run_id, created = await run_template_once(
                    conn,
                    activity.client(),
                    self.settings,
                    self.storage,
                    actor,
                    template,
                    delivery,
                    run,
                    via=f"schedule:{row['id']}",
                )
            except (InvalidInput, NotFound, Forbidden) as exc:
                raise ApplicationError(f"{type(exc).__name__}: {exc}", non_retryable=True) from exc
            except Conflict as exc:  # the same run being submitted by an attempt still going
                raise ApplicationError(str(exc)) from exc
        log.info("schedule %s ran template %s: %s %s", inp.schedule_id, row["template"], kind, run_id)
        return ScheduledRunResult(kind=kind, run_id=run_id, created=created)
