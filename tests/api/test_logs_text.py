"""GET /api/jobs/{id}/logs with ?stream= and ?tail=, and the plain-text transcript
GET /api/jobs/{id}/logs.txt (streamed a few chunks at a time, audited), in-process: the lines are
stored with the product's own logstore.append, as the ingest route does, in many chunks."""

from __future__ import annotations

import asyncio
from collections.abc import MutableMapping
from typing import Any

import asyncpg
import httpx
from fastapi import FastAPI

from boxrun import logstore
from boxrun.logbatch import Batch
from tests.api.conftest import ADMIN_TOKEN
from tests.api.helpers import assert_error
from tests.integration.helpers import add_job

BATCHES = 40  # more chunks than logstore.SCAN_CHUNKS, so every reader crosses query pages


def line_stream(seq: int) -> str:
    """Every third line is stderr, every tenth `system`, the rest stdout."""
    return "system" if seq % 10 == 0 else "stderr" if seq % 3 == 0 else "stdout"


async def job_with_lines(db: asyncpg.Connection, per_batch: int = 5) -> tuple[str, list[tuple[int, str, str]]]:
    """A job with BATCHES * per_batch lines stored, one chunk per batch: (job id, [(seq, stream, text)])."""
    job_id = await add_job(db, group="g")
    lines: list[tuple[int, str, str]] = []
    seq = 1
    for _ in range(BATCHES):
        runs: list[tuple[int, str, float]] = []
        data = b""
        for s in range(seq, seq + per_batch):
            stream = line_stream(s)
            text = f"line {s} of {stream} é"
            lines.append((s, stream, text))
            if runs and runs[-1][1] == stream:
                runs[-1] = (runs[-1][0] + 1, stream, runs[-1][2])
            else:
                runs.append((1, stream, 1_800_000_000.0 + s))
            data += text.encode() + b"\n"
        await logstore.append(db, job_id, Batch(seq, runs, data))
        seq += per_batch
    chunks = await db.fetchval("SELECT count(*) FROM log_chunks WHERE job_id = $1", job_id)
    assert chunks > logstore.SCAN_CHUNKS
    return job_id, lines


async def logs(api: httpx.AsyncClient, job_id: str, **params: Any) -> list[tuple[int, str, str]]:
    resp = await api.get(f"/api/jobs/{job_id}/logs", params=params)
    assert resp.status_code == 200, resp.text
    return [(d["seq"], d["stream"], d["text"]) for d in resp.json()["data"]]


# ------------------------------------------------------------------ ?stream= and ?tail=


async def test_stream_keeps_one_stream_in_order_and_pages_by_seq(
    api: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    job_id, lines = await job_with_lines(db)
    for stream in ("stdout", "stderr", "system"):
        assert await logs(api, job_id, stream=stream) == [x for x in lines if x[1] == stream]
    assert await logs(api, job_id, stream="output") == []
    stderr = [x for x in lines if x[1] == "stderr"]
    first = await logs(api, job_id, stream="stderr", limit=4)
    assert first == stderr[:4]
    assert await logs(api, job_id, stream="stderr", after=first[-1][0], limit=4) == stderr[4:8]
    assert await logs(api, job_id, stream="stderr", after=lines[-1][0]) == []
    assert await logs(api, job_id) == lines[:1000]  # without stream: every line, as before


async def test_tail_is_the_last_lines_of_all_or_of_one_stream(api: httpx.AsyncClient, db: asyncpg.Connection) -> None:
    job_id, lines = await job_with_lines(db)
    assert await logs(api, job_id, tail=3) == lines[-3:]
    assert await logs(api, job_id, tail=12) == lines[-12:]  # across chunks
    stderr = [x for x in lines if x[1] == "stderr"]
    assert await logs(api, job_id, tail=50, stream="stderr") == stderr[-50:]  # across more than a query's chunks
    assert await logs(api, job_id, tail=10_000) == lines
    assert await logs(api, job_id, tail=10_000, stream="system") == [x for x in lines if x[1] == "system"]
    assert await logs(api, job_id, tail=5, stream="output") == []
    empty = await add_job(db, group="g")
    assert await logs(api, empty, tail=5) == []


async def test_bad_stream_and_tail_are_422(api: httpx.AsyncClient, db: asyncpg.Connection) -> None:
    job_id = await add_job(db, group="g")
    url = f"/api/jobs/{job_id}/logs"
    assert_error(await api.get(url, params={"stream": "bogus"}), 422, "invalid_input", field="query.stream")
    assert_error(await api.get(url, params={"stream": ""}), 422, "invalid_input", field="query.stream")
    for tail in ("0", "-1", "10001", "x"):
        assert_error(await api.get(url, params={"tail": tail}), 422, "invalid_input", field="query.tail")
    for extra in ({"after": 5}, {"limit": 10}):
        resp = await api.get(url, params={"tail": 5, **extra})
        assert_error(resp, 422, "invalid_input", field="query.tail", detail="not both")
    assert_error(await api.get("/api/jobs/nope/logs", params={"tail": 5}), 404, "not_found")


# ------------------------------------------------------------------ logs.txt


async def test_transcript_is_plain_text_one_line_per_log_line(api: httpx.AsyncClient, db: asyncpg.Connection) -> None:
    job_id, lines = await job_with_lines(db)
    resp = await api.get(f"/api/jobs/{job_id}/logs.txt")
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"] == "text/plain; charset=utf-8"
    assert resp.headers["content-disposition"] == f'attachment; filename="{job_id}.log"'
    assert resp.content.decode() == "".join(f"{text}\n" for _, _, text in lines)

    stderr = await api.get(f"/api/jobs/{job_id}/logs.txt", params={"stream": "stderr"})
    assert stderr.text == "".join(f"{text}\n" for _, stream, text in lines if stream == "stderr")
    empty = await add_job(db, group="g")
    assert (await api.get(f"/api/jobs/{empty}/logs.txt")).content == b""


async def test_transcript_downloads_are_audited(api: httpx.AsyncClient, db: asyncpg.Connection) -> None:
    job_id = await add_job(db, group="g")
    assert (await api.get(f"/api/jobs/{job_id}/logs.txt", params={"stream": "stdout"})).status_code == 200
    rows = (await api.get("/api/audit", params={"job_id": job_id, "action": "transcript.download"})).json()["data"]
    assert len(rows) == 1, rows
    assert rows[0]["actor"] == "admin"


async def test_transcript_errors(api: httpx.AsyncClient, db: asyncpg.Connection) -> None:
    job_id = await add_job(db, group="g")
    assert_error(await api.get("/api/jobs/nope/logs.txt"), 404, "not_found")
    assert_error(await api.get("/api/jobs/00000000-0000-0000-0000-000000000000/logs.txt"), 404, "not_found")
    resp = await api.get(f"/api/jobs/{job_id}/logs.txt", params={"stream": "bogus"})
    assert_error(resp, 422, "invalid_input", field="query.stream")


async def test_transcript_is_sent_in_pieces_as_it_is_read(app: FastAPI, db: asyncpg.Connection) -> None:
    """Driven as an ASGI server would: the body arrives as several messages (a few chunks each),
    not as one body built in memory."""
    job_id, lines = await job_with_lines(db)
    path = f"/api/jobs/{job_id}/logs.txt"
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"boxrun.test"), (b"authorization", f"Bearer {ADMIN_TOKEN}".encode())],
        "client": ("127.0.0.1", 1),
        "server": ("boxrun.test", 80),
        "state": {},
    }
    sent: list[MutableMapping[str, Any]] = []
    requested = False
    done = asyncio.Event()  # the client stays connected until the whole answer is sent

    async def receive() -> MutableMapping[str, Any]:
        nonlocal requested
        if not requested:
            requested = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await done.wait()
        return {"type": "http.disconnect"}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    async with asyncio.timeout(30):
        await app(scope, receive, send)
    done.set()
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 200
    pieces = [m["body"] for m in sent[1:] if m["type"] == "http.response.body" and m.get("body")]
    assert len(pieces) >= BATCHES // logstore.SCAN_CHUNKS, "one message per page of chunks"
    assert max(len(p) for p in pieces) < sum(len(p) for p in pieces)
    assert b"".join(pieces).decode() == "".join(f"{text}\n" for _, _, text in lines)
