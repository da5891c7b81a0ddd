"""DELETE /api/jobs/{id}/outputs and retention, in-process on the real Postgres and S3: every read
of what went answers 410 with who or what deleted it and when; the objects and rows are gone; a
crash between marking and deleting is finished by the retention activity; retention deletes by
age, never a running job, never an audit row (docs/retention.md)."""

from __future__ import annotations

import asyncio
import hashlib
import io
import re
import uuid
from typing import Any

import asyncpg
import httpx
from fastapi import FastAPI
from temporalio.testing import ActivityEnvironment

from boxrun import logstore
from boxrun.activities.retention import RetentionActivities, RetentionInput, RetentionResult
from boxrun.constants import DEFAULT_ORG, LOG_ARCHIVE_KEY, JobState, artifact_key
from boxrun.db import Q
from boxrun.logbatch import Batch
from boxrun.schemas import JobCreate
from boxrun.services import outputs
from boxrun.services.archive import write_archive
from boxrun.services.identity import Role
from boxrun.services.submission import spec_hash
from boxrun.storage import Storage
from boxrun.transitions import transition
from tests.api.conftest import _client
from tests.api.helpers import assert_error
from tests.api.people_fixtures import add_org, add_user
from tests.api.test_access import ws_call
from tests.integration.helpers import add_job

ARTIFACTS = {"out/a.txt": b"artifact a\n", "out/deep/b.bin": bytes(range(256)) * 4}
ISO = re.compile(r" at \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


async def job_with_outputs(
    app: FastAPI, db: asyncpg.Connection, *, owner: str = "admin", org: str = DEFAULT_ORG, end: bool = True
) -> str:
    """A job with three transcript lines, its archive and two artifacts in storage (as the workflow
    leaves them), ended (cancelled) unless `end` is False."""
    job_id = str(uuid.uuid4())
    spec = JobCreate(box="nowhere", script="echo hi").frozen_spec()
    await db.execute(
        Q.insert_job, job_id, org, owner, "nowhere", None, [], spec, spec_hash(spec), 60, False, 0, None, 10, None
    )
    await db.execute(Q.insert_first_event, org, job_id, {"owner": owner})
    await logstore.append(db, job_id, Batch(1, [(3, "stdout", 1_800_000_000.0)], b"one\ntwo\nthree\n"))
    storage: Storage = app.state.storage
    for path, data in ARTIFACTS.items():
        digest = hashlib.sha256(data).hexdigest()
        await asyncio.to_thread(storage.put, artifact_key(job_id, path), io.BytesIO(data), digest)
        await db.execute(Q.insert_artifact, job_id, org, path, artifact_key(job_id, path), len(data), digest)
        await db.execute(Q.insert_manifest, job_id, [path], [len(data)], [digest], ["uploaded"], [None])
    if end:
        await transition(db, job_id, JobState.CANCELLED, error="ended for the outputs tests")
        key, _, _ = await write_archive(app.state.pool, storage, job_id)
        assert key == LOG_ARCHIVE_KEY.format(job_id=job_id)
    return job_id


def keys(job_id: str) -> list[str]:
    return [LOG_ARCHIVE_KEY.format(job_id=job_id), *(artifact_key(job_id, p) for p in ARTIFACTS)]


async def objects(app: FastAPI, job_id: str) -> dict[str, int | None]:
    storage: Storage = app.state.storage
    return {k: await asyncio.to_thread(storage.head, k) for k in keys(job_id)}


async def rows(db: asyncpg.Connection, job_id: str) -> dict[str, int]:
    out = {}
    for table in ("log_chunks", "artifacts", "artifact_manifest"):
        out[table] = await db.fetchval(f"SELECT count(*) FROM {table} WHERE job_id = $1", uuid.UUID(job_id))
    return out


async def reads(app: FastAPI, api: httpx.AsyncClient, job_id: str, *, follow: bool = True) -> dict[str, httpx.Response]:
    """Every read of a job's outputs (the WebSocket apart; the SSE follow only with `follow`:
    it ends by itself only for an ended job)."""
    base = f"/api/jobs/{job_id}"
    out = {
        "logs": await api.get(f"{base}/logs"),
        "tail": await api.get(f"{base}/logs", params={"tail": 5}),
        "logs.txt": await api.get(f"{base}/logs.txt"),
        "archive": await api.get(f"{base}/logs/archive"),
        "artifacts": await api.get(f"{base}/artifacts"),
        "download": await api.get(f"{base}/artifacts/out/a.txt"),
    }
    if follow:
        out["stream"] = await api.get(f"{base}/logs/stream")
    return out


LOG_READS = ("logs", "tail", "logs.txt", "stream", "archive")
ARTIFACT_READS = ("artifacts", "download")


async def test_delete_outputs_then_every_read_is_410_and_nothing_is_left(
    app: FastAPI, api: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    job_id = await job_with_outputs(app, db)
    before = await reads(app, api, job_id)
    assert {k: r.status_code for k, r in before.items()} == {
        "logs": 200,
        "tail": 200,
        "logs.txt": 200,
        "stream": 200,
        "archive": 307,
        "artifacts": 200,
        "download": 307,
    }
    assert all(size is not None for size in (await objects(app, job_id)).values())
    job = (await api.get(f"/api/jobs/{job_id}")).json()
    assert job["logs_deleted_at"] is None and job["outputs_deleted_at"] is None and job["log_archive"] is not None

    resp = await api.delete(f"/api/jobs/{job_id}/outputs")
    assert resp.status_code == 204 and resp.content == b"", resp.text

    after = await reads(app, api, job_id)
    for name, answer in after.items():
        body = assert_error(answer, 410, "gone", detail=f"the outputs of job {job_id} were deleted by admin at ")
        assert ISO.search(body["detail"]), (name, body)
    ws = await ws_call(app, f"/api/jobs/{job_id}/logs/ws", "test-admin-token")
    assert ws.accepted and ws.close_code == 4410 and "deleted by admin" in ws.close_reason, ws
    assert ws.messages == []

    job = (await api.get(f"/api/jobs/{job_id}")).json()
    assert job["logs_deleted_at"] and job["artifacts_deleted_at"]
    assert job["outputs_deleted_at"] == max(job["logs_deleted_at"], job["artifacts_deleted_at"])
    assert job["log_archive"] is None and job["state"] == "cancelled", "the job row stays"
    assert (await api.get(f"/api/jobs/{job_id}/events")).json()["data"], "its events stay"
    assert await objects(app, job_id) == dict.fromkeys(keys(job_id)), "the objects are gone"
    assert await rows(db, job_id) == {"log_chunks": 0, "artifacts": 0, "artifact_manifest": 0}
    assert await db.fetchval("SELECT outputs_purge_pending FROM jobs WHERE id = $1", uuid.UUID(job_id)) is False

    audit = await api.get("/api/audit", params={"action": "job.outputs_delete"})
    assert [(r["actor"], r["job_id"], r["detail"]) for r in audit.json()["data"]] == [
        ("admin", job_id, {"transcript": True, "artifacts": True})
    ]
    # again: nothing left, nothing done, no second audit row
    assert (await api.delete(f"/api/jobs/{job_id}/outputs")).status_code == 204
    audit = await api.get("/api/audit", params={"action": "job.outputs_delete"})
    assert len(audit.json()["data"]) == 1
    usage = (await api.get("/api/org/usage")).json()
    assert usage["artifact_bytes"] == 0 and usage["log_archive_bytes"] == 0 and usage["transcript_bytes"] == 0


async def test_the_owner_or_an_admin_deletes_others_get_403_another_org_404(
    app: FastAPI, api: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    owner = await add_user(db, "op-owner", DEFAULT_ORG, Role.OPERATOR)
    other = await add_user(db, "op-other", DEFAULT_ORG, Role.OPERATOR)
    viewer = await add_user(db, "a-viewer", DEFAULT_ORG, Role.VIEWER)
    await add_org(db, "beta")
    outsider = await add_user(db, "beta-admin", "beta", Role.ADMIN)
    job_id = await job_with_outputs(app, db, owner=owner.name)
    second = await job_with_outputs(app, db, owner=owner.name)
    url = f"/api/jobs/{job_id}/outputs"
    async with (
        _client(app, other.token) as as_other,
        _client(app, viewer.token) as as_viewer,
        _client(app, outsider.token) as as_outsider,
        _client(app, owner.token) as as_owner,
    ):
        assert_error(await as_other.delete(url), 403, "forbidden", detail="belongs to op-owner")
        assert_error(await as_viewer.delete(url), 403, "forbidden", detail="needs the operator role")
        assert_error(await as_outsider.delete(url), 404, "not_found")
        for bad in ("nope", "%00", "0" * 5000, str(uuid.uuid4())):
            assert_error(await as_owner.delete(f"/api/jobs/{bad}/outputs"), 404, "not_found")
        assert (await as_owner.get(f"/api/jobs/{job_id}/logs")).status_code == 200, "nothing went on a refusal"
        assert (await as_owner.delete(url)).status_code == 204
        gone = await as_owner.get(f"/api/jobs/{job_id}/artifacts")
        assert_error(gone, 410, "gone", detail="deleted by op-owner")
    # an org admin deletes anyone's
    assert (await api.delete(f"/api/jobs/{second}/outputs")).status_code == 204
    assert_error(await api.get(f"/api/jobs/{second}/logs"), 410, "gone", detail="deleted by admin")


async def test_a_job_not_ended_is_409_and_keeps_everything(
    app: FastAPI, api: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    queued = await add_job(db, group="g")
    assert_error(await api.delete(f"/api/jobs/{queued}/outputs"), 409, "conflict", detail="is still queued")
    running = await job_with_outputs(app, db, end=False)
    await db.execute("UPDATE jobs SET state = 'running' WHERE id = $1", uuid.UUID(running))
    assert_error(await api.delete(f"/api/jobs/{running}/outputs"), 409, "conflict", detail="is still running")
    assert await rows(db, running) == {"log_chunks": 1, "artifacts": 2, "artifact_manifest": 2}
    assert (await api.get(f"/api/jobs/{running}/artifacts")).status_code == 200


async def run_retention(app: FastAPI, **inp: Any) -> RetentionResult:
    acts = RetentionActivities(app.state.pool, app.state.storage)
    beats: list[Any] = []
    env = ActivityEnvironment()
    env.on_heartbeat = lambda *details: beats.append(details)
    result: RetentionResult = await env.run(acts.apply_retention, RetentionInput(**inp))
    assert beats, "the activity heartbeats"
    return result


async def test_a_crash_between_mark_and_delete_is_finished_by_the_retention_activity(
    app: FastAPI, api: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    job_id = await job_with_outputs(app, db)
    why = f"the outputs of job {job_id} were deleted by admin"
    async with db.transaction():  # step 1 committed, then the process died
        await outputs.mark(db, job_id, logs=True, artifacts=True, logs_why=why, artifacts_why=why)
    assert_error(await api.get(f"/api/jobs/{job_id}/logs"), 410, "gone", detail=why)
    assert all(size is not None for size in (await objects(app, job_id)).values()), "objects still there"
    result = await run_retention(app)
    assert result.resumed == 1 and result.by_org == {}
    assert await objects(app, job_id) == dict.fromkeys(keys(job_id))
    assert await rows(db, job_id) == {"log_chunks": 0, "artifacts": 0, "artifact_manifest": 0}
    assert await db.fetchval("SELECT outputs_purge_pending FROM jobs WHERE id = $1", uuid.UUID(job_id)) is False
    assert (await run_retention(app)).resumed == 0, "nothing left to finish"
    # a DELETE after such a crash finishes it too (and writes no second audit row: the mark was made)
    second = await job_with_outputs(app, db)
    async with db.transaction():
        await outputs.mark(db, second, logs=True, artifacts=True, logs_why=why, artifacts_why=why)
    assert (await api.delete(f"/api/jobs/{second}/outputs")).status_code == 204
    assert await objects(app, second) == dict.fromkeys(keys(second))


async def age(db: asyncpg.Connection, job_id: str, days: int) -> None:
    """Move the job's end `days` into the past."""
    await db.execute(
        "UPDATE jobs SET finished_at = clock_timestamp() - make_interval(days => $2) WHERE id = $1",
        uuid.UUID(job_id),
        days,
    )


async def test_retention_deletes_by_age_audits_counts_and_keeps_audit_rows(
    app: FastAPI, api: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    resp = await api.put("/api/org/retention", json={"logs_days": 30, "artifacts_days": 90, "jobs_days": 365})
    assert resp.status_code == 200, resp.text
    fresh = await job_with_outputs(app, db)
    old_logs = await job_with_outputs(app, db)  # 40 days: its transcript goes
    old_all = await job_with_outputs(app, db)  # 100 days: transcript and artifacts go
    ancient = await job_with_outputs(app, db)  # 400 days: the job row goes too
    running = await job_with_outputs(app, db, end=False)  # never touched, whatever its dates say
    for job_id, days in ((old_logs, 40), (old_all, 100), (ancient, 400), (running, 400)):
        await age(db, job_id, days)
    await db.execute("UPDATE jobs SET state = 'running' WHERE id = $1", uuid.UUID(running))
    rerun = await add_job(db, group="g")  # a rerun of the ancient job does not block its delete
    await db.execute("UPDATE jobs SET rerun_of = $2 WHERE id = $1", uuid.UUID(rerun), uuid.UUID(ancient))
    audit_of_ancient = await db.fetchval("SELECT count(*) FROM audit_log WHERE job_id = $1", uuid.UUID(ancient))
    assert audit_of_ancient >= 2

    result = await run_retention(app)
    counts = result.by_org[DEFAULT_ORG]
    assert (counts.transcripts, counts.artifact_jobs, counts.jobs_deleted) == (3, 2, 1), counts
    assert counts.artifacts == 4 and counts.artifact_bytes == 2 * sum(len(d) for d in ARTIFACTS.values())
    assert counts.transcript_bytes == 3 * len(b"one\ntwo\nthree\n") and counts.archive_bytes > 0

    for job_id in (fresh, running):
        kept = await reads(app, api, job_id, follow=job_id != running)
        assert {k: r.status_code for k, r in kept.items() if r.status_code not in (200, 307)} in (
            {},
            {"archive": 404},  # the running job has no archive yet
        ), job_id
        stored = await objects(app, job_id)
        assert all(stored[artifact_key(job_id, p)] is not None for p in ARTIFACTS), job_id
    logs_gone = await reads(app, api, old_logs)
    for name in LOG_READS:
        assert_error(
            logs_gone[name],
            410,
            "gone",
            detail=f"the transcript of job {old_logs} expired under the org's retention (logs_days=30) at ",
        )
    assert logs_gone["artifacts"].status_code == 200 and logs_gone["download"].status_code == 307
    job = (await api.get(f"/api/jobs/{old_logs}")).json()
    assert job["logs_deleted_at"] and job["artifacts_deleted_at"] is None and job["outputs_deleted_at"] is None
    all_gone = await reads(app, api, old_all)
    for name in ARTIFACT_READS:
        assert_error(all_gone[name], 410, "gone", detail="expired under the org's retention (artifacts_days=90)")
    assert (await api.get(f"/api/jobs/{old_all}")).json()["outputs_deleted_at"] is not None
    assert await objects(app, old_all) == dict.fromkeys(keys(old_all))

    assert_error(await api.get(f"/api/jobs/{ancient}"), 404, "not_found")
    assert await objects(app, ancient) == dict.fromkeys(keys(ancient))
    assert await db.fetchval("SELECT count(*) FROM job_events WHERE job_id = $1", uuid.UUID(ancient)) == 0
    kept = await db.fetchval("SELECT count(*) FROM audit_log WHERE job_id = $1", uuid.UUID(ancient))
    assert kept == audit_of_ancient, "retention never deletes audit rows"
    assert (await api.get(f"/api/jobs/{rerun}")).json()["rerun_of"] is None

    audit = (await api.get("/api/audit", params={"action": "retention.apply"})).json()["data"]
    assert len(audit) == 1 and audit[0]["actor"] == "system"
    detail = audit[0]["detail"]
    assert detail["policy"] == {"logs_days": 30, "artifacts_days": 90, "jobs_days": 365}
    assert (detail["transcripts"], detail["artifact_jobs"], detail["jobs_deleted"]) == (3, 2, 1)
    assert detail["artifact_bytes"] == counts.artifact_bytes

    again = await run_retention(app)
    assert again.by_org == {} and again.orgs == 1, "nothing more to do: no second audit row"
    assert len((await api.get("/api/audit", params={"action": "retention.apply"})).json()["data"]) == 1


async def test_retention_leaves_orgs_without_a_policy_and_goes_in_bounded_batches(
    app: FastAPI, api: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    await add_org(db, "keeper")  # no policy: keeps forever
    theirs = await job_with_outputs(app, db, owner="k", org="keeper")
    await age(db, theirs, 4000)
    ours = [await job_with_outputs(app, db) for _ in range(3)]
    for job_id in ours:
        await age(db, job_id, 10)
    assert (await api.put("/api/org/retention", json={"logs_days": 1})).status_code == 200
    first = await run_retention(app, max_jobs=2)
    assert first.by_org[DEFAULT_ORG].transcripts == 2 and first.by_org[DEFAULT_ORG].more
    second = await run_retention(app, max_jobs=2)
    assert second.by_org[DEFAULT_ORG].transcripts == 1 and not second.by_org[DEFAULT_ORG].more
    assert all(v is not None for v in (await objects(app, theirs)).values())
    assert await rows(db, theirs) == {"log_chunks": 1, "artifacts": 2, "artifact_manifest": 2}


async def test_an_archive_that_lands_after_the_delete_goes_on_the_next_retention_run(
    app: FastAPI, api: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    job_id = await job_with_outputs(app, db)
    archive = LOG_ARCHIVE_KEY.format(job_id=job_id)
    assert (await api.delete(f"/api/jobs/{job_id}/outputs")).status_code == 204
    storage: Storage = app.state.storage
    # the workflow's archive step, racing the delete, writes the object and its columns afterwards
    await asyncio.to_thread(storage.put, archive, io.BytesIO(b"late"), hashlib.sha256(b"late").hexdigest())
    await db.execute(Q.set_log_archive, job_id, archive, 4, hashlib.sha256(b"late").hexdigest())
    assert_error(await api.get(f"/api/jobs/{job_id}/logs/archive"), 410, "gone")
    assert (await run_retention(app)).resumed == 1
    assert await asyncio.to_thread(storage.head, archive) is None
    assert (await api.get(f"/api/jobs/{job_id}")).json()["log_archive"] is None


async def test_lines_a_box_sends_after_the_delete_are_acknowledged_and_never_stored(
    app: FastAPI, api: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    """A box may deliver its last lines within log_tail_grace_s of the job's end: after DELETE
    .../outputs they are taken (the box does not resend forever) but no chunk is written."""
    job_id = await job_with_outputs(app, db)
    assert (await api.delete(f"/api/jobs/{job_id}/outputs")).status_code == 204
    head = await logstore.append(db, job_id, Batch(4, [(2, "stderr", 1_800_000_001.0)], b"late\nlater\n"))
    assert head == 5
    assert await rows(db, job_id) == {"log_chunks": 0, "artifacts": 0, "artifact_manifest": 0}
    assert await db.fetchval("SELECT log_seq FROM jobs WHERE id = $1", uuid.UUID(job_id)) == 5
    assert (await api.get(f"/api/jobs/{job_id}/logs")).status_code == 410
    # a resend of the same lines is still a no-op
    assert await logstore.append(db, job_id, Batch(4, [(2, "stderr", 1_800_000_001.0)], b"late\nlater\n")) == 5
    assert await rows(db, job_id) == {"log_chunks": 0, "artifacts": 0, "artifact_manifest": 0}
