"""Schedules: a template run on a cron by a Temporal Schedule (`boxrun-schedule-<id>`, visible in
Temporal's Web UI) whose action starts a ScheduledRunWorkflow; its activity runs the template as
POST /api/templates/{name}/run does (docs/templates.md, "Schedules")."""

from __future__ import annotations

import logging
import re
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

import asyncpg
from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleSpec,
    ScheduleState,
)
from temporalio.service import RPCError, RPCStatusCode

from boxrun.constants import CONTROL_TASK_QUEUE
from boxrun.db import Conn, Q
from boxrun.errors import Conflict, Forbidden, InvalidInput, NotFound, Unavailable
from boxrun.schemas.schedules import ScheduleCreate, ScheduledRunInput
from boxrun.services.identity import Role, User
from boxrun.services.templates import load_template, param_specs
from boxrun.templating import resolve

log = logging.getLogger(__name__)

WORKFLOW_TYPE = "ScheduledRunWorkflow"
MAX_SCHEDULES_PER_ORG = 200
# What a schedule's runs are owned by (no person): `schedule:<id>`.
SCHEDULE_OWNER = "schedule:{id}"


# What a schedule's `cron` may be: five fields (minute hour day-of-month month day-of-week, UTC) or
# a named macro. Temporal takes more (a seconds field and a year: 6 or 7 fields, `@every 1s`, a
# `CRON_TZ=` prefix, `#` comments), and a run every second is a job every second: refused here.
CRON_MACROS = frozenset({"@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"})
_CRON_FIELD = r"[0-9A-Za-z*?,/#-]+"
CRON_PATTERN = re.compile(rf"{_CRON_FIELD}(?: +{_CRON_FIELD}){{4}}")


def check_cron(cron: str) -> None:
    """InvalidInput at body.cron for what is neither five cron fields nor a named macro (Temporal
    then checks the fields themselves)."""
    if cron in CRON_MACROS or CRON_PATTERN.fullmatch(cron):
        return
    raise InvalidInput(
        f"cron {cron[:80]!r}: give five fields (minute hour day-of-month month day-of-week, UTC) or one of "
        f"{', '.join(sorted(CRON_MACROS))}; not seconds, a year, @every or a time zone",
        field="body.cron",
    )


def temporal_schedule_id(schedule_id: str) -> str:
    return f"boxrun-schedule-{schedule_id}"


def run_workflow_id(schedule_id: str) -> str:
    """The id of each run's workflow (Temporal appends the scheduled time)."""
    return f"boxrun-schedule-run-{schedule_id}"


def schedule_actor(row: asyncpg.Record) -> User:
    return User(name=SCHEDULE_OWNER.format(id=row["id"]), org_id=row["org_id"], role=Role.OPERATOR)


def temporal_schedule(schedule_id: str, cron: str, *, paused: bool = False) -> Schedule:
    return Schedule(
        action=ScheduleActionStartWorkflow(
            WORKFLOW_TYPE,
            ScheduledRunInput(schedule_id=schedule_id),
            id=run_workflow_id(schedule_id),
            task_queue=CONTROL_TASK_QUEUE,
        ),
        spec=ScheduleSpec(cron_expressions=[cron]),
        # a run only submits a job or pipeline (seconds): a run due while one is still going waits
        # for it (one at most; no run lost, none piling up); runs missed while the server was
        # down are not caught up one by one
        policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.BUFFER_ONE, catchup_window=timedelta(minutes=1)),
        state=ScheduleState(paused=paused, note="created by boxrun" if not paused else "paused"),
    )


def _parse_id(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise NotFound(f"schedule {value[:80]!r} not found") from None


async def create_schedule(
    conn: asyncpg.Connection, temporal: Client, user: User, body: ScheduleCreate
) -> asyncpg.Record:
    """The schedule row and its Temporal Schedule, audited. InvalidInput for params the template
    refuses (`body.params.P`) or a cron Temporal refuses (`body.cron`, with its reason); NotFound
    (as 422 at body.template) for a template the org does not have."""
    try:
        template = await load_template(conn, user, body.template, body.version)
    except NotFound as exc:
        raise InvalidInput(str(exc), field="body.template" if body.version is None else "body.version") from None
    check_cron(body.cron)
    resolve(param_specs(template), body.params)  # refused now rather than at every run
    schedule_id = uuid.uuid4()
    tid = temporal_schedule_id(str(schedule_id))
    async with conn.transaction():
        await conn.execute(Q.lock_org, user.org_id)
        # the template stays until the schedule is in: a DELETE racing this one either waits and
        # then sees the schedule (409), or deletes first and this one answers 422 (never a
        # foreign-key error, nor a Temporal Schedule left running for a row cascaded away)
        if await conn.fetchval(Q.template_for_share, template["id"]) is None:
            raise InvalidInput(f"template {body.template!r} not found", field="body.template")
        count = await conn.fetchval(Q.count_schedules, user.org_id)
        if count >= MAX_SCHEDULES_PER_ORG:
            raise Conflict(f"the org has {MAX_SCHEDULES_PER_ORG} schedules already: delete one first")
        row = await conn.fetchrow(
            Q.insert_schedule,
            schedule_id,
            user.org_id,
            template["id"],
            body.version,
            body.params,
            body.cron,
            tid,
            user.name,
        )
        assert row is not None  # INSERT ... RETURNING
        detail = {"id": str(schedule_id), "template": body.template, "cron": body.cron, "version": body.version}
        await conn.execute(Q.audit, user.org_id, user.name, "schedule.create", None, None, detail)
        # last, inside the transaction: a schedule Temporal refuses leaves no row
        try:
            await temporal.create_schedule(tid, temporal_schedule(str(schedule_id), body.cron))
        except RPCError as exc:
            if exc.status == RPCStatusCode.INVALID_ARGUMENT:
                raise InvalidInput(f"cron {body.cron[:80]!r}: {exc.message}", field="body.cron") from None
            log.error("could not create Temporal schedule %s: %s", tid, exc)
            raise Unavailable("the workflow engine is unavailable; schedule not created") from exc
    return await load_schedule(conn, user, str(schedule_id))


async def list_schedules(conn: Conn, user: User) -> list[asyncpg.Record]:
    return list(await conn.fetch(Q.list_schedules, user.org_id))


async def load_schedule(conn: Conn, user: User, schedule_id: str) -> asyncpg.Record:
    row: asyncpg.Record | None = await conn.fetchrow(Q.get_schedule, user.org_id, _parse_id(schedule_id))
    if row is None:
        raise NotFound(f"schedule {schedule_id[:80]!r} not found")
    return row


@dataclass(frozen=True)
class Upcoming:
    """What Temporal says of a schedule now (its Web UI may have paused it)."""

    next_runs: list[datetime]
    paused: bool


async def upcoming(temporal: Client, row: asyncpg.Record, count: int = 5) -> Upcoming | None:
    """The next `count` run times and the paused state from the Temporal Schedule; None when
    Temporal cannot say (unreachable, or the Schedule was deleted behind boxrun's back)."""
    try:
        desc = await temporal.get_schedule_handle(row["temporal_schedule_id"]).describe()
    except RPCError as exc:
        log.warning("describe %s: %s", row["temporal_schedule_id"], exc)
        return None
    return Upcoming(next_runs=list(desc.info.next_action_times[:count]), paused=desc.schedule.state.paused)


def _check_may_change(user: User, row: asyncpg.Record, verb: str) -> None:
    if not user.is_admin and row["created_by"] != user.name:
        raise Forbidden(f"you may {verb} only schedules you created (this one is {row['created_by']}'s)")


async def set_paused(
    conn: asyncpg.Connection, temporal: Client, user: User, schedule_id: str, paused: bool
) -> asyncpg.Record:
    """Pause or unpause the Temporal Schedule and record it (its creator or an org admin), audited."""
    row = await load_schedule(conn, user, schedule_id)
    _check_may_change(user, row, "pause" if paused else "unpause")
    handle = temporal.get_schedule_handle(row["temporal_schedule_id"])
    try:
        if paused:
            await handle.pause(note=f"paused by {user.name}")
        else:
            await handle.unpause(note=f"unpaused by {user.name}")
    except RPCError as exc:
        raise Unavailable("the workflow engine is unavailable; try again") from exc
    async with conn.transaction():
        await conn.execute(Q.set_schedule_paused, user.org_id, row["id"], paused)
        action = "schedule.pause" if paused else "schedule.unpause"
        await conn.execute(Q.audit, user.org_id, user.name, action, None, None, {"id": str(row["id"])})
    return await load_schedule(conn, user, schedule_id)


async def delete_schedule(conn: asyncpg.Connection, temporal: Client, user: User, schedule_id: str) -> None:
    """Delete the Temporal Schedule, then the row (its creator or an org admin), audited. Runs it
    made stay. A Temporal Schedule already gone (deleted from the Web UI) is no error."""
    row = await load_schedule(conn, user, schedule_id)
    _check_may_change(user, row, "delete")
    try:
        await temporal.get_schedule_handle(row["temporal_schedule_id"]).delete()
    except RPCError as exc:
        if exc.status != RPCStatusCode.NOT_FOUND:
            raise Unavailable("the workflow engine is unavailable; schedule not deleted") from exc
    async with conn.transaction():
        await conn.execute(Q.delete_schedule, user.org_id, row["id"])
        await conn.execute(Q.audit, user.org_id, user.name, "schedule.delete", None, None, {"id": str(row["id"])})
