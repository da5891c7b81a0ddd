"""Attacks on outgoing webhooks (issue 13), as a hostile user, a hostile receiver and a hostile DNS
answer would make them: targets that dress up a private address, a name that changes its answer
between the check and the connection, receivers that answer with NUL bytes, huge or endless bodies,
redirects or nothing at all, and ids of another webhook or org. Each test fails when its defence
is missing (docs/webhooks.md)."""

from __future__ import annotations

import asyncio
import gzip
import socket
import time
import tracemalloc
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import httpx
import pytest
from fastapi import FastAPI
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment, WorkflowEnvironment

from boxrun.activities.webhooks import MAX_RESPONSE, WebhookActivities
from boxrun.api.app import create_app
from boxrun.constants import JobState
from boxrun.messages import DeliveryInput
from boxrun.services.identity import Role
from boxrun.settings import Settings
from boxrun.transitions import transition
from tests.api.conftest import ADMIN_TOKEN
from tests.api.helpers import assert_error
from tests.api.people_fixtures import add_org, add_user
from tests.api.test_webhooks import (  # noqa: F401 (hooks_app, hooks_api: fixtures)
    _client,
    create_hook,
    deliveries,
    hooks_api,
    hooks_app,
    insert_queued_job,
)

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


# ---------------------------------------------------------------- hostile users: where a URL may point


@pytest.mark.parametrize(
    "url",
    [
        "http://0x7f.1/",  # inet_aton forms: hex, shortened, decimal, octal
        "http://127.1/",
        "http://2130706433/",
        "http://017700000001/",
        "http://0/",
        "http://0.0.0.0:8080/",
        "http://[::ffff:127.0.0.1]/",  # IPv4-mapped IPv6
        "http://[::ffff:a00:1]/",
        "http://[::127.0.0.1]/",  # IPv4-compatible (deprecated)
        "http://[::]/",
        "http://[fe80::1%25eth0]/",  # link-local with a zone
        "http://[fc00::1]/",
        "http://100.64.0.1/",  # carrier-grade NAT: not global
        "http://169.254.169.254/latest/meta-data/",
        "http://[2002:7f00:1::1]/",  # 6to4 of 127.0.0.1
        "http://[2002:a9fe:a9fe::]/",  # 6to4 of 169.254.169.254
        "http://[64:ff9b::7f00:1]/",  # NAT64 (well-known prefix) of 127.0.0.1
        "http://[64:ff9b:1::a00:1]/",  # NAT64 (local-use prefix) of 10.0.0.1
        "http://[2001:0:4136:e378:8000:63bf:80ff:fffe]/",  # Teredo
        "http://localhost./",
        "http://LOCALHOST/",
        "http://ｌｏｃａｌｈｏｓｔ/",  # fullwidth letters: IDNA maps them to localhost
        "http://127。0。0。1/",  # ideographic full stops: IDNA maps them to dots
        "http://224.0.0.1/",
        "http://255.255.255.255/",
    ],
)
async def test_a_private_target_in_disguise_is_refused_at_creation(api: httpx.AsyncClient, url: str) -> None:
    resp = await api.post("/api/webhooks", json={"url": url, "events": ["job.failed"]})
    assert_error(resp, 422, "invalid_input", field="body.url")
    assert (await api.get("/api/webhooks")).json() == {"data": []}


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://user@93.184.216.34/", "user or password"),
        ("http://user:pw@93.184.216.34/", "user or password"),
        ("http://93.184.216.34\\@10.0.0.1/", "user or password"),  # parsers disagree on '\'
        ("http://93.184.216.34:80@10.0.0.1/", "user or password"),
        ("ftp://93.184.216.34/", "http:// or https://"),
        ("file:///etc/passwd", "http:// or https://"),
        ("gopher://93.184.216.34:25/_HELO", "http:// or https://"),
        ("javascript:alert(1)", "http:// or https://"),
        ("//93.184.216.34/", "http:// or https://"),
        ("http:///nohost", "no host"),
        ("http://93.184.216.34:99999/", "not a URL"),
        ("http://93.184.216.34/a b", "spaces or control"),
        ("http://93.184.216.34/\t", "spaces or control"),
    ],
)
async def test_userinfo_schemes_and_garbage_are_refused(api: httpx.AsyncClient, url: str, why: str) -> None:
    resp = await api.post("/api/webhooks", json={"url": url, "events": ["job.failed"]})
    assert_error(resp, 422, "invalid_input", detail=why, field="body.url")


async def test_hostile_bodies_are_4xx_never_500(api: httpx.AsyncClient) -> None:
    good = "http://93.184.216.34/"
    cases: list[Any] = [
        {"url": good, "events": ["job.failed"] * 10_000},
        {"url": good, "events": ["job.failed", "job.failed"]},
        {"url": good, "events": ["job.exploded"]},
        {"url": good, "events": []},
        {"url": good + "x" * 3000, "events": ["job.failed"]},
        {"url": good + "\u0000", "events": ["job.failed"]},
        {"url": [good], "events": ["job.failed"]},
        {"url": good, "events": "job.failed"},
        {"url": good, "events": ["job.failed"], "secret": "mine"},  # no choosing one's own secret
    ]
    for body in cases:
        resp = await api.post("/api/webhooks", json=body)
        assert_error(resp, 422, "invalid_input")
    for raw in (b'{"url": "http://93.184.216.34/\\ud800", "events": ["job.failed"]}', b'{"url": ', b"\xff\xfe"):
        resp = await api.post("/api/webhooks", content=raw, headers={"Content-Type": "application/json"})
        assert_error(resp, 422, "invalid_input")
    resp = await api.post("/api/webhooks", json={"url": good, "events": ["job.failed"], "pad": "x" * (2 << 20)})
    assert resp.status_code == 413, resp.text
    assert (await api.get("/api/webhooks")).json() == {"data": []}


# ---------------------------------------------------------------- hostile DNS: the answer changes


def fake_dns(monkeypatch: pytest.MonkeyPatch, answers: dict[str, list[list[str]]]) -> dict[str, int]:
    """socket.getaddrinfo answering the names of `answers` with their next list of addresses (the
    last one repeats); every other name as usual. Returns how often each fake name was asked."""
    real = socket.getaddrinfo
    asked: dict[str, int] = {}

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else host
        if name not in answers:
            return real(host, port, *args, **kwargs)
        n = asked.get(name, 0)
        asked[name] = n + 1
        addrs = answers[name][min(n, len(answers[name]) - 1)]
        out = []
        for addr in addrs:
            if ":" in addr:
                out.append((socket.AF_INET6, socket.SOCK_STREAM, 6, "", (addr, int(port or 0), 0, 0)))
            else:
                out.append((socket.AF_INET, socket.SOCK_STREAM, 6, "", (addr, int(port or 0))))
        return out

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return asked


async def test_a_name_with_one_private_address_among_public_ones_is_refused_whole(
    api: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_dns(monkeypatch, {"mixed.boxrun.test": [["93.184.216.34", "10.0.0.5"]]})
    resp = await api.post("/api/webhooks", json={"url": "http://mixed.boxrun.test/", "events": ["job.failed"]})
    assert_error(resp, 422, "invalid_input", detail="mixed.boxrun.test resolves to 10.0.0.5", field="body.url")


async def test_rebinding_the_delivery_connects_to_the_address_it_checked(
    hooks_app: FastAPI,  # noqa: F811
    hooks_api: httpx.AsyncClient,  # noqa: F811
    db: asyncpg.Connection,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The name answers loopback (allowed here) to the creation's and the delivery's check, and an
    unroutable address to anyone asking after that: a delivery that let the HTTP client resolve
    the name again would connect there and time out. It must reach the checked address, with the
    URL's host in Host."""
    got: list[bytes] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        got.append(await read_request(reader))
        await respond(writer, 200, b"ok")

    async with raw_server(answer) as port:
        asked = fake_dns(monkeypatch, {"rebind.boxrun.test": [["127.0.0.1"], ["127.0.0.1"], ["10.255.255.1"]]})
        hook = await create_hook(hooks_api, f"http://rebind.boxrun.test:{port}/hook", ["job.failed"])
        delivery = await failed_job_delivery(db)
        result = await attempt(hooks_app, delivery)
    assert result.status_code == 200
    assert asked == {"rebind.boxrun.test": 2}  # once at creation, once at the attempt: never behind the check
    assert len(got) == 1 and f"host: rebind.boxrun.test:{port}\r\n".encode() in got[0].lower()
    (done,) = await deliveries(hooks_api, hook["id"])
    assert done["state"] == "delivered"


async def test_a_name_rebound_to_a_private_address_is_refused_at_the_attempt(
    hooks_app: FastAPI,  # noqa: F811
    hooks_api: httpx.AsyncClient,  # noqa: F811
    db: asyncpg.Connection,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    got: list[bytes] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        got.append(await read_request(reader))
        await respond(writer, 200, b"ok")

    async with raw_server(answer) as port:
        fake_dns(monkeypatch, {"turns.boxrun.test": [["127.0.0.1"], ["127.0.0.1", "169.254.169.254"]]})
        hook = await create_hook(hooks_api, f"http://turns.boxrun.test:{port}/", ["job.failed"])
        delivery = await failed_job_delivery(db)
        with pytest.raises(ApplicationError, match="169.254.169.254, a link-local address") as err:
            await attempt(hooks_app, delivery)
    assert not err.value.non_retryable
    assert got == []
    (pending,) = await deliveries(hooks_api, hook["id"])
    assert pending["state"] == "pending" and "link-local" in pending["attempts"][0]["error"]


# ---------------------------------------------------------------- hostile receivers


@asynccontextmanager
async def raw_server(handler: Handler) -> AsyncIterator[int]:
    """A TCP server on 127.0.0.1 running `handler` per connection; yields its port."""
    tasks: set[asyncio.Task[None]] = set()

    async def run(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        tasks.add(asyncio.current_task())  # type: ignore[arg-type]
        try:
            await handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(run, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return head + await reader.readexactly(length)


async def respond(writer: asyncio.StreamWriter, status: int, body: bytes, *, extra: str = "") -> None:
    writer.write(f"HTTP/1.1 {status} X\r\nContent-Length: {len(body)}\r\n{extra}\r\n".encode() + body)
    await writer.drain()


async def failed_job_delivery(db: asyncpg.Connection) -> str:
    """A job that failed: the trigger writes its delivery for every subscribed webhook; the newest."""
    job_id = await insert_queued_job(db, "admin")
    await transition(db, job_id, JobState.FAILED, exit_code=1, error="boom")
    return str(await db.fetchval("SELECT id FROM webhook_deliveries WHERE subject = $1", job_id))


async def attempt(app: FastAPI, delivery_id: str, *, timeout_s: float = 1.0) -> Any:
    """One deliver_webhook attempt, as the delivery workflow runs it, with a short webhook timeout."""
    settings = app.state.settings.model_copy(update={"webhook_timeout_s": timeout_s})
    hooks = WebhookActivities(app.state.pool, settings)
    return await ActivityEnvironment().run(hooks.deliver_webhook, DeliveryInput(delivery_id=delivery_id))


async def hook_at(api: httpx.AsyncClient, port: int) -> dict[str, Any]:
    return await create_hook(api, f"http://127.0.0.1:{port}/hook?token=receivers-own", ["job.failed"])


async def test_a_receiver_answering_nul_and_broken_utf8_is_recorded_and_delivered(
    hooks_app: FastAPI,  # noqa: F811
    hooks_api: httpx.AsyncClient,  # noqa: F811
    db: asyncpg.Connection,
) -> None:
    """Postgres text holds no NUL: an answer body with one must not make recording the attempt
    fail (the activity would fail after the receiver took the delivery, and the delivery would be
    sent again and again for a day, never marked delivered nor showing why)."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await respond(writer, 200, b"ok\x00\x00\xff\xfe\xc3 done")

    async with raw_server(answer) as port:
        hook = await hook_at(hooks_api, port)
        delivery = await failed_job_delivery(db)
        result = await attempt(hooks_app, delivery)
    assert result.status_code == 200
    (done,) = await deliveries(hooks_api, hook["id"])
    assert done["state"] == "delivered"
    (one,) = done["attempts"]
    assert one["status_code"] == 200 and one["response"].startswith("ok") and "\x00" not in one["response"]
    assert one["response"].endswith(" done")


async def test_a_rejecting_receiver_answering_nul_is_recorded_with_the_reason(
    hooks_app: FastAPI,  # noqa: F811
    hooks_api: httpx.AsyncClient,  # noqa: F811
    db: asyncpg.Connection,
) -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await respond(writer, 500, b"\x00" * 50)

    async with raw_server(answer) as port:
        hook = await hook_at(hooks_api, port)
        delivery = await failed_job_delivery(db)
        with pytest.raises(ApplicationError, match="HTTP 500"):
            await attempt(hooks_app, delivery)
    (pending,) = await deliveries(hooks_api, hook["id"])
    assert [a["status_code"] for a in pending["attempts"]] == [500]


async def test_a_receiver_answering_garbage_is_an_attempt_not_a_crash(
    hooks_app: FastAPI,  # noqa: F811
    hooks_api: httpx.AsyncClient,  # noqa: F811
    db: asyncpg.Connection,
) -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"\x00\x01 not http at all \x00\r\n\r\n")
        await writer.drain()

    async with raw_server(answer) as port:
        hook = await hook_at(hooks_api, port)
        delivery = await failed_job_delivery(db)
        with pytest.raises(ApplicationError) as err:
            await attempt(hooks_app, delivery)
    assert err.value.type == "WebhookUnreachable" and not err.value.non_retryable
    (pending,) = await deliveries(hooks_api, hook["id"])
    (one,) = pending["attempts"]
    assert one["status_code"] is None and one["error"] and "\x00" not in one["error"]


async def test_a_huge_answer_is_read_no_further_than_a_kib(
    hooks_app: FastAPI,  # noqa: F811
    hooks_api: httpx.AsyncClient,  # noqa: F811
    db: asyncpg.Connection,
) -> None:
    sent = 0

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal sent
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1073741824\r\n\r\n")
        chunk = b"A" * (1 << 20)
        while sent < (1 << 30):
            writer.write(chunk)
            await writer.drain()
            sent += len(chunk)

    async with raw_server(answer) as port:
        hook = await hook_at(hooks_api, port)
        delivery = await failed_job_delivery(db)
        began = time.monotonic()
        result = await attempt(hooks_app, delivery, timeout_s=5.0)
        took = time.monotonic() - began
    assert result.status_code == 200 and took < 3
    assert sent < 64 << 20  # the rest of the gigabyte was never read
    (done,) = await deliveries(hooks_api, hook["id"])
    assert done["attempts"][0]["response"] == "A" * MAX_RESPONSE


@pytest.mark.parametrize("kind", ["silent", "headers_then_nothing", "drip"])
async def test_a_receiver_that_never_finishes_is_bounded_by_the_timeout(
    hooks_app: FastAPI,  # noqa: F811
    hooks_api: httpx.AsyncClient,  # noqa: F811
    db: asyncpg.Connection,
    kind: str,
) -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        if kind == "headers_then_nothing":
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nok")
        elif kind == "drip":  # one byte of the status line every 0.2 s: each read is quick, the whole is not
            for byte in b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok":
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(0.2)
        await asyncio.sleep(3600)

    async with raw_server(answer) as port:
        hook = await hook_at(hooks_api, port)
        delivery = await failed_job_delivery(db)
        began = time.monotonic()
        with pytest.raises(ApplicationError, match="no answer within 1 s") as err:
            await attempt(hooks_app, delivery, timeout_s=1.0)
        took = time.monotonic() - began
    assert err.value.type == "WebhookTimeout" and took < 3
    (pending,) = await deliveries(hooks_api, hook["id"])
    assert pending["state"] == "pending" and pending["attempts"][0]["error"] == "no answer within 1 s"


async def test_a_redirect_is_not_followed(
    hooks_app: FastAPI,  # noqa: F811
    hooks_api: httpx.AsyncClient,  # noqa: F811
    db: asyncpg.Connection,
) -> None:
    """A receiver redirecting (307 keeps the method and body) to somewhere else: nothing is sent
    there; the attempt records the 307 and is retried like any non-2xx."""
    elsewhere: list[bytes] = []

    async def other(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        elsewhere.append(await read_request(reader))
        await respond(writer, 200, b"ok")

    async with raw_server(other) as other_port:

        async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await read_request(reader)
            await respond(writer, 307, b"", extra=f"Location: http://127.0.0.1:{other_port}/stolen\r\n")

        async with raw_server(answer) as port:
            hook = await hook_at(hooks_api, port)
            delivery = await failed_job_delivery(db)
            with pytest.raises(ApplicationError, match="redirects are not followed"):
                await attempt(hooks_app, delivery)
    assert elsewhere == []
    (pending,) = await deliveries(hooks_api, hook["id"])
    assert pending["attempts"][0]["status_code"] == 307


async def test_proxies_from_the_environment_are_not_used(
    hooks_app: FastAPI,  # noqa: F811
    hooks_api: httpx.AsyncClient,  # noqa: F811
    db: asyncpg.Connection,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A proxy in the worker's environment would see every body and signature (and could reach
    what the target check refused): deliveries ignore it."""
    via_proxy: list[bytes] = []
    direct: list[bytes] = []

    async def proxy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        via_proxy.append(await read_request(reader))
        await respond(writer, 200, b"proxied")

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        direct.append(await read_request(reader))
        await respond(writer, 200, b"ok")

    async with raw_server(proxy) as proxy_port, raw_server(answer) as port:
        for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
            monkeypatch.setenv(name, f"http://127.0.0.1:{proxy_port}")
        for name in ("NO_PROXY", "no_proxy"):
            monkeypatch.delenv(name, raising=False)
        await hook_at(hooks_api, port)
        delivery = await failed_job_delivery(db)
        await attempt(hooks_app, delivery)
    assert via_proxy == [] and len(direct) == 1


# ---------------------------------------------------------------- hostile users: other ids


async def test_another_webhooks_delivery_and_another_orgs_ids_are_404(
    hooks_app: FastAPI,  # noqa: F811
    hooks_api: httpx.AsyncClient,  # noqa: F811
    db: asyncpg.Connection,
) -> None:
    """A delivery is reached only under its own webhook: redelivering webhook B's delivery through
    webhook A (same org), or paging A with B's delivery as the cursor, names nothing; another org's
    admin gets 404 for every id; viewers and operators 403; a revoked token 401."""
    a = await create_hook(hooks_api, "http://127.0.0.1:9/a", ["job.failed"])
    b = await create_hook(hooks_api, "http://127.0.0.1:9/b", ["job.failed"])
    job_id = await insert_queued_job(db, "admin")
    await transition(db, job_id, JobState.FAILED, exit_code=1, error="boom")
    b_delivery = str(await db.fetchval("SELECT id FROM webhook_deliveries WHERE webhook_id = $1", uuid.UUID(b["id"])))
    resp = await hooks_api.post(f"/api/webhooks/{a['id']}/deliveries/{b_delivery}/redeliver")
    assert_error(resp, 404, "not_found")
    resp = await hooks_api.get(f"/api/webhooks/{a['id']}/deliveries", params={"cursor": b_delivery})
    assert_error(resp, 422, "invalid_input", field="query.cursor")
    for bad in ("not-a-uuid", "../" + a["id"], "%00", "0" * 2000):
        assert (await hooks_api.get(f"/api/webhooks/{bad}")).status_code in (404, 422)
        resp = await hooks_api.post(f"/api/webhooks/{a['id']}/deliveries/{bad}/redeliver")
        assert resp.status_code in (404, 422), resp.text

    await add_org(db, "beta")
    people = {r: await add_user(db, f"beta-{r.value}", "beta", r) for r in (Role.ADMIN, Role.OPERATOR, Role.VIEWER)}
    paths = [
        ("GET", f"/api/webhooks/{a['id']}"),
        ("DELETE", f"/api/webhooks/{a['id']}"),
        ("GET", f"/api/webhooks/{b['id']}/deliveries"),
        ("POST", f"/api/webhooks/{b['id']}/deliveries/{b_delivery}/redeliver"),
    ]
    async with _client(hooks_app, people[Role.ADMIN].token) as outsider:
        for method, path in paths:
            assert_error(await outsider.request(method, path), 404, "not_found")
        assert (await outsider.get("/api/webhooks")).json() == {"data": []}
    for role in (Role.OPERATOR, Role.VIEWER):
        async with _client(hooks_app, people[role].token) as low:
            for method, path in [*paths, ("GET", "/api/webhooks")]:
                assert_error(await low.request(method, path), 403, "forbidden")
    await db.execute("UPDATE api_tokens SET revoked_at = now() WHERE id = $1", people[Role.ADMIN].token_id)
    async with _client(hooks_app, people[Role.ADMIN].token) as revoked:
        for method, path in [*paths, ("GET", "/api/webhooks"), ("POST", "/api/webhooks")]:
            assert (await revoked.request(method, path)).status_code == 401
    # org A's webhooks and delivery are untouched
    assert len((await hooks_api.get("/api/webhooks")).json()["data"]) == 2
    assert len(await deliveries(hooks_api, b["id"])) == 1


async def test_a_name_whose_dns_never_answers_does_not_hold_the_creation(
    settings: Settings, temporal_env: WorkflowEnvironment, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Resolving at creation is bounded by webhook_timeout_s, as an attempt is: 422, not a request
    (and an executor thread) held for as long as the name's servers care to stall."""
    real = socket.getaddrinfo

    def stalling(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host in ("stall.boxrun.test", b"stall.boxrun.test"):
            time.sleep(4)
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", stalling)
    target = temporal_env.client.service_client.config.target_host
    app = create_app(
        settings.model_copy(update={"temporal_address": target, "api_token": ADMIN_TOKEN, "webhook_timeout_s": 0.5})
    )
    async with app.router.lifespan_context(app), _client(app, ADMIN_TOKEN) as api:
        began = time.monotonic()
        resp = await api.post("/api/webhooks", json={"url": "http://stall.boxrun.test/", "events": ["job.failed"]})
        took = time.monotonic() - began
    assert_error(resp, 422, "invalid_input", detail="did not resolve within 0.5 s", field="body.url")
    assert took < 2


async def test_a_compressed_answer_is_not_inflated(
    hooks_app: FastAPI,  # noqa: F811
    hooks_api: httpx.AsyncClient,  # noqa: F811
    db: asyncpg.Connection,
) -> None:
    """A gzip bomb: a few hundred KiB that inflate to 256 MiB. Decoding even one network read of it
    costs tens of MiB, per delivery in flight (a thousand activity slots): the answer is asked
    for uncompressed and kept as received, never inflated."""
    bomb = gzip.compress(b"\0" * (256 << 20), compresslevel=9)
    asked: list[bytes] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        asked.append(await read_request(reader))
        await respond(writer, 200, bomb, extra="Content-Encoding: gzip\r\n")

    async with raw_server(answer) as port:
        hook = await hook_at(hooks_api, port)
        delivery = await failed_job_delivery(db)
        tracemalloc.start()
        try:
            result = await attempt(hooks_app, delivery, timeout_s=5.0)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert result.status_code == 200
    assert peak < 8 << 20, f"{peak >> 20} MiB allocated for one attempt"
    assert b"accept-encoding: identity\r\n" in asked[0].lower()
    (done,) = await deliveries(hooks_api, hook["id"])
    assert done["state"] == "delivered" and len(done["attempts"][0]["response"]) <= MAX_RESPONSE


async def test_endless_headers_are_bounded(
    hooks_app: FastAPI,  # noqa: F811
    hooks_api: httpx.AsyncClient,  # noqa: F811
    db: asyncpg.Connection,
) -> None:
    """A receiver that sends header lines forever: refused by the HTTP parser's bound (or the
    timeout), an attempt without a status, retried; never an unbounded buffer."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\n")
        for i in range(200_000):
            writer.write(f"X-Pad-{i}: {'a' * 100}\r\n".encode())
            await writer.drain()

    async with raw_server(answer) as port:
        hook = await hook_at(hooks_api, port)
        delivery = await failed_job_delivery(db)
        began = time.monotonic()
        with pytest.raises(ApplicationError) as err:
            await attempt(hooks_app, delivery, timeout_s=2.0)
        took = time.monotonic() - began
    assert err.value.type in ("WebhookUnreachable", "WebhookTimeout") and took < 4
    (pending,) = await deliveries(hooks_api, hook["id"])
    assert pending["state"] == "pending" and pending["attempts"][0]["status_code"] is None


async def test_the_per_org_limit_holds_under_concurrent_creates(api: httpx.AsyncClient, db: asyncpg.Connection) -> None:
    """Count-then-insert in READ COMMITTED lets simultaneous creates all see 98 and all insert:
    the org's row is locked first, so exactly the two that fit get in."""
    for i in range(98):
        resp = await api.post("/api/webhooks", json={"url": f"http://93.184.216.34/{i}", "events": ["job.failed"]})
        assert resp.status_code == 201, resp.text
    burst = await asyncio.gather(
        *(
            api.post("/api/webhooks", json={"url": f"http://93.184.216.34/b{i}", "events": ["job.failed"]})
            for i in range(12)
        )
    )
    assert sorted(r.status_code for r in burst) == [201] * 2 + [409] * 10
    assert await db.fetchval("SELECT count(*) FROM webhooks WHERE org_id = 'default'") == 100


async def test_a_checked_address_that_refuses_is_followed_by_the_next_checked_one(
    hooks_app: FastAPI,  # noqa: F811
    hooks_api: httpx.AsyncClient,  # noqa: F811
    db: asyncpg.Connection,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A name with two addresses, the first refusing connections (an IPv6 address on an IPv4-only
    worker): the delivery connects to the second, checked as well, not resolved again."""
    got: list[bytes] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        got.append(await read_request(reader))
        await respond(writer, 200, b"ok")

    async with raw_server(answer) as port:  # bound to 127.0.0.1 only: 127.0.0.2 refuses
        asked = fake_dns(monkeypatch, {"two.boxrun.test": [["127.0.0.2", "127.0.0.1"]]})
        hook = await create_hook(hooks_api, f"http://two.boxrun.test:{port}/", ["job.failed"])
        delivery = await failed_job_delivery(db)
        result = await attempt(hooks_app, delivery)
    assert result.status_code == 200 and len(got) == 1 and asked == {"two.boxrun.test": 2}
    (done,) = await deliveries(hooks_api, hook["id"])
    assert done["state"] == "delivered"
