"""Pipelines: accepting one (rows + PipelineWorkflow), cancelling one, and the Postgres side of
the pipeline activities (state changes with their events and NOTIFY, an attempt's job row); for
the REST face: listing, a pipeline with its steps and attempts, and the caller's submit, cancel
and rerun (role checks and audit rows around the engine-facing functions)."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from typing import Any

import asyncpg
from pydantic import ValidationError
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.common import SearchAttributePair, TypedSearchAttributes, WorkflowIDReusePolicy
from temporalio.service import RPCError, RPCStatusCode

from boxrun.constants import CHANNEL_PIPELINES, CONTROL_TASK_QUEUE, ErrorKind, JobState, PipelineState, StepState
from boxrun.db import Conn, Q
from boxrun.errors import Conflict, Forbidden, InvalidInput, NotFound, Unavailable
from boxrun.messages import (
    JobOutcome,
    PipelineInput,
    PipelineStepRef,
    PreparedAttempt,
    RecordPipelineInput,
    RecordStepInput,
    RetryPolicyInput,
)
from boxrun.pipelines.model import ExpandedPipeline, ExpandedStep
from boxrun.placement import release_holds
from boxrun.services.files import resolve_file_refs
from boxrun.services.identity import User
from boxrun.services.secrets import check_references
from boxrun.services.submission import spec_hash
from boxrun.services.wakeups import wake_jobs
from boxrun.services.workflow_start import WORKFLOW_TASK_TIMEOUT, job_input
from boxrun.settings import Settings
from boxrun.storage import Storage
from boxrun.temporal import KEY_OWNER, KEY_PIPELINE_ID
from boxrun.transitions import transition

log = logging.getLogger(__name__)

# An attempt's job id is uuid5(this, "<pipeline_id>/<step>/<attempt>"): the same attempt always
# names the same job, so a replayed or retried activity never makes a second one.
ATTEMPT_NAMESPACE = uuid.UUID("6f1b7c1e-3f7a-5b8e-9d2a-0c4e5f6a7b80")
# Steps whose uploaded files are checked in storage at once while a pipeline is accepted.
RESOLVE_CONCURRENCY = 8


def attempt_job_id(pipeline_id: str, step: str, attempt: int) -> str:
    return str(uuid.uuid5(ATTEMPT_NAMESPACE, f"{pipeline_id}/{step}/{attempt}"))


def step_workflow_id(pipeline_id: str, step: str) -> str:
    return f"{pipeline_id}/{step}"


def retry_input(step: ExpandedStep) -> RetryPolicyInput | None:
    if step.retry is None:
        return None
    return RetryPolicyInput.model_validate(step.retry.model_dump(mode="json"))


async def create_pipeline(
    conn: asyncpg.Connection,
    temporal: Client,
    settings: Settings,
    user: User,
    p: ExpandedPipeline,
    *,
    storage: Storage,
    rerun_of: str | None = None,
    reuse: dict[str, str] | None = None,
    template: dict[str, Any] | None = None,
) -> str:
    """Store the pipeline and its steps in one transaction, then start its PipelineWorkflow;
    returns the pipeline id. `reuse` (rerun only_failed): step name -> the job of an earlier run
    that stands for it (the step is stored completed and does not run again).

    InvalidInput naming the step for a box that does not exist, a secret reference the org has
    no secret for, or an uploaded file that is not in storage; Unavailable if Temporal refuses
    (the rows are removed again: nothing half-written)."""
    reuse = reuse or {}
    # a box the submitter may not see (allowed_users) is refused exactly as a box that does not exist
    viewer = None if user.is_admin else user.name
    for step in p.steps:
        box = step.job.box
        if box is not None and await conn.fetchrow(Q.get_box, user.org_id, box, viewer) is None:
            raise InvalidInput(f"step {step.name!r}: box {box!r} does not exist", field=f"steps.{step.name}.box")
        # secret references in a step's env (the pipeline env merged in): as for a job
        try:
            await check_references(conn, user.org_id, step.job.env, field=f"steps.{step.name}.env")
        except InvalidInput as exc:
            raise InvalidInput(f"step {step.name!r}: {exc}", field=exc.field) from exc
    gate = asyncio.Semaphore(RESOLVE_CONCURRENCY)

    async def frozen(step: ExpandedStep) -> dict[str, Any]:
        async with gate:
            try:
                refs = await resolve_file_refs(storage, settings, user, step.job)
            except InvalidInput as exc:
                field = (exc.field or "files").removeprefix("body.")
                raise InvalidInput(f"step {step.name!r}: {exc}", field=f"steps.{step.name}.{field}") from exc
        return {
            "job": step.job.frozen_spec(refs),
            "inputs": [i.model_dump(mode="json") for i in step.inputs],
            "retry": step.retry.model_dump(mode="json") if step.retry else None,
            "when": step.when.value,
            "allow_failure": step.allow_failure,
            # read by placement's take_hold (holds.sql) when a step job's lease ends
            "same_box_as": step.same_box_as,
            "keep_box": step.keep_box,
        }

    step_specs = await asyncio.gather(*(frozen(s) for s in p.steps))
    spec = p.model_dump(mode="json")
    if template:  # a template run (docs/templates.md): frozen into the stored document
        spec["template"] = template
    pipeline_id = str(uuid.uuid4())
    async with conn.transaction():
        await conn.execute(
            Q.insert_pipeline,
            pipeline_id,
            user.org_id,
            user.name,
            p.name,
            spec,
            spec_hash(spec),
            p.timeout_s,
            rerun_of,
        )
        await conn.executemany(
            Q.insert_pipeline_step,
            [
                (
                    pipeline_id,
                    s.name,
                    i,
                    s.needs,
                    StepState.COMPLETED.value if s.name in reuse else StepState.PENDING.value,
                    step_specs[i],
                    reuse.get(s.name),
                    rerun_of if s.name in reuse else None,
                )
                for i, s in enumerate(p.steps)
            ],
        )
        detail: dict[str, Any] = {"owner": user.name, **({"rerun_of": rerun_of} if rerun_of else {})}
        await _event(conn, pipeline_id, user.org_id, None, PipelineState.QUEUED, detail)

    try:
        await start_pipeline_workflow(temporal, pipeline_input(pipeline_id, user.name, p, reuse))
    except RPCError as exc:
        log.error("could not start the workflow of pipeline %s: %s", pipeline_id, exc)
        await conn.execute(Q.delete_pipeline, pipeline_id)
        raise Unavailable("the workflow engine is unavailable; pipeline not accepted") from exc
    return pipeline_id


def pipeline_input(pipeline_id: str, owner: str, p: ExpandedPipeline, reuse: dict[str, str]) -> PipelineInput:
    """The PipelineWorkflow's input: names, needs and rules of the steps, never their scripts."""
    return PipelineInput(
        pipeline_id=pipeline_id,
        owner=owner,
        timeout_s=p.timeout_s,
        steps=[
            PipelineStepRef(
                name=s.name,
                needs=s.needs,
                when=s.when.value,
                allow_failure=s.allow_failure,
                retry=retry_input(s),
                reuse_job_id=reuse.get(s.name),
                same_box_as=s.same_box_as,
                keep_box=s.keep_box,
            )
            for s in p.steps
        ],
    )


def stored_input(row: asyncpg.Record, steps: list[asyncpg.Record]) -> PipelineInput:
    """The input of a stored pipeline (the reaper starts a workflow a crash missed from it)."""
    reuse = {s["name"]: str(s["job_id"]) for s in steps if s["reused_from"] is not None and s["job_id"] is not None}
    return pipeline_input(str(row["id"]), row["owner"], ExpandedPipeline.model_validate(row["spec"]), reuse)


async def start_pipeline_workflow(temporal: Client, inp: PipelineInput) -> None:
    """Workflow id = pipeline id; a second start of the same pipeline is refused by Temporal."""
    await temporal.start_workflow(
        "PipelineWorkflow",
        inp,
        id=inp.pipeline_id,
        task_queue=CONTROL_TASK_QUEUE,
        id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
        task_timeout=WORKFLOW_TASK_TIMEOUT,
        search_attributes=TypedSearchAttributes(
            [SearchAttributePair(KEY_PIPELINE_ID, inp.pipeline_id), SearchAttributePair(KEY_OWNER, inp.owner)]
        ),
    )


async def end_rows(
    conn: Conn, temporal: Client, pipeline_id: str, state: PipelineState, error: str | None = None, *, by: str
) -> None:
    """End a pipeline whose workflow is gone (never started, or closed before it recorded an
    end): every step not ended is cancelled, the pipeline moves to `state`, and its box holds are
    released (`by` recorded) with the jobs waiting for those boxes woken."""
    async with conn.transaction():
        for step in await conn.fetch(Q.pipeline_steps, uuid.UUID(pipeline_id)):
            if not StepState(step["state"]).terminal:
                await record_step(
                    conn, RecordStepInput(pipeline_id=pipeline_id, step=step["name"], state=StepState.CANCELLED)
                )
        await record_pipeline(conn, RecordPipelineInput(pipeline_id=pipeline_id, state=state, error=error))
    await release_pipeline_holds(conn, temporal, pipeline_id, by=by)


async def release_pipeline_holds(
    conn: Conn, temporal: Client, pipeline_id: str, step: str | None = None, *, by: str
) -> list[str]:
    """Release the pipeline's box holds (of `step` only, if given) and wake the jobs waiting for
    the boxes freed; returns the jobs woken. Idempotent."""
    wake = await release_holds(conn, pipeline_id, step, by=by)
    return await wake_jobs(temporal, wake)


async def load_pipeline(conn: Conn, user: User, pipeline_id: str) -> asyncpg.Record:
    """The pipeline in the caller's org; NotFound otherwise (another org's pipeline too)."""
    try:
        pid = uuid.UUID(pipeline_id)
    except ValueError:
        raise NotFound(f"pipeline {pipeline_id[:80]} does not exist") from None
    row = await conn.fetchrow(Q.get_pipeline, user.org_id, pid)
    if row is None:
        raise NotFound(f"pipeline {pipeline_id} does not exist")
    return row


async def cancel_pipeline(conn: asyncpg.Connection, temporal: Client, user: User, pipeline_id: str) -> None:
    """Ask the pipeline's workflow to cancel: running step jobs are cancelled (SIGTERM, grace,
    SIGKILL), pending steps end cancelled, `when: always` steps still run. A pipeline without a
    running workflow is cancelled here. Conflict if it already ended; Unavailable if Temporal
    cannot take the request."""
    row = await load_pipeline(conn, user, pipeline_id)
    pid = str(row["id"])
    if PipelineState(row["state"]).terminal:
        raise Conflict(f"pipeline {pid} already ended ({row['state']})")
    handle = temporal.get_workflow_handle(pid)
    try:
        # a cancel request to a workflow that already closed is accepted and does nothing
        if (await handle.describe()).status == WorkflowExecutionStatus.RUNNING:
            await handle.cancel()
            return
    except RPCError as exc:
        if exc.status != RPCStatusCode.NOT_FOUND:
            raise Unavailable(f"the workflow engine refused the cancel: {exc.message}") from exc
    log.info("pipeline %s has no running workflow; cancelling the rows themselves", pid)
    await end_rows(conn, temporal, pid, PipelineState.CANCELLED, by="pipeline_ended")


# -- The activities' Postgres side.


async def _event(
    conn: Conn, pipeline_id: str, org_id: str, step: str | None, state: str, detail: dict[str, Any]
) -> None:
    event_id = await conn.fetchval(Q.insert_pipeline_event, pipeline_id, org_id, step, state, detail)
    payload = {"pipeline_id": pipeline_id, "event_id": event_id, "step": step, "state": state}
    await conn.execute(Q.notify, CHANNEL_PIPELINES, json.dumps(payload))


async def record_pipeline(conn: Conn, inp: RecordPipelineInput) -> bool:
    """Move the pipeline to inp.state (terminal states absorb) with its event; True if it moved."""
    async with conn.transaction():
        org_id = await conn.fetchval(
            Q.set_pipeline_state, inp.pipeline_id, inp.state.value, inp.error, inp.state.terminal
        )
        if org_id is None:
            return False
        detail = {"error": inp.error} if inp.error else {}
        await _event(conn, inp.pipeline_id, org_id, None, inp.state.value, detail)
    return True


async def record_step(conn: Conn, inp: RecordStepInput) -> bool:
    """Move a step to inp.state (a new attempt's job while running counts as a change; terminal
    states absorb) with its event; True if it moved."""
    async with conn.transaction():
        org_id = await conn.fetchval(
            Q.set_step_state,
            inp.pipeline_id,
            inp.step,
            inp.state.value,
            inp.job_id,
            inp.attempt,
            inp.error,
            inp.state.terminal,
        )
        if org_id is None:
            return False
        detail: dict[str, Any] = {k: v for k, v in inp.detail.items() if v is not None}
        for key, value in (("job_id", inp.job_id), ("attempt", inp.attempt), ("error", inp.error)):
            if value is not None:
                detail[key] = value
        await _event(conn, inp.pipeline_id, org_id, inp.step, inp.state.value, detail)
    return True


async def prepare_attempt(conn: Conn, settings: Settings, pipeline_id: str, step: str, attempt: int) -> PreparedAttempt:
    """The attempt's job row (idempotent: its id is derived from pipeline, step and attempt),
    built from the step's frozen spec with each input resolved to the upstream step's final job
    and artifact. A missing input: the job is stored failed (error_kind input_missing) and not
    run. The step is marked running with this attempt's job."""
    job_id = attempt_job_id(pipeline_id, step, attempt)
    row = await conn.fetchrow(Q.pipeline_step_for_attempt, pipeline_id, step)
    if row is None:
        raise NotFound(f"pipeline {pipeline_id} has no step {step!r}")
    job = dict(row["spec"]["job"])
    resolved, missing = await _resolve_inputs(conn, pipeline_id, row["spec"].get("inputs") or [])
    if resolved:
        job["inputs"] = resolved
    box, unplaced = await _placed_box(conn, pipeline_id, step, row["spec"].get("same_box_as"))
    if box is not None:  # the attempt runs on that box, whatever target the step was written with
        job["box"], job["box_group"] = box, None
    missing = missing or unplaced
    async with conn.transaction():
        inserted = await conn.fetchrow(
            Q.insert_attempt_job,
            job_id,
            row["org_id"],
            row["owner"],
            job.get("box"),
            job.get("box_group"),
            job.get("requires") or [],
            job,
            spec_hash(job),
            job["timeout_s"],
            job.get("lock", False),
            job.get("priority", 0),
            job.get("cancel_grace_s", 10),
            pipeline_id,
            step,
            attempt,
        )
        if inserted is not None:
            detail = {"owner": row["owner"], "pipeline_id": pipeline_id, "step": step, "attempt": attempt}
            await conn.execute(Q.insert_first_event, row["org_id"], job_id, detail)
            if missing is not None:
                await transition(conn, job_id, JobState.FAILED, error=missing)
                await conn.execute(Q.set_error_kind, job_id, ErrorKind.INPUT_MISSING.value)
        await record_step(
            conn,
            RecordStepInput(
                pipeline_id=pipeline_id, step=step, state=StepState.RUNNING, job_id=job_id, attempt=attempt
            ),
        )
    current = await conn.fetchrow(Q.job_row, job_id)
    assert current is not None
    state = JobState(current["state"])
    if state.terminal:  # ended before it ran (a missing input)
        outcome = JobOutcome(
            job_id=job_id,
            state=state,
            exit_code=current["exit_code"],
            error=current["error"],
            error_kind=current["error_kind"],
        )
        return PreparedAttempt(job_id=job_id, outcome=outcome)
    return PreparedAttempt(job_id=job_id, job=job_input(current, settings))


async def _placed_box(
    conn: Conn, pipeline_id: str, step: str, same_box_as: str | None
) -> tuple[str | None, str | None]:
    """The box an attempt of `step` must run on, and why it cannot run (or None): the box its own
    live hold keeps (a retry of a keep_box step stays on it), else the box of its same_box_as
    step (the hold on it, else the box that step's final job ran on). A pinned step whose
    ancestor never ran on a box cannot run."""
    held = await conn.fetchval(Q.step_hold_box, pipeline_id, step)
    if held is not None or same_box_as is None:
        return held, None
    box = await conn.fetchval(Q.step_hold_box, pipeline_id, same_box_as)
    box = box or await conn.fetchval(Q.step_ran_on, pipeline_id, same_box_as)
    if box is None:
        return None, f"same_box_as: step {same_box_as!r} never ran on a box (or that box was deleted)"
    return box, None


async def _resolve_inputs(
    conn: Conn, pipeline_id: str, inputs: list[dict[str, Any]]
) -> tuple[list[dict[str, Any]], str | None]:
    """Each input as {job_id, path, dest, sha256, size}, and the first missing one named (or None)."""
    resolved: list[dict[str, Any]] = []
    for inp in inputs:
        source, path = inp["from_step"], inp["path"]
        up = await conn.fetchrow(Q.step_final_job, pipeline_id, source)
        if up is None or up["job_id"] is None or up["state"] != StepState.COMPLETED:
            return resolved, f"input {path!r} from step {source!r} is missing: that step did not complete"
        art = await conn.fetchrow(Q.job_artifact_any_org, up["job_id"], path)
        if art is None:
            return resolved, f"input {path!r} from step {source!r} is missing: job {up['job_id']} has no such artifact"
        resolved.append(
            {
                "job_id": str(up["job_id"]),
                "path": path,
                "dest": inp["dest"],
                "sha256": art["sha256"],
                "size": art["size"],
            }
        )
    return resolved, None


# -- The REST face: what a caller may do, with its audit row.


def check_may_act(user: User, pipeline: asyncpg.Record, verb: str) -> None:
    """Operators cancel and re-run their own pipelines; org admins any pipeline of the org.
    Forbidden (403, with the reason) otherwise. (The route's Operator dependency refused viewers.)"""
    if not user.is_admin and pipeline["owner"] != user.name:
        raise Forbidden(
            f"you may {verb} only your own pipelines (pipeline {pipeline['id']} belongs to {pipeline['owner']})"
        )


async def submit_pipeline(
    conn: asyncpg.Connection,
    temporal: Client,
    settings: Settings,
    storage: Storage,
    user: User,
    p: ExpandedPipeline,
    *,
    template: dict[str, Any] | None = None,
) -> str:
    """create_pipeline for a caller, with its `pipeline.create` audit row; returns the id."""
    pipeline_id = await create_pipeline(conn, temporal, settings, user, p, storage=storage, template=template)
    detail = {"pipeline_id": pipeline_id, "name": p.name, "steps": len(p.steps)}
    await conn.execute(Q.audit, user.org_id, user.name, "pipeline.create", None, None, detail)
    return pipeline_id


async def cancel_pipeline_as(conn: asyncpg.Connection, temporal: Client, user: User, pipeline_id: str) -> str:
    """cancel_pipeline for a caller who may (own pipeline, or an admin), with its
    `pipeline.cancel` audit row; returns the pipeline id. Conflict if it already ended."""
    row = await load_pipeline(conn, user, pipeline_id)
    check_may_act(user, row, "cancel")
    pid = str(row["id"])
    if PipelineState(row["state"]).terminal:
        raise Conflict(f"pipeline {pid} already ended ({row['state']})")
    live = await conn.fetch(Q.pipeline_live_jobs, row["id"])
    await cancel_pipeline(conn, temporal, user, pid)
    # recorded once the request is taken (a 503 leaves no row); each step job it cancels names
    # the canceller in its own trail too, so `GET /api/audit?job_id=` shows who it was
    async with conn.transaction():
        await conn.execute(
            Q.audit, user.org_id, user.name, "pipeline.cancel", None, None, {"pipeline_id": pid, "state": row["state"]}
        )
        for job in live:
            detail = {"state": job["state"], "via": "pipeline.cancel", "pipeline_id": pid}
            await conn.execute(Q.audit, user.org_id, user.name, "job.cancel", job["id"], job["box_name"], detail)
    return pid


def steps_to_rerun(steps: list[asyncpg.Record], only_failed: bool) -> set[str]:
    """The steps a rerun runs again: all of them, or (only_failed) each step that did not
    complete and every step that needs one of those (transitively: a completed `when: always`
    step after a failed one runs again too, with the new upstream outcome). `steps` are in
    topological order."""
    if not only_failed:
        return {s["name"] for s in steps}
    again: set[str] = set()
    for s in steps:
        if s["state"] != StepState.COMPLETED or s["job_id"] is None or again.intersection(s["needs"]):
            again.add(s["name"])
    return again


async def rerun_pipeline(
    conn: asyncpg.Connection,
    temporal: Client,
    settings: Settings,
    storage: Storage,
    user: User,
    pipeline_id: str,
    *,
    only_failed: bool,
) -> str:
    """A new pipeline from the original's stored definition, linked by `rerun_of`, owned by the
    caller; with only_failed, the steps that completed (and need nothing rerun) are not run
    again: their jobs and artifacts stand for them. Forbidden unless the pipeline is the
    caller's or the caller an org admin; Conflict if only_failed and nothing is left to rerun;
    InvalidInput if the stored definition no longer passes validation (or names a box that no
    longer exists)."""
    row = await load_pipeline(conn, user, pipeline_id)
    check_may_act(user, row, "rerun")
    pid = str(row["id"])
    try:
        p = ExpandedPipeline.model_validate(row["spec"])
    except ValidationError as exc:  # rules tightened since the pipeline was stored
        first = exc.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or "spec"
        raise InvalidInput(f"the stored definition no longer passes validation: {first['msg']}", field=field) from None
    reuse: dict[str, str] = {}
    if only_failed:
        if not PipelineState(row["state"]).terminal:
            raise Conflict(f"pipeline {pid} is still {row['state']}: rerun only_failed once it ended")
        steps = await conn.fetch(Q.pipeline_steps, row["id"])
        again = steps_to_rerun(steps, only_failed=True)
        if not again:
            raise Conflict(f"pipeline {pid}: every step completed; nothing to rerun (only_failed)")
        reuse = {s["name"]: str(s["job_id"]) for s in steps if s["name"] not in again}
    new_id = await create_pipeline(conn, temporal, settings, user, p, storage=storage, rerun_of=pid, reuse=reuse)
    detail = {"pipeline_id": pid, "new_pipeline_id": new_id, "only_failed": only_failed, "reused": sorted(reuse)}
    await conn.execute(Q.audit, user.org_id, user.name, "pipeline.rerun", None, None, detail)
    return new_id


async def pipeline_view(
    conn: Conn, user: User, pipeline_id: str
) -> tuple[asyncpg.Record, list[asyncpg.Record], list[asyncpg.Record]]:
    """The pipeline of the caller's org (NotFound otherwise), its steps in order, and the jobs of
    its attempts (by step, then attempt)."""
    row = await load_pipeline(conn, user, pipeline_id)
    steps = await conn.fetch(Q.pipeline_steps, row["id"])
    attempts = await conn.fetch(Q.pipeline_step_attempts, row["id"])
    return row, steps, attempts


async def list_pipelines(
    conn: Conn, user: User, state: PipelineState | None, limit: int, offset: int
) -> tuple[list[asyncpg.Record], int]:
    """A page of the org's pipelines, newest first, and how many match in all."""
    rows = await conn.fetch(Q.list_pipelines, user.org_id, state, limit, offset)
    return rows, await conn.fetchval(Q.count_pipelines, user.org_id, state)
