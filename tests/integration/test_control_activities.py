"""Control activities on real PostgreSQL and the S3 API over HTTP (SeaweedFS)."""

import hashlib

import httpx
import pytest
from temporalio.testing import ActivityEnvironment

from boxrun.activities.control import ControlActivities
from boxrun.constants import JobState, artifact_key
from boxrun.db import Q, create_pool
from boxrun.messages import AcquireInput, ArtifactEntry, FinishInput, PresignInput, TransitionInput, VerifyInput
from boxrun.storage import Storage
from tests.integration.helpers import add_box, add_job, state_of


@pytest.fixture
async def control(settings):
    pool = await create_pool(settings.database_url, max_size=4)
    storage = Storage(settings)
    storage.ensure_bucket()
    yield ControlActivities(pool, storage)
    await pool.close()


def entry(path: str, data: bytes) -> ArtifactEntry:
    return ArtifactEntry(path=path, size=len(data), sha256=hashlib.sha256(data).hexdigest())


async def test_artifacts_recorded_only_after_verification(control, conn):
    await add_box(conn, "b1")
    job = await add_job(conn, box="b1")
    good, bad = b"exact bytes\n" * 100, b"what the box hashed"
    manifest = [entry("good.txt", good), entry("dir/bad.bin", bad)]
    env = ActivityEnvironment()
    presigned = await env.run(control.presign_uploads, PresignInput(job_id=job, artifacts=manifest))
    assert [t.key for t in presigned.targets] == [artifact_key(job, "good.txt"), artifact_key(job, "dir/bad.bin")]
    async with httpx.AsyncClient() as http:
        assert (await http.put(presigned.targets[0].url, content=good, headers=presigned.targets[0].headers)).is_success
        # the second upload is corrupted in transit: the store refuses bytes that do not match the signed checksum
        corrupted = await http.put(
            presigned.targets[1].url, content=b"X" * len(bad), headers=presigned.targets[1].headers
        )
        assert corrupted.status_code == 400 and "<Code>BadDigest</Code>" in corrupted.text
    result = await env.run(control.verify_artifacts, VerifyInput(job_id=job, artifacts=manifest))
    assert result.recorded == 1
    assert len(result.mismatched) == 1 and result.mismatched[0].startswith("dir/bad.bin")
    assert "object missing" in result.mismatched[0]
    rows = await conn.fetch(Q.list_artifacts, job)
    assert [(r["path"], r["size"], r["sha256"]) for r in rows] == [("good.txt", len(good), manifest[0].sha256)]


async def test_missing_object_is_not_recorded(control, conn):
    await add_box(conn, "b1")
    job = await add_job(conn, box="b1")
    result = await ActivityEnvironment().run(
        control.verify_artifacts, VerifyInput(job_id=job, artifacts=[entry("never-uploaded", b"x")])
    )
    assert result.recorded == 0 and "object missing" in result.mismatched[0]


async def test_finish_releases_the_lease_and_keeps_terminal_states(control, conn):
    await add_box(conn, "b1")
    job, waiter = await add_job(conn, box="b1"), await add_job(conn, box="b1")
    env = ActivityEnvironment()
    assert (await env.run(control.acquire_box, AcquireInput(job_id=job))).box == "b1"
    await env.run(control.acquire_box, AcquireInput(job_id=waiter))
    await env.run(control.record_transition, TransitionInput(job_id=job, to_state=JobState.RUNNING))
    done = await env.run(
        control.finish_job, FinishInput(job_id=job, to_state=JobState.FAILED, exit_code=3, error="exit code 3")
    )
    assert done.released and done.state == JobState.FAILED and done.wake_job_ids == [waiter]
    again = await env.run(control.finish_job, FinishInput(job_id=job, to_state=JobState.CANCELLED))
    assert again.state == JobState.FAILED and not again.released, "terminal states are absorbing"
    assert await state_of(conn, job) == "failed"
