"""Logs (replay, SSE, archive) and artifacts in-process: happy paths and every error answer."""

from __future__ import annotations

import asyncpg
import httpx

from boxrun.constants import DEFAULT_ORG
from boxrun.db import Q
from tests.api.helpers import assert_error
from tests.integration.helpers import add_job


async def ended_job(api: httpx.AsyncClient, db: asyncpg.Connection) -> str:
    """A job without a workflow, cancelled through the API: terminal, so its stream ends."""
    job_id = await add_job(db, group="g")
    assert (await api.post(f"/api/jobs/{job_id}/cancel")).status_code == 202
    return job_id


async def test_sse_replays_and_ends_with_done_for_an_ended_job(api: httpx.AsyncClient, db: asyncpg.Connection) -> None:
    job_id = await ended_job(api, db)
    resp = await api.get(f"/api/jobs/{job_id}/logs/stream", headers={"Last-Event-ID": "0"})
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("text/event-stream")
    assert "event: done" in resp.text and "cancelled" in resp.text


async def test_sse_refuses_a_bad_last_event_id_or_after_with_422(
    api: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    job_id = await ended_job(api, db)
    url = f"/api/jobs/{job_id}/logs/stream"
    for value in (b"abc", b"-1", str(2**63).encode(), b"1e3", b"\xb2"):  # the last: a superscript 2 in latin-1
        resp = await api.get(url, headers={"Last-Event-ID": value})
        assert_error(resp, 422, "invalid_input", detail="Last-Event-ID must be the seq", field="header.last-event-id")
    assert_error(await api.get(url, params={"after": -1}), 422, "invalid_input", field="query.after")


async def test_paged_logs_refuse_out_of_range_cursors_with_422(api: httpx.AsyncClient, db: asyncpg.Connection) -> None:
    job_id = await ended_job(api, db)
    ok = await api.get(f"/api/jobs/{job_id}/logs")
    assert ok.status_code == 200 and ok.json() == {"data": []}
    for params, field in (({"after": str(2**63)}, "query.after"), ({"limit": "0"}, "query.limit")):
        assert_error(await api.get(f"/api/jobs/{job_id}/logs", params=params), 422, "invalid_input", field=field)


async def test_archive_is_404_until_there_is_one_then_a_redirect(
    api: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    job_id = await ended_job(api, db)
    none_yet = await api.get(f"/api/jobs/{job_id}/logs/archive")
    assert_error(none_yet, 404, "not_found", detail="has no archived transcript (yet)")
    await db.execute(Q.set_log_archive, job_id, f"logs/{job_id}.jsonl.gz", 10, "ab" * 32)
    resp = await api.get(f"/api/jobs/{job_id}/logs/archive")
    assert resp.status_code == 307, resp.text
    assert f"logs/{job_id}.jsonl.gz" in resp.headers["location"] and "Signature" in resp.headers["location"]


async def test_artifacts_list_download_and_unknown_is_404(api: httpx.AsyncClient, db: asyncpg.Connection) -> None:
    job_id = await ended_job(api, db)
    assert (await api.get(f"/api/jobs/{job_id}/artifacts")).json() == {"data": [], "count": 0}
    await db.execute(Q.insert_artifact, job_id, DEFAULT_ORG, "out/report.txt", f"art/{job_id}/r", 5, "cd" * 32)

    listed = await api.get(f"/api/jobs/{job_id}/artifacts")
    assert listed.status_code == 200
    assert listed.json() == {"data": [{"path": "out/report.txt", "size": 5, "sha256": "cd" * 32}], "count": 1}
    resp = await api.get(f"/api/jobs/{job_id}/artifacts/out/report.txt")
    assert resp.status_code == 307, resp.text
    assert f"art/{job_id}/r" in resp.headers["location"]

    for path in ("out/other.txt", "out/report.txt%00", "%00"):
        missing = await api.get(f"/api/jobs/{job_id}/artifacts/{path}")
        assert_error(missing, 404, "not_found", detail="has no artifact")


async def test_artifacts_are_listed_a_page_at_a_time_by_path(api: httpx.AsyncClient, db: asyncpg.Connection) -> None:
    job_id = await ended_job(api, db)
    paths = [f"out/{i:04d}.txt" for i in range(250)]
    await db.executemany(
        Q.insert_artifact, [(job_id, DEFAULT_ORG, p, f"art/{job_id}/{p}", 1, "cd" * 32) for p in reversed(paths)]
    )
    url = f"/api/jobs/{job_id}/artifacts"
    first = (await api.get(url)).json()
    assert first["count"] == 250 and [a["path"] for a in first["data"]] == paths[:100]  # default limit 100
    page = (await api.get(url, params={"limit": 1000, "offset": 240})).json()
    assert page["count"] == 250 and [a["path"] for a in page["data"]] == paths[240:]
    past = (await api.get(url, params={"offset": 2**63 - 1})).json()
    assert past == {"data": [], "count": 250}
    for params, field in (
        ({"limit": 0}, "query.limit"),
        ({"limit": 1001}, "query.limit"),
        ({"offset": -1}, "query.offset"),
        ({"offset": 2**63}, "query.offset"),
        ({"limit": "x"}, "query.limit"),
    ):
        assert_error(await api.get(url, params=params), 422, "invalid_input", field=field)
    assert_error(await api.get("/api/jobs/00000000-0000-0000-0000-000000000000/artifacts"), 404, "not_found")
