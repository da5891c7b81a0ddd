"""The audit trail in-process: what the database records by itself (transitions, leases,
maintenance rejections, reruns), what the API records (downloads), GET /api/audit's filters,
cursor, bad input, who may read it; and GET /api/jobs/{id}/spec."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import asyncpg
import httpx
import pytest
from fastapi import FastAPI

from boxrun import placement
from boxrun.constants import DEFAULT_ORG
from boxrun.db import Q
from boxrun.services.identity import hash_token, mint_token
from tests.api.conftest import _client
from tests.api.helpers import Box, assert_error


async def submit(api: httpx.AsyncClient, **body: Any) -> dict[str, Any]:
    resp = await api.post("/api/jobs", json={"script": "echo hi", **body})
    assert resp.status_code == 201, resp.text
    return dict(resp.json())


async def audit(api: httpx.AsyncClient, **params: Any) -> dict[str, Any]:
    resp = await api.get("/api/audit", params=params)
    assert resp.status_code == 200, resp.text
    body = dict(resp.json())
    assert set(body) == {"data", "next_cursor"}
    for row in body["data"]:
        assert set(row) == {"id", "at", "actor", "action", "job_id", "box", "detail"}, row
    return body


async def add_user(db: asyncpg.Connection, name: str, role: str, org: str = DEFAULT_ORG) -> str:
    """A user and an API token of theirs, written as the people routes write them; the token."""
    await db.execute("INSERT INTO orgs (id, name) VALUES ($1, $1) ON CONFLICT (id) DO NOTHING", org)
    await db.execute("INSERT INTO users (name, org_id, role, created_by) VALUES ($1, $2, $3, 'test')", name, org, role)
    token = mint_token("brt")
    await db.execute(
        "INSERT INTO api_tokens (id, user_name, org_id, token_hash, created_by) VALUES ($1, $2, $3, $4, 'test')",
        f"tok_{uuid.uuid4().hex[:12]}",
        name,
        org,
        hash_token(token),
    )
    return token


@pytest.fixture
async def as_user(app: FastAPI, db: asyncpg.Connection) -> Any:
    """Clients for users made on the spot: as_user(name, role, org)."""
    clients: list[httpx.AsyncClient] = []

    async def make(name: str, role: str, org: str = DEFAULT_ORG) -> httpx.AsyncClient:
        clients.append(_client(app, await add_user(db, name, role, org)))
        return clients[-1]

    yield make
    for client in clients:
        await client.aclose()


# ------------------------------------------------------------------ what is recorded


async def test_every_transition_and_lease_is_recorded_with_who_and_the_box(
    api: httpx.AsyncClient, db: asyncpg.Connection, make_box: Callable[..., Awaitable[Box]]
) -> None:
    await make_box("bench-1")
    job = await submit(api, box="bench-1")
    got = await placement.acquire(db, job["id"])
    assert got.box == "bench-1", got
    await placement.release(db, job["id"])

    rows = (await audit(api, job_id=job["id"]))["data"]
    assert [r["action"] for r in rows] == ["lease.released", "job.dispatching", "lease.granted", "job.queued"]
    released, dispatching, granted, queued = rows
    assert queued["actor"] == "admin" and queued["detail"]["from"] is None and queued["detail"]["to"] == "queued"
    assert queued["detail"]["owner"] == "admin" and queued["box"] == "bench-1"
    assert dispatching["actor"] == "system" and dispatching["box"] == "bench-1"
    assert dispatching["detail"] == {"from": "queued", "to": "dispatching", "box": "bench-1"}
    assert granted["actor"] == "system" and granted["box"] == "bench-1" and granted["detail"] == {"exclusive": False}
    assert released["box"] == "bench-1" and released["job_id"] == job["id"]
    assert int(released["id"]) > int(dispatching["id"]) > int(granted["id"]) > int(queued["id"])
    # the job's own history is unchanged by all this
    events = (await api.get(f"/api/jobs/{job['id']}/events")).json()["data"]
    assert [e["to_state"] for e in events] == ["queued", "dispatching"]


async def test_a_maintenance_rejection_is_recorded_with_its_window(
    api: httpx.AsyncClient, db: asyncpg.Connection, make_box: Callable[..., Awaitable[Box]]
) -> None:
    await make_box("bench-2")
    on = await api.put("/api/boxes/bench-2/maintenance", json={"on": True, "reason": "new PSU"})
    assert on.status_code == 200, on.text
    job = await submit(api, box="bench-2")
    await placement.acquire(db, job["id"])

    rows = (await audit(api, job_id=job["id"], action="placement.rejected_maintenance"))["data"]
    assert len(rows) == 1
    window = rows[0]["detail"]["window"]
    assert rows[0]["box"] == "bench-2" and rows[0]["actor"] == "system"
    assert window["reason"] == "new PSU" and window["ends_at"] is None and window["created_by"] == "admin"
    assert isinstance(window["id"], int) and window["starts_at"]
    waiting = (await audit(api, job_id=job["id"], action="job.waiting_for_box"))["data"]
    assert "maintenance" in waiting[0]["detail"]["reason"], waiting
    # the services' own rows stay as they were
    assert (await audit(api, action="maintenance.*", box="bench-2"))["data"][0]["actor"] == "admin"


async def test_cancel_rerun_and_downloads_name_who_did_them(
    api: httpx.AsyncClient, db: asyncpg.Connection, as_user: Any
) -> None:
    job = await submit(api, box_group="g")
    assert (await api.post(f"/api/jobs/{job['id']}/cancel")).status_code == 202
    rerun = await api.post(f"/api/jobs/{job['id']}/rerun")
    assert rerun.status_code == 201, rerun.text
    new_id = rerun.json()["id"]

    await db.execute(Q.insert_artifact, job["id"], DEFAULT_ORG, "out/r.txt", f"art/{job['id']}/r", 5, "cd" * 32)
    await db.execute(Q.set_log_archive, job["id"], f"logs/{job['id']}.jsonl.gz", 10, "ab" * 32)
    viewer = await as_user("vera", "viewer")
    art = await viewer.get(f"/api/jobs/{job['id']}/artifacts/out/r.txt")
    assert art.status_code == 307, art.text
    transcript = await viewer.get(f"/api/jobs/{job['id']}/logs/archive")
    assert transcript.status_code == 307, transcript.text
    # minted per request, living download_url_ttl_s (60 s by default)
    for resp in (art, transcript):
        assert parse_qs(urlsplit(resp.headers["location"]).query)["X-Amz-Expires"] == ["60"]

    rows = {r["action"]: r for r in (await audit(api, job_id=job["id"]))["data"]}
    assert rows["job.cancel"]["actor"] == "admin"
    assert rows["job.rerun"]["actor"] == "admin" and rows["job.rerun"]["detail"] == {"new_job_id": new_id}
    assert rows["artifact.download"]["actor"] == "vera" and rows["artifact.download"]["detail"] == {"path": "out/r.txt"}
    assert rows["transcript.download"]["actor"] == "vera" and rows["transcript.download"]["detail"] == {}
    new_rows = (await audit(api, job_id=new_id))["data"]
    assert [r["action"] for r in new_rows] == ["job.queued"] and new_rows[0]["detail"]["rerun_of"] == job["id"]
    # a download that finds nothing is not recorded
    assert (await viewer.get(f"/api/jobs/{job['id']}/artifacts/nope")).status_code == 404
    assert len((await audit(api, action="artifact.download"))["data"]) == 1


async def test_audit_rows_cannot_be_changed_even_by_the_owner(db_owner_url: str, api: httpx.AsyncClient) -> None:
    await submit(api, box_group="g")
    owner = await asyncpg.connect(db_owner_url)
    try:
        for sql in ("UPDATE audit_log SET actor = 'x'", "DELETE FROM audit_log", "TRUNCATE audit_log"):
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
                await owner.execute(sql)
        assert await owner.fetchval("SELECT count(*) FROM audit_log") >= 1
    finally:
        await owner.close()


# ------------------------------------------------------------------ GET /api/audit


async def fill(db: asyncpg.Connection, n: int, *, org: str = DEFAULT_ORG, action: str = "test.thing") -> None:
    await db.executemany(Q.audit, [(org, "alice", action, None, f"box-{i % 3}", {"i": i}) for i in range(n)])


async def test_the_cursor_pages_through_every_row_newest_first_once(
    api: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    await fill(db, 250)
    seen: list[int] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, Any] = {"action": "test.thing", "limit": 100}
        if cursor is not None:
            params["cursor"] = cursor
        page = await audit(api, **params)
        seen += [r["detail"]["i"] for r in page["data"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == 3 and seen == list(reversed(range(250)))
    default = await audit(api, action="test.thing")
    assert len(default["data"]) == 100 and default["next_cursor"] is not None
    assert len((await audit(api, action="test.thing", limit=1000))["data"]) == 250
    exact = await audit(api, action="test.thing", limit=250)
    assert len(exact["data"]) == 250 and exact["next_cursor"] is None


async def test_filters_combine(api: httpx.AsyncClient, db: asyncpg.Connection) -> None:
    job = await submit(api, box_group="g")
    await fill(db, 9)
    await db.execute(Q.audit, DEFAULT_ORG, "box:bench-9", "box.said", None, "bench-9", {})

    assert {r["detail"]["i"] for r in (await audit(api, box="box-1"))["data"]} == {1, 4, 7}
    assert [r["action"] for r in (await audit(api, actor="box:bench-9"))["data"]] == ["box.said"]
    assert len((await audit(api, actor="alice", box="box-2"))["data"]) == 3
    assert [r["action"] for r in (await audit(api, action="job.*"))["data"]] == ["job.queued"]
    assert (await audit(api, action="job.queued"))["data"][0]["job_id"] == job["id"]
    assert (await audit(api, action="job"))["data"] == []  # exact unless it ends in .*
    assert (await audit(api, job_id=str(uuid.uuid4())))["data"] == []

    everything = (await audit(api, limit=1000))["data"]
    middle = sorted(everything, key=lambda r: int(r["id"]))[5]
    at = middle["at"]
    since = (await audit(api, since=at, limit=1000))["data"]
    until = (await audit(api, until=at, limit=1000))["data"]
    assert len(since) + len(until) == len(everything) and middle in since and middle not in until
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    assert (await audit(api, since=future))["data"] == []


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"job_id": "not-a-uuid"}, "query.job_id"),
        ({"actor": "Not A Name"}, "query.actor"),
        ({"actor": "box:"}, "query.actor"),
        ({"action": "job*"}, "query.action"),
        ({"action": "JOB.queued"}, "query.action"),
        ({"action": "job.*.x"}, "query.action"),
        ({"box": "-bad"}, "query.box"),
        ({"since": "yesterday"}, "query.since"),
        ({"since": "2026-01-01T00:00:00"}, "query.since"),  # no timezone
        ({"until": "1"}, "query.until"),
        ({"since": "2026-01-02T00:00:00Z", "until": "2026-01-01T00:00:00Z"}, "since"),
        ({"limit": 0}, "query.limit"),
        ({"limit": 1001}, "query.limit"),
        ({"limit": "x"}, "query.limit"),
        ({"cursor": "abc"}, "query.cursor"),
        ({"cursor": "0"}, "query.cursor"),
        ({"cursor": "-5"}, "query.cursor"),
        ({"cursor": str(2**63)}, "cursor"),
    ],
)
async def test_bad_filters_are_422_naming_the_field(api: httpx.AsyncClient, params: dict[str, Any], field: str) -> None:
    assert_error(await api.get("/api/audit", params=params), 422, "invalid_input", field=field)


async def test_only_org_admins_read_the_audit_and_only_their_orgs_rows(
    api: httpx.AsyncClient, anon: httpx.AsyncClient, db: asyncpg.Connection, as_user: Any
) -> None:
    job = await submit(api, box_group="g")
    other_admin = await as_user("acme-admin", "admin", org="acme")
    await fill(db, 3)
    await fill(db, 4, org="acme", action="test.other")

    for role in ("viewer", "operator"):
        client = await as_user(f"a-{role}", role)
        assert_error(await client.get("/api/audit"), 403, "forbidden", detail="admin")
    assert_error(await anon.get("/api/audit"), 401, "unauthorized")

    theirs = await audit(other_admin, limit=1000)
    assert [r["action"] for r in theirs["data"]] == ["test.other"] * 4
    assert (await audit(other_admin, job_id=job["id"]))["data"] == []
    assert (await audit(other_admin, actor="alice", action="test.thing"))["data"] == []
    ours = await audit(api, limit=1000)
    assert "test.other" not in {r["action"] for r in ours["data"]}
    # a second admin of the org sees what the first did
    second = await as_user("second-admin", "admin")
    assert (await audit(second, job_id=job["id"]))["data"][-1]["action"] == "job.queued"


# ------------------------------------------------------------------ GET /api/jobs/{id}/spec


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def test_the_spec_shows_what_ran_and_equal_specs_hash_equal(
    api: httpx.AsyncClient, as_user: Any, make_box: Callable[..., Awaitable[Box]]
) -> None:
    await make_box("bench-3")
    blob = b"\x00\x01binary" * 100
    up = await api.post(
        "/api/files", params={"sha256": sha(blob)}, content=blob, headers={"content-type": "application/octet-stream"}
    )
    assert up.status_code in (200, 201), up.text
    body = {
        "script": "python3 run.py",
        "box": "bench-3",
        "env": {"MODE": "fast", "SEED": "7"},
        "files": {"run.py": "print('héllo')\n", "data/in.bin": {"sha256": sha(blob), "size": len(blob)}},
        "timeout_s": 120,
        "priority": 3,
        "lock": True,
        "cancel_grace_s": 4,
        "queue_timeout_s": 600,
    }
    first = await submit(api, **body)
    second = await submit(api, **body)
    changed = await submit(api, **{**body, "env": {"MODE": "slow", "SEED": "7"}})

    viewer = await as_user("vic", "viewer")
    resp = await viewer.get(f"/api/jobs/{first['id']}/spec")
    assert resp.status_code == 200, resp.text
    spec = resp.json()
    run_py = "print('héllo')\n".encode()
    assert spec == {
        "job_id": first["id"],
        "spec_hash": spec["spec_hash"],
        "script": "python3 run.py",
        "env": {"MODE": "fast", "SEED": "7"},
        "files": [
            {"path": "data/in.bin", "size": len(blob), "sha256": sha(blob), "from_job_id": None, "from_path": None},
            {"path": "run.py", "size": len(run_py), "sha256": sha(run_py), "from_job_id": None, "from_path": None},
        ],
        "settings": {
            "box": "bench-3",
            "box_group": None,
            "requires": [],
            "timeout_s": 120,
            "lock": True,
            "priority": 3,
            "cancel_grace_s": 4,
            "queue_timeout_s": 600,
        },
        "template": None,
    }
    assert len(spec["spec_hash"]) == 64
    again = (await api.get(f"/api/jobs/{second['id']}/spec")).json()
    assert again["spec_hash"] == spec["spec_hash"] and {**again, "job_id": first["id"]} == spec
    other = (await api.get(f"/api/jobs/{changed['id']}/spec")).json()
    assert other["spec_hash"] != spec["spec_hash"] and other["env"]["MODE"] == "slow"
    rerun = await api.post(f"/api/jobs/{first['id']}/rerun")
    assert rerun.status_code == 201, rerun.text
    assert (await api.get(f"/api/jobs/{rerun.json()['id']}/spec")).json()["spec_hash"] == spec["spec_hash"]


async def test_the_spec_of_an_unknown_or_another_orgs_job_is_404(api: httpx.AsyncClient, as_user: Any) -> None:
    job = await submit(api, box_group="g")
    for job_id in (str(uuid.uuid4()), "nope"):
        assert_error(await api.get(f"/api/jobs/{job_id}/spec"), 404, "not_found")
    other_admin = await as_user("acme-root", "admin", org="acme")
    assert_error(await other_admin.get(f"/api/jobs/{job['id']}/spec"), 404, "not_found")
