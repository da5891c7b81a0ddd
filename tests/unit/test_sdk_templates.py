"""client.templates and client.schedules through the sync Client against a mock of the API
(httpx.MockTransport): the paths, methods and bodies sent, a run answered as a Job or a Pipeline
handle by its `kind`, and bad input refused before anything is sent."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from boxrun.errors import InvalidInput
from boxrun.sdk import Client
from boxrun.sdk.models import SchedulePublic, TemplatePublic
from tests.unit.fakes import job_json
from tests.unit.test_sdk_facade import pipeline_json

URL = "http://boxrun.test"
AT = "2026-12-02T09:00:00Z"


def template_json(name: str, kind: str, **fields: Any) -> dict[str, Any]:
    return {
        "name": name,
        "version": 1,
        "latest_version": 1,
        "description": "",
        "kind": kind,
        "params": {"board": {"type": "string", "default": "b1"}},
        "job": {"box": "local-1", "script": "echo ${{ params.board }}"} if kind == "job" else None,
        "pipeline": {"steps": {"a": {"box": "local-1", "script": "true"}}} if kind == "pipeline" else None,
        "created_by": "admin",
        "created_at": AT,
        "updated_by": "admin",
        "updated_at": AT,
        "version_created_by": "admin",
        "version_created_at": AT,
        **fields,
    }


def schedule_json(paused: bool = False, **fields: Any) -> dict[str, Any]:
    return {
        "id": "s1",
        "template": "flash",
        "version": None,
        "params": {"board": "b7"},
        "cron": "0 3 * * *",
        "paused": paused,
        "temporal_schedule_id": "boxrun-schedule-s1",
        "owner": "schedule:s1",
        "created_by": "admin",
        "created_at": AT,
        **fields,
    }


class TemplatesApi:
    """Template and schedule routes, in memory; every request kept."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, str, Any]] = []

    def handle(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content) if request.content else None
        path, method = request.url.path, request.method
        self.seen.append((method, path, request.url.query.decode(), body))
        kind = "pipeline" if "bench" in path else "job"
        if path.endswith("/run"):
            made = {"kind": kind, kind: job_json("j1") if kind == "job" else pipeline_json("running")}
            return httpx.Response(201, json=made)
        if path.endswith("/trigger-secret"):
            return httpx.Response(200, json={"trigger_secret": "trg_new"})
        if path.startswith("/api/templates/") and method in ("PUT", "GET"):
            return httpx.Response(201 if method == "PUT" else 200, json=template_json(path.rsplit("/", 1)[1], kind))
        if path == "/api/templates":
            return httpx.Response(200, json={"data": [template_json("flash", "job")]})
        if path == "/api/schedules":
            if method == "POST":
                return httpx.Response(201, json=schedule_json())
            return httpx.Response(200, json={"data": [schedule_json()]})
        if path == "/api/schedules/s1":
            return httpx.Response(200, json=schedule_json(next_runs=["2026-12-03T03:00:00Z"]))
        if path in ("/api/schedules/s1/pause", "/api/schedules/s1/unpause"):
            return httpx.Response(200, json=schedule_json(paused=path.endswith("/pause")))
        if method == "DELETE":
            return httpx.Response(204)
        return httpx.Response(404, json={"detail": "no such route in the mock"})


@pytest.fixture
def mock_api() -> TemplatesApi:
    return TemplatesApi()


@pytest.fixture
def client(mock_api: TemplatesApi):
    with Client(URL, "tok", transport=httpx.MockTransport(mock_api.handle)) as c:
        yield c


def test_a_run_is_a_job_or_a_pipeline_handle_by_kind(client: Client, mock_api: TemplatesApi) -> None:
    job = client.templates.run("flash", {"board": "b7", "n": 3, "v": True}, version=2)
    assert job.id == "j1" and job.state == "queued" and hasattr(job, "follow")
    assert mock_api.seen[-1] == (
        "POST",
        "/api/templates/flash/run",
        "",
        {"params": {"board": "b7", "n": 3, "v": True}, "version": 2},
    )
    pipe = client.templates.run("bench")
    assert pipe.id == "p1" and pipe.step("a").job_id == "job-9"
    assert mock_api.seen[-1][3] == {"params": {}}  # no version: the latest


def test_put_get_list_rotate_delete(client: Client, mock_api: TemplatesApi) -> None:
    made = client.templates.put(
        "flash", job={"box": "local-1", "script": "echo"}, params={"board": {"type": "string"}}, description="d"
    )
    assert isinstance(made, TemplatePublic) and made.kind == "job"
    assert mock_api.seen[-1][:2] == ("PUT", "/api/templates/flash")
    assert mock_api.seen[-1][3] == {
        "description": "d",
        "params": {"board": {"type": "string"}},
        "job": {"box": "local-1", "script": "echo"},
    }
    client.templates.put("bench", pipeline="steps:\n  a: {box: local-1, script: 'true'}\n")  # YAML text
    assert mock_api.seen[-1][3] == {"pipeline": {"steps": {"a": {"box": "local-1", "script": "true"}}}}
    client.templates.get("flash", version=3)
    assert mock_api.seen[-1][:3] == ("GET", "/api/templates/flash", "version=3")
    assert [t.name for t in client.templates.list()] == ["flash"]
    assert client.templates.rotate_trigger_secret("flash") == "trg_new"
    client.templates.delete("flash")
    assert mock_api.seen[-1][:2] == ("DELETE", "/api/templates/flash")


@pytest.mark.parametrize(
    ("call", "needle"),
    [
        (lambda c: c.templates.put("x", params={}), "exactly one of 'job' or 'pipeline'"),
        (lambda c: c.templates.put("x", job={}, pipeline={}), "exactly one"),
        (lambda c: c.templates.put("x", job={}, params={"p": {"type": "float"}}), "params.p.type"),
        (lambda c: c.templates.run("x", version=0), "version"),
        (lambda c: c.schedules.create(template="x", cron=""), "cron"),
        (lambda c: c.templates.put("x", pipeline="steps: [\n"), "pipeline"),
    ],
)
def test_bad_input_is_refused_before_sending(client: Client, mock_api: TemplatesApi, call: Any, needle: str) -> None:
    with pytest.raises(InvalidInput) as bad:
        call(client)
    assert needle in str(bad.value) or needle == bad.value.field
    assert mock_api.seen == []


def test_schedules(client: Client, mock_api: TemplatesApi) -> None:
    made = client.schedules.create(template="flash", cron="0 3 * * *", params={"board": "b7"}, version=2)
    assert isinstance(made, SchedulePublic) and made.id == "s1"
    assert mock_api.seen[-1][3] == {"template": "flash", "cron": "0 3 * * *", "params": {"board": "b7"}, "version": 2}
    assert [s.id for s in client.schedules.list()] == ["s1"]
    assert [t.hour for t in client.schedules.get("s1").next_runs or []] == [3]
    assert client.schedules.pause("s1").paused and not client.schedules.unpause("s1").paused
    assert [p for _, p, _, _ in mock_api.seen[-2:]] == ["/api/schedules/s1/pause", "/api/schedules/s1/unpause"]
    client.schedules.delete("s1")
    assert mock_api.seen[-1][:2] == ("DELETE", "/api/schedules/s1")
