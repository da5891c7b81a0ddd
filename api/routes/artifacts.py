"""Artifacts: the verified manifest and short-lived, audited download links."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, status
from fastapi.responses import RedirectResponse

from boxrun.api.deps import ConnDep, CurrentUser, StorageDep
from boxrun.api.errors import responses
from boxrun.api.to_public import artifact_public
from boxrun.db import Q
from boxrun.schemas import MAX_SEQ, ArtifactsPublic
from boxrun.services.downloads import artifact_url
from boxrun.services.jobs import load_job
from boxrun.services.outputs import check_artifacts_kept

router = APIRouter(prefix="/jobs", tags=["artifacts"])

GONE_410 = "the artifacts were deleted (DELETE .../outputs or the org's retention): `detail` says who or what, and when"


@router.get(
    "/{job_id}/artifacts",
    response_model=ArtifactsPublic,
    responses=responses(401, 404, 410, 422, e404="no such job", e410=GONE_410),
)
async def list_artifacts(
    job_id: str,
    conn: ConnDep,
    user: CurrentUser,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=MAX_SEQ)] = 0,
) -> ArtifactsPublic:
    """The job's verified artifacts, by path, a page at a time; `count` is how many it has in all."""
    row = await load_job(conn, user, job_id)
    check_artifacts_kept(row)
    page = await conn.fetch(Q.list_artifacts_page, row["id"], limit, offset)
    total: int = await conn.fetchval(Q.count_artifacts, row["id"])
    return ArtifactsPublic(data=[artifact_public(r) for r in page], count=total)


@router.get(
    "/{job_id}/artifacts/{path:path}",
    status_code=status.HTTP_307_TEMPORARY_REDIRECT,
    response_class=RedirectResponse,
    responses={
        307: {
            "description": "redirect to a presigned GET minted for this request (download_url_ttl_s, 60 s by default)"
        },
        **responses(401, 404, 410, 422, e404="no such job, or no such artifact", e410=GONE_410),
    },
)
async def download_artifact(
    job_id: str, path: str, conn: ConnDep, user: CurrentUser, storage: StorageDep
) -> RedirectResponse:
    url = await artifact_url(conn, storage, user, job_id, path)
    return RedirectResponse(url, status_code=status.HTTP_307_TEMPORARY_REDIRECT)
