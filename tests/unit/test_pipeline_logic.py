"""The pipeline engine's pure decisions: when a step runs, is skipped or cancelled; when an
attempt retries; the pipeline's outcome; a RetrySpec as Temporal's RetryPolicy. The workflows
themselves run on the real stack in tests/integration/test_pipeline_engine.py."""

from __future__ import annotations

from datetime import timedelta

import pytest

from boxrun.constants import JobState, PipelineState, StepState
from boxrun.messages import JobOutcome, PipelineStepRef, RetryPolicyInput
from boxrun.pipelines.model import RetrySpec
from boxrun.services.pipelines import attempt_job_id
from boxrun.workflows.pipeline import RUN, decide, outcome
from boxrun.workflows.step import retry_policy, should_retry

P, R, C, F, T, S, X = (
    StepState.PENDING,
    StepState.RUNNING,
    StepState.COMPLETED,
    StepState.FAILED,
    StepState.TIMED_OUT,
    StepState.SKIPPED,
    StepState.CANCELLED,
)


def ref(name: str = "s", needs: tuple[str, ...] = ("a", "b"), **kw) -> PipelineStepRef:
    return PipelineStepRef(name=name, needs=list(needs), **kw)


def run_decide(
    when: str, a: StepState, b: StepState, *, allow=(False, False), upstream=(False, False), stopping=False
) -> str | None:
    return decide(
        ref(when=when),
        {"a": a, "b": b},
        {"a": allow[0], "b": allow[1]},
        {"a": upstream[0], "b": upstream[1]},
        stopping,
    )


@pytest.mark.parametrize(
    ("when", "a", "b", "kw", "want"),
    [
        ("on_success", C, C, {}, RUN),
        ("on_success", C, R, {}, None),  # waits for every need
        ("on_success", C, P, {}, None),
        ("on_success", C, F, {}, S),
        ("on_success", C, T, {}, S),
        ("on_success", C, X, {}, S),
        ("on_success", C, F, {"allow": (False, True)}, RUN),  # allow_failure counts as success
        ("on_success", C, S, {}, S),  # a need skipped (for whatever reason)
        ("on_failure", C, C, {}, S),
        ("on_failure", C, F, {}, RUN),
        ("on_failure", C, F, {"allow": (False, True)}, S),  # an allowed failure is no failure
        ("on_failure", C, S, {"upstream": (False, True)}, RUN),  # skipped because of a failure up there
        ("on_failure", C, S, {}, S),  # skipped for another reason (an on_failure step with nothing to do)
        ("always", F, S, {}, RUN),
        ("always", C, R, {}, None),
        # stopping (cancel / timeout): only always steps still run, once their needs ended
        ("on_success", C, C, {"stopping": True}, X),
        ("on_failure", R, P, {"stopping": True}, X),
        ("always", X, R, {"stopping": True}, None),
        ("always", X, X, {"stopping": True}, RUN),
    ],
)
def test_decide(when, a, b, kw, want):
    assert run_decide(when, a, b, **kw) == want


def test_a_step_without_needs_runs_at_once():
    assert decide(ref(needs=()), {}, {}, {}, False) == RUN


def job(state: JobState, exit_code: int | None = None, kind: str | None = None) -> JobOutcome:
    return JobOutcome(job_id="j", state=state, exit_code=exit_code, error_kind=kind)


def retry(**kw) -> RetryPolicyInput:
    return RetryPolicyInput.model_validate(RetrySpec(**kw).model_dump(mode="json"))


@pytest.mark.parametrize(
    ("spec", "out", "want"),
    [
        (None, job(JobState.FAILED, 1, "exit_code"), False),  # no retry policy
        (retry(), job(JobState.FAILED, 1, "exit_code"), True),  # default on: failed, timed_out
        (retry(), job(JobState.TIMED_OUT, None, "timed_out"), True),
        (retry(), job(JobState.CANCELLED, None, "cancelled"), False),  # a cancel never retries
        (retry(), job(JobState.UNSCHEDULABLE, None, "unschedulable"), False),
        (retry(), job(JobState.FAILED, None, "input_missing"), False),
        (retry(on=["timed_out"]), job(JobState.FAILED, 1, "exit_code"), False),
        (retry(on=["failed"]), job(JobState.TIMED_OUT, None, "timed_out"), False),
        # heartbeat_lost narrows failed to that cause
        (retry(on=["heartbeat_lost"]), job(JobState.FAILED, None, "heartbeat_lost"), True),
        (retry(on=["heartbeat_lost"]), job(JobState.FAILED, 1, "exit_code"), False),
        # exit_codes: only the listed codes retry
        (retry(exit_codes=[75]), job(JobState.FAILED, 75, "exit_code"), True),
        (retry(exit_codes=[75]), job(JobState.FAILED, 3, "exit_code"), False),
        (retry(exit_codes=[75]), job(JobState.FAILED, None, "heartbeat_lost"), False),
    ],
)
def test_should_retry(spec, out, want):
    assert should_retry(spec, out) is want


def test_retry_policy_follows_the_retry_spec():
    policy = retry_policy(retry(max_attempts=4, initial_interval_s=5, backoff_coefficient=3, max_interval_s=60))
    assert (policy.maximum_attempts, policy.initial_interval, policy.backoff_coefficient, policy.maximum_interval) == (
        4,
        timedelta(seconds=5),
        3.0,
        timedelta(seconds=60),
    )
    assert retry_policy(None).maximum_attempts == 1


def test_pipeline_outcome():
    steps = [ref("a", ()), ref("b", (), allow_failure=True)]
    assert outcome(steps, {"a": C, "b": F}, None) == (PipelineState.COMPLETED, None)
    assert outcome(steps, {"a": T, "b": C}, None) == (PipelineState.FAILED, "step a timed_out")
    assert outcome(steps, {"a": X, "b": C}, PipelineState.CANCELLED)[0] == PipelineState.CANCELLED
    assert outcome(steps, {"a": X, "b": C}, PipelineState.TIMED_OUT)[0] == PipelineState.TIMED_OUT


def test_attempt_job_ids_are_deterministic_and_distinct():
    assert attempt_job_id("p", "s", 1) == attempt_job_id("p", "s", 1)
    assert len({attempt_job_id("p", "s", 1), attempt_job_id("p", "s", 2), attempt_job_id("p", "t", 1)}) == 3
