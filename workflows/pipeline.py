"""PipelineWorkflow: one pipeline's DAG; workflow id = pipeline id. Each step runs as a child
StepWorkflow (`<pipeline_id>/<step>`) as soon as its needs ended and its `when` holds; every
step and pipeline state change is recorded through an activity (row + event + NOTIFY).

A cancel or the pipeline timeout (a workflow timer) stops it: running steps are cancelled (their
jobs get SIGTERM, grace, SIGKILL through JobWorkflow's own cancel), pending steps end cancelled,
except `when: always` steps, which still run once their needs ended (bounded by their own job
timeout). The pipeline then ends cancelled or timed_out.

Box holds: a `keep_box` step's job takes the pipeline's hold on its box as its lease ends; the
workflow releases it (activity release_hold) once that step and every step pinned to it
(`same_box_as`) ended, and the pipeline's terminal record releases any hold left."""

from __future__ import annotations

import asyncio
import builtins
from collections.abc import Awaitable
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import SearchAttributePair, TypedSearchAttributes, WorkflowIDReusePolicy
from temporalio.exceptions import ApplicationError, CancelledError, ChildWorkflowError

with workflow.unsafe.imports_passed_through():
    from boxrun.activities.control import ControlActivities
    from boxrun.activities.pipeline import PipelineActivities
    from boxrun.constants import CONTROL_TASK_QUEUE, PipelineState, StepState
    from boxrun.messages import (
        PipelineInput,
        PipelineStepRef,
        RecordPipelineInput,
        RecordStepInput,
        ReleaseHoldInput,
        StepResult,
        StepWorkflowInput,
    )
    from boxrun.temporal import BUG_TYPES, KEY_OWNER, KEY_PIPELINE_ID
    from boxrun.workflows.job import DB_STEP_DEADLINE, DB_STEP_RETRY, DB_STEP_TIMEOUT
    from boxrun.workflows.step import WORKFLOW_TASK_TIMEOUT, StepWorkflow, retry_policy

RUN = "run"
_FAILED = (StepState.FAILED, StepState.TIMED_OUT, StepState.CANCELLED)
PIPELINE_FAILED = "PipelineFailed"
PIPELINE_TIMED_OUT = "PipelineTimedOut"


def decide(
    ref: PipelineStepRef,
    states: dict[str, StepState],
    allow_failure: dict[str, bool],
    upstream_failed: dict[str, bool],
    stopping: bool,
) -> str | None:
    """What to do with a pending step now: RUN, a terminal StepState, or None (wait).

    A need "failed" if it failed, timed out or was cancelled without allow_failure, or was
    skipped because of a failure further up. on_success runs when no need failed and every need
    completed (or failed with allow_failure), else the step is skipped; on_failure runs when
    some need failed, else it is skipped; always runs once every need ended. Once the pipeline
    is stopping (cancel, timeout) only `always` steps still run; every other pending step is
    cancelled at once."""
    if stopping and ref.when != "always":
        return StepState.CANCELLED
    needs = [states[n] for n in ref.needs]
    if not all(s.terminal for s in needs):
        return None
    if ref.when == "always":
        return RUN
    failed = any(_failed(n, states, allow_failure, upstream_failed) for n in ref.needs)
    if ref.when == "on_failure":
        return RUN if failed else StepState.SKIPPED
    ok = all(states[n] == StepState.COMPLETED or (states[n] in _FAILED and allow_failure[n]) for n in ref.needs)
    return RUN if ok and not failed else StepState.SKIPPED


def _failed(name: str, states: dict[str, StepState], allow: dict[str, bool], upstream: dict[str, bool]) -> bool:
    state = states[name]
    if state in _FAILED:
        return not allow[name]
    return state == StepState.SKIPPED and upstream[name]


def outcome(
    steps: list[PipelineStepRef], states: dict[str, StepState], stopped: PipelineState | None
) -> tuple[PipelineState, str | None]:
    """cancelled / timed_out if stopped so; failed if a step failed, timed out or was cancelled
    without allow_failure (naming the first); completed otherwise."""
    if stopped is not None:
        return stopped, str(stopped)
    for ref in steps:
        if states[ref.name] in _FAILED and not ref.allow_failure:
            return PipelineState.FAILED, f"step {ref.name} {states[ref.name]}"
    return PipelineState.COMPLETED, None


@workflow.defn(name="PipelineWorkflow", failure_exception_types=BUG_TYPES)
class PipelineWorkflow:
    def __init__(self) -> None:
        self._states: dict[str, StepState] = {}
        self._upstream_failed: dict[str, bool] = {}
        self._changed = False
        self._stopped: PipelineState | None = None
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._running: dict[str, asyncio.Task[None]] = {}  # steps that may be cancelled
        self._released: set[str] = set()  # keep_box steps whose box hold was released

    @workflow.query(name="state")
    def state(self) -> dict[str, Any]:
        return {"stopped": self._stopped, "steps": {k: v.value for k, v in self._states.items()}}

    @workflow.run
    async def run(self, inp: PipelineInput) -> dict[str, str]:
        allow = {s.name: s.allow_failure for s in inp.steps}
        pinned = {s.name: [p.name for p in inp.steps if p.same_box_as == s.name] for s in inp.steps if s.keep_box}
        for ref in inp.steps:
            self._states[ref.name] = StepState.COMPLETED if ref.reuse_job_id else StepState.PENDING
            self._upstream_failed[ref.name] = False
        deadline = workflow.now() + timedelta(seconds=inp.timeout_s)
        self._spawn("", self._record_pipeline(inp, PipelineState.RUNNING))
        while True:
            for ref in inp.steps:
                if self._states[ref.name] != StepState.PENDING:
                    continue
                action = decide(ref, self._states, allow, self._upstream_failed, self._stopped is not None)
                if action is None:
                    continue
                self._upstream_failed[ref.name] = any(
                    _failed(n, self._states, allow, self._upstream_failed) for n in ref.needs
                )
                if action == RUN:
                    self._states[ref.name] = StepState.RUNNING
                    task = self._spawn(ref.name, self._run_step(inp, ref))
                    if ref.when != "always":  # cleanup steps are not cancelled, they run to their end
                        self._running[ref.name] = task
                else:
                    self._states[ref.name] = StepState(action)
                    self._spawn(ref.name, self._record_step(inp, ref.name, StepState(action)))
            for name, steps in pinned.items():
                # a keep_box step's hold ends once it and every step pinned to it ended
                done = self._states[name].terminal and all(self._states[p].terminal for p in steps)
                if done and name not in self._released:
                    self._released.add(name)
                    self._spawn(name, self._settle(self._release_hold(inp, name)))
            if all(s.terminal for s in self._states.values()) and all(t.done() for t in self._tasks.values()):
                break
            self._changed = False
            try:
                if self._stopped is None:
                    left = max((deadline - workflow.now()).total_seconds(), 0.001)
                    await workflow.wait_condition(lambda: self._changed, timeout=timedelta(seconds=left))
                else:
                    await workflow.wait_condition(lambda: self._changed)
            except builtins.TimeoutError:
                self._stop(PipelineState.TIMED_OUT)
            except asyncio.CancelledError:
                self._stop(PipelineState.CANCELLED)
        final, error = outcome(inp.steps, self._states, self._stopped)
        await self._settle(self._record_pipeline(inp, final, error))
        if final == PipelineState.COMPLETED:
            return {"pipeline_id": inp.pipeline_id, "state": final.value}
        if final == PipelineState.CANCELLED:
            raise CancelledError("pipeline cancelled")
        raise ApplicationError(
            error or str(final),
            {"pipeline_id": inp.pipeline_id, "state": final.value},
            type=PIPELINE_TIMED_OUT if final == PipelineState.TIMED_OUT else PIPELINE_FAILED,
            non_retryable=True,
        )

    def _spawn(self, key: str, work: Awaitable[None]) -> asyncio.Task[None]:
        async def wrapped() -> None:
            try:
                await work
            finally:
                self._changed = True

        task = asyncio.ensure_future(wrapped())
        self._tasks[f"{key}#{len(self._tasks)}"] = task
        return task

    def _stop(self, why: PipelineState) -> None:
        """Cancel or timeout: cancel every running step but `always` ones (pending steps are
        decided in the next round)."""
        if self._stopped is not None:
            return
        self._stopped = why
        self._changed = True
        for name, task in self._running.items():
            if not task.done():
                workflow.logger.info("pipeline %s: cancelling step %s", why, name)
                task.cancel()

    async def _settle(self, work: Awaitable[None]) -> None:
        """Run `work` to its end even if a cancel arrives meanwhile."""
        task = asyncio.ensure_future(work)
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            await task

    async def _run_step(self, inp: PipelineInput, ref: PipelineStepRef) -> None:
        await self._settle(self._record_step(inp, ref.name, StepState.RUNNING))
        if self._stopped is not None and ref.when != "always":  # stopped while that was recorded
            await self._settle(self._record_step(inp, ref.name, StepState.CANCELLED, error="cancelled"))
            self._states[ref.name] = StepState.CANCELLED
            return
        try:
            result = await workflow.execute_child_workflow(
                StepWorkflow.run,
                StepWorkflowInput(pipeline_id=inp.pipeline_id, step=ref.name, owner=inp.owner, retry=ref.retry),
                id=f"{inp.pipeline_id}/{ref.name}",
                task_queue=CONTROL_TASK_QUEUE,
                id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
                task_timeout=WORKFLOW_TASK_TIMEOUT,
                retry_policy=retry_policy(ref.retry),
                cancellation_type=workflow.ChildWorkflowCancellationType.WAIT_CANCELLATION_COMPLETED,
                parent_close_policy=workflow.ParentClosePolicy.REQUEST_CANCEL,
                search_attributes=TypedSearchAttributes(
                    [SearchAttributePair(KEY_PIPELINE_ID, inp.pipeline_id), SearchAttributePair(KEY_OWNER, inp.owner)]
                ),
            )
        except ChildWorkflowError as exc:
            result = _result_of(ref.name, exc)
        except asyncio.CancelledError:
            result = StepResult(step=ref.name, state=StepState.CANCELLED, error="cancelled")
        detail: dict[str, str | int | float | bool | None] = {"exit_code": result.exit_code}
        if result.error_kind:
            detail["error_kind"] = result.error_kind
        await self._settle(
            self._record_step(
                inp,
                ref.name,
                result.state,
                job_id=result.job_id,
                attempt=result.attempt or None,
                error=result.error,
                detail=detail,
            )
        )
        self._states[ref.name] = result.state

    async def _record_step(
        self,
        inp: PipelineInput,
        step: str,
        state: StepState,
        *,
        job_id: str | None = None,
        attempt: int | None = None,
        error: str | None = None,
        detail: dict[str, str | int | float | bool | None] | None = None,
    ) -> None:
        await workflow.execute_activity_method(
            PipelineActivities.record_step,
            RecordStepInput(
                pipeline_id=inp.pipeline_id,
                step=step,
                state=state,
                job_id=job_id,
                attempt=attempt,
                error=error,
                detail=detail or {},
            ),
            start_to_close_timeout=DB_STEP_TIMEOUT,
            schedule_to_close_timeout=DB_STEP_DEADLINE,
            retry_policy=DB_STEP_RETRY,
        )

    async def _release_hold(self, inp: PipelineInput, step: str) -> None:
        await workflow.execute_activity_method(
            ControlActivities.release_hold,
            ReleaseHoldInput(pipeline_id=inp.pipeline_id, step=step),
            start_to_close_timeout=DB_STEP_TIMEOUT,
            schedule_to_close_timeout=DB_STEP_DEADLINE,
            retry_policy=DB_STEP_RETRY,
        )

    async def _record_pipeline(self, inp: PipelineInput, state: PipelineState, error: str | None = None) -> None:
        await workflow.execute_activity_method(
            PipelineActivities.record_pipeline,
            RecordPipelineInput(pipeline_id=inp.pipeline_id, state=state, error=error),
            start_to_close_timeout=DB_STEP_TIMEOUT,
            schedule_to_close_timeout=DB_STEP_DEADLINE,
            retry_policy=DB_STEP_RETRY,
        )


def _result_of(step: str, exc: ChildWorkflowError) -> StepResult:
    """A step workflow's failure (or cancel) as its StepResult (the failure's details)."""
    cause = exc.cause
    details = getattr(cause, "details", None)
    if details:
        try:
            return StepResult.model_validate(details[0])
        except ValueError:
            pass
    if isinstance(cause, CancelledError):
        return StepResult(step=step, state=StepState.CANCELLED, error="cancelled")
    message = cause.message if isinstance(cause, ApplicationError) else str(cause or exc)
    return StepResult(step=step, state=StepState.FAILED, error=message, error_kind="internal")
