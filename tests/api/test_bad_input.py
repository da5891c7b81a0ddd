"""Bad input, in-process on the real parts: every refusal is a 4xx with the ErrorBody naming the
field, never a 500; bodies over the limit are refused before they are read, and before auth; an
unauthenticated request is refused before its body is read or parsed."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from temporalio.testing import WorkflowEnvironment

from boxrun.schemas import MAX_BIGINT, ErrorBody
from boxrun.settings import Settings
from tests.api.inprocess import ADMIN, api_client, app_settings, running_app

JSON = {"Content-Type": "application/json"}
TOO_BIG = MAX_BIGINT + 1  # 9223372036854775808


@pytest.fixture
async def api(settings: Settings, temporal_env: WorkflowEnvironment) -> AsyncIterator[httpx.AsyncClient]:
    async with api_client(app_settings(settings, temporal_env)) as client:
        yield client


def refused(resp: httpx.Response, status: int, field: str | None = None) -> ErrorBody:
    """The answer is `status` with a well-formed ErrorBody (naming `field` if given)."""
    assert resp.status_code == status, resp.text[:500]
    body = ErrorBody.model_validate(resp.json())
    if field is not None:
        assert field in [e.field for e in body.errors], body
    return body


async def post_raw(api: httpx.AsyncClient, url: str, raw: str, headers: dict[str, str] = ADMIN) -> httpx.Response:
    return await api.post(url, content=raw.encode("utf-8", "surrogatepass"), headers={**headers, **JSON})


# ---------------------------------------------------------------- strings, numbers, dates


@pytest.mark.parametrize(
    "raw, field",
    [
        ('{"box": "b1", "script": "echo \\u0000"}', "body.script"),
        ('{"box": "b1", "script": "echo \\ud800"}', "body.script"),  # a lone surrogate
        ('{"box": "b1", "script": "x", "env": {"A": "\\u0000"}}', "body.env.A"),
        ('{"box": "b1", "script": "x", "env": {"A": "\\udfff"}}', "body.env.A"),
        ('{"box": "b1", "script": "x", "files": {"a\\u0000b": "x"}}', "body.files.a\x00b.[key]"),
        ('{"box": "b1", "script": "x", "files": {"a": "\\ud800"}}', "body.files.a.text"),
        ('{"box": "b1", "script": "x", "files": {"./a": "x"}}', "body.files../a.[key]"),
        ('{"box": "b1", "script": "x", "requires": ["gpu\\u0000"]}', "body.requires.0"),
        ('{"box": "b1", "script": "x", "idempotency_key": "k\\u0000"}', "body.idempotency_key"),
        ('{"box": "b1", "script": "x", "timeout_s": "60"}', "body.timeout_s"),  # no "60" for 60
        ('{"box": "b1", "script": "x", "priority": 9223372036854775808}', "body.priority"),
    ],
)
async def test_submission_refuses_unstorable_strings_and_wrong_types(api, raw, field):
    refused(await post_raw(api, "/api/jobs", raw), 422, field)


@pytest.mark.parametrize(
    "raw",
    [
        '{"box": "b1", "script": "x", "files": {"\\ud800": "x"}}',
        '{"box": "b1", "script": "x", "env": {"\\ud800": "x"}}',
        '{"box": "b1", "script": "x", "env": {"%s": "x"}}' % ("A-" * 400_000),
        '{"box": "b1", "script": "x", "files": {"%s": "x"}}' % ("a/" * 400_000),
    ],
)
async def test_bad_keys_are_422_and_never_echoed(api, raw):
    """A key names the field at fault: it is shortened, and a lone surrogate in it escaped."""
    resp = await post_raw(api, "/api/jobs", raw)
    body = refused(resp, 422)
    assert body.errors[0].field.startswith("body.") and len(resp.content) < 2000, resp.text[:300]


async def test_exactly_one_target_is_a_422_stated_in_the_schema(api):
    for body in ({"script": "x"}, {"script": "x", "box": "a", "box_group": "g"}):
        refused(await api.post("/api/jobs", json=body, headers=ADMIN), 422, "body")
    schema = (await api.get("/openapi.json")).json()["components"]["schemas"]["JobCreate"]
    assert {tuple(alt["required"]) for alt in schema["oneOf"]} == {("box",), ("box_group",)}


@pytest.mark.parametrize(
    "url, field",
    [
        (f"/api/jobs?offset={TOO_BIG}", "query.offset"),
        ("/api/jobs?offset=-1", "query.offset"),
        ("/api/jobs?box=a%00b", "query.box"),
        (f"/api/jobs/00000000-0000-0000-0000-000000000000/logs?after={TOO_BIG}", "query.after"),
    ],
)
async def test_queries_and_paths_out_of_range_or_with_nul_are_422(api, url, field):
    refused(await api.get(url, headers=ADMIN), 422, field)


async def test_a_window_id_past_bigint_is_422(api):
    resp = await api.delete(f"/api/boxes/b1/maintenance/windows/{TOO_BIG}", headers=ADMIN)
    refused(resp, 422, "path.window_id")


async def test_a_job_id_with_nul_is_not_found(api):
    refused(await api.get("/api/jobs/a%00b", headers=ADMIN), 404)
    # a path segment is an identifier: one that cannot name anything (NUL in it, not a UUID, not a
    # box name) is unknown, 404 with the reason, as tests/api/test_boxes.py checks for every box route
    refused(await api.get("/api/boxes/a%00b", headers=ADMIN), 404)
    refused(await api.get("/api/boxes/a%00b/queue", headers=ADMIN), 404)
    refused(await api.get("/api/jobs/00000000-0000-0000-0000-000000000000/artifacts/a%00b", headers=ADMIN), 404)


@pytest.mark.parametrize(
    "starts_at, ends_at, field",
    [
        ("2030-01-01T00:00:00Z", "9999-12-31T23:00:00-05:00", "body.ends_at"),  # past year 9999 in UTC
        ("0001-01-01T00:00:00+01:00", "2030-01-01T00:00:00Z", "body.starts_at"),  # before year 1 in UTC
        ("2030-01-01T00:00:00", "2030-01-02T00:00:00Z", "body.starts_at"),  # no timezone
        (1893456000, "2030-01-02T00:00:00Z", "body.starts_at"),  # a number is no date
        ("2030-02-31T00:00:00Z", "2030-03-02T00:00:00Z", "body.starts_at"),  # no such day
        ("2030-01-02T00:00:00Z", "2030-01-01T00:00:00Z", "body.ends_at"),  # ends before it starts
    ],
)
async def test_window_dates_out_of_range_or_unordered_are_422(api, starts_at, ends_at, field):
    await api.post("/api/boxes", json={"name": "b1"}, headers=ADMIN)
    body = {"starts_at": starts_at, "ends_at": ends_at, "reason": "r"}
    refused(await api.post("/api/boxes/b1/maintenance/windows", json=body, headers=ADMIN), 422, field)


async def test_a_valid_window_is_stored(api):
    assert (await api.post("/api/boxes", json={"name": "b1"}, headers=ADMIN)).status_code == 201
    body = {"starts_at": "2030-01-01T10:00:00+02:00", "ends_at": "2030-01-01T12:00:00.5Z", "reason": "r"}
    resp = await api.post("/api/boxes/b1/maintenance/windows", json=body, headers=ADMIN)
    assert resp.status_code == 201, resp.text
    assert resp.json()["starts_at"].startswith("2030-01-01T08:00:00")


# ---------------------------------------------------------------- sizes


async def test_an_invalid_script_under_the_limit_is_not_echoed(api):
    script = "x" * 900_000  # under the 1 MiB body limit, over the 256 KiB script limit
    resp = await api.post("/api/jobs", json={"box": "b1", "script": script}, headers=ADMIN)
    body = refused(resp, 422, "body.script")
    assert len(resp.content) < 2000 and "xxxxxxxx" not in resp.text, body


async def test_a_body_over_the_limit_is_413_before_it_is_read(api):
    resp = await api.post("/api/jobs", content=b"x" * (50 << 20), headers={**ADMIN, **JSON})
    body = refused(resp, 413)
    assert body.code == "too_large" and len(resp.content) < 500


async def test_a_streamed_body_over_the_limit_is_413(api):
    async def chunks():
        for _ in range(40):
            yield b"x" * 65536  # 2.5 MiB, no Content-Length

    resp = await api.post("/api/jobs", content=chunks(), headers={**ADMIN, **JSON})
    assert "content-length" not in resp.request.headers
    refused(resp, 413)


async def test_the_limit_is_a_setting(settings, temporal_env):
    async with api_client(app_settings(settings, temporal_env, max_body_bytes=4096)) as api:
        resp = await api.post("/api/boxes", json={"name": "b1", "capabilities": ["c" * 100] * 60}, headers=ADMIN)
        refused(resp, 413)
        assert (await api.post("/api/boxes", json={"name": "b1"}, headers=ADMIN)).status_code == 201


async def test_the_log_ingest_keeps_its_own_larger_limit(api):
    batch = b'{"first_seq": 1, "runs": [[1, "stdout", 1.0]]}\n' + b"y" * (2 << 20) + b"\n"
    url = "/api/agent/jobs/00000000-0000-0000-0000-000000000000/logs"
    resp = await api.post(url, content=batch, headers={"Authorization": "Bearer bxn_unknown"})
    refused(resp, 401)  # past the 1 MiB JSON limit, under the ingest's 16 MiB: auth decides
    resp = await api.post(url, content=b"y" * (17 << 20), headers={"Authorization": "Bearer bxn_unknown"})
    refused(resp, 413)


# ---------------------------------------------------------------- auth before the body


class Recorder:
    """A raw ASGI call: records whether the app ever asked for the request body."""

    def __init__(self) -> None:
        self.body_read = False
        self.messages: list[dict[str, Any]] = []

    async def call(self, app, method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, dict]:
        async def receive() -> dict[str, Any]:
            self.body_read = True
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            self.messages.append(message)

        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": method,
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "root_path": "",
            "scheme": "http",
            "server": ("testserver", 80),
            "client": ("127.0.0.1", 1234),
            "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
            "state": {},
        }
        await app(scope, receive, send)
        start = next(m for m in self.messages if m["type"] == "http.response.start")
        content = b"".join(m.get("body", b"") for m in self.messages if m["type"] == "http.response.body")
        return start["status"], json.loads(content)


@pytest.mark.parametrize(
    "headers, reason",
    [
        ({}, "missing bearer token"),
        ({"authorization": "Bearer wrong"}, "invalid token"),
        ({"authorization": "Basic YTpi"}, "missing bearer token"),
    ],
)
async def test_401_comes_before_the_body_is_read(settings, temporal_env, headers, reason):
    async with running_app(app_settings(settings, temporal_env)) as app:
        for declared in ({"content-length": "12"}, {}):  # with Content-Length, and streamed
            rec = Recorder()
            status, body = await rec.call(
                app, "POST", "/api/jobs", {**headers, **declared, "content-type": "application/json"}, b"{not json at"
            )
            assert status == 401 and body["detail"] == reason and body["code"] == "unauthorized"
            assert not rec.body_read
            assert dict(rec.messages[0]["headers"])[b"www-authenticate"] == b"Bearer"


async def test_413_comes_before_auth(settings, temporal_env):
    async with running_app(app_settings(settings, temporal_env)) as app:
        rec = Recorder()
        status, body = await rec.call(app, "POST", "/api/jobs", {"content-length": str(50 << 20)}, b"")
        assert status == 413 and body["code"] == "too_large" and not rec.body_read


async def test_health_and_the_openapi_document_need_no_token(api):
    assert (await api.get("/openapi.json")).status_code == 200
    assert (await api.get("/api/health")).status_code == 200


async def test_a_node_token_route_without_a_token_is_401_with_the_error_body(api):
    refused(await api.post("/api/agent/heartbeat", json={"agent_version": "1"}), 401)


async def test_every_error_answer_is_documented_with_the_error_body(api):
    spec = (await api.get("/openapi.json")).json()
    assert "HTTPValidationError" not in spec["components"]["schemas"]
    for path, item in spec["paths"].items():
        for method, op in item.items():
            codes = set(op["responses"])
            if path not in ("/api/health", "/api/ready"):  # the public probes
                assert "401" in codes, (method, path)
            if "requestBody" in op:
                assert {"413", "422"} <= codes, (method, path)
            for code, answer in op["responses"].items():
                if code[0] in "45":
                    ref = answer["content"]["application/json"]["schema"]["$ref"]
                    assert ref.endswith("/ErrorBody"), (method, path, code)
