"""A job's spec: what it ran (script, env, files by digest, settings, spec_hash), to diff two runs."""

from __future__ import annotations

from fastapi import APIRouter

from boxrun.api.deps import ConnDep, CurrentUser
from boxrun.api.errors import responses
from boxrun.schemas.audit import JobSpecPublic
from boxrun.services.audit import job_spec

router = APIRouter(prefix="/jobs", tags=["jobs"])


@router.get("/{job_id}/spec", response_model=JobSpecPublic, responses=responses(401, 404, e404="no such job"))
async def get_job_spec(job_id: str, conn: ConnDep, user: CurrentUser) -> JobSpecPublic:
    """What the job ran, frozen at submission. Two jobs with the same spec_hash ran the same spec."""
    return JobSpecPublic.model_validate(await job_spec(conn, user, job_id))
