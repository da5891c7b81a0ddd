"""Control activities on real PostgreSQL and the S3 API over HTTP (SeaweedFS)."""

import asyncio
import dataclasses
import hashlib
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import httpx
import pytest
from temporalio.activity import _CompleteAsyncError as CompleteAsyncError
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from boxrun.activities.control import ControlActivities
from boxrun.activities.dispatch import DispatchActivities
from boxrun.constants import JobState, artifact_key
from boxrun.db import Q, create_pool
from boxrun.messages import (
    AcquireInput,
    ArtifactEntry,
    FinishInput,
    RunJobInput,
    TransitionInput,
    VerifyInput,
    WithdrawInput,
)
from boxrun.storage import Storage
from tests.conftest import wait_for
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


async def add_manifest(conn, job: str, entries: list[ArtifactEntry], status: str = "pending", reason=None) -> None:
    n = len(entries)
    await conn.execute(
        Q.insert_manifest,
        job,
        [e.path for e in entries],
        [e.size for e in entries],
        [e.sha256 for e in entries],
        [status] * n,
        [reason] * n,
    )


async def test_artifacts_recorded_only_after_verification(control, conn):
    await add_box(conn, "b1")
    job = await add_job(conn, box="b1")
    good, bad = b"exact bytes\n" * 100, b"what the box hashed"
    manifest = [entry("good.txt", good), entry("dir/bad.bin", bad)]
    await add_manifest(conn, job, manifest)
    await add_manifest(conn, job, [entry("bad\\nname", b"x")], "refused", "control characters")
    targets = [control.storage.presign_put(artifact_key(job, e.path), e.size, e.sha256) for e in manifest]
    async with httpx.AsyncClient() as http:
        assert (await http.put(targets[0][0], content=good, headers=targets[0][1])).is_success
        # the second upload is corrupted in transit: the store refuses bytes that do not match the signed checksum
        corrupted = await http.put(targets[1][0], content=b"X" * len(bad), headers=targets[1][1])
        assert corrupted.status_code == 400 and "<Code>BadDigest</Code>" in corrupted.text
    result = await ActivityEnvironment().run(control.verify_artifacts, VerifyInput(job_id=job))
    assert result.recorded == 1 and result.failed_total == 2
    assert len(result.mismatched) == 1 and result.mismatched[0].startswith("dir/bad.bin")
    assert "object missing" in result.mismatched[0]
    assert result.refused == ["bad\\nname (control characters)"]
    rows = await conn.fetch(Q.list_artifacts, job)
    assert [(r["path"], r["size"], r["sha256"]) for r in rows] == [("good.txt", len(good), manifest[0].sha256)]


async def test_missing_object_is_not_recorded(control, conn):
    await add_box(conn, "b1")
    job = await add_job(conn, box="b1")
    await add_manifest(conn, job, [entry("never-uploaded", b"x")])
    result = await ActivityEnvironment().run(control.verify_artifacts, VerifyInput(job_id=job))
    assert result.recorded == 0 and "object missing" in result.mismatched[0]


async def test_run_job_fails_past_its_claim_deadline_and_a_late_claim_gets_nothing(settings, conn):
    box_id = await add_box(conn, "b1")
    job = await add_job(conn, box="b1")
    pool = await create_pool(settings.database_url, max_size=2)
    try:
        dispatch = DispatchActivities(pool, claim_timeout_s=0.5)
        with pytest.raises(ApplicationError, match=r"the box did not claim the job within 0.5 s \(agent gone\?\)"):
            await ActivityEnvironment().run(dispatch.run_job, RunJobInput(job_id=job, box="b1"))
        assert await conn.fetchval(Q.claim_dispatch, job, box_id) is None, "an expired offer cannot be claimed"
    finally:
        await pool.close()


async def test_run_job_hands_over_to_the_api_once_claimed(settings, conn):
    box_id = await add_box(conn, "b1")
    job = await add_job(conn, box="b1")
    pool = await create_pool(settings.database_url, max_size=2)
    try:
        dispatch = DispatchActivities(pool, claim_timeout_s=30)
        heartbeats: list = []
        env = ActivityEnvironment()
        env.on_heartbeat = lambda *d: heartbeats.append(d)
        running = asyncio.create_task(env.run(dispatch.run_job, RunJobInput(job_id=job, box="b1")))
        await wait_for(lambda: conn.fetchval("SELECT count(*) FROM dispatches WHERE job_id = $1", job), what="offer")
        assert await conn.fetchval(Q.claim_dispatch, job, box_id) is not None
        with pytest.raises(CompleteAsyncError):
            await asyncio.wait_for(running, 10)
        assert heartbeats, "run_job heartbeats while it waits for the claim"
    finally:
        await pool.close()


def scheduled_at(when: datetime) -> ActivityEnvironment:
    """An activity environment whose activity (a task token of its own) was scheduled at `when`
    (run_job's offer keeps it)."""
    env = ActivityEnvironment()
    env.info = dataclasses.replace(
        env.info, scheduled_time=when, current_attempt_scheduled_time=when, task_token=uuid.uuid4().bytes
    )
    return env


async def test_an_offer_written_twice_by_the_same_run_job_stands(conn):
    """run_job's offer retried after a lost reply (same task token, same schedule): the offer is
    kept as it was, not refused."""
    box_id = await add_box(conn, "b1")
    job = await add_job(conn, box="b1")
    when = datetime.now(UTC)
    first = await conn.fetchrow(Q.offer_dispatch, job, box_id, b"token-a", 30, None, when)
    again = await conn.fetchrow(Q.offer_dispatch, job, box_id, b"token-a", 30, None, when)
    assert again is not None and again["claim_deadline"] == first["claim_deadline"]
    assert await conn.fetchval(Q.claim_dispatch, job, box_id) == b"token-a"
    assert await conn.fetchrow(Q.offer_dispatch, job, box_id, b"token-a", 30, None, when) is not None, "claimed too"


async def test_a_withdrawn_unclaimed_offer_is_offered_again_and_a_stale_run_job_cannot_take_it_back(
    control, settings, conn
):
    """run_job lost with its control worker before the claim: withdraw_offer closes the offer (a
    late claim gets nothing), a new run_job offers the job again; the old one, if its worker was
    only paused, cannot reopen it; once claimed, the offer is never withdrawn nor re-offered."""
    box_id = await add_box(conn, "b1")
    job = await add_job(conn, box="b1")
    withdraw = WithdrawInput(job_id=job)
    assert (await ActivityEnvironment().run(control.withdraw_offer, withdraw)).unclaimed, "never offered at all"
    pool = await create_pool(settings.database_url, max_size=2)
    try:
        dispatch = DispatchActivities(pool, claim_timeout_s=30)
        first, second = datetime.now(UTC), datetime.now(UTC) + timedelta(seconds=20)
        lost = asyncio.create_task(scheduled_at(first).run(dispatch.run_job, RunJobInput(job_id=job, box="b1")))
        await wait_for(lambda: conn.fetchval("SELECT count(*) FROM dispatches WHERE job_id = $1", job), what="offer")
        lost.cancel()  # its worker died (the cancel's own expiry is undone below, as if it never ran)
        with pytest.raises(asyncio.CancelledError):
            await lost
        await conn.execute("UPDATE dispatches SET expired_at = NULL WHERE job_id = $1", job)
        assert (await ActivityEnvironment().run(control.withdraw_offer, withdraw)).unclaimed
        assert await conn.fetchval(Q.claim_dispatch, job, box_id) is None, "a withdrawn offer cannot be claimed"

        again = asyncio.create_task(scheduled_at(second).run(dispatch.run_job, RunJobInput(job_id=job, box="b1")))
        await wait_for(
            lambda: conn.fetchval("SELECT expired_at IS NULL FROM dispatches WHERE job_id = $1", job), what="re-offer"
        )
        token = await conn.fetchval("SELECT task_token FROM dispatches WHERE job_id = $1", job)
        # the first run_job's worker wakes up and offers late: refused, the new offer stands
        with pytest.raises(ApplicationError, match="no longer open to this offer"):
            await scheduled_at(first).run(dispatch.run_job, RunJobInput(job_id=job, box="b1"))
        assert await conn.fetchval("SELECT task_token FROM dispatches WHERE job_id = $1", job) == token
        assert await conn.fetchval(Q.claim_dispatch, job, box_id) == token
        with pytest.raises(CompleteAsyncError):
            await asyncio.wait_for(again, 10)
        assert not (await ActivityEnvironment().run(control.withdraw_offer, withdraw)).unclaimed, "claimed"
        assert await conn.fetchval("SELECT expired_at FROM dispatches WHERE job_id = $1", job) is None
        # a newer run_job (scheduled after a late offer was claimed) adopts the running job: the
        # API's next relay and the result go to the live activity's token
        later = datetime.now(UTC) + timedelta(seconds=60)
        with pytest.raises(CompleteAsyncError):
            await scheduled_at(later).run(dispatch.run_job, RunJobInput(job_id=job, box="b1"))
        assert await conn.fetchval("SELECT task_token FROM dispatches WHERE job_id = $1", job) != token
        await conn.execute("UPDATE dispatches SET result_at = clock_timestamp() WHERE job_id = $1", job)
        with pytest.raises(ApplicationError, match="no longer open to this offer"):
            await scheduled_at(later + timedelta(seconds=1)).run(dispatch.run_job, RunJobInput(job_id=job, box="b1"))
    finally:
        await pool.close()


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


async def test_run_job_redoes_a_step_postgres_rolled_back(settings):
    """run_job has one attempt: a deadlock or serialization failure Postgres reports on one of its
    transactions (rolled back whole) is redone, never the job's failure."""
    pool = await create_pool(settings.database_url, max_size=2)
    try:
        dispatch = DispatchActivities(pool, claim_timeout_s=30)
        tries: list[str] = []

        async def step(conn) -> int:
            tries.append("try")
            if len(tries) == 1:
                raise asyncpg.DeadlockDetectedError("deadlock detected")
            return await conn.fetchval("SELECT 7")

        async def in_activity() -> int:
            return await dispatch._db(step)

        assert await ActivityEnvironment().run(in_activity) == 7
        assert tries == ["try", "try"]
    finally:
        await pool.close()
