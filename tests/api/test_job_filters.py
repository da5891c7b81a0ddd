"""Job labels and GET /api/jobs's filters (owner, since, until, label, state, box, pipeline_id) and
cursor pagination, in-process: each filter, its bad values, and the cursor across pages while new
jobs arrive between them."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx

from boxrun.constants import DEFAULT_ORG
from boxrun.db import Q
from tests.api.helpers import Box, assert_error


async def insert_job(
    db: asyncpg.Connection,
    *,
    labels: dict[str, str] | None = None,
    owner: str = "tester",
    created: datetime | None = None,
) -> str:
    """A job row as submission writes it (no workflow): its labels in the frozen spec."""
    job_id = str(uuid.uuid4())
    spec: dict[str, Any] = {"script": "x", "box_group": "g"}
    if labels:
        spec["labels"] = labels
    await db.execute(
        Q.insert_job, job_id, DEFAULT_ORG, owner, None, "g", [], spec, "hash", 60, False, 0, None, 10, None
    )
    if created is not None:
        await db.execute("UPDATE jobs SET created_at = $2 WHERE id = $1", job_id, created)
    return job_id


async def ids(api: httpx.AsyncClient, **params: Any) -> list[str]:
    resp = await api.get("/api/jobs", params=params)
    assert resp.status_code == 200, resp.text
    return [j["id"] for j in resp.json()["data"]]


# ------------------------------------------------------------------ labels on submission


async def test_labels_are_kept_shown_and_survive_a_rerun(
    api: httpx.AsyncClient, make_box: Callable[..., Awaitable[Box]]
) -> None:
    await make_box("bench-1")
    labels = {"team": "infra", "ci.run": "1234", "b": ""}
    resp = await api.post("/api/jobs", json={"script": "echo hi", "box": "bench-1", "labels": labels})
    assert resp.status_code == 201, resp.text
    job = resp.json()
    assert job["labels"] == labels
    assert (await api.get(f"/api/jobs/{job['id']}")).json()["labels"] == labels
    rerun = await api.post(f"/api/jobs/{job['id']}/rerun")
    assert rerun.status_code == 201, rerun.text
    assert rerun.json()["labels"] == labels
    plain = await api.post("/api/jobs", json={"script": "echo hi", "box": "bench-1"})
    assert plain.json()["labels"] == {}


async def test_bad_labels_are_422_naming_the_field(api: httpx.AsyncClient) -> None:
    base = {"script": "echo hi", "box_group": "g"}
    bad: list[Any] = [
        {"Team": "x"},  # key must start lower-case
        {"1team": "x"},
        {"a" * 64: "x"},  # key at most 63
        {"team": "x" * 201},  # value at most 200
        {"team": 5},  # values are strings
        {"team": "a\x00b"},  # CleanStr
        {f"k{i}": "v" for i in range(33)},  # at most 32
        ["team:x"],  # an object, not a list
    ]
    for labels in bad:
        resp = await api.post("/api/jobs", json={**base, "labels": labels})
        body = assert_error(resp, 422, "invalid_input")
        assert any(e["field"].startswith("body.labels") for e in body["errors"]), (labels, body)
    ok = {f"k{i}": "v" * 200 for i in range(32)}
    ok["a" * 63] = ok.pop("k0")
    assert (await api.post("/api/jobs", json={**base, "labels": ok})).status_code == 201


# ------------------------------------------------------------------ filters


async def test_label_filter_needs_every_label_given(api: httpx.AsyncClient, db: asyncpg.Connection) -> None:
    both = await insert_job(db, labels={"team": "infra", "env": "prod"})
    infra = await insert_job(db, labels={"team": "infra", "env": "dev"})
    other = await insert_job(db, labels={"team": "web"})
    await insert_job(db)
    assert set(await ids(api, label="team:infra")) == {both, infra}
    assert await ids(api, label=["team:infra", "env:prod"]) == [both]
    assert await ids(api, label="team:web") == [other]
    assert await ids(api, label="team:nobody") == []
    assert await ids(api, label=["team:infra", "team:web"]) == []  # one key, two values: nothing
    colon = await insert_job(db, labels={"url": "http://x:8080/a"})
    assert await ids(api, label="url:http://x:8080/a") == [colon]  # split at the first colon
    resp = await api.get("/api/jobs", params={"label": ["team:infra", "env:prod"]})
    assert resp.json()["count"] == 1


async def test_bad_label_filters_are_422(api: httpx.AsyncClient) -> None:
    for value in ["team", "Team:x", ":x", "1a:b", f"team:{'x' * 201}"]:
        assert_error(await api.get("/api/jobs", params={"label": value}), 422, "invalid_input", field="query.label")
    many = [f"k{i}:v" for i in range(33)]
    assert_error(await api.get("/api/jobs", params={"label": many}), 422, "invalid_input")


async def test_since_and_until_bound_the_creation_time(api: httpx.AsyncClient, db: asyncpg.Connection) -> None:
    t0 = datetime(2030, 1, 1, tzinfo=UTC)
    old = await insert_job(db, created=t0)
    mid = await insert_job(db, created=t0 + timedelta(hours=1))
    new = await insert_job(db, created=t0 + timedelta(hours=2))
    hour = timedelta(hours=1)
    assert await ids(api, since=(t0 + hour).isoformat()) == [new, mid]  # since is inclusive
    assert await ids(api, since=t0.isoformat(), until=(t0 + hour).isoformat()) == [old]  # until is not
    assert await ids(api, since=t0.isoformat(), until=(t0 + 3 * hour).isoformat()) == [new, mid, old]
    assert await ids(api, since="2030-01-01T02:00:00Z") == [new]
    assert await ids(api, since="2030-01-01T03:00:00+01:00") == [new]  # another zone is converted
    assert (await api.get("/api/jobs", params={"since": t0.isoformat()})).json()["count"] == 3


async def test_bad_times_are_422(api: httpx.AsyncClient) -> None:
    bad = ["yesterday", "2030-13-01T00:00:00Z", "", "0.5", "1800000000", "2030-01-01T00:00:00"]  # the last: no zone
    for params in [{"since": b} for b in bad] + [{"until": b} for b in bad]:
        assert_error(await api.get("/api/jobs", params=params), 422, "invalid_input")
    resp = await api.get("/api/jobs", params={"since": "2030-01-02T00:00:00Z", "until": "2030-01-01T00:00:00Z"})
    assert_error(resp, 422, "invalid_input", field="query.since", detail="since is after until")


async def test_owner_and_state_filters_combine_with_labels(api: httpx.AsyncClient, db: asyncpg.Connection) -> None:
    mine = await insert_job(db, labels={"team": "a"}, owner="admin")
    theirs = await insert_job(db, labels={"team": "a"}, owner="tester")
    assert await ids(api, owner="me", label="team:a") == [mine]
    assert await ids(api, owner="tester", label="team:a") == [theirs]
    assert set(await ids(api, state="queued", label="team:a")) == {mine, theirs}
    assert await ids(api, state="running", label="team:a") == []
    assert_error(await api.get("/api/jobs", params={"state": "bogus"}), 422, "invalid_input", field="query.state")
    assert_error(await api.get("/api/jobs", params={"owner": "Not A Name"}), 422, "invalid_input", field="query.owner")
    assert_error(await api.get("/api/jobs", params={"box": "-x"}), 422, "invalid_input", field="query.box")
    bad_pipeline = await api.get("/api/jobs", params={"pipeline_id": "nope"})
    assert_error(bad_pipeline, 422, "invalid_input", field="query.pipeline_id")


# ------------------------------------------------------------------ cursor pagination


async def test_the_cursor_walks_every_job_once_while_jobs_are_added(
    api: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    first = [await insert_job(db, labels={"batch": "one"}) for _ in range(7)]
    newest_first = list(reversed(first))

    page = (await api.get("/api/jobs", params={"limit": 3, "label": "batch:one"})).json()
    assert [j["id"] for j in page["data"]] == newest_first[:3]
    assert page["count"] == 7 and page["next_cursor"]
    seen = [j["id"] for j in page["data"]]

    later = [await insert_job(db, labels={"batch": "one"}) for _ in range(2)]  # arrive between pages
    cursor = page["next_cursor"]
    while cursor:
        page = (await api.get("/api/jobs", params={"limit": 3, "label": "batch:one", "cursor": cursor})).json()
        assert page["count"] == len(first) + len(later), "count is every job matching the filters"
        seen += [j["id"] for j in page["data"]]
        cursor = page["next_cursor"]
        if cursor:
            later.append(await insert_job(db, labels={"batch": "one"}))
    assert seen == newest_first, "every job that existed at the first page, once, newest first; none of the new"
    assert not set(later) & set(seen)

    # with offset paging, a full last page has no next_cursor; a page with more after it has one
    everything = (await api.get("/api/jobs", params={"label": "batch:one", "limit": 500})).json()
    assert everything["next_cursor"] is None
    n = everything["count"]
    last = (await api.get("/api/jobs", params={"label": "batch:one", "limit": 2, "offset": n - 2})).json()
    assert len(last["data"]) == 2 and last["next_cursor"] is None
    before_last = (await api.get("/api/jobs", params={"label": "batch:one", "limit": 2, "offset": n - 4})).json()
    assert before_last["next_cursor"]
    after = (
        await api.get("/api/jobs", params={"label": "batch:one", "limit": 2, "cursor": before_last["next_cursor"]})
    ).json()
    assert after["data"] == last["data"]


async def test_jobs_created_in_the_same_instant_are_ordered_by_id(
    api: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    same = datetime(2031, 1, 1, tzinfo=UTC)
    jobs = [await insert_job(db, labels={"t": "same"}, created=same) for _ in range(5)]
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 2, "label": "t:same"}
        if cursor:
            params["cursor"] = cursor
        page = (await api.get("/api/jobs", params=params)).json()
        seen += [j["id"] for j in page["data"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert seen == sorted(jobs, reverse=True)


async def test_bad_cursors_are_422(api: httpx.AsyncClient, db: asyncpg.Connection) -> None:
    await insert_job(db)
    await insert_job(db)
    good = (await api.get("/api/jobs", params={"limit": 1})).json()["next_cursor"]
    assert good
    for cursor in ["", "nonsense", "!!!", "bm90IGEgY3Vyc29y", "x" * 201]:
        resp = await api.get("/api/jobs", params={"cursor": cursor})
        assert_error(resp, 422, "invalid_input", field="query.cursor")
    both = await api.get("/api/jobs", params={"cursor": good, "offset": 1})
    assert_error(both, 422, "invalid_input", field="query.offset", detail="not both")
