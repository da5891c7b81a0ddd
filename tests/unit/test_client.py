"""boxrun.client against an in-process mock of the API (httpx.MockTransport): error answers become
boxrun.errors classes, an unreachable API is Unavailable, and `follow` resumes after a drop.
(The client against the real app is covered by the e2e suites.)"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable

import httpx
import pytest

from boxrun import logcontext
from boxrun.client import (
    AgentClient,
    BoxrunClient,
    DoneEvent,
    DroppedEvent,
    LogBatchRefused,
    LogEvent,
    StateEvent,
)
from boxrun.constants import JobState
from boxrun.errors import (
    BoxrunError,
    Conflict,
    Forbidden,
    Gone,
    InvalidInput,
    NotFound,
    TooLarge,
    Unauthorized,
    Unavailable,
)
from boxrun.schemas import JobPublic
from tests.unit.fakes import job_json as fake_job_json

URL = "http://boxrun.test"
JOB = "6f1c1d2e-0000-4000-8000-000000000001"


def job_json(state: str = "running") -> dict[str, object]:
    return fake_job_json(JOB, state, exit_code=None)


def mock_client(handler: Callable[[httpx.Request], httpx.Response]) -> BoxrunClient:
    return BoxrunClient(URL, "tok", transport=httpx.MockTransport(handler))


def answering(status: int, body: object, headers: dict[str, str] | None = None) -> BoxrunClient:
    def handler(request: httpx.Request) -> httpx.Response:
        if isinstance(body, bytes):
            return httpx.Response(status, content=body, headers=headers)
        return httpx.Response(status, json=body, headers=headers)

    return mock_client(handler)


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (401, Unauthorized),
        (403, Forbidden),
        (404, NotFound),
        (409, Conflict),
        (410, Gone),
        (413, TooLarge),
        (422, InvalidInput),
        (503, Unavailable),
    ],
)
async def test_mock_error_answer_raises_the_domain_error_with_the_api_detail(status: int, cls: type) -> None:
    body = {"detail": f"the reason for {status}", "code": "x", "errors": []}
    async with answering(status, body) as client:
        with pytest.raises(cls) as caught:
            await client.get(JOB)
    assert type(caught.value) is cls
    assert isinstance(caught.value, BoxrunError) and caught.value.reason == f"the reason for {status}"


async def test_mock_invalid_input_names_the_first_field() -> None:
    body = {
        "detail": "query.offset: too large (and 1 more)",
        "code": "invalid_input",
        "errors": [{"field": "query.offset", "message": "too large"}, {"field": "query.limit", "message": "x"}],
    }
    async with answering(422, body) as client:
        with pytest.raises(InvalidInput) as caught:
            await client.list_jobs(offset=1)
    assert caught.value.field == "query.offset"
    assert caught.value.reason == "query.offset: too large (and 1 more)"


async def test_mock_older_and_non_json_error_bodies() -> None:
    async with answering(404, {"detail": "job x not found"}) as client:  # before ErrorBody
        with pytest.raises(NotFound, match="job x not found"):
            await client.get(JOB)
    async with answering(502, b"<html>bad gateway</html>") as client:
        with pytest.raises(Unavailable, match="HTTP 502"):
            await client.get(JOB)
    async with answering(500, {"detail": "boom", "code": "error"}) as client:
        with pytest.raises(BoxrunError, match="boom") as caught:
            await client.get(JOB)
        assert type(caught.value) is BoxrunError
    async with answering(503, {"detail": "database unavailable"}, {"Retry-After": "7"}) as client:
        with pytest.raises(Unavailable) as unavailable:
            await client.health()
        assert unavailable.value.retry_after_s == 7


async def test_mock_unreachable_api_is_unavailable_naming_the_url() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    async with mock_client(refuse) as client:
        with pytest.raises(Unavailable) as caught:
            await client.get(JOB)
    message = str(caught.value)
    assert f"{URL}/api/jobs/{JOB}" in message and "connection refused" in message
    assert "\n" not in message


async def test_mock_answers_are_models_and_requests_carry_the_token() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(201, json=job_json("queued"))

    async with mock_client(handler) as client:
        job = await client.submit(box="local-1", script="pass", env={"A": "1"})
    assert isinstance(job, JobPublic) and job.state == "queued"
    assert seen[0].headers["authorization"] == "Bearer tok"
    assert json.loads(seen[0].content) == {"box": "local-1", "script": "pass", "env": {"A": "1"}}


async def test_mock_submit_refuses_an_invalid_spec_before_sending() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise AssertionError("nothing may be sent")

    async with mock_client(handler) as client:
        with pytest.raises(InvalidInput) as caught:
            await client.submit(box="local-1", script="pass", timeout_s=0)
    assert caught.value.field == "body.timeout_s"


# --------------------------------------------------------------------------- SSE


def log_event(seq: int) -> bytes:
    line = {"seq": seq, "ts": "2026-12-01T10:00:00Z", "stream": "stdout", "text": f"line {seq}"}
    return f"id: {seq}\nevent: log\ndata: {json.dumps(line)}\n\n".encode()


def event(name: str, data: dict[str, object]) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()


class BreakingStream(httpx.AsyncByteStream):
    """Sends its chunks, then the connection breaks (no `done`)."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks:
            yield chunk
        raise httpx.ReadError("connection reset by peer")


def sse(stream: httpx.AsyncByteStream | bytes) -> httpx.Response:
    headers = {"content-type": "text/event-stream"}
    if isinstance(stream, bytes):
        return httpx.Response(200, content=stream, headers=headers)
    return httpx.Response(200, stream=stream, headers=headers)


async def test_mock_follow_resumes_after_a_broken_connection_with_last_event_id() -> None:
    asked: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        asked.append(request.headers.get("last-event-id"))
        if len(asked) == 1:
            return sse(
                BreakingStream([event("state", {"state": "running"}), log_event(1) + log_event(2), log_event(3)])
            )
        if len(asked) == 2:
            raise httpx.ConnectError("connection refused", request=request)  # the API restarts
        return sse(
            b": keepalive\n\n" + log_event(4) + log_event(5) + event("done", {"state": "completed", "last_seq": 5})
        )

    async with mock_client(handler) as client:
        got = [ev async for ev in client.follow(JOB, retry_s=0.01)]
    assert asked == ["0", "3", "3"]
    assert got[0] == StateEvent(JobState.RUNNING)
    assert [ev.line.seq for ev in got if isinstance(ev, LogEvent)] == [1, 2, 3, 4, 5]
    dropped = [ev for ev in got if isinstance(ev, DroppedEvent)]
    assert len(dropped) == 1 and dropped[0].resume_after == 3 and "connection reset" in dropped[0].reason
    assert got.index(dropped[0]) == 4  # after line 3, before line 4
    assert got[-1] == DoneEvent(JobState.COMPLETED, 5)


class CancelBreaksStream(httpx.AsyncByteStream):
    """Sends one line, then waits; a cancel landing in that wait surfaces as a transport error
    (as closing a real connection mid-read can)."""

    def __init__(self, started: asyncio.Event) -> None:
        self.started = started

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield log_event(1)
        self.started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            raise httpx.ReadError("connection closed while reading") from None
        yield b""  # never reached


async def test_mock_a_cancel_that_breaks_the_stream_ends_following() -> None:
    """Ctrl-C in `boxrun run` / `logs --follow` cancels the follower: it must end, not take the
    broken stream for an outage and reconnect (the CLI then never exits)."""
    connects: list[asyncio.Event] = []

    def handler(request: httpx.Request) -> httpx.Response:
        connects.append(asyncio.Event())
        return sse(CancelBreaksStream(connects[-1]))

    async with mock_client(handler) as client:

        async def follow() -> None:
            async for _ in client.follow(JOB, retry_s=0.01):
                pass

        task = asyncio.create_task(follow())
        await asyncio.wait_for(asyncio.shield(_first_set(connects)), 10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, 10)
    assert len(connects) == 1, "no reconnect after the cancel"


async def _first_set(events: list[asyncio.Event]) -> None:
    while not events:
        await asyncio.sleep(0.01)
    await events[0].wait()


async def test_mock_follow_resumes_after_the_server_drops_a_slow_follower() -> None:
    asked: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        asked.append(request.headers.get("last-event-id"))
        if len(asked) == 1:
            dropped = event("dropped", {"reason": "follower too slow", "resume_after": 2})
            return sse(log_event(1) + log_event(2) + dropped)
        return sse(log_event(3) + event("done", {"state": "failed", "last_seq": 3}))

    async with mock_client(handler) as client:
        got = [ev async for ev in client.follow(JOB, after=0, retry_s=5)]  # no wait before a resume
    assert asked == ["0", "2"]
    assert got == [
        LogEvent(got[0].line),  # type: ignore[union-attr]
        LogEvent(got[1].line),  # type: ignore[union-attr]
        DroppedEvent("follower too slow", 2),
        LogEvent(got[3].line),  # type: ignore[union-attr]
        DoneEvent(JobState.FAILED, 3),
    ]
    assert [ev.line.seq for ev in got if isinstance(ev, LogEvent)] == [1, 2, 3]


async def test_mock_follow_raises_a_client_error_at_once() -> None:
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return httpx.Response(404, json={"detail": f"job {JOB} not found", "code": "not_found", "errors": []})

    async with mock_client(handler) as client:
        with pytest.raises(NotFound, match="not found"):
            async for _ in client.follow(JOB):
                pass
    assert calls == 1


async def test_mock_follow_gives_up_when_the_api_stays_away() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    async with mock_client(refuse) as client:
        with pytest.raises(Unavailable, match="cannot reach the boxrun API"):
            async for _ in client.follow(JOB, retry_s=0.01, reconnect_for_s=0.1):
                pass


# --------------------------------------------------------------------------- the agent's face


def agent_answering(status: int, body: dict[str, object]) -> AgentClient:
    return AgentClient(URL, "node", transport=httpx.MockTransport(lambda request: httpx.Response(status, json=body)))


async def test_mock_agent_log_batch_permanent_refusal_and_retriable_errors() -> None:
    async with agent_answering(200, {"stored_through": 7}) as agent:
        assert await agent.send_logs(JOB, 5, [(3, "stdout", 1.0)], b"a\nb\nc\n") == 7
    async with agent_answering(403, {"detail": "not placed on this box"}) as agent:
        with pytest.raises(LogBatchRefused, match="HTTP 403 not placed on this box"):
            await agent.send_logs(JOB, 1, [(1, "stdout", 1.0)], b"a\n")
    for status, cls in ((429, Unavailable), (408, Unavailable), (503, Unavailable), (500, BoxrunError)):
        async with agent_answering(status, {"detail": "later"}) as agent:
            with pytest.raises(cls) as caught:
                await agent.send_logs(JOB, 1, [(1, "stdout", 1.0)], b"a\n")
            assert not isinstance(caught.value, LogBatchRefused)


async def test_mock_agent_claim_answers_the_bundle_refusals_raise() -> None:
    bundle = {"script": "print(1)", "env": {"A": "1"}, "files": [], "timeout_s": 60, "cancel_grace_s": 10}
    async with agent_answering(200, {"job_id": JOB, "bundle": bundle}) as agent:
        got = await agent.claim(JOB)
        assert (got.script, got.env, got.timeout_s) == ("print(1)", {"A": "1"}, 60)
    for status, cls in ((404, NotFound), (409, Conflict), (401, Unauthorized)):
        async with agent_answering(status, {"detail": f"refused {status}"}) as agent:
            with pytest.raises(cls):
                await agent.claim(JOB)


def test_the_client_needs_no_server_dependency() -> None:
    """A box installs boxrun[agent]: the client must not pull temporalio, asyncpg, boto3, fastapi."""
    import subprocess
    import sys

    code = (
        "import sys, boxrun.client, boxrun.client.agent, boxrun.client.api\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'temporalio', 'asyncpg', 'boto3', 'fastapi'}))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


async def test_calls_inside_a_request_id_context_carry_it() -> None:
    """An agent runs each job inside its submission's request id (the bundle names it): every call
    it makes about the job carries X-Request-ID, and calls outside any such context carry none."""
    seen: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("x-request-id"))
        return httpx.Response(200, json={})

    async with AgentClient(URL, "node", transport=httpx.MockTransport(handler)) as agent:
        await agent.send("POST", f"/api/agent/jobs/{JOB}/result")
        with logcontext.bound(job_id=JOB, request_id="trace-7"):
            await agent.send("POST", f"/api/agent/jobs/{JOB}/result")
            await agent.send("GET", "/x", headers={"X-Request-ID": "given"})  # a caller's own wins
    assert seen == [None, "trace-7", "given"]
