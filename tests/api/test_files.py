"""Uploads (POST /api/files) and the jobs that reference them, in-process on the real S3 store:
content-addressed per org, checked by SHA-256, bounded, and frozen into the spec as file_refs."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import asyncpg
import httpx
import pytest
from fastapi import FastAPI
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment

from boxrun.constants import DEFAULT_ORG
from boxrun.db import Q
from boxrun.schemas import MAX_SPEC_BYTES
from boxrun.settings import Settings
from tests.api.helpers import Box, assert_error
from tests.api.inprocess import ADMIN, app_settings, running_app

BINARY = bytes(range(256)) * 40 + b"\x00\xff"  # every byte value, NUL and invalid UTF-8 included


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def upload(api: httpx.AsyncClient, data: bytes, digest: str | None = None) -> httpx.Response:
    return await api.post(
        "/api/files",
        params={"sha256": digest or sha(data)},
        content=data,
        headers={"content-type": "application/octet-stream"},
    )


def stored(app: FastAPI, key: str) -> bytes | None:
    storage = app.state.storage
    size = storage.head(key)
    if size is None:
        return None
    body: bytes = storage.client.get_object(Bucket=storage.bucket, Key=key)["Body"].read()
    return body


async def test_an_upload_is_stored_by_org_and_sha256_and_is_idempotent(api: httpx.AsyncClient, app: FastAPI) -> None:
    resp = await upload(api, BINARY)
    assert resp.status_code == 201, resp.text
    assert resp.json() == {"sha256": sha(BINARY), "size": len(BINARY)}
    key = f"uploads/{DEFAULT_ORG}/{sha(BINARY)}"
    assert await asyncio.to_thread(stored, app, key) == BINARY
    again = await upload(api, BINARY)
    assert again.status_code == 201 and again.json() == resp.json()
    big = bytes(range(256)) * (9 << 12)  # 9 MiB: over the 1 MiB JSON body limit and the in-memory spool
    assert len(big) > app.state.settings.max_body_bytes
    resp = await upload(api, big)
    assert resp.status_code == 201, resp.text
    assert await asyncio.to_thread(stored, app, f"uploads/{DEFAULT_ORG}/{sha(big)}") == big
    empty = await upload(api, b"")
    assert empty.status_code == 201 and empty.json() == {"sha256": sha(b""), "size": 0}


async def test_an_upload_that_does_not_hash_to_its_sha256_is_422_and_not_stored(
    api: httpx.AsyncClient, app: FastAPI
) -> None:
    claimed = sha(b"something else")
    resp = await upload(api, BINARY, claimed)
    assert_error(resp, 422, "invalid_input", detail=f"not the {claimed} given", field="query.sha256")
    assert await asyncio.to_thread(stored, app, f"uploads/{DEFAULT_ORG}/{claimed}") is None
    for bad in ("AB" * 32, "ab" * 31, "ab" * 33, "zz" * 32, ""):
        assert_error(await upload(api, BINARY, bad or " "), 422, "invalid_input", field="query.sha256")
    missing = await api.post("/api/files", content=BINARY, headers={"content-type": "application/octet-stream"})
    assert_error(missing, 422, "invalid_input", field="query.sha256")


async def test_uploads_need_a_user_token(
    anon: httpx.AsyncClient, make_box: Callable[..., Awaitable[Box]], as_token: Callable[[str], httpx.AsyncClient]
) -> None:
    assert_error(await upload(anon, BINARY), 401, "unauthorized")
    box = await make_box("bench-1")
    assert_error(await upload(box.agent, BINARY), 401, "unauthorized")
    assert_error(await upload(as_token("nope"), BINARY), 401, "unauthorized")


async def test_a_job_references_uploads_beside_inline_text_and_freezes_their_keys(
    api: httpx.AsyncClient, db: asyncpg.Connection, make_box: Callable[..., Awaitable[Box]]
) -> None:
    await make_box("bench-1")
    assert (await upload(api, BINARY)).status_code == 201
    ref = {"sha256": sha(BINARY), "size": len(BINARY)}
    body = {"box": "bench-1", "script": "x", "files": {"cfg.txt": "text", "fw/fw.bin": ref}}
    resp = await api.post("/api/jobs", json=body)
    assert resp.status_code == 201, resp.text
    job_id = resp.json()["id"]
    spec = (await db.fetchrow(Q.get_job, DEFAULT_ORG, job_id))["spec"]
    assert spec["files"] == {"cfg.txt": "text"}
    assert spec["file_refs"] == {"fw/fw.bin": {"key": f"uploads/{DEFAULT_ORG}/{sha(BINARY)}", **ref}}

    rerun = await api.post(f"/api/jobs/{job_id}/rerun")
    assert rerun.status_code == 201, rerun.text
    again = (await db.fetchrow(Q.get_job, DEFAULT_ORG, rerun.json()["id"]))["spec"]
    assert again["files"] == spec["files"] and again["file_refs"] == spec["file_refs"]


async def test_a_reference_to_an_unknown_upload_or_with_a_wrong_size_is_422_naming_the_file(
    api: httpx.AsyncClient, app: FastAPI, make_box: Callable[..., Awaitable[Box]]
) -> None:
    await make_box("bench-1")
    assert (await upload(api, BINARY)).status_code == 201
    unknown = sha(b"never uploaded")
    resp = await api.post(
        "/api/jobs", json={"box": "bench-1", "script": "x", "files": {"fw.bin": {"sha256": unknown, "size": 1}}}
    )
    assert_error(
        resp, 422, "invalid_input", detail=f"file 'fw.bin': no upload with sha256 {unknown}", field="body.files.fw.bin"
    )
    wrong = {"sha256": sha(BINARY), "size": len(BINARY) + 1}
    resp = await api.post("/api/jobs", json={"box": "bench-1", "script": "x", "files": {"fw.bin": wrong}})
    assert_error(
        resp, 422, "invalid_input", detail=f"has {len(BINARY)} bytes, not {len(BINARY) + 1}", field="body.files.fw.bin"
    )

    # another org's upload does not exist for this one
    other = b"another org's bytes"
    storage = app.state.storage
    await asyncio.to_thread(
        storage.client.put_object, Bucket=storage.bucket, Key=f"uploads/other-org/{sha(other)}", Body=other
    )
    ref = {"sha256": sha(other), "size": len(other)}
    resp = await api.post("/api/jobs", json={"box": "bench-1", "script": "x", "files": {"o.bin": ref}})
    assert_error(resp, 422, "invalid_input", detail="no upload with sha256", field="body.files.o.bin")

    for bad_ref, field in (
        ({"sha256": "AB" * 32, "size": 1}, "body.files.x.bin"),
        ({"sha256": sha(BINARY), "size": -1}, "body.files.x.bin"),
        ({"sha256": sha(BINARY), "size": 2**63}, "body.files.x.bin"),
        ({"sha256": sha(BINARY)}, "body.files.x.bin"),
        ({"sha256": sha(BINARY), "size": 1, "key": "uploads/other-org/x"}, "body.files.x.bin"),
    ):
        resp = await api.post("/api/jobs", json={"box": "bench-1", "script": "x", "files": {"x.bin": bad_ref}})
        assert resp.status_code == 422, resp.text
        assert any(e["field"].startswith(field) for e in resp.json()["errors"]), resp.json()


async def test_inline_files_no_longer_count_toward_the_spec_limit(
    api: httpx.AsyncClient, make_box: Callable[..., Awaitable[Box]]
) -> None:
    await make_box("bench-1")
    big = "x" * (MAX_SPEC_BYTES + 1000)  # under the 1 MiB JSON body limit
    resp = await api.post("/api/jobs", json={"box": "bench-1", "script": "x", "files": {"big.txt": big}})
    assert resp.status_code == 201, resp.text
    over = await api.post("/api/jobs", json={"box": "bench-1", "script": "x", "env": {"V": big}})
    assert_error(over, 422, "invalid_input", detail="script + env is")


LIMIT = 4096


@pytest.fixture
async def small(settings: Settings, temporal_env: WorkflowEnvironment) -> AsyncIterator[httpx.AsyncClient]:
    """The API with max_job_files_bytes = 4 KiB."""
    async with running_app(app_settings(settings, temporal_env, max_job_files_bytes=LIMIT)) as app:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver", headers=ADMIN) as client:
            yield client
        for row in await app.state.pool.fetch("SELECT id FROM jobs"):  # leave no workflow behind
            try:
                await app.state.temporal.get_workflow_handle(str(row["id"])).terminate("test over")
            except RPCError:
                pass  # already closed


async def test_an_upload_over_the_limit_is_413_declared_or_streamed(small: httpx.AsyncClient) -> None:
    data = b"\x01" * (LIMIT + 1)
    assert_error(await upload(small, data), 413, "too_large", detail=f"at most {LIMIT} bytes")

    def chunks() -> Iterator[bytes]:
        yield data[:3000]
        yield data[3000:]

    async def streamed() -> AsyncIterator[bytes]:
        for chunk in chunks():
            yield chunk

    resp = await small.post(
        "/api/files",
        params={"sha256": sha(data)},
        content=streamed(),
        headers={"content-type": "application/octet-stream"},
    )
    assert_error(resp, 413, "too_large", detail=f"at most {LIMIT} bytes")
    assert (await upload(small, data[:LIMIT])).status_code == 201, "exactly the limit is fine"


async def test_a_job_whose_files_weigh_over_the_limit_is_422(small: httpx.AsyncClient) -> None:
    assert (await small.post("/api/boxes", json={"name": "bench-1"})).status_code == 201
    data = b"\x02" * 3000
    assert (await upload(small, data)).status_code == 201
    ref = {"sha256": sha(data), "size": len(data)}
    ok = await small.post("/api/jobs", json={"box": "bench-1", "script": "x", "files": {"a.bin": ref, "t": "y" * 1000}})
    assert ok.status_code == 201, ok.text
    files = {"a.bin": ref, "b.bin": ref}  # the same upload twice counts twice: the box gets two files
    resp = await small.post("/api/jobs", json={"box": "bench-1", "script": "x", "files": files})
    assert_error(resp, 422, "invalid_input", detail=f"6000 bytes, over the {LIMIT} byte limit", field="body.files")
    resp = await small.post(
        "/api/jobs", json={"box": "bench-1", "script": "x", "files": {"a.bin": ref, "t": "y" * 1100}}
    )
    assert_error(resp, 422, "invalid_input", detail="over the", field="body.files")
