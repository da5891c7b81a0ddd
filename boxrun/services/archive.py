"""A job's transcript as one gzip JSON-lines object in storage (written at the end of the job,
and refreshed when its box delivers a late tail)."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import tempfile
from collections.abc import Callable

import asyncpg

from boxrun import logstore
from boxrun.constants import LOG_ARCHIVE_KEY
from boxrun.db import Q
from boxrun.storage import Storage


async def write_archive(
    pool: asyncpg.Pool, storage: Storage, job_id: str, *, on_progress: Callable[[int], None] | None = None
) -> tuple[str | None, int, int]:
    """Idempotent (same key, same bytes). Returns (key or None if no line, lines, size)."""
    key = LOG_ARCHIVE_KEY.format(job_id=job_id)
    with tempfile.SpooledTemporaryFile(max_size=8 << 20) as raw:
        lines = 0
        with gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz:
            async with pool.acquire() as conn:
                async for line in logstore.read_all(conn, job_id):
                    gz.write(json.dumps(line.public(), ensure_ascii=False).encode() + b"\n")
                    lines += 1
                    if on_progress is not None and lines % 20_000 == 0:
                        on_progress(lines)
        if lines == 0:
            return None, 0, 0
        size = raw.tell()
        raw.seek(0)
        digest = hashlib.sha256()
        for chunk in iter(lambda: raw.read(1 << 20), b""):
            digest.update(chunk)
        raw.seek(0)
        await asyncio.to_thread(storage.put, key, raw, digest.hexdigest())
    async with pool.acquire() as conn:
        await conn.execute(Q.set_log_archive, job_id, key, size, digest.hexdigest())
    return key, lines, size
