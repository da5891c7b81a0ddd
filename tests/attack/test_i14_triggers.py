"""Attacks on CI triggers (issue 14) as a hostile CI sender would make them: signatures missing,
truncated, upper-cased, over another body or with another org's secret; GitLab tokens with spaces
or non-ASCII bytes; a rotated secret; delivery ids replayed with another body, too long, with NUL,
shared by two templates; a body over the limit before any signature is checked; and what the
answers, the audit log and the logs give away. Each test fails when its defence is missing
(docs/templates.md, "CI triggers")."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import time
import tracemalloc
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
import httpx
import pytest

from boxrun.services.identity import Role
from tests.api.helpers import assert_error
from tests.api.people_fixtures import add_org, add_user

TEMPLATE = {
    "params": {"ref": {"type": "string"}, "sha": {"type": "string", "default": "none"}},
    "job": {"box": "cibox", "script": "build ${{ params.ref }} ${{ params.sha }}"},
}
PUSH = {
    "ref": "refs/heads/main",
    "after": "0123456789abcdef0123456789abcdef01234567",
    "repository": {"full_name": "acme/fw"},
    "pusher": {"name": "octo"},
}
URL = "/api/orgs/default/templates/ci/trigger"
ORGLESS = "/api/templates/ci/trigger"


@pytest.fixture
async def secret(make_box: Callable[..., Any], api: httpx.AsyncClient) -> str:
    await make_box("cibox")
    resp = await api.put("/api/templates/ci", json=TEMPLATE)
    assert resp.status_code == 201, resp.text
    return str(resp.json()["trigger_secret"])


def sign(secret: str, raw: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), raw, hashlib.sha256).hexdigest()


def github(secret: str, payload: Any = PUSH, *, delivery: str | None = None, event: str = "push") -> dict[str, Any]:
    raw = json.dumps(payload).encode()
    headers = {
        "X-Hub-Signature-256": sign(secret, raw),
        "X-GitHub-Delivery": delivery or str(uuid.uuid4()),
        "X-GitHub-Event": event,
        "Content-Type": "application/json",
    }
    return {"content": raw, "headers": headers}


def gitlab(token: str | bytes, payload: Any = PUSH, *, delivery: str | None = None) -> dict[str, Any]:
    body = {"object_kind": "push", "ref": "refs/heads/dev", "project": {"path_with_namespace": "acme/fw"}}
    headers = {
        "X-Gitlab-Token": token,
        "X-Gitlab-Event-UUID": delivery or str(uuid.uuid4()),
        "X-Gitlab-Event": "Push Hook",
        "Content-Type": "application/json",
    }
    return {"content": json.dumps(body).encode(), "headers": headers}


async def jobs(db: asyncpg.Connection) -> int:
    n: int = await db.fetchval("SELECT count(*) FROM jobs")
    return n


# ---------------------------------------------------------------- signatures and tokens


async def test_every_bad_credential_is_the_same_401(
    anon: httpx.AsyncClient, db: asyncpg.Connection, secret: str
) -> None:
    good = github(secret)
    sig = good["headers"]["X-Hub-Signature-256"]
    hexpart = sig.removeprefix("sha256=")

    def with_sig(value: str | None) -> dict[str, Any]:
        headers = {k: v for k, v in good["headers"].items() if k != "X-Hub-Signature-256"}
        if value is not None:
            headers["X-Hub-Signature-256"] = value
        return {"content": good["content"], "headers": headers}

    other_body = github(secret, {**PUSH, "ref": "refs/heads/evil"})
    cases = [
        with_sig(None),
        with_sig(""),
        with_sig("sha256="),
        with_sig(sig[:-1]),  # truncated
        with_sig(sig[:20]),
        with_sig("sha256=" + hexpart.upper()),  # GitHub sends lower-case hex: upper-case is no match
        with_sig("SHA256=" + hexpart),
        with_sig("sha1=" + hexpart),
        with_sig(hexpart),  # no prefix
        with_sig(sig + "00"),
        with_sig("sha256=" + "0" * 64),
        {
            "content": good["content"],
            "headers": {**good["headers"], "X-Hub-Signature-256": other_body["headers"]["X-Hub-Signature-256"]},
        },
        github(secret + "x"),
        github(secret[:-1]),
        gitlab(secret[:-1]),
        gitlab(secret + "x"),
        gitlab(secret.upper()),
        gitlab(""),
        gitlab(secret.encode() + "é".encode()),  # non-ASCII bytes after the secret
        gitlab("é".encode() * 10),
    ]
    details = set()
    for req in cases:
        body = assert_error(await anon.post(URL, **req), 401, "unauthorized")
        details.add(body["detail"])
        body = assert_error(await anon.post(ORGLESS, **req), 401, "unauthorized")
        details.add(body["detail"])
    # an unknown template, an unknown org, a name that is no name, a ping without a good signature
    for url, req in [
        ("/api/orgs/default/templates/nope/trigger", good),
        ("/api/orgs/nope/templates/ci/trigger", good),
        ("/api/templates/nope/trigger", good),
        ("/api/templates/ci/trigger?org=nope", good),
        ("/api/templates/-x/trigger", good),
        ("/api/orgs/default/templates/" + "a" * 300 + "/trigger", good),
        (ORGLESS, github("tgsec_" + "3" * 43, {"zen": "z"}, event="ping")),
        (ORGLESS, {"content": b'{"zen": "z"}', "headers": {"X-GitHub-Event": "ping", "X-GitHub-Delivery": "p"}}),
    ]:
        details.add(assert_error(await anon.post(url, **req), 401, "unauthorized")["detail"])
    assert len(details) == 1, details
    assert await jobs(db) == 0
    assert await db.fetchval("SELECT count(*) FROM trigger_deliveries") == 0


async def test_gitlab_token_with_surrounding_spaces_is_the_token(anon: httpx.AsyncClient, secret: str) -> None:
    """HTTP strips a header value's surrounding spaces: `  <secret>  ` is the secret; spaces inside are not."""
    assert (await anon.post(URL, **gitlab(f"  {secret}  "))).status_code == 201
    assert_error(await anon.post(URL, **gitlab(f"{secret[:10]} {secret[10:]}")), 401, "unauthorized")


async def test_another_orgs_secret_never_runs_across_orgs(
    anon: httpx.AsyncClient, db: asyncpg.Connection, as_token: Callable[[str], httpx.AsyncClient], secret: str
) -> None:
    await add_org(db, "beta")
    beta = as_token((await add_user(db, "bea", "beta", Role.ADMIN)).token)
    resp = await beta.put(
        "/api/templates/ci", json={**TEMPLATE, "job": {"box_group": "g", "script": "${{ params.ref }}"}}
    )
    assert resp.status_code == 201, resp.text
    beta_secret = resp.json()["trigger_secret"]
    # beta's secret at default's URL (path or ?org=): refused, nothing made in either org
    for url in (URL, ORGLESS + "?org=default"):
        assert_error(await anon.post(url, **github(beta_secret)), 401, "unauthorized")
        assert_error(await anon.post(url, **gitlab(beta_secret)), 401, "unauthorized")
    assert await jobs(db) == 0
    # at the URL without an org, beta's secret runs beta's template, in beta
    made = await anon.post(ORGLESS, **github(beta_secret, delivery="same"))
    assert made.status_code == 201, made.text
    assert await db.fetchval("SELECT org_id FROM jobs WHERE id = $1::uuid", made.json()["job"]["id"]) == "beta"
    # ... and the same delivery id signed with default's secret is default's own, independent delivery
    mine = await anon.post(ORGLESS, **github(secret, delivery="same"))
    assert mine.status_code == 201, mine.text
    assert await db.fetchval("SELECT org_id FROM jobs WHERE id = $1::uuid", mine.json()["job"]["id"]) == "default"
    # the answer shows the run, never a secret
    for r in (made, mine):
        assert secret not in r.text and beta_secret not in r.text


async def test_a_rotated_secret_is_refused_in_both_forms(
    anon: httpx.AsyncClient, api: httpx.AsyncClient, db: asyncpg.Connection, secret: str
) -> None:
    new = (await api.post("/api/templates/ci/trigger-secret")).json()["trigger_secret"]
    assert new != secret
    assert_error(await anon.post(URL, **github(secret)), 401, "unauthorized")
    assert_error(await anon.post(URL, **gitlab(secret)), 401, "unauthorized")
    assert_error(await anon.post(ORGLESS, **gitlab(secret)), 401, "unauthorized")
    assert (await anon.post(URL, **gitlab(new))).status_code == 201
    rows = await db.fetch("SELECT detail::text AS d FROM audit_log")
    assert all(secret not in r["d"] and new not in r["d"] for r in rows)


# ---------------------------------------------------------------- delivery ids


async def test_a_replay_with_another_body_under_the_same_delivery_makes_nothing(
    anon: httpx.AsyncClient, db: asyncpg.Connection, secret: str
) -> None:
    """Signed by the secret's holder, the same delivery id with another body: 200, the first run,
    nothing new (the delivery id is the key; the second body is not even parsed)."""
    first = await anon.post(URL, **github(secret, delivery="d1"))
    assert first.status_code == 201, first.text
    for payload in ({**PUSH, "ref": "refs/heads/other"}, {"zen": "not even a push"}):
        again = await anon.post(URL, **github(secret, payload, delivery="d1"))
        assert again.status_code == 200, again.text
        assert again.json()["job"]["id"] == first.json()["job"]["id"]
    raw = b"not json at all"
    headers = {"X-Hub-Signature-256": sign(secret, raw), "X-GitHub-Delivery": "d1"}
    again = await anon.post(URL, content=raw, headers=headers)
    assert again.status_code == 200 and again.json()["job"]["id"] == first.json()["job"]["id"]
    # GitLab's form with the same id is the same delivery of the same template
    gl = await anon.post(URL, **gitlab(secret, delivery="d1"))
    assert gl.status_code == 200 and gl.json()["job"]["id"] == first.json()["job"]["id"]
    assert await jobs(db) == 1


async def test_delivery_ids_too_long_with_nul_or_blank_are_422(
    anon: httpx.AsyncClient, db: asyncpg.Connection, secret: str
) -> None:
    assert (await anon.post(URL, **github(secret, delivery="x" * 200))).status_code == 201
    for delivery in ("x" * 201, "x" * 5000, "   "):
        resp = await anon.post(URL, **github(secret, delivery=delivery))
        assert_error(resp, 422, "invalid_input", field="header.delivery")
    resp = await anon.post(URL, **gitlab(secret, delivery="y" * 201))
    assert_error(resp, 422, "invalid_input", field="header.delivery")
    assert await jobs(db) == 1


@pytest.mark.parametrize("delivery", [b"a\x00b", b"a\x1b[2Jb", b"a\x07b", b"a\x7fb", b"a\x08\x08\x08b"])
async def test_a_nul_or_control_character_in_the_delivery_id_is_422(
    app: Any, secret: str, db: asyncpg.Connection, delivery: bytes
) -> None:
    """The delivery id lands in the audit log (`via`): a NUL or a terminal escape is refused.
    httpx refuses to send some of these in a header: the ASGI scope is written by hand."""
    req = github(secret)
    headers = [(k.lower().encode(), v.encode()) for k, v in req["headers"].items() if k != "X-GitHub-Delivery"]
    headers.append((b"x-github-delivery", delivery))
    headers.append((b"content-length", str(len(req["content"])).encode()))
    sent: list[dict[str, Any]] = []
    body_sent = False

    async def receive() -> dict[str, Any]:
        nonlocal body_sent
        if not body_sent:
            body_sent = True
            return {"type": "http.request", "body": req["content"], "more_body": False}
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": URL,
        "raw_path": URL.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 1234),
        "server": ("boxrun.test", 80),
    }
    await app(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    assert start["status"] == 422, body
    assert json.loads(body)["errors"][0]["field"] == "header.delivery"
    assert await jobs(db) == 0


async def test_one_delivery_id_on_two_templates_is_two_deliveries(
    anon: httpx.AsyncClient, api: httpx.AsyncClient, db: asyncpg.Connection, secret: str
) -> None:
    other = await api.put("/api/templates/ci2", json=TEMPLATE)
    assert other.status_code == 201, other.text
    a = await anon.post(URL, **github(secret, delivery="shared"))
    b = await anon.post("/api/templates/ci2/trigger", **github(other.json()["trigger_secret"], delivery="shared"))
    assert (a.status_code, b.status_code) == (201, 201), (a.text, b.text)
    assert a.json()["job"]["id"] != b.json()["job"]["id"]
    # ci's secret on ci2 (the same delivery id): refused, not ci's run
    assert_error(
        await anon.post("/api/templates/ci2/trigger", **github(secret, delivery="shared")), 401, "unauthorized"
    )


async def test_the_same_delivery_at_once_makes_one_run(
    anon: httpx.AsyncClient, db: asyncpg.Connection, secret: str
) -> None:
    req = github(secret, delivery="race")
    answers = await asyncio.gather(*(anon.post(URL, **req) for _ in range(4)))
    codes = sorted(r.status_code for r in answers)
    assert codes.count(201) == 1 and set(codes) <= {200, 201, 409}, [r.text for r in answers]
    assert await jobs(db) == 1


# ---------------------------------------------------------------- size, leaks, logs


async def test_a_body_over_the_limit_is_413_before_any_signature(
    anon: httpx.AsyncClient, app: Any, secret: str
) -> None:
    limit = app.state.settings.max_body_bytes
    big = b"{" + b" " * (limit + 10) + b"}"
    resp = await anon.post(
        URL, content=big, headers={"X-Hub-Signature-256": sign(secret, big), "X-GitHub-Delivery": "b"}
    )
    assert_error(resp, 413, "too_large")
    assert_error(await anon.post(ORGLESS, content=big, headers={"X-GitHub-Delivery": "b"}), 413, "too_large")

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted while read
        for _ in range(limit // 65536 + 2):
            yield b" " * 65536

    resp = await anon.post(ORGLESS, content=chunks(), headers={"X-GitHub-Delivery": "c"})
    assert_error(resp, 413, "too_large")


async def test_no_secret_or_signature_in_answers_audit_or_logs(
    anon: httpx.AsyncClient,
    api: httpx.AsyncClient,
    db: asyncpg.Connection,
    as_token: Callable[[str], httpx.AsyncClient],
    secret: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    op = as_token((await add_user(db, "opa", "default", Role.OPERATOR)).token)
    good = github(secret, delivery="leak-1")
    sig = good["headers"]["X-Hub-Signature-256"]
    texts = [
        (await anon.post(URL, **good)).text,
        (await anon.post(URL, **good)).text,  # the replay
        (await anon.post(URL, **gitlab(secret, delivery="leak-2"))).text,
        (await anon.post(URL, **github(secret + "x"))).text,
        (await anon.post(URL, **github(secret, {"zen": "z"}))).text,  # 422
        (await anon.post(URL, **github(secret, {"zen": "z"}, event="ping"))).text,
        (await op.get("/api/templates/ci")).text,
        (await op.get("/api/templates")).text,
        (await op.get("/api/audit")).text,
    ]
    job_id = json.loads(texts[0])["job"]["id"]
    texts.append((await op.get(f"/api/jobs/{job_id}")).text)
    texts.append((await op.get(f"/api/jobs/{job_id}/spec")).text)
    for text in texts:
        assert secret not in text and sig not in text, text
    rows = await db.fetch("SELECT actor, detail FROM audit_log WHERE action = 'template.run' ORDER BY id")
    assert [(r["actor"], r["detail"]["via"]) for r in rows] == [
        ("trigger:ci", "trigger:github:leak-1"),
        ("trigger:ci", "trigger:gitlab:leak-2"),
    ]
    assert all(secret not in json.dumps(r["detail"]) for r in rows)
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert secret not in logged and sig.removeprefix("sha256=") not in logged


async def test_many_orgs_sharing_a_name_do_not_stall_the_process(
    anon: httpx.AsyncClient, app: Any, db: asyncpg.Connection, secret: str
) -> None:
    """The URL without an org tries every org's template of that name (up to 1,000): a secret
    opened and an HMAC over the body for each, for a request anyone may send. 300 orgs and a body
    near the limit: the refusal takes its time, but the event loop (every other request of the
    process) is not stalled meanwhile."""
    sealed = app.state.settings.secret_box().seal("tgsec_" + "9" * 43)
    await db.execute("INSERT INTO orgs (id, name) SELECT 'o' || g, 'Org ' || g FROM generate_series(1, 300) g")
    await db.execute(
        "INSERT INTO templates (id, org_id, name, latest_version, trigger_secret_sealed, created_by, updated_by)"
        " SELECT gen_random_uuid(), 'o' || g, 'ci', 1, $1, 'x', 'x' FROM generate_series(1, 300) g",
        sealed,
    )
    await db.execute(
        "INSERT INTO template_versions (template_id, version, description, params, kind, body, created_by)"
        " SELECT id, 1, '', '{}'::jsonb, 'job', '{\"box\": \"b\", \"script\": \"x\"}'::jsonb, 'x'"
        " FROM templates WHERE org_id LIKE 'o%'"
    )
    raw = b'{"pad": "' + b"x" * (app.state.settings.max_body_bytes - 100) + b'"}'
    headers = {
        "X-Hub-Signature-256": sign("tgsec_wrong", raw),
        "X-GitHub-Delivery": "dos",
        "Content-Type": "application/json",
    }
    gaps: list[float] = []

    async def ticker() -> None:
        last = time.perf_counter()
        while True:
            await asyncio.sleep(0.005)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    ticking = asyncio.create_task(ticker())
    await asyncio.sleep(0.05)
    started = time.perf_counter()
    resp = await anon.post(ORGLESS, content=raw, headers=headers)
    elapsed = time.perf_counter() - started
    ticking.cancel()
    assert_error(resp, 401, "unauthorized")
    longest = max(gaps)
    assert longest < max(0.1, elapsed / 3), (longest, elapsed)
    # a good signature among them is still found
    assert (await anon.post(ORGLESS, **github(secret))).status_code == 201


async def test_hostile_payloads_of_the_secrets_holder_never_500(
    anon: httpx.AsyncClient, db: asyncpg.Connection, secret: str
) -> None:
    """Signed, so past the signature: a payload nested too deep for the JSON parser, a ref with a
    lone surrogate or NUL, a ref of 5,000 characters, or one holding `${{`: each a 422, nothing run."""
    for raw in (
        b"[" * 100_000 + b"]" * 100_000,
        b'{"ref": ' + b"[" * 5000 + b"]" * 5000 + b', "repository": {"full_name": "a/b"}}',
    ):
        headers = {"X-Hub-Signature-256": sign(secret, raw), "X-GitHub-Delivery": str(uuid.uuid4())}
        assert_error(await anon.post(URL, content=raw, headers=headers), 422, "invalid_input", field="body")
    for ref in ("a\ud800b", "a\x00b", "r" * 5000, "${{ secrets.DB }}", "x${{secrets.DB}}"):
        raw = json.dumps({**PUSH, "ref": ref}).encode()  # escaped to ASCII: \\ud800, \\u0000
        headers = {"X-Hub-Signature-256": sign(secret, raw), "X-GitHub-Delivery": str(uuid.uuid4())}
        assert_error(await anon.post(URL, content=raw, headers=headers), 422, "invalid_input", field="body.params.ref")
    assert await jobs(db) == 0
    assert await db.fetchval("SELECT count(*) FROM trigger_deliveries") == 0


async def test_an_unauthenticated_trigger_reads_no_template_bodies(
    anon: httpx.AsyncClient, app: Any, db: asyncpg.Connection, secret: str
) -> None:
    """100 orgs' templates named `ci` with bodies of 200 KB: a request with a bad signature must
    not load 20 MB of bodies to refuse it (only the candidates' secrets are read)."""
    sealed = app.state.settings.secret_box().seal("tgsec_" + "7" * 43)
    await db.execute("INSERT INTO orgs (id, name) SELECT 'o' || g, 'Org ' || g FROM generate_series(1, 100) g")
    await db.execute(
        "INSERT INTO templates (id, org_id, name, latest_version, trigger_secret_sealed, created_by, updated_by)"
        " SELECT gen_random_uuid(), 'o' || g, 'ci', 1, $1, 'x', 'x' FROM generate_series(1, 100) g",
        sealed,
    )
    await db.execute(
        "INSERT INTO template_versions (template_id, version, description, params, kind, body, created_by)"
        " SELECT id, 1, '', '{}'::jsonb, 'job', jsonb_build_object('box', 'b', 'script', repeat('x', 200000)), 'x'"
        " FROM templates WHERE org_id LIKE 'o%'"
    )
    req = github("tgsec_wrong")
    tracemalloc.start()
    try:
        resp = await anon.post(ORGLESS, **req)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert_error(resp, 401, "unauthorized")
    assert peak < 5 * 1024 * 1024, peak
    # the right secret still finds its template (and its body) among them
    made = await anon.post(ORGLESS, **github(secret))
    assert made.status_code == 201, made.text
    assert await db.fetchval("SELECT org_id FROM jobs WHERE id = $1::uuid", made.json()["job"]["id"]) == "default"


async def test_a_claim_left_by_a_crash_never_makes_a_second_run(
    anon: httpx.AsyncClient, db: asyncpg.Connection, secret: str
) -> None:
    """A process that died between claiming a delivery and recording its run leaves the claim
    (run_id NULL). A redelivery is then 409, never a run that may be a second one (at most once:
    the first may have been submitted). Such a claim is not reclaimed by itself (yet)."""
    await db.execute(
        "INSERT INTO trigger_deliveries (template_id, delivery_id) SELECT id, 'stuck' FROM templates WHERE name = 'ci'"
    )
    assert_error(await anon.post(URL, **github(secret, delivery="stuck")), 409, "conflict")
    assert await jobs(db) == 0
