"""StepWorkflow: one pipeline step; workflow id `<pipeline_id>/<step>`. Started by the pipeline
with the step's Temporal RetryPolicy, each run is one attempt: it stores the attempt's job
(deterministic id) and runs that job's JobWorkflow as a child (workflow id = job id). An outcome
that should retry fails the run retryably, so Temporal waits the backoff (durably) and starts the
next attempt; any other end fails it non-retryably."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy, SearchAttributePair, TypedSearchAttributes, WorkflowIDReusePolicy
from temporalio.exceptions import ApplicationError, CancelledError, ChildWorkflowError

with workflow.unsafe.imports_passed_through():
    from boxrun.activities.control import ControlActivities
    from boxrun.activities.pipeline import PipelineActivities
    from boxrun.constants import CONTROL_TASK_QUEUE, ErrorKind, JobState, StepState
    from boxrun.messages import (
        FinishInput,
        JobInput,
        JobOutcome,
        PrepareAttemptInput,
        PreparedAttempt,
        RetryPolicyInput,
        StepResult,
        StepWorkflowInput,
    )
    from boxrun.temporal import BUG_TYPES, KEY_BOX_ID, KEY_JOB_STATE, KEY_OWNER, KEY_PIPELINE_ID
    from boxrun.workflows.job import DB_STEP_DEADLINE, DB_STEP_RETRY, DB_STEP_TIMEOUT

# The failure type a step run ends with when its attempt did not complete (StepResult as details).
STEP_FAILED = "StepFailed"
WORKFLOW_TASK_TIMEOUT = timedelta(seconds=5)

_STEP_STATE = {
    JobState.COMPLETED: StepState.COMPLETED,
    JobState.FAILED: StepState.FAILED,
    JobState.UNSCHEDULABLE: StepState.FAILED,
    JobState.TIMED_OUT: StepState.TIMED_OUT,
    JobState.CANCELLED: StepState.CANCELLED,
}


def retry_policy(retry: RetryPolicyInput | None) -> RetryPolicy:
    """A step's RetrySpec as Temporal's RetryPolicy; no retry: exactly one attempt."""
    if retry is None:
        return RetryPolicy(maximum_attempts=1)
    return RetryPolicy(
        initial_interval=timedelta(seconds=retry.initial_interval_s),
        backoff_coefficient=retry.backoff_coefficient,
        maximum_interval=timedelta(seconds=retry.max_interval_s) if retry.max_interval_s else None,
        maximum_attempts=retry.max_attempts,
    )


def should_retry(retry: RetryPolicyInput | None, outcome: JobOutcome) -> bool:
    """An attempt retries iff its outcome is in `on` (`heartbeat_lost` narrows `failed` to that
    cause) and, if `exit_codes` is given, its exit code is listed. A cancel, an unschedulable job
    and a missing input never retry (no later attempt could do better)."""
    if retry is None or outcome.state in (JobState.COMPLETED, JobState.CANCELLED, JobState.UNSCHEDULABLE):
        return False
    if outcome.error_kind == ErrorKind.INPUT_MISSING:
        return False
    on = set(retry.on)
    if outcome.state == JobState.TIMED_OUT:
        listed = "timed_out" in on
    else:
        listed = "failed" in on or ("heartbeat_lost" in on and outcome.error_kind == ErrorKind.HEARTBEAT_LOST)
    if listed and retry.exit_codes is not None:
        listed = outcome.exit_code in retry.exit_codes
    return listed


def outcome_of(exc: ChildWorkflowError, job_id: str) -> JobOutcome:
    """The JobOutcome a failed or cancelled JobWorkflow ended with (its failure's details)."""
    cause = exc.cause
    if isinstance(cause, ApplicationError) and cause.details:
        try:
            return JobOutcome.model_validate(cause.details[0])
        except ValueError:
            pass
    if isinstance(cause, CancelledError):
        return JobOutcome(job_id=job_id, state=JobState.CANCELLED, error="cancelled", error_kind=ErrorKind.CANCELLED)
    message = cause.message if isinstance(cause, ApplicationError) else str(cause or exc)
    return JobOutcome(job_id=job_id, state=JobState.FAILED, error=message, error_kind=ErrorKind.INTERNAL)


@workflow.defn(name="StepWorkflow", failure_exception_types=BUG_TYPES)
class StepWorkflow:
    @workflow.run
    async def run(self, inp: StepWorkflowInput) -> StepResult:
        attempt = workflow.info().attempt
        prepare = workflow.start_activity_method(
            PipelineActivities.prepare_attempt,
            PrepareAttemptInput(pipeline_id=inp.pipeline_id, step=inp.step, attempt=attempt),
            start_to_close_timeout=DB_STEP_TIMEOUT,
            schedule_to_close_timeout=DB_STEP_DEADLINE,
            retry_policy=DB_STEP_RETRY,
        )
        try:
            prepared: PreparedAttempt = await asyncio.shield(prepare)
        except asyncio.CancelledError:
            # cancelled while the job row was being written: let it be written, then end it
            # cancelled (it must not stay queued without a workflow)
            prepared = await prepare
            await self._cancel_unstarted(prepared.job_id)
            raise
        if prepared.job is None:
            assert prepared.outcome is not None
            outcome = prepared.outcome
        else:
            try:
                outcome = await self._run_job(inp, prepared.job)
            except ChildWorkflowError as exc:
                outcome = outcome_of(exc, prepared.job_id)
        result = StepResult(
            step=inp.step,
            state=_STEP_STATE[outcome.state],
            job_id=outcome.job_id,
            attempt=attempt,
            exit_code=outcome.exit_code,
            error=outcome.error,
            error_kind=outcome.error_kind,
        )
        if result.state == StepState.COMPLETED:
            return result
        details = result.model_dump(mode="json")
        if result.state == StepState.CANCELLED:
            # ends this run cancelled if the pipeline cancelled it; a job cancelled by itself
            # (through the jobs API) fails it with a CancelledError, which Temporal never retries
            raise CancelledError(f"step {inp.step}: cancelled", details)
        raise ApplicationError(
            f"step {inp.step} attempt {attempt}: {outcome.error or outcome.state}",
            details,
            type=STEP_FAILED,
            non_retryable=not should_retry(inp.retry, outcome),
        )

    async def _run_job(self, inp: StepWorkflowInput, job: JobInput) -> JobOutcome:
        """The attempt's JobWorkflow as a child: id = job id (REJECT_DUPLICATE: a replay never
        starts a second one), cancelled with this workflow and waited for until the job ended."""
        outcome: JobOutcome = await workflow.execute_child_workflow(
            "JobWorkflow",
            job,
            id=job.job_id,
            task_queue=CONTROL_TASK_QUEUE,
            id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
            task_timeout=WORKFLOW_TASK_TIMEOUT,
            retry_policy=RetryPolicy(maximum_attempts=1),
            cancellation_type=workflow.ChildWorkflowCancellationType.WAIT_CANCELLATION_COMPLETED,
            parent_close_policy=workflow.ParentClosePolicy.REQUEST_CANCEL,
            search_attributes=TypedSearchAttributes(
                [
                    SearchAttributePair(KEY_JOB_STATE, JobState.QUEUED.value),
                    SearchAttributePair(KEY_OWNER, job.owner),
                    SearchAttributePair(KEY_BOX_ID, job.box or f"group:{job.box_group}"),
                    SearchAttributePair(KEY_PIPELINE_ID, inp.pipeline_id),
                ]
            ),
            result_type=JobOutcome,
        )
        return outcome

    async def _cancel_unstarted(self, job_id: str) -> None:
        await workflow.execute_activity_method(
            ControlActivities.finish_job,
            FinishInput(
                job_id=job_id,
                to_state=JobState.CANCELLED,
                error="cancelled",
                error_kind=ErrorKind.CANCELLED.value,
            ),
            start_to_close_timeout=DB_STEP_TIMEOUT,
            schedule_to_close_timeout=DB_STEP_DEADLINE,
            retry_policy=DB_STEP_RETRY,
        )
