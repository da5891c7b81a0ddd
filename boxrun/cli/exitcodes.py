"""The exit codes of `boxrun run`, `boxrun logs`, `boxrun rerun --follow` and `boxrun pipeline run`
(like `docker run`: the job's own code where it has one, boxrun's own failures above 122)."""

from __future__ import annotations

from boxrun.constants import JobState, PipelineState
from boxrun.schemas import JobPublic

OK = 0
FAILED_NO_CODE = 123  # failed without an exit code: box lost, artifacts or verification failed
TIMED_OUT = 124
BOXRUN_FAILED = 125  # boxrun itself: API unreachable, request refused, bad arguments
UNSCHEDULABLE = 126
CANCELLED = 130  # also: Ctrl-C while following (the job goes on)

TABLE: list[tuple[str, str]] = [
    ("0", "the job completed (its script exited 0)"),
    ("1-255", "the job failed with the script's own exit code"),
    ("123", "the job failed without an exit code (box lost, artifact or verification failure)"),
    ("124", "the job timed out"),
    ("125", "boxrun itself failed: API unreachable, request refused (4xx/5xx), bad arguments"),
    ("126", "the job was unschedulable (no box could take it)"),
    ("130", "the job was cancelled (or you pressed Ctrl-C: the job goes on)"),
]

AMBIGUITY = (
    "A script that itself exits 123-126 or 130 looks the same: `boxrun job ID --json` tells them apart "
    "(state, exit_code, error_kind)."
)


def table_text() -> str:
    """The table for --help (markdown: a list, one line each)."""
    rows = "\n".join(f"* **{code}** {meaning}" for code, meaning in TABLE)
    return f"**Exit codes**\n\n{rows}\n\n{AMBIGUITY}"


def exit_code_for(job: JobPublic) -> int:
    """The exit status for a job that ended (a job still going: 0)."""
    state = job.state
    if state is JobState.COMPLETED:
        return OK
    if state is JobState.FAILED:
        if job.exit_code is not None and 0 < job.exit_code < 256:
            return job.exit_code
        return FAILED_NO_CODE
    return {
        JobState.TIMED_OUT: TIMED_OUT,
        JobState.CANCELLED: CANCELLED,
        JobState.UNSCHEDULABLE: UNSCHEDULABLE,
    }.get(state, OK)


def pipeline_exit_code(state: PipelineState) -> int:
    """0 iff the pipeline completed; else the table's code for how it ended (failed: 123)."""
    return {
        PipelineState.COMPLETED: OK,
        PipelineState.FAILED: FAILED_NO_CODE,
        PipelineState.TIMED_OUT: TIMED_OUT,
        PipelineState.CANCELLED: CANCELLED,
    }.get(state, OK)
