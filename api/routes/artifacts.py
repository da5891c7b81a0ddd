"""Artifacts: the verified manifest and short-lived download links."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, HTTPException, status
from fastapi.responses import RedirectResponse

from boxrun.api.deps import ConnDep, CurrentUser, StorageDep
from boxrun.api.routes.jobs import NOT_FOUND, load_job
from boxrun.db import Q
from boxrun.schemas import ArtifactsPublic, CleanStr

router = APIRouter(prefix="/jobs", tags=["artifacts"])

DOWNLOAD_LINK_S = 300


@router.get("/{job_id}/artifacts", response_model=ArtifactsPublic, responses=NOT_FOUND)
async def list_artifacts(job_id: str, conn: ConnDep, user: CurrentUser) -> ArtifactsPublic:
    row = await load_job(conn, user, job_id)
    return ArtifactsPublic(data=[dict(r) for r in await conn.fetch(Q.list_artifacts, row["id"])])


@router.get(
    "/{job_id}/artifacts/{path:path}",
    status_code=status.HTTP_307_TEMPORARY_REDIRECT,
    response_class=RedirectResponse,
    responses={307: {"description": "redirect to a presigned GET valid for 5 minutes"}, **NOT_FOUND},
)
async def download_artifact(
    job_id: str, path: CleanStr, conn: ConnDep, user: CurrentUser, storage: StorageDep
) -> RedirectResponse:
    row = await load_job(conn, user, job_id)
    art = await conn.fetchrow(Q.get_artifact, user.org_id, row["id"], path)
    if art is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"job {job_id} has no artifact {path!r}")
    url = await asyncio.to_thread(
        storage.presign_get, art["key"], filename=path.rsplit("/", 1)[-1], expires_s=DOWNLOAD_LINK_S
    )
    return RedirectResponse(url, status_code=status.HTTP_307_TEMPORARY_REDIRECT)
