"""Download links for a job's artifacts and its archived transcript: minted per request, short-lived
(download_url_ttl_s, 60 s by default) and audited, so a revoked token soon reaches nothing and
every download names who asked."""

from __future__ import annotations

import asyncio

import asyncpg

from boxrun.db import Q
from boxrun.errors import NotFound
from boxrun.services.audit import record
from boxrun.services.identity import User
from boxrun.services.jobs import load_job
from boxrun.services.outputs import check_artifacts_kept, check_logs_kept
from boxrun.storage import Storage


async def artifact_url(conn: asyncpg.Connection, storage: Storage, user: User, job_id: str, path: str) -> str:
    """A presigned GET for one recorded artifact, valid for storage.download_ttl_s; audited as
    `artifact.download`. NotFound: no such job, or no such artifact; Gone: the artifacts were deleted."""
    job = await load_job(conn, user, job_id)
    check_artifacts_kept(job)
    art: asyncpg.Record | None = None
    if "\x00" not in path:  # no stored path holds a NUL; Postgres refuses one in a query
        art = await conn.fetchrow(Q.get_artifact, user.org_id, job["id"], path)
    if art is None:
        raise NotFound(f"job {job['id']} has no artifact {path[:200]!r}")
    url: str = await asyncio.to_thread(
        storage.presign_get, art["key"], filename=path.rsplit("/", 1)[-1], expires_s=storage.download_ttl_s
    )
    await record(conn, user, "artifact.download", job_id=str(job["id"]), box=job["box"], path=path)
    return url


async def archive_url(conn: asyncpg.Connection, storage: Storage, user: User, job_id: str) -> str:
    """A presigned GET for the gzip JSON-lines transcript, valid for storage.download_ttl_s;
    audited as `transcript.download`. NotFound: no such job, or the transcript is not archived
    yet (it is, once the job has ended)."""
    job = await load_job(conn, user, job_id)
    check_logs_kept(job)
    if job["log_archive_key"] is None:
        raise NotFound(f"job {job['id']} has no archived transcript (yet)")
    url: str = await asyncio.to_thread(
        storage.presign_get,
        job["log_archive_key"],
        filename=f"{job['id']}.log.jsonl.gz",
        expires_s=storage.download_ttl_s,
    )
    await record(conn, user, "transcript.download", job_id=str(job["id"]), box=job["box"])
    return url
