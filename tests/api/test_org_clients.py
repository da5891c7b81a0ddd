"""The org keeping policy and output deletion through the SDK (AsyncClient over the in-process app)
and the CLI (`boxrun org ...`, `boxrun outputs rm`), on the real Postgres, Temporal and S3."""

from __future__ import annotations

import uuid

import asyncpg
import httpx
import pytest
from fastapi import FastAPI

from boxrun import logstore
from boxrun.constants import DEFAULT_ORG, JobState
from boxrun.db import Q
from boxrun.errors import Conflict, Forbidden, Gone, InvalidInput
from boxrun.logbatch import Batch
from boxrun.schemas import JobCreate
from boxrun.sdk.aio import AsyncClient
from boxrun.services.identity import Role
from boxrun.services.submission import spec_hash
from boxrun.transitions import transition
from tests.api import test_cli
from tests.api.conftest import BASE_URL
from tests.api.people_fixtures import add_user
from tests.api.test_cli import Cli, one_line_error

cli = test_cli.cli  # the CLI-on-the-app fixture


async def ended_job(db: asyncpg.Connection, *, owner: str = "admin", end: bool = True) -> str:
    """A job with two transcript lines, ended (cancelled) unless `end` is False."""
    job_id = str(uuid.uuid4())
    spec = JobCreate(box="nowhere", script="echo hi").frozen_spec()
    await db.execute(
        Q.insert_job,
        job_id,
        DEFAULT_ORG,
        owner,
        "nowhere",
        None,
        [],
        spec,
        spec_hash(spec),
        60,
        False,
        0,
        None,
        10,
        None,
    )
    await db.execute(Q.insert_first_event, DEFAULT_ORG, job_id, {"owner": owner})
    await logstore.append(db, job_id, Batch(1, [(2, "stdout", 1_800_000_000.0)], b"one\ntwo\n"))
    if end:
        await transition(db, job_id, JobState.CANCELLED, error="ended for the outputs tests")
    return job_id


def as_user(app: FastAPI, token: str) -> AsyncClient:
    headers = {"Authorization": f"Bearer {token}"}
    return AsyncClient(
        http=httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE_URL, headers=headers)
    )


async def test_the_sdk_reads_and_sets_the_policy_and_a_viewer_only_reads(
    app: FastAPI, api: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    async with AsyncClient(http=api) as client:
        first = await client.org.retention()
        assert (first.logs_days, first.artifacts_days, first.jobs_days) == (None, None, None)
        assert first.schedule_id == "boxrun-retention"
        got = await client.org.set_retention(logs_days=30, artifacts_days=90)
        assert (got.logs_days, got.artifacts_days, got.jobs_days, got.updated_by) == (30, 90, None, "admin")
        quota = await client.org.set_quota(storage_bytes=10 << 30, transcript_cap_bytes=1 << 20)
        assert (quota.storage_bytes, quota.transcript_cap_bytes) == (10 << 30, 1 << 20)
        assert (await client.org.quota()).storage_bytes == 10 << 30
        usage = await client.org.usage()
        assert usage.quota_bytes == 10 << 30 and usage.storage_bytes >= 0
        with pytest.raises(InvalidInput) as bad:
            await client.org.set_quota(transcript_cap_bytes=10)
        assert bad.value.field == "transcript_cap_bytes"
        actions = [e.action async for e in client.audit.list(action="org.*")]
        assert actions == ["org.quota", "org.retention"]
    viewer = await add_user(db, "vera", DEFAULT_ORG, Role.VIEWER)
    async with as_user(app, viewer.token) as client:
        assert (await client.org.retention()).logs_days == 30
        assert (await client.org.usage()).quota_bytes == 10 << 30
        with pytest.raises(Forbidden):
            await client.org.set_retention(logs_days=1)
        with pytest.raises(Forbidden):
            await client.org.set_quota()


async def test_the_sdk_deletes_outputs_and_reads_answer_gone_with_who_and_when(
    app: FastAPI, api: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    job_id = await ended_job(db)
    running = await ended_job(db, end=False)
    async with AsyncClient(http=api) as client:
        job = await client.jobs.get(job_id)
        assert len(await job.logs()) == 2 and job.outputs_deleted_at is None
        await job.delete_outputs()
        assert job.outputs_deleted_at is not None and job.logs_deleted_at is not None
        with pytest.raises(Gone) as gone:
            await job.logs()
        assert "deleted by admin" in gone.value.reason and job_id in gone.value.reason
        with pytest.raises(Gone):
            await job.artifacts()
        await client.jobs.delete_outputs(job_id)  # again: nothing left, no error
        with pytest.raises(Conflict, match="still queued"):
            await client.jobs.delete_outputs(running)


async def test_the_cli_shows_and_changes_only_what_is_given(cli: Cli, db: asyncpg.Connection) -> None:
    out = await cli("org", "retention")
    assert out.code == 0 and "forever" in out.stdout and "boxrun-retention" in out.stdout, out
    assert (await cli("org", "retention", "--logs-days", "30")).code == 0
    got = (await cli("org", "retention", "--jobs-days", "365", "--json")).json()
    assert (got["logs_days"], got["artifacts_days"], got["jobs_days"]) == (30, None, 365)  # logs kept
    got = (await cli("org", "retention", "--logs-days", "none", "--json")).json()
    assert (got["logs_days"], got["jobs_days"]) == (None, 365)
    one_line_error(await cli("org", "retention", "--logs-days", "thirty"), "--logs-days", "whole number of days")
    one_line_error(await cli("org", "retention", "--artifacts-days", "0"), "artifacts_days")

    out = await cli("org", "quota", "--storage", "10G", "--transcript-cap", "64K")
    assert out.code == 0 and "10.0 GiB" in out.stdout and "64.0 KiB" in out.stdout, out
    got = (await cli("org", "quota", "--transcript-cap", "none", "--json")).json()
    assert (got["storage_bytes"], got["transcript_cap_bytes"]) == (10 << 30, None)
    assert "default" in (await cli("org", "quota")).stdout
    one_line_error(await cli("org", "quota", "--storage", "10X"), "--storage", "expected bytes")
    one_line_error(await cli("org", "quota", "--transcript-cap", "1K"), "transcript_cap_bytes")
    usage = (await cli("org", "usage", "--json")).json()
    assert usage["quota_bytes"] == 10 << 30
    out = await cli("org", "usage")
    assert out.code == 0 and "of 10.0 GiB" in out.stdout, out
    both = await cli("org", "--json")
    assert set(both.json()) == {"retention", "quota", "usage"}
    out = await cli("org")
    assert out.code == 0 and "retention:" in out.stdout and "usage:" in out.stdout

    viewer = await add_user(db, "vic", DEFAULT_ORG, Role.VIEWER)
    assert (await cli("org", "quota", token=viewer.token)).code == 0
    one_line_error(await cli("org", "quota", "--storage", "none", token=viewer.token), "admin")


async def test_the_cli_removes_a_jobs_outputs(cli: Cli, db: asyncpg.Connection) -> None:
    job_id = await ended_job(db)
    out = await cli("outputs", "rm", job_id)
    assert out.code == 0 and out.stdout.strip() == f"job {job_id}: outputs deleted (transcript and artifacts)"
    one_line_error(await cli("logs", job_id), "deleted by admin")
    again = (await cli("outputs", "rm", job_id, "--json")).json()
    assert again["id"] == job_id and again["outputs_deleted_at"] is not None
    running = await ended_job(db, end=False)
    one_line_error(await cli("outputs", "rm", running), "still queued")
    one_line_error(await cli("outputs", "rm", str(uuid.uuid4())), "not found")
