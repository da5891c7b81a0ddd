"""Uploads: the bytes of a job's binary files, stored before the submission that references them."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, status

from boxrun.api.deps import Operator, SettingsDep, StorageDep
from boxrun.api.errors import responses
from boxrun.schemas import SHA256_PATTERN, UploadPublic
from boxrun.services import files

router = APIRouter(prefix="/files", tags=["files"])

UPLOAD_MEDIA_TYPE = "application/octet-stream"


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=UploadPublic,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                UPLOAD_MEDIA_TYPE: {
                    "schema": {"type": "string", "format": "binary", "description": "the file's bytes, as they are"}
                }
            },
        }
    },
    responses=responses(
        401,
        403,
        413,
        422,
        503,
        e413="the body is over max_job_files_bytes (1 GiB by default)",
        e422="the body does not hash to `sha256`",
    ),
)
async def upload_file(
    request: Request,
    settings: SettingsDep,
    storage: StorageDep,
    user: Operator,
    sha256: Annotated[str, Query(pattern=SHA256_PATTERN, description="lower-case hex SHA-256 of the body")],
) -> UploadPublic:
    """Store a file's bytes (the raw request body) for jobs of the caller's org to reference:
    `files: {"fw.bin": {"sha256": ..., "size": ...}}` in POST /api/jobs, with this answer's values.

    The body is streamed (never held in memory), hashed and refused unless it hashes to `sha256`.
    Content-addressed: the same bytes uploaded again are the same upload (answered at once, the
    body not read). Uploads are visible to the uploader's org only."""
    return await files.store_upload(storage, settings, user, sha256, request.stream())
