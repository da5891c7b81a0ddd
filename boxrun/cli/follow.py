"""Following a job live: its lines by stream, then its exit code; Ctrl-C leaves it running."""

from __future__ import annotations

from boxrun.cli.exitcodes import exit_code_for
from boxrun.cli.output import notice, show_line
from boxrun.sdk.aio import Job


def detach_note(job_id: str) -> None:
    notice(
        f"detached from job {job_id}; it goes on. Follow it again: boxrun logs {job_id} --follow; "
        f"cancel it: boxrun cancel {job_id}"
    )


def ending(job: Job) -> str:
    """ "job X completed" / "job X failed (exit code 3): reason"."""
    model = job.model
    text = f"job {model.id} {model.state}"
    if model.exit_code is not None and model.state != "completed":
        text += f" (exit code {model.exit_code})"
    if model.error:
        text += f": {model.error}"
    return text


async def follow_job(job: Job, *, stream: str | None = None, after: int = 0, quiet: bool = False) -> int:
    """Print the job's lines as they come (none with `quiet`) until it ends; its exit code."""
    async for line in job.follow(stream, after=after):
        if not quiet:
            show_line(line)
    if not quiet and job.model.state != "completed":
        notice(ending(job))
    return exit_code_for(job.model)
