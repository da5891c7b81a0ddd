"""Database rows to public schemas."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg

from boxrun.schemas import ArtifactPublic, BoxPublic, JobEventPublic, JobPublic, TemplateMark
from boxrun.schemas.pipelines import (
    AttemptPublic,
    PipelineEventPublic,
    PipelinePublic,
    PipelineSummary,
    StepPublic,
)
from boxrun.settings import Settings


def job_public(row: asyncpg.Record, settings: Settings) -> JobPublic:
    job_id = str(row["id"])
    return JobPublic(
        id=job_id,
        state=row["state"],
        owner=row["owner"],
        box=row["box"],
        box_group=row["box_group"],
        requires=list(row["requires"]),
        lock=row["lock"],
        priority=row["priority"],
        timeout_s=row["timeout_s"],
        cancel_grace_s=row["cancel_grace_s"],
        queue_timeout_s=row["queue_timeout_s"],
        rerun_of=str(row["rerun_of"]) if row["rerun_of"] else None,
        labels=row["labels"],
        log_lines=row["log_seq"],
        log_archive=(
            {"size": row["log_archive_size"], "sha256": row["log_archive_sha256"]} if row["log_archive_key"] else None
        ),
        exit_code=row["exit_code"],
        error=row["error"],
        waiting_reason=row["waiting_reason"],
        idempotency_key=row["idempotency_key"],
        created_at=row["created_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        temporal_ui_url=settings.temporal_workflow_url(job_id),
        pipeline_id=str(row["pipeline_id"]) if row["pipeline_id"] else None,
        step=row["step"],
        attempt=row["attempt"],
        error_kind=row["error_kind"],
        logs_deleted_at=row.get("logs_deleted_at"),
        artifacts_deleted_at=row.get("artifacts_deleted_at"),
        outputs_deleted_at=outputs_deleted_at(row),
        template=template_mark(row),
    )


def template_mark(row: asyncpg.Record) -> TemplateMark | None:
    """The `template` frozen into a job's or pipeline's spec by a template run, if any."""
    spec = row.get("spec")
    mark = spec.get("template") if isinstance(spec, dict) else None
    return TemplateMark.model_validate(mark) if mark else None


def outputs_deleted_at(row: asyncpg.Record) -> datetime | None:
    """Both the transcript and the artifacts gone: the later of the two times."""
    logs, artifacts = row.get("logs_deleted_at"), row.get("artifacts_deleted_at")
    if logs is None or artifacts is None:
        return None
    return max(logs, artifacts)


def box_public(row: asyncpg.Record, settings: Settings) -> BoxPublic:
    seen = row["last_seen_at"]
    online = seen is not None and datetime.now(UTC) - seen < timedelta(seconds=settings.box_offline_after_s)
    return BoxPublic(
        name=row["name"],
        status="online" if online else "offline",
        draining=row["draining"],
        maintenance=bool(row.get("in_maintenance", False)),
        groups=list(row["groups"]),
        capabilities=list(row["capabilities"]),
        capacity=row["capacity"],
        last_seen_at=seen,
        agent_version=row["agent_version"],
        created_at=row["created_at"],
        allowed_users=None if row["allowed_users"] is None else sorted(row["allowed_users"]),
    )


def job_event_public(row: asyncpg.Record) -> JobEventPublic:
    return JobEventPublic(
        from_state=row["from_state"], to_state=row["to_state"], at=row["at"], detail=row["detail"] or {}
    )


def artifact_public(row: asyncpg.Record) -> ArtifactPublic:
    return ArtifactPublic(path=row["path"], size=row["size"], sha256=row["sha256"])


def pipeline_summary(row: asyncpg.Record, settings: Settings) -> PipelineSummary:
    pipeline_id = str(row["id"])
    return PipelineSummary(
        id=pipeline_id,
        name=row["name"],
        state=row["state"],
        owner=row["owner"],
        error=row["error"],
        rerun_of=str(row["rerun_of"]) if row["rerun_of"] else None,
        timeout_s=row["timeout_s"],
        created_at=row["created_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        temporal_ui_url=settings.temporal_workflow_url(pipeline_id),
        template=template_mark(row),
    )


def pipeline_public(
    row: asyncpg.Record, steps: list[asyncpg.Record], attempts: list[asyncpg.Record], settings: Settings
) -> PipelinePublic:
    """`attempts`: the pipeline's jobs (pipeline_step_attempts), grouped here under their step."""
    by_step: dict[str, list[AttemptPublic]] = {}
    for job in attempts:
        by_step.setdefault(job["step"], []).append(
            AttemptPublic(
                attempt=job["attempt"],
                job_id=str(job["id"]),
                state=job["state"],
                exit_code=job["exit_code"],
                error=job["error"],
                error_kind=job["error_kind"],
            )
        )
    return PipelinePublic(
        **pipeline_summary(row, settings).model_dump(),
        steps=[
            StepPublic(
                name=s["name"],
                state=s["state"],
                needs=list(s["needs"]),
                attempts=by_step.get(s["name"], []),
                job_id=str(s["job_id"]) if s["job_id"] else None,
                reused_from=str(s["reused_from"]) if s["reused_from"] else None,
                error=s["error"],
            )
            for s in steps
        ],
    )


def pipeline_event_public(row: asyncpg.Record) -> PipelineEventPublic:
    return PipelineEventPublic(
        id=row["id"], step=row["step"], state=row["state"], at=row["at"], detail=row["detail"] or {}
    )
