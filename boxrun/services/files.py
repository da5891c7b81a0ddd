"""Job files in object storage: uploads (content-addressed per org) and the references a
submission makes to them.

An upload is stored under `uploads/<org>/<sha256>`: the org in the key keeps one org's uploads
out of another's reach (a submission resolves references in its own org only), and the hash makes
an upload idempotent (the same bytes twice are one object; a second upload of them is answered
without reading its body)."""

from __future__ import annotations

import asyncio
import hashlib
import re
import tempfile
from collections.abc import AsyncIterator, Callable
from typing import TypeVar

from botocore.exceptions import BotoCoreError, ClientError

from boxrun.errors import InvalidInput, TooLarge, Unavailable
from boxrun.schemas import SHA256_PATTERN, FrozenFileRef, JobCreate, UploadPublic
from boxrun.services.identity import User
from boxrun.settings import Settings
from boxrun.storage import Storage

T = TypeVar("T")

UPLOAD_PREFIX = "uploads"
IN_MEMORY_BYTES = 8 << 20  # an upload is spooled in memory up to this, then to a temporary file
HEAD_CONCURRENCY = 16
WRITE_BYTES = 1 << 20  # received chunks are gathered to this before a (threaded) write
_SHA256 = re.compile(SHA256_PATTERN)


def upload_key(org_id: str, sha256: str) -> str:
    return f"{UPLOAD_PREFIX}/{org_id}/{sha256}"


async def _storage_call(what: str, fn: Callable[..., T], *args: object) -> T:
    try:
        return await asyncio.to_thread(fn, *args)
    except (ClientError, BotoCoreError) as exc:
        raise Unavailable(f"object storage refused to {what}: {exc}") from exc


async def store_upload(
    storage: Storage, settings: Settings, user: User, sha256: str, body: AsyncIterator[bytes]
) -> UploadPublic:
    """Stream `body` into storage as the caller's org's upload `sha256`.

    The bytes are hashed while they are spooled (memory, then a temporary file: never the whole
    upload in memory), checked against `sha256` (InvalidInput on a mismatch, nothing stored) and
    sent with that checksum, so the store checks them once more. Over max_job_files_bytes:
    TooLarge (the request guard usually refuses earlier, from Content-Length)."""
    if not _SHA256.match(sha256):
        raise InvalidInput("sha256 must be 64 lower-case hex digits", field="query.sha256")
    key = upload_key(user.org_id, sha256)
    size: int | None = await _storage_call("look up an upload", storage.head, key)
    if size is not None:
        return UploadPublic(sha256=sha256, size=size)  # stored before: the body is not read

    limit = settings.max_job_files_bytes
    digest = hashlib.sha256()
    received = 0
    pending = bytearray()
    with tempfile.SpooledTemporaryFile(max_size=IN_MEMORY_BYTES) as spool:
        async for chunk in body:
            received += len(chunk)
            if received > limit:
                raise TooLarge(f"an upload may hold at most {limit} bytes")
            digest.update(chunk)
            pending += chunk
            if len(pending) >= WRITE_BYTES:
                await asyncio.to_thread(spool.write, bytes(pending))
                pending.clear()
        await asyncio.to_thread(spool.write, bytes(pending))
        if digest.hexdigest() != sha256:
            raise InvalidInput(
                f"the body's sha256 is {digest.hexdigest()}, not the {sha256} given: nothing was stored",
                field="query.sha256",
            )
        spool.seek(0)
        await _storage_call("store the upload", storage.put, key, spool, sha256)
    return UploadPublic(sha256=sha256, size=received)


async def resolve_file_refs(
    storage: Storage, settings: Settings, user: User, body: JobCreate
) -> dict[str, FrozenFileRef]:
    """The submission's uploaded files as the frozen spec keeps them, each checked to be in
    storage with the size given. InvalidInput (naming the file) for an upload that is not there
    or has another size, and for files over max_job_files_bytes in all."""
    total = body.files_bytes()
    if total > settings.max_job_files_bytes:
        raise InvalidInput(
            f"the job's files weigh {total} bytes, over the {settings.max_job_files_bytes} byte limit",
            field="body.files",
        )
    refs = body.file_references()
    gate = asyncio.Semaphore(HEAD_CONCURRENCY)

    async def check(path: str) -> FrozenFileRef:
        ref = refs[path]
        key = upload_key(user.org_id, ref.sha256)
        async with gate:
            size: int | None = await _storage_call("look up an upload", storage.head, key)
        if size is None:
            raise InvalidInput(
                f"file {path[:200]!r}: no upload with sha256 {ref.sha256} (POST /api/files first)",
                field=f"body.files.{path}",
            )
        if size != ref.size:
            raise InvalidInput(
                f"file {path[:200]!r}: the upload {ref.sha256} has {size} bytes, not {ref.size}",
                field=f"body.files.{path}",
            )
        return FrozenFileRef(key=key, size=size, sha256=ref.sha256)

    paths = sorted(refs)
    frozen = await asyncio.gather(*(check(p) for p in paths))
    return dict(zip(paths, frozen, strict=True))
