"""boxrun.sdk against a mock of the API (MockApi, an httpx.MockTransport handler; no server):
the sync facade generated over the async implementation, file uploads, wait, follow resuming
after a drop, logs by stream and tail, SHA-256-checked downloads, lazy lists, typed errors.
(The SDK against a real stack: tests/integration/test_sdk.py.)"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import json
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest

from boxrun.constants import JobState
from boxrun.errors import BoxrunError
from boxrun.sdk import (
    AsyncClient,
    Client,
    IntegrityError,
    InvalidInput,
    Job,
    NotFound,
    Pipeline,
    ValidationError,
    aio,
)
from boxrun.sdk.sync import Sync
from tests.unit.fakes import job_json as fake_job_json

URL = "http://boxrun.test"
STORAGE = "http://storage.test"


def job_json(job_id: str, state: str = "queued", **more: Any) -> dict[str, Any]:
    return fake_job_json(job_id, state, **more)


def line(seq: int, stream: str = "stdout") -> dict[str, Any]:
    return {"seq": seq, "ts": "2026-12-01T10:00:00Z", "stream": stream, "text": f"line {seq}"}


def sse(events: list[tuple[str, Any, int | None]]) -> bytes:
    out = b""
    for name, data, ident in events:
        out += (f"id: {ident}\n" if ident is not None else "").encode()
        out += f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()
    return out


class MockApi:
    """A mock of the boxrun API in memory (an httpx.MockTransport handler): jobs that complete
    after `polls_to_finish` reads, uploads by SHA-256, a log stream that drops once, artifacts
    behind a redirect to a mock store, job lists with or without `next_cursor` (old API)."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self.uploads: dict[str, bytes] = {}
        self.jobs: dict[str, dict[str, Any]] = {}
        self.reads: dict[str, int] = {}
        self.polls_to_finish = 2
        self.lines = [line(1), line(2, "stderr"), line(3), line(4, "stderr"), line(5)]
        self.stream_calls: list[str | None] = []
        self.artifact = b"artifact bytes " * 1000
        self.stored = self.artifact  # what the store serves (a test corrupts it)
        self.cursor_api = True
        self.listing = [job_json(f"j{i:02d}", "completed") for i in range(7)]

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    async def handle(self, request: httpx.Request) -> httpx.Response:
        await request.aread()
        self.requests.append(request)
        path, method = request.url.path, request.method
        params = parse_qs(request.url.query.decode())
        if request.url.host == "storage.test":
            assert "authorization" not in request.headers  # no API token sent to the store
            return httpx.Response(200, content=self.stored)
        if path == "/api/files" and method == "POST":
            body = request.content
            if hashlib.sha256(body).hexdigest() != params["sha256"][0]:
                return httpx.Response(422, json={"detail": "the body does not hash to sha256"})
            self.uploads[params["sha256"][0]] = body
            return httpx.Response(201, json={"sha256": params["sha256"][0], "size": len(body)})
        if path == "/api/jobs" and method == "POST":
            spec = json.loads(request.content)
            if spec.get("box") == "nope":
                return httpx.Response(422, json={"detail": "no box named 'nope'", "errors": [{"field": "body.box"}]})
            job_id = f"job-{len(self.jobs) + 1}"
            self.jobs[job_id] = {"spec": spec, "json": job_json(job_id)}
            return httpx.Response(201, json=self.jobs[job_id]["json"])
        if path == "/api/jobs" and method == "GET":
            return self.list_jobs(params)
        parts = path.split("/")  # "", "api", "jobs", id, ...
        if parts[:3] == ["", "api", "jobs"] and len(parts) >= 4:
            job_id = parts[3]
            if job_id not in self.jobs:
                return httpx.Response(404, json={"detail": "no such job"})
            return self.job_route(job_id, parts[4:], method, params, request)
        return httpx.Response(404, json={"detail": f"mock has no {method} {path}"})

    def list_jobs(self, params: dict[str, list[str]]) -> httpx.Response:
        limit = int(params["limit"][0])
        start = int(params["cursor"][0]) if "cursor" in params else int(params.get("offset", ["0"])[0])
        page = self.listing[start : start + limit]
        body: dict[str, Any] = {"data": page, "count": len(self.listing)}
        if self.cursor_api:
            body["next_cursor"] = str(start + limit) if start + limit < len(self.listing) else None
        return httpx.Response(200, json=body)

    def job_route(
        self, job_id: str, rest: list[str], method: str, params: dict[str, list[str]], request: httpx.Request
    ) -> httpx.Response:
        job = self.jobs[job_id]["json"]
        if not rest:
            self.reads[job_id] = self.reads.get(job_id, 0) + 1
            if self.reads[job_id] > self.polls_to_finish and job["state"] == "queued":
                job.update(state="completed", exit_code=0)
            return httpx.Response(200, json=job)
        if rest == ["cancel"]:
            job.update(state="cancelled")
            return httpx.Response(202, json=job)
        if rest == ["logs"]:  # as the API: ?stream= filters; ?tail= answers the last N, never with after/limit
            lines = [x for x in self.lines if "stream" not in params or x["stream"] == params["stream"][0]]
            if "tail" in params:
                if "after" in params or "limit" in params:
                    return httpx.Response(422, json={"detail": "give tail, or after/limit, not both"})
                return httpx.Response(200, json={"data": lines[-int(params["tail"][0]) :]})
            after, limit = int(params["after"][0]), int(params["limit"][0])
            return httpx.Response(200, json={"data": [x for x in lines if x["seq"] > after][:limit]})
        if rest == ["logs", "stream"]:
            after = int(request.headers["last-event-id"])
            self.stream_calls.append(request.headers["last-event-id"])
            todo = [x for x in self.lines if x["seq"] > after]
            if len(self.stream_calls) == 1:  # the connection breaks after three lines
                return httpx.Response(200, content=sse([("log", x, x["seq"]) for x in todo[:3]]))
            job.update(state="completed", exit_code=0)
            events = [("log", x, x["seq"]) for x in todo] + [("done", {"state": "completed", "last_seq": 5}, None)]
            return httpx.Response(200, content=sse(events))
        if rest == ["artifacts"]:
            entry = {
                "path": "out/report.bin",
                "size": len(self.artifact),
                "sha256": hashlib.sha256(self.artifact).hexdigest(),
            }
            return httpx.Response(200, json={"data": [entry], "count": 1})
        if rest[0] == "artifacts":
            if "/".join(rest[1:]) != "out/report.bin":
                return httpx.Response(404, json={"detail": "no such artifact"})
            return httpx.Response(307, headers={"location": f"{STORAGE}/bucket/obj?X-Amz-Signature=x"})
        return httpx.Response(404, json={"detail": "mock: no such route"})


@pytest.fixture
def mock_api() -> MockApi:
    return MockApi()


@pytest.fixture
def client(mock_api: MockApi):
    with Client(URL, "tok", transport=mock_api.transport()) as c:
        yield c


def test_the_facade_is_generated_not_written() -> None:
    """Every public coroutine and async iterator of the async resources and handles is a plain
    (blocking) callable on its sync face, and the sync module defines no resource method."""
    mock = MockApi()
    with Client(URL, "tok", transport=mock.transport()) as c:
        for resource in ("jobs", "pipelines", "boxes", "users", "tokens", "audit", "secrets"):
            sync_face = getattr(c, resource)
            assert isinstance(sync_face, Sync)
            async_face = getattr(c.aio, resource)
            for name, member in inspect.getmembers(type(async_face)):
                if name.startswith("_"):
                    continue
                if inspect.iscoroutinefunction(member) or inspect.isasyncgenfunction(member):
                    blocking = getattr(sync_face, name)
                    assert callable(blocking)
                    assert not inspect.iscoroutinefunction(blocking)
                    assert not inspect.isasyncgenfunction(blocking)
                    assert blocking.__doc__ == member.__doc__
        for cls in (aio.Job, aio.Pipeline):  # the handles too: each async method is wrapped
            assert any(inspect.iscoroutinefunction(m) for _, m in inspect.getmembers(cls))
    from boxrun.sdk import sync

    assert "def submit" not in inspect.getsource(sync)


def test_submit_uploads_bytes_and_paths_and_sends_text_inline(client, mock_api: MockApi, tmp_path: Path) -> None:
    blob = tmp_path / "fw.bin"
    blob.write_bytes(bytes(range(256)) * 5000)  # over one read chunk: streamed in pieces
    job = client.jobs.submit(
        "sh run.sh",
        box="local-1",
        files={"run.sh": "echo hi\n", "data.bin": b"\x00\x01\x02", "fw.bin": blob},
        env={"A": "1"},
        timeout_s=30,
        labels={"team": "hw"},
    )
    assert job.id == "job-1" and job.state is JobState.QUEUED
    spec = mock_api.jobs["job-1"]["spec"]
    assert spec["files"]["run.sh"] == "echo hi\n"
    assert spec["files"]["data.bin"] == {"sha256": hashlib.sha256(b"\x00\x01\x02").hexdigest(), "size": 3}
    fw = blob.read_bytes()
    assert spec["files"]["fw.bin"] == {"sha256": hashlib.sha256(fw).hexdigest(), "size": len(fw)}
    assert mock_api.uploads[hashlib.sha256(fw).hexdigest()] == fw
    assert spec["env"] == {"A": "1"} and spec["timeout_s"] == 30 and spec["labels"] == {"team": "hw"}
    assert "lock" not in spec  # only what was given is sent


def test_submit_is_checked_before_any_upload(client, mock_api: MockApi) -> None:
    with pytest.raises(InvalidInput) as neither:
        client.jobs.submit("true", files={"a.bin": b"x"})
    assert "exactly one of 'box' or 'box_group'" in neither.value.reason
    with pytest.raises(InvalidInput) as bad_kind:
        client.jobs.submit("true", box="b", files={"a": 5})
    assert bad_kind.value.field == "files.a"
    assert not mock_api.uploads


def test_errors_are_typed_with_the_apis_reason_and_field(client) -> None:
    with pytest.raises(NotFound, match="no such job"):
        client.jobs.get("missing")
    with pytest.raises(ValidationError) as refused:  # ValidationError is InvalidInput
        client.jobs.submit("true", box="nope")
    assert refused.value.field == "body.box" and refused.value.reason == "no box named 'nope'"


def test_wait_polls_until_the_job_ends(client, mock_api: MockApi) -> None:
    job = client.jobs.submit("true", box="local-1")
    done = job.wait(timeout=10)
    assert done.state is JobState.COMPLETED and done.ok and done.exit_code == 0
    assert mock_api.reads["job-1"] == 3


def test_wait_times_out(client, mock_api: MockApi) -> None:
    mock_api.polls_to_finish = 10**9
    job = client.jobs.submit("true", box="local-1")
    with pytest.raises(TimeoutError, match="still queued"):
        job.wait(timeout=0.3)


def test_follow_resumes_exactly_after_a_dropped_connection(client, mock_api: MockApi) -> None:
    job = client.jobs.submit("true", box="local-1")
    seqs = [ln.seq for ln in job.follow()]
    assert seqs == [1, 2, 3, 4, 5]
    assert mock_api.stream_calls == ["0", "3"]
    assert job.state is JobState.COMPLETED  # refreshed at the end


def test_follow_of_one_stream(client, mock_api: MockApi) -> None:
    job = client.jobs.submit("true", box="local-1")
    assert [ln.seq for ln in job.follow(stream="stderr")] == [2, 4]


def test_leaving_follow_early_closes_the_stream(client, mock_api: MockApi) -> None:
    job = client.jobs.submit("true", box="local-1")
    lines = job.follow()
    assert next(lines).seq == 1
    lines.close()  # no error, and the client still works
    assert client.jobs.get(job.id).id == job.id


def test_logs_by_stream_and_tail(client, mock_api: MockApi) -> None:
    job = client.jobs.submit("true", box="local-1")
    assert [ln.seq for ln in job.logs()] == [1, 2, 3, 4, 5]
    assert [ln.seq for ln in job.logs(stream="stderr")] == [2, 4]
    assert [ln.seq for ln in job.logs(tail=2)] == [4, 5]
    assert [ln.seq for ln in job.logs(stream="stdout", tail=1)] == [5]
    assert job.logs(tail=0) == []
    sent = [parse_qs(r.url.query.decode()) for r in mock_api.requests if r.url.path.endswith("/logs")]
    assert {"stream": ["stderr"]}.items() <= sent[1].items()
    assert sent[2] == {"tail": ["2"]}  # one request, no after/limit (the API refuses both together)


def test_download_checks_the_sha256(client, mock_api: MockApi, tmp_path: Path) -> None:
    job = client.jobs.submit("true", box="local-1")
    seen: list[tuple[int, int]] = []
    got = job.download("out/report.bin", to=tmp_path, progress=lambda done, total: seen.append((done, total)))
    assert got == tmp_path / "report.bin" and got.read_bytes() == mock_api.artifact
    assert seen[-1] == (len(mock_api.artifact), len(mock_api.artifact))
    named = job.download("out/report.bin", to=tmp_path / "sub" / "named.bin")
    assert named.read_bytes() == mock_api.artifact

    mock_api.stored = mock_api.artifact[:-1] + b"!"
    with pytest.raises(IntegrityError, match="expected"):
        job.download("out/report.bin", to=tmp_path / "bad.bin")
    assert not (tmp_path / "bad.bin").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".part")]
    with pytest.raises(NotFound, match="no artifact"):
        job.download("nope.txt", to=tmp_path)


def test_list_is_lazy_and_follows_the_cursor(client, mock_api: MockApi) -> None:
    jobs = client.jobs.list(page_size=3)
    first = [next(jobs).id for _ in range(2)]
    assert first == ["j00", "j01"]
    asked = [r for r in mock_api.requests if r.url.path == "/api/jobs"]
    assert len(asked) == 1  # one page read so far
    rest = [j.id for j in jobs]
    assert first + rest == [f"j{i:02d}" for i in range(7)]
    queries = [parse_qs(r.url.query.decode()) for r in mock_api.requests if r.url.path == "/api/jobs"]
    assert [q.get("cursor") for q in queries] == [None, ["3"], ["6"]]


def test_list_pages_by_offset_on_an_api_without_cursor(client, mock_api: MockApi) -> None:
    mock_api.cursor_api = False
    assert [j.id for j in client.jobs.list(page_size=3)] == [f"j{i:02d}" for i in range(7)]
    assert [j.id for j in client.jobs.list(page_size=3, limit=4)] == ["j00", "j01", "j02", "j03"]


def test_list_filters_are_sent_and_checked_here(client, mock_api: MockApi) -> None:
    from datetime import UTC, datetime

    mock_api.listing = [
        job_json("new", "completed", created_at="2026-12-01T12:00:00Z", labels={"team": "hw"}),
        job_json("old", "completed", created_at="2026-11-01T12:00:00Z", labels={"team": "hw"}),
        job_json("other", "completed", created_at="2026-12-01T12:00:00Z", labels={"team": "sw"}),
    ]
    got = client.jobs.list(mine=True, since=datetime(2026, 12, 1, tzinfo=UTC), labels={"team": "hw"}, state="completed")
    assert [j.id for j in got] == ["new"]
    query = parse_qs(mock_api.requests[-1].url.query.decode())
    assert query["owner"] == ["me"] and query["label"] == ["team:hw"] and query["state"] == ["completed"]
    assert query["since"] == ["2026-12-01T00:00:00+00:00"]


def test_handles_read_the_models_fields(client) -> None:
    job = client.jobs.submit("true", box="local-1")
    assert job.owner == "tester" and job.model.box == "local-1"
    assert "job-1" in repr(job)
    with pytest.raises(AttributeError):
        job.no_such_field
    with pytest.raises(AttributeError, match="read-only"):
        job.state = "x"


def test_the_sync_client_works_inside_a_running_event_loop(mock_api: MockApi) -> None:
    """As in a notebook: the facade's loop is its own, in its own thread."""

    async def main() -> str:
        with Client(URL, "tok", transport=mock_api.transport()) as c:
            return c.jobs.submit("true", box="local-1").wait(timeout=10).state

    assert asyncio.run(main()) == JobState.COMPLETED


def test_a_closed_client_says_so(mock_api: MockApi) -> None:
    c = Client(URL, "tok", transport=mock_api.transport())
    c.close()
    c.close()  # twice is fine
    with pytest.raises(RuntimeError, match="closed"):
        c.jobs.get("job-1")


async def test_the_async_client_is_the_same_code(mock_api: MockApi) -> None:
    async with AsyncClient(URL, "tok", transport=mock_api.transport()) as c:
        job = await c.jobs.submit("true", box="local-1")
        assert isinstance(job, Job)
        assert [ln.seq async for ln in job.follow()] == [1, 2, 3, 4, 5]
        assert (await job.cancel()).state is JobState.CANCELLED


def test_an_unreachable_api_is_one_line_with_the_url() -> None:
    from boxrun.errors import Unavailable

    with Client("http://127.0.0.1:9", "tok") as c, pytest.raises(Unavailable) as down:
        c.jobs.get("x")
    assert "http://127.0.0.1:9/api/jobs/x" in down.value.reason
    assert isinstance(down.value, BoxrunError)


def test_pipeline_definitions_are_sent_as_given(tmp_path: Path) -> None:
    assert aio._definition({"steps": {}}) == (b'{"steps": {}}', "application/json")
    yaml_text = "steps:\n  a:\n    box: b\n    script: true\n"
    assert aio._definition(yaml_text) == (yaml_text.encode(), "application/yaml")
    f = tmp_path / "p.yaml"
    f.write_text(yaml_text)
    assert aio._definition(f) == (yaml_text.encode(), "application/yaml")
    assert aio._definition(str(f)) == (yaml_text.encode(), "application/yaml")
    j = tmp_path / "p.json"
    j.write_text("{}")
    assert aio._definition(j) == (b"{}", "application/json")
    with pytest.raises(InvalidInput):
        aio._definition(42)  # type: ignore[arg-type]


def pipeline_json(state: str) -> dict[str, Any]:
    return {
        "id": "p1",
        "name": "demo",
        "state": state,
        "owner": "tester",
        "error": None,
        "rerun_of": None,
        "timeout_s": 600,
        "created_at": "2026-12-01T10:00:00Z",
        "started_at": None,
        "finished_at": None,
        "temporal_ui_url": "http://ui.test",
        "steps": [{"name": "a", "state": "completed", "needs": [], "attempts": [], "job_id": "job-9"}],
    }


def test_pipeline_follow_resumes_and_wait_ends(mock_api: MockApi) -> None:
    calls: list[str] = []

    async def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/api/pipelines/p1/events":
            calls.append(request.headers["last-event-id"])
            ev = {"id": 1, "step": "a", "state": "running", "at": "2026-12-01T10:00:01Z", "detail": {}}
            if len(calls) == 1:
                return httpx.Response(200, content=sse([("step", ev, 1)]))  # dropped after one event
            ev2 = {**ev, "id": 2, "state": "completed"}
            end = {"id": 3, "step": None, "state": "completed", "at": "2026-12-01T10:00:02Z", "detail": {}}
            done = {"state": "completed", "error": None}
            return httpx.Response(200, content=sse([("step", ev2, 2), ("pipeline", end, 3), ("done", done, None)]))
        if request.url.path == "/api/pipelines/p1":
            return httpx.Response(200, json=pipeline_json("completed" if len(calls) > 1 else "running"))
        if request.url.path == "/api/pipelines" and request.method == "POST":
            assert request.headers["content-type"] == "application/yaml"
            return httpx.Response(201, json=pipeline_json("queued"))
        return httpx.Response(404, json={"detail": "mock: no such route"})

    with Client(URL, "tok", transport=httpx.MockTransport(handle)) as c:
        p = c.pipelines.submit("steps:\n  a: {box: b, script: 'true'}\n")
        assert isinstance(p.aio, Pipeline)
        events = [(e.step, e.state) for e in p.follow()]
        assert events == [("a", "running"), ("a", "completed"), (None, "completed")]
        assert calls == ["0", "1"] and p.ok and p.step("a").job_id == "job-9"
        assert p.wait(timeout=5).ok


def test_offset_pages_give_a_job_once_when_jobs_arrive_meanwhile(client, mock_api: MockApi) -> None:
    mock_api.cursor_api = False
    jobs = client.jobs.list(page_size=3)
    first = [next(jobs).id for _ in range(3)]
    mock_api.listing.insert(0, job_json("newer", "queued"))  # newest first: the rest shift by one
    assert first + [j.id for j in jobs] == [f"j{i:02d}" for i in range(7)]
