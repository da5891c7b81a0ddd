"""GET/PUT /api/org/retention, /api/org/quota, GET /api/org/usage in-process on the real parts:
answers, roles, one org never sees or changes another's, every bad input a 422 with the field;
and the storage quota at the artifact manifest (docs/retention.md)."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import httpx
from fastapi import FastAPI

from boxrun.constants import DEFAULT_ORG
from boxrun.db import Q
from boxrun.schemas.org import MAX_BYTES, MAX_DAYS
from boxrun.services.identity import Role
from tests.api.conftest import _client
from tests.api.helpers import Box, assert_error
from tests.api.people_fixtures import add_org, add_user
from tests.api.test_agent import claimed_job
from tests.integration.helpers import add_job

SHA = "ab" * 32
DEFAULT_CAP = 1 << 30


async def test_retention_reads_null_until_an_admin_puts_it_then_audited(api: httpx.AsyncClient) -> None:
    got = await api.get("/api/org/retention")
    assert got.status_code == 200
    assert got.json() == {
        "logs_days": None,
        "artifacts_days": None,
        "jobs_days": None,
        "updated_at": None,
        "updated_by": None,
        "schedule_id": "boxrun-retention",
    }
    put = await api.put("/api/org/retention", json={"logs_days": 30, "artifacts_days": 90})
    assert put.status_code == 200, put.text
    body = put.json()
    assert (body["logs_days"], body["artifacts_days"], body["jobs_days"]) == (30, 90, None)
    assert body["updated_by"] == "admin" and body["updated_at"]
    assert (await api.get("/api/org/retention")).json() == body
    # a PUT replaces the whole policy: what is left out keeps forever
    again = await api.put("/api/org/retention", json={"jobs_days": MAX_DAYS})
    assert (again.json()["logs_days"], again.json()["jobs_days"]) == (None, MAX_DAYS)
    audit = (await api.get("/api/audit", params={"action": "org.retention"})).json()["data"]
    assert [r["detail"] for r in audit] == [
        {"logs_days": None, "artifacts_days": None, "jobs_days": MAX_DAYS},
        {"logs_days": 30, "artifacts_days": 90, "jobs_days": None},
    ]


async def test_quota_reads_the_default_cap_and_an_admin_puts_it(api: httpx.AsyncClient) -> None:
    got = await api.get("/api/org/quota")
    assert got.json() == {
        "storage_bytes": None,
        "transcript_cap_bytes": None,
        "default_transcript_cap_bytes": DEFAULT_CAP,
    }
    put = await api.put("/api/org/quota", json={"storage_bytes": 0, "transcript_cap_bytes": 64 << 10})
    assert put.status_code == 200, put.text
    assert put.json() == {
        "storage_bytes": 0,
        "transcript_cap_bytes": 64 << 10,
        "default_transcript_cap_bytes": DEFAULT_CAP,
    }
    assert (await api.get("/api/org/quota")).json() == put.json()
    assert (await api.get("/api/org/usage")).json()["quota_bytes"] == 0
    audit = (await api.get("/api/audit", params={"action": "org.quota"})).json()["data"]
    assert [r["detail"] for r in audit] == [{"storage_bytes": 0, "transcript_cap_bytes": 64 << 10}]
    cleared = await api.put("/api/org/quota", json={})
    assert cleared.json()["storage_bytes"] is None and cleared.json()["transcript_cap_bytes"] is None


async def test_members_read_admins_write_and_orgs_stay_apart(app: FastAPI, db: asyncpg.Connection) -> None:
    await add_org(db, "acme")
    await add_org(db, "beta")
    people = {role: await add_user(db, f"acme-{role.value}", "acme", role) for role in Role}
    b_admin = await add_user(db, "beta-admin", "beta", Role.ADMIN)
    for role, person in people.items():
        async with _client(app, person.token) as c:
            for path in ("/api/org/retention", "/api/org/quota", "/api/org/usage"):
                assert (await c.get(path)).status_code == 200, (role, path)
            for path, body in (("/api/org/retention", {"logs_days": 7}), ("/api/org/quota", {"storage_bytes": 10})):
                resp = await c.put(path, json=body)
                if role is Role.ADMIN:
                    assert resp.status_code == 200, resp.text
                else:
                    assert_error(resp, 403, "forbidden", detail="needs the admin role")
    async with _client(app, b_admin.token) as b, _client(app, people[Role.VIEWER].token) as a:
        assert (await b.get("/api/org/retention")).json()["logs_days"] is None, "org B's own policy"
        assert (await b.put("/api/org/retention", json={"logs_days": 1})).status_code == 200
        assert (await b.put("/api/org/quota", json={"storage_bytes": 1})).status_code == 200
        assert (await a.get("/api/org/retention")).json()["logs_days"] == 7, "org A's is untouched"
        assert (await a.get("/api/org/quota")).json()["storage_bytes"] == 10
    async with _client(app, None) as anon:
        for path in ("/api/org/retention", "/api/org/quota", "/api/org/usage"):
            assert_error(await anon.get(path), 401, "unauthorized")
            if path != "/api/org/usage":
                assert_error(await anon.put(path, json={}), 401, "unauthorized")


BAD_RETENTION: list[tuple[Any, str]] = [
    ({"logs_days": 0}, "body.logs_days"),
    ({"logs_days": -1}, "body.logs_days"),
    ({"artifacts_days": MAX_DAYS + 1}, "body.artifacts_days"),
    ({"jobs_days": 2**70}, "body.jobs_days"),
    ({"logs_days": "30"}, "body.logs_days"),
    ({"logs_days": 30.0}, "body.logs_days"),
    ({"logs_days": 30.5}, "body.logs_days"),
    ({"logs_days": True}, "body.logs_days"),
    ({"logs_days": "3\x000"}, "body.logs_days"),
    ({"logs_days": [30]}, "body.logs_days"),
    ({"logs_days": {"d": 1}}, "body.logs_days"),
    ({"keep_days": 30}, "body.keep_days"),
    ({"logs_days": 30, "storage_bytes": 1}, "body.storage_bytes"),
    ([], "body"),
    ("30", "body"),
]
BAD_QUOTA: list[tuple[Any, str]] = [
    ({"storage_bytes": -1}, "body.storage_bytes"),
    ({"storage_bytes": MAX_BYTES + 1}, "body.storage_bytes"),
    ({"storage_bytes": 2**64}, "body.storage_bytes"),
    ({"storage_bytes": "1"}, "body.storage_bytes"),
    ({"storage_bytes": 1.5}, "body.storage_bytes"),
    ({"storage_bytes": False}, "body.storage_bytes"),
    ({"storage_bytes": "\x00"}, "body.storage_bytes"),
    ({"transcript_cap_bytes": 1000}, "body.transcript_cap_bytes"),
    ({"transcript_cap_bytes": -(64 << 10)}, "body.transcript_cap_bytes"),
    ({"quota": 1}, "body.quota"),
    ({"storage_bytes": 1, "logs_days": 1}, "body.logs_days"),
    ([1], "body"),
]


async def test_bad_input_is_422_naming_the_field_and_changes_nothing(api: httpx.AsyncClient) -> None:
    await api.put("/api/org/retention", json={"logs_days": 5})
    await api.put("/api/org/quota", json={"storage_bytes": 5})
    for path, cases in (("/api/org/retention", BAD_RETENTION), ("/api/org/quota", BAD_QUOTA)):
        for body, field in cases:
            resp = await api.put(path, json=body)
            assert_error(resp, 422, "invalid_input", field=field)
        for raw in (b"{", b"\xff\xfe", b'{"logs_days": 1' + b" " * (2 << 20) + b"}", b"null"):
            resp = await api.put(path, content=raw, headers={"content-type": "application/json"})
            assert 400 <= resp.status_code < 500, (path, raw[:20], resp.status_code, resp.text)
        assert_error(await api.get(path, params={"org": "beta"}), 422, "invalid_input", field="query.org")
    assert (await api.get("/api/org/retention")).json()["logs_days"] == 5
    assert (await api.get("/api/org/quota")).json()["storage_bytes"] == 5
    assert (await api.get("/api/audit", params={"action": "org.retention"})).json()["data"][0]["detail"] == {
        "logs_days": 5,
        "artifacts_days": None,
        "jobs_days": None,
    }


async def test_usage_counts_artifacts_archives_and_transcripts_of_the_org_only(
    app: FastAPI, api: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    empty = (await api.get("/api/org/usage")).json()
    assert empty == {
        "storage_bytes": 0,
        "artifact_bytes": 0,
        "log_archive_bytes": 0,
        "transcript_bytes": 0,
        "artifacts": 0,
        "jobs": 0,
        "quota_bytes": None,
    }
    job_id = await add_job(db, group="g")
    await db.execute(Q.insert_artifact, job_id, DEFAULT_ORG, "a", f"k/{job_id}/a", 100, SHA)
    await db.execute(Q.insert_artifact, job_id, DEFAULT_ORG, "b", f"k/{job_id}/b", 23, SHA)
    await db.execute(Q.set_log_archive, job_id, f"k/{job_id}/log", 7, SHA)
    await db.execute(
        "INSERT INTO log_chunks (job_id, first_seq, last_seq, run_lines, run_streams, run_ts, data, bytes)"
        " VALUES ($1, 1, 1, '{1}', '{stdout}', '{1.0}', $2, 4)",
        uuid.UUID(job_id),
        b"abc\n",
    )
    await add_org(db, "beta")
    other = await add_user(db, "beta-admin", "beta", Role.ADMIN)
    async with _client(app, other.token) as b:
        assert (await b.get("/api/org/usage")).json()["jobs"] == 0, "org B sees none of org A's usage"
    usage = (await api.get("/api/org/usage")).json()
    assert usage == {
        "storage_bytes": 130,
        "artifact_bytes": 123,
        "log_archive_bytes": 7,
        "transcript_bytes": 4,
        "artifacts": 2,
        "jobs": 1,
        "quota_bytes": None,
    }


# ------------------------------------------------------------------ the quota at the manifest


def entries(*sizes: int, prefix: str = "f") -> list[dict[str, Any]]:
    return [{"path": f"{prefix}{i}", "size": size, "sha256": SHA} for i, size in enumerate(sizes)]


async def test_a_job_past_the_quota_is_refused_before_any_upload(
    api: httpx.AsyncClient, db: asyncpg.Connection, make_box: Callable[..., Awaitable[Box]]
) -> None:
    box = await make_box("bench-q")
    stored = await add_job(db, group="g")
    await db.execute(Q.insert_artifact, stored, DEFAULT_ORG, "old", f"k/{stored}/old", 600, SHA)
    assert (await api.put("/api/org/quota", json={"storage_bytes": 1000})).status_code == 200
    job = await claimed_job(api, db, box)
    url = f"/api/agent/jobs/{job}/artifacts"

    # the first page announces every artifact: 500 more than the 400 left
    resp = await box.agent.post(url, json={"entries": entries(100), "done": False, "total_bytes": 900})
    body = assert_error(resp, 413, "too_large", detail="storage quota exceeded: the org keeps 600 bytes")
    assert "need 900 more" in body["detail"] and "the quota is 1000 bytes" in body["detail"]
    assert await db.fetchval("SELECT count(*) FROM artifact_manifest WHERE job_id = $1", uuid.UUID(job)) == 0
    assert (await api.get(f"/api/jobs/{job}")).json()["state"] == "running", "nothing presigned, nothing moved"

    # without total_bytes the page itself is counted
    too_big = await box.agent.post(url, json={"entries": entries(401), "done": True})
    assert_error(too_big, 413, "too_large", detail="storage quota exceeded")

    # what fits goes; a box that announced less than it sends is stopped at the page that passes
    ok = await box.agent.post(url, json={"entries": entries(300), "done": False, "total_bytes": 300})
    assert ok.status_code == 200 and len(ok.json()["targets"]) == 1, ok.text
    lie = await box.agent.post(url, json={"entries": entries(150, prefix="g"), "done": True})
    assert_error(lie, 413, "too_large", detail="this job's artifacts need 450 more")
    # an unnamed entry the store refuses anyway does not count
    named = await box.agent.post(
        url, json={"entries": [{"path": "../x", "size": 10**9, "sha256": SHA}, *entries(100, prefix="h")]}
    )
    assert named.status_code == 200 and [r["path"] for r in named.json()["refused"]] == ["../x"], named.text


async def test_another_unfinished_jobs_announced_bytes_count_too(
    api: httpx.AsyncClient, db: asyncpg.Connection, make_box: Callable[..., Awaitable[Box]]
) -> None:
    a = await make_box("bench-a")
    b = await make_box("bench-b")
    assert (await api.put("/api/org/quota", json={"storage_bytes": 1000})).status_code == 200
    first = await claimed_job(api, db, a)
    second = await claimed_job(api, db, b)
    resp = await a.agent.post(f"/api/agent/jobs/{first}/artifacts", json={"entries": entries(700), "total_bytes": 700})
    assert resp.status_code == 200, resp.text
    resp = await b.agent.post(f"/api/agent/jobs/{second}/artifacts", json={"entries": entries(301)})
    assert_error(resp, 413, "too_large", detail="the org keeps 700 bytes")
    # no quota: anything goes
    assert (await api.put("/api/org/quota", json={})).status_code == 200
    resp = await b.agent.post(f"/api/agent/jobs/{second}/artifacts", json={"entries": entries(10**12)})
    assert resp.status_code == 200, resp.text


async def test_manifest_total_bytes_bad_values_are_422(
    api: httpx.AsyncClient, db: asyncpg.Connection, make_box: Callable[..., Awaitable[Box]]
) -> None:
    box = await make_box("bench-1")
    job = await claimed_job(api, db, box)
    for bad in (-1, "1", 1.5, MAX_BYTES + 1, True):
        resp = await box.agent.post(f"/api/agent/jobs/{job}/artifacts", json={"entries": [], "total_bytes": bad})
        assert_error(resp, 422, "invalid_input", field="body.total_bytes")
