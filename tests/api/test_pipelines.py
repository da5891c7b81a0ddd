"""The pipelines' REST face in-process: submit (JSON, YAML), bad definitions, get, list, cancel,
rerun (only_failed), the SSE event stream, GET /api/jobs?pipeline_id=. No worker runs here: a
submitted pipeline's workflow starts and stays queued; what a test needs beyond that it writes
with the engine's own Postgres side (prepare_attempt, record_step, record_pipeline), as the
pipeline activities would."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Callable, MutableMapping
from typing import Any

import asyncpg
import httpx
import pytest
from fastapi import FastAPI
from temporalio.client import WorkflowExecutionStatus
from temporalio.worker import Worker

from boxrun.activities.control import ControlActivities
from boxrun.activities.dispatch import DispatchActivities
from boxrun.activities.pipeline import PipelineActivities
from boxrun.constants import CONTROL_TASK_QUEUE, PipelineState, StepState
from boxrun.db import Q
from boxrun.messages import RecordPipelineInput, RecordStepInput
from boxrun.pipelines.definition import parse_definition
from boxrun.services.identity import Role
from boxrun.services.pipelines import prepare_attempt, record_pipeline, record_step
from boxrun.services.submission import spec_hash
from boxrun.workflows.job import JobWorkflow
from boxrun.workflows.pipeline import PipelineWorkflow
from boxrun.workflows.step import StepWorkflow
from tests.api.conftest import ADMIN_TOKEN
from tests.api.helpers import assert_error
from tests.api.people_fixtures import add_user
from tests.conftest import wait_for

YAML = {"Content-Type": "application/yaml"}
PIPELINE_KEYS = {
    "id",
    "name",
    "state",
    "owner",
    "error",
    "rerun_of",
    "timeout_s",
    "steps",
    "created_at",
    "started_at",
    "finished_at",
    "temporal_ui_url",
    "template",
}
STEP_KEYS = {"name", "state", "needs", "attempts", "job_id", "reused_from", "error"}


def diamond(box: str = "pbox") -> dict[str, Any]:
    """build -> (left, right) -> join, join reading both sides' artifacts."""
    return {
        "name": "diamond",
        "timeout_s": 600,
        "env": {"BOARD": "f4"},
        "steps": {
            "build": {"box": box, "script": "echo build > out.bin"},
            "left": {"box": box, "needs": ["build"], "script": "echo l > l.txt"},
            "right": {"box": box, "needs": ["build"], "script": "echo r > r.txt"},
            "join": {
                "box": box,
                "needs": ["left", "right"],
                "inputs": [{"from": "left", "path": "l.txt"}, {"from": "right", "path": "r.txt", "dest": "in/r"}],
                "script": "cat l.txt in/r",
            },
        },
    }


DIAMOND_YAML = """\
name: diamond
timeout_s: 600
env: {BOARD: f4}
steps:
  build:
    box: pbox
    script: echo build > out.bin
  left:
    box: pbox
    needs: [build]
    script: echo l > l.txt
  right:
    box: pbox
    needs: [build]
    script: echo r > r.txt
  join:
    box: pbox
    needs: [left, right]
    inputs: [{from: left, path: l.txt}, {from: right, path: r.txt, dest: in/r}]
    script: cat l.txt in/r
"""


@pytest.fixture
async def pbox(make_box: Callable[..., Any]) -> str:
    await make_box("pbox")
    return "pbox"


async def submit(api: httpx.AsyncClient, body: dict[str, Any] | None = None) -> dict[str, Any]:
    resp = await api.post("/api/pipelines", json=body or diamond())
    assert resp.status_code == 201, resp.text
    out: dict[str, Any] = resp.json()
    return out


async def stored_pipeline(db: asyncpg.Connection, org: str, owner: str, box: str) -> str:
    """A one-step pipeline's rows as create_pipeline writes them, its workflow never started (so
    a cancel finds no workflow and cancels the rows itself). Returns its id."""
    p = parse_definition(json.dumps({"steps": {"a": {"box": box, "script": "true"}}}).encode(), "application/json")
    pipeline_id = str(uuid.uuid4())
    spec = p.model_dump(mode="json")
    await db.execute(Q.insert_pipeline, pipeline_id, org, owner, p.name, spec, spec_hash(spec), p.timeout_s, None)
    (step,) = p.steps
    step_spec = {
        "job": step.job.frozen_spec(),
        "inputs": [],
        "retry": None,
        "when": "on_success",
        "allow_failure": False,
    }
    await db.execute(Q.insert_pipeline_step, pipeline_id, "a", 0, [], "pending", step_spec, None, None)
    await db.execute(Q.insert_pipeline_event, pipeline_id, org, None, "queued", {"owner": owner})
    return pipeline_id


# ---------------------------------------------------------------- submit, get


async def test_submit_json_answers_the_pipeline_with_its_steps(
    api: httpx.AsyncClient, app: FastAPI, db: asyncpg.Connection, pbox: str
) -> None:
    p = await submit(api)
    assert set(p) == PIPELINE_KEYS
    assert p["name"] == "diamond" and p["state"] == "queued" and p["owner"] == "admin"
    assert p["timeout_s"] == 600 and p["rerun_of"] is None and p["finished_at"] is None
    assert p["temporal_ui_url"].endswith(f"/workflows/{p['id']}")
    assert [s["name"] for s in p["steps"]] == ["build", "left", "right", "join"]
    for s in p["steps"]:
        assert set(s) == STEP_KEYS and s["state"] == "pending" and s["attempts"] == [] and s["job_id"] is None
    assert [s["needs"] for s in p["steps"]] == [[], ["build"], ["build"], ["left", "right"]]
    # the PipelineWorkflow runs under the pipeline's id
    desc = await app.state.temporal.get_workflow_handle(p["id"]).describe()
    assert desc.status == WorkflowExecutionStatus.RUNNING and desc.workflow_type == "PipelineWorkflow"
    # GET answers the same; the submission is audited
    got = (await api.get(f"/api/pipelines/{p['id']}")).json()
    assert got == p
    audit = await db.fetchrow("SELECT actor, detail FROM audit_log WHERE action = 'pipeline.create'")
    assert audit["actor"] == "admin" and audit["detail"] == {"pipeline_id": p["id"], "name": "diamond", "steps": 4}


async def test_yaml_and_json_are_one_schema(api: httpx.AsyncClient, pbox: str) -> None:
    as_json = await submit(api)
    for content_type in ("application/yaml", "application/x-yaml; charset=utf-8", "text/yaml"):
        resp = await api.post("/api/pipelines", content=DIAMOND_YAML, headers={"Content-Type": content_type})
        assert resp.status_code == 201, resp.text
        as_yaml = resp.json()
        strip = ("id", "created_at", "temporal_ui_url")
        assert {k: v for k, v in as_yaml.items() if k not in strip} == {
            k: v for k, v in as_json.items() if k not in strip
        }


async def test_matrix_steps_are_expanded(api: httpx.AsyncClient, pbox: str) -> None:
    body = {
        "steps": {
            "test": {"box": pbox, "matrix": {"v": ["3.0", "3.3"]}, "script": "echo ${{ matrix.v }}"},
            "report": {"box": pbox, "needs": ["test"], "when": "always", "script": "echo"},
        }
    }
    p = await submit(api, body)
    assert [(s["name"], s["needs"]) for s in p["steps"]] == [
        ("test[v=3.0]", []),
        ("test[v=3.3]", []),
        ("report", ["test[v=3.0]", "test[v=3.3]"]),
    ]


def _steps(**steps: dict[str, Any]) -> dict[str, Any]:
    return {"steps": {name: {"box_group": "g", "script": "true", **body} for name, body in steps.items()}}


BAD_DEFINITIONS: list[tuple[str, Any, str, str]] = [
    (
        "cycle",
        _steps(a={"needs": ["c"]}, b={"needs": ["a"]}, c={"needs": ["b"]}),
        "body.steps.a.needs",
        "cycle: a -> c -> b -> a",
    ),
    ("unknown needs", _steps(build={}, flash={"needs": ["biuld"]}), "body.steps.flash.needs.0", "unknown step 'biuld'"),
    (
        "input from a non-ancestor",
        _steps(a={}, b={"inputs": [{"from": "a", "path": "f"}]}),
        "body.steps.b.inputs.0.from",
        "'a' is not an ancestor of 'b'",
    ),
    (
        "duplicate names (JSON)",
        b'{"steps": {"build": {"box_group": "g", "script": "1"}, "build": {"box_group": "g", "script": "2"}}}',
        "body.steps",
        "duplicate key 'build'",
    ),
    (
        "duplicate names (YAML)",
        "steps:\n  build: {box_group: g, script: one}\n  build: {box_group: g, script: two}\n",
        "body",
        "duplicate key 'build' (already at line 2)",
    ),
    (
        "over 500 steps after expansion",
        _steps(
            a={"matrix": {"i": [str(i) for i in range(250)]}}, b={"matrix": {"i": [str(i) for i in range(250)]}}, c={}
        ),
        "body.steps",
        "501 steps, over the limit of 500",
    ),
    (
        "over 256 combinations",
        _steps(m={"matrix": {"a": [str(i) for i in range(16)], "b": [str(i) for i in range(16)], "c": ["x", "y"]}}),
        "body.steps.m.matrix",
        "16 x 16 x 2 = 512 combinations",
    ),
    ("invalid YAML", "steps:\n  a: {box: b, script: x\n  b: 1\n", "body", "line 3, column"),
    ("invalid JSON", b'{"steps": {\n  "a": {"box": "b",, "script": "x"}}}', "body", "(line 2, column 20)"),
    (
        "NUL in a value",
        b'{"steps": {"a": {"box_group": "g", "script": "x", "env": {"A": "\\u0000"}}}}',
        "body.steps.a.env.A",
        "NUL",
    ),
    ("a number too big", "timeout_s: " + "9" * 5000 + "\nsteps: {a: {box_group: g, script: x}}\n", "body", "decimal"),
    ("timeout over the maximum", {"timeout_s": 10**12, **_steps(a={})}, "body.timeout_s", ""),
    ("not a mapping", "- a\n- b\n", "body", "not a list"),
    ("no steps", {"name": "x", "steps": {}}, "body.steps", "at least one step"),
    ("an unknown key", _steps(a={"scirpt": "x"}), "body.steps.a.scirpt", "did you mean 'script'"),
    ("box and box_group", _steps(a={"box": "b"}), "body.steps.a", "exactly one of 'box' or 'box_group'"),
]


@pytest.mark.parametrize(("case", "body", "field", "words"), BAD_DEFINITIONS, ids=[c[0] for c in BAD_DEFINITIONS])
async def test_bad_definitions_are_422_naming_the_problem(
    api: httpx.AsyncClient, db: asyncpg.Connection, case: str, body: Any, field: str, words: str
) -> None:
    if isinstance(body, dict):
        resp = await api.post("/api/pipelines", json=body)
    elif isinstance(body, bytes):
        resp = await api.post("/api/pipelines", content=body, headers={"Content-Type": "application/json"})
    else:
        resp = await api.post("/api/pipelines", content=body, headers=YAML)
    err = assert_error(resp, 422, "invalid_input", detail=words, field=field)
    assert len(err["detail"]) < 1500, case
    assert await db.fetchval("SELECT count(*) FROM pipelines") == 0


async def test_a_box_that_does_not_exist_is_422_naming_the_step(api: httpx.AsyncClient) -> None:
    resp = await api.post("/api/pipelines", json={"steps": {"a": {"box": "nope", "script": "x"}}})
    assert_error(resp, 422, "invalid_input", detail="step 'a': box 'nope' does not exist", field="body.steps.a.box")


async def test_a_steps_files_are_bounded_like_a_jobs(api: httpx.AsyncClient, app: FastAPI) -> None:
    limit = app.state.settings.max_job_files_bytes
    ref = {"sha256": "a" * 64, "size": limit + 1}
    resp = await api.post(
        "/api/pipelines", json={"steps": {"a": {"box_group": "g", "script": "x", "files": {"f": ref}}}}
    )
    assert_error(resp, 422, "invalid_input", detail=f"over the {limit} byte limit", field="body.steps.a.files")
    # under the limit but never uploaded: named too
    ref = {"sha256": "b" * 64, "size": 10}
    resp = await api.post(
        "/api/pipelines", json={"steps": {"a": {"box_group": "g", "script": "x", "files": {"f": ref}}}}
    )
    assert_error(resp, 422, "invalid_input", detail="no upload with sha256", field="body.steps.a.files.f")


async def test_wrong_content_type_is_415(api: httpx.AsyncClient) -> None:
    for headers in ({"Content-Type": "text/plain"}, {"Content-Type": "application/octet-stream"}, {}):
        resp = await api.post("/api/pipelines", content=DIAMOND_YAML, headers=headers)
        assert_error(resp, 415, "unsupported_media_type", detail="application/json or application/yaml")


async def test_a_body_over_the_limit_is_413(api: httpx.AsyncClient, app: FastAPI) -> None:
    huge = {"steps": {"a": {"box_group": "g", "script": "x" * (app.state.settings.max_body_bytes + 1)}}}
    assert_error(await api.post("/api/pipelines", json=huge), 413, "too_large")


async def test_unknown_ids_are_404(api: httpx.AsyncClient) -> None:
    for pid in (str(uuid.uuid4()), "not-a-uuid", "x" * 300):
        for method, suffix in (("GET", ""), ("POST", "/cancel"), ("POST", "/rerun"), ("GET", "/events")):
            resp = await api.request(method, f"/api/pipelines/{pid}{suffix}")
            assert_error(resp, 404, "not_found", detail="does not exist")


# ---------------------------------------------------------------- list, jobs?pipeline_id=


async def test_list_filters_and_pages(api: httpx.AsyncClient, db: asyncpg.Connection, pbox: str) -> None:
    first, second, third = [await submit(api) for _ in range(3)]
    listed = (await api.get("/api/pipelines")).json()
    assert [p["id"] for p in listed["data"]] == [third["id"], second["id"], first["id"]] and listed["count"] == 3
    assert "steps" not in listed["data"][0]
    page = (await api.get("/api/pipelines", params={"limit": 1, "offset": 1})).json()
    assert [p["id"] for p in page["data"]] == [second["id"]] and page["count"] == 3
    unstarted = await stored_pipeline(db, "default", "admin", pbox)
    assert (await api.post(f"/api/pipelines/{unstarted}/cancel")).status_code == 202
    cancelled = (await api.get("/api/pipelines", params={"state": "cancelled"})).json()
    assert [p["id"] for p in cancelled["data"]] == [unstarted] and cancelled["count"] == 1
    assert (await api.get("/api/pipelines", params={"state": "timed_out"})).json() == {"data": [], "count": 0}
    assert (await api.get("/api/pipelines", params={"offset": 10})).json() == {"data": [], "count": 4}
    assert_error(await api.get("/api/pipelines", params={"state": "nope"}), 422, "invalid_input", field="query.state")
    assert_error(await api.get("/api/pipelines", params={"limit": 0}), 422, "invalid_input", field="query.limit")


async def test_jobs_filter_by_pipeline(api: httpx.AsyncClient, app: FastAPI, db: asyncpg.Connection, pbox: str) -> None:
    p = await submit(api)
    other = await submit(api)
    settings = app.state.settings
    one = await prepare_attempt(db, settings, p["id"], "build", 1)
    two = await prepare_attempt(db, settings, p["id"], "build", 2)
    await prepare_attempt(db, settings, other["id"], "build", 1)
    plain = (await api.post("/api/jobs", json={"box": pbox, "script": "echo"})).json()
    listed = (await api.get("/api/jobs", params={"pipeline_id": p["id"]})).json()
    assert {j["id"] for j in listed["data"]} == {one.job_id, two.job_id} and listed["count"] == 2
    assert sorted((j["pipeline_id"], j["step"], j["attempt"]) for j in listed["data"]) == [
        (p["id"], "build", 1),
        (p["id"], "build", 2),
    ]
    assert (await api.get(f"/api/jobs/{plain['id']}")).json()["pipeline_id"] is None
    everyone = (await api.get("/api/jobs")).json()
    assert plain["id"] in {j["id"] for j in everyone["data"]} and everyone["count"] == 4
    nobody = await api.get("/api/jobs", params={"pipeline_id": str(uuid.uuid4())})
    assert nobody.json() == {"data": [], "count": 0, "next_cursor": None}
    assert_error(
        await api.get("/api/jobs", params={"pipeline_id": "nope"}), 422, "invalid_input", field="query.pipeline_id"
    )
    # the pipeline shows both attempts under its step, in order
    got = (await api.get(f"/api/pipelines/{p['id']}")).json()
    build = got["steps"][0]
    assert [(a["attempt"], a["job_id"], a["state"]) for a in build["attempts"]] == [
        (1, one.job_id, "queued"),
        (2, two.job_id, "queued"),
    ]
    assert build["state"] == "running" and build["job_id"] == two.job_id


# ---------------------------------------------------------------- cancel, rerun


async def test_cancel(api: httpx.AsyncClient, app: FastAPI, db: asyncpg.Connection, pbox: str) -> None:
    p = await submit(api)
    handle = app.state.temporal.get_workflow_handle(p["id"])
    resp = await api.post(f"/api/pipelines/{p['id']}/cancel")
    assert resp.status_code == 202, resp.text
    assert resp.json()["id"] == p["id"]
    # the workflow was asked to cancel (no worker runs here to act on it)
    history = [e async for e in handle.fetch_history_events()]
    assert any(e.HasField("workflow_execution_cancel_requested_event_attributes") for e in history)
    audit = await db.fetchrow("SELECT actor, detail FROM audit_log WHERE action = 'pipeline.cancel'")
    assert audit["actor"] == "admin" and audit["detail"] == {"pipeline_id": p["id"], "state": "queued"}
    # a pipeline without a workflow: the rows are cancelled by the API itself; then it has ended
    unstarted = await stored_pipeline(db, "default", "admin", pbox)
    resp = await api.post(f"/api/pipelines/{unstarted}/cancel")
    assert resp.status_code == 202, resp.text
    body = resp.json()
    assert body["state"] == "cancelled" and body["finished_at"] is not None
    assert {s["state"] for s in body["steps"]} == {"cancelled"}
    assert_error(await api.post(f"/api/pipelines/{unstarted}/cancel"), 409, "conflict", detail="already ended")


async def _end_failed(db: asyncpg.Connection, app: FastAPI, p: dict[str, Any]) -> str:
    """Drive the diamond as the engine would: build completes (attempt 1's job), left fails,
    right completes, join is skipped, the pipeline fails. Returns build's job id."""
    await app.state.temporal.get_workflow_handle(p["id"]).terminate("test")
    settings, pid = app.state.settings, p["id"]
    jobs = {}
    for step in ("build", "left", "right"):
        jobs[step] = (await prepare_attempt(db, settings, pid, step, 1)).job_id
    for step, state in (("build", StepState.COMPLETED), ("left", StepState.FAILED), ("right", StepState.COMPLETED)):
        await record_step(db, RecordStepInput(pipeline_id=pid, step=step, state=state, job_id=jobs[step], attempt=1))
    await record_step(db, RecordStepInput(pipeline_id=pid, step="join", state=StepState.SKIPPED))
    await record_pipeline(db, RecordPipelineInput(pipeline_id=pid, state=PipelineState.FAILED, error="left failed"))
    return jobs["build"]


async def test_rerun_only_failed_reuses_completed_steps(
    api: httpx.AsyncClient, app: FastAPI, db: asyncpg.Connection, pbox: str
) -> None:
    p = await submit(api)
    build_job = await _end_failed(db, app, p)
    right_job = (await api.get(f"/api/pipelines/{p['id']}")).json()["steps"][2]["job_id"]
    resp = await api.post(f"/api/pipelines/{p['id']}/rerun", json={"only_failed": True})
    assert resp.status_code == 201, resp.text
    new = resp.json()
    assert new["id"] != p["id"] and new["rerun_of"] == p["id"] and new["state"] == "queued"
    steps = {s["name"]: s for s in new["steps"]}
    assert steps["build"]["state"] == "completed" and steps["build"]["job_id"] == build_job
    assert steps["build"]["reused_from"] == p["id"] and steps["build"]["attempts"] == []
    assert steps["right"]["state"] == "completed" and steps["right"]["job_id"] == right_job
    assert steps["left"]["state"] == "pending" and steps["left"]["job_id"] is None
    assert steps["join"]["state"] == "pending" and steps["join"]["reused_from"] is None
    desc = await app.state.temporal.get_workflow_handle(new["id"]).describe()
    assert desc.status == WorkflowExecutionStatus.RUNNING
    audit = await db.fetchrow("SELECT actor, detail FROM audit_log WHERE action = 'pipeline.rerun'")
    assert audit["actor"] == "admin"
    assert audit["detail"] == {
        "pipeline_id": p["id"],
        "new_pipeline_id": new["id"],
        "only_failed": True,
        "reused": ["build", "right"],
    }
    # a full rerun runs every step again
    resp = await api.post(f"/api/pipelines/{p['id']}/rerun", json={"only_failed": False})
    assert resp.status_code == 201, resp.text
    assert {s["state"] for s in resp.json()["steps"]} == {"pending"}
    resp = await api.post(f"/api/pipelines/{p['id']}/rerun")  # no body: a full rerun
    assert resp.status_code == 201, resp.text
    assert_error(
        await api.post(f"/api/pipelines/{p['id']}/rerun", json={"only_failed": "maybe"}),
        422,
        "invalid_input",
        field="body.only_failed",
    )


async def test_rerun_only_failed_reruns_what_needs_a_rerun_step(
    api: httpx.AsyncClient, app: FastAPI, db: asyncpg.Connection, pbox: str
) -> None:
    """A `when: always` step that completed after a failed one runs again with its upstream."""
    body = {
        "steps": {
            "a": {"box": pbox, "script": "false"},
            "cleanup": {"box": pbox, "needs": ["a"], "when": "always", "script": "true"},
        }
    }
    p = await submit(api, body)
    await app.state.temporal.get_workflow_handle(p["id"]).terminate("test")
    settings, pid = app.state.settings, p["id"]
    for step, state in (("a", StepState.FAILED), ("cleanup", StepState.COMPLETED)):
        job = await prepare_attempt(db, settings, pid, step, 1)
        await record_step(db, RecordStepInput(pipeline_id=pid, step=step, state=state, job_id=job.job_id, attempt=1))
    await record_pipeline(db, RecordPipelineInput(pipeline_id=pid, state=PipelineState.FAILED))
    new = (await api.post(f"/api/pipelines/{pid}/rerun", json={"only_failed": True})).json()
    assert {s["name"]: s["state"] for s in new["steps"]} == {"a": "pending", "cleanup": "pending"}


async def test_rerun_only_failed_needs_an_ended_pipeline_with_something_to_rerun(
    api: httpx.AsyncClient, app: FastAPI, db: asyncpg.Connection, pbox: str
) -> None:
    p = await submit(api, {"steps": {"a": {"box": pbox, "script": "true"}}})
    resp = await api.post(f"/api/pipelines/{p['id']}/rerun", json={"only_failed": True})
    assert_error(resp, 409, "conflict", detail="still queued")
    await app.state.temporal.get_workflow_handle(p["id"]).terminate("test")
    job = await prepare_attempt(db, app.state.settings, p["id"], "a", 1)
    await record_step(
        db, RecordStepInput(pipeline_id=p["id"], step="a", state=StepState.COMPLETED, job_id=job.job_id, attempt=1)
    )
    await record_pipeline(db, RecordPipelineInput(pipeline_id=p["id"], state=PipelineState.COMPLETED))
    resp = await api.post(f"/api/pipelines/{p['id']}/rerun", json={"only_failed": True})
    assert_error(resp, 409, "conflict", detail="nothing to rerun")


# ---------------------------------------------------------------- the event stream


def parse_sse(text: str) -> tuple[list[dict[str, Any]], list[str]]:
    """The events ({"id", "event", "data"}) and the comment lines of an SSE body."""
    events, comments = [], []
    for block in text.split("\n\n"):
        if not block.strip():
            continue
        event: dict[str, Any] = {}
        for line in block.split("\n"):
            if line.startswith(":"):
                comments.append(line)
            else:
                key, _, value = line.partition(": ")
                event[key] = json.loads(value) if key == "data" else value
        if event:
            events.append(event)
    return events, comments


async def test_events_stream_follows_state_changes_and_ends_with_done(
    api: httpx.AsyncClient, app: FastAPI, db: asyncpg.Connection, pbox: str
) -> None:
    # a keepalive far longer than the test: only a NOTIFY can wake the stream in time
    app.state.settings = app.state.settings.model_copy(update={"sse_keepalive_s": 600.0})
    p = await submit(api, {"steps": {"a": {"box": pbox, "script": "true"}}})
    pid = p["id"]
    await app.state.temporal.get_workflow_handle(pid).terminate("test")
    stream = asyncio.create_task(api.get(f"/api/pipelines/{pid}/events"))
    hub = app.state.pipeline_hub
    await wait_for(lambda: pid in hub._watches, timeout=10, what="the stream to follow the pipeline")
    await record_pipeline(db, RecordPipelineInput(pipeline_id=pid, state=PipelineState.RUNNING))
    job = await prepare_attempt(db, app.state.settings, pid, "a", 1)
    await record_step(
        db, RecordStepInput(pipeline_id=pid, step="a", state=StepState.FAILED, job_id=job.job_id, attempt=1)
    )
    await record_pipeline(db, RecordPipelineInput(pipeline_id=pid, state=PipelineState.FAILED, error="a failed"))
    async with asyncio.timeout(20):
        resp = await stream
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
    events, _ = parse_sse(resp.text)
    seen = [(e["event"], e["data"]["step"], e["data"]["state"]) if e["event"] != "done" else ("done",) for e in events]
    assert seen == [
        ("pipeline", None, "queued"),
        ("pipeline", None, "running"),
        ("step", "a", "running"),
        ("step", "a", "failed"),
        ("pipeline", None, "failed"),
        ("done",),
    ]
    assert events[-1]["data"] == {"state": "failed", "error": "a failed"}
    ids = [int(e["id"]) for e in events[:-1]]
    assert ids == sorted(ids) and [e["data"]["id"] for e in events[:-1]] == ids
    assert events[3]["data"]["detail"]["job_id"] == job.job_id
    # resume after the second event: the rest, then done at once (it has ended)
    for resume in ({"headers": {"Last-Event-ID": str(ids[1])}}, {"params": {"after": ids[1]}}):
        again, _ = parse_sse((await api.get(f"/api/pipelines/{pid}/events", **resume)).text)
        assert [int(e["id"]) for e in again[:-1]] == ids[2:] and again[-1]["event"] == "done"
    assert_error(
        await api.get(f"/api/pipelines/{pid}/events", headers={"Last-Event-ID": "x"}),
        422,
        "invalid_input",
        field="header.last-event-id",
    )
    assert not hub._watches, "every stream unregistered"


async def test_events_stream_sends_keepalives_while_idle(
    app: FastAPI, api: httpx.AsyncClient, db: asyncpg.Connection, pbox: str
) -> None:
    """Driven as an ASGI server would (httpx's transport hands over a body only once it ended),
    so the test sees each chunk as it is written."""
    app.state.settings = app.state.settings.model_copy(update={"sse_keepalive_s": 0.05})
    p = await submit(api, {"steps": {"a": {"box": pbox, "script": "true"}}})
    await app.state.temporal.get_workflow_handle(p["id"]).terminate("test")
    path = f"/api/pipelines/{p['id']}/events"
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
    chunks: list[bytes] = []
    ended = asyncio.Event()

    async def receive() -> dict[str, Any]:
        await ended.wait()
        return {"type": "http.disconnect"}

    async def send(message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                ended.set()

    task = asyncio.create_task(app(scope, receive, send))
    try:
        await wait_for(
            lambda: b"".join(chunks).count(b": keepalive\n\n") >= 2, timeout=10, what="keepalives while idle"
        )
        await record_pipeline(db, RecordPipelineInput(pipeline_id=p["id"], state=PipelineState.CANCELLED))
        async with asyncio.timeout(20):
            await ended.wait()
    finally:
        ended.set()
        async with asyncio.timeout(10):
            await task
    events, comments = parse_sse(b"".join(chunks).decode())
    assert comments and set(comments) == {": keepalive"}
    assert events[-1] == {"event": "done", "data": {"state": "cancelled", "error": None}}


async def test_events_stream_of_a_revoked_token_ends_with_revoked(
    app: FastAPI,
    db: asyncpg.Connection,
    api: httpx.AsyncClient,
    pbox: str,
    as_token: Callable[[str], httpx.AsyncClient],
) -> None:
    viewer = await add_user(db, "pipe-viewer", "default", Role.VIEWER)
    p = await submit(api, {"steps": {"a": {"box": pbox, "script": "true"}}})
    client = as_token(viewer.token)
    stream = asyncio.create_task(client.get(f"/api/pipelines/{p['id']}/events"))
    guard = app.state.stream_guard
    await wait_for(lambda: guard.open_streams == 1, timeout=10, what="the stream registered with the guard")
    await db.execute("UPDATE api_tokens SET revoked_at = now() WHERE id = $1", viewer.token_id)
    guard.kick()
    async with asyncio.timeout(20):
        resp = await stream
    events, _ = parse_sse(resp.text)
    assert events[-1] == {"event": "revoked", "data": {"reason": "token revoked"}}
    assert guard.open_streams == 0 and not app.state.pipeline_hub._watches


# ---------------------------------------------------------------- with the real engine


@pytest.fixture
async def control_worker(app: FastAPI) -> AsyncIterator[None]:
    """The control worker's workflows and activities, in-process on the app's pool and Temporal
    client (as `boxrun worker` builds them); no agent runs, so a job never starts on a box."""
    pool, settings = app.state.pool, app.state.settings
    control = ControlActivities(pool, app.state.storage, offline_after_s=settings.box_offline_after_s)
    dispatch = DispatchActivities(pool, claim_timeout_s=settings.dispatch_timeout_s)
    pipeline = PipelineActivities(pool, settings)
    async with Worker(
        app.state.temporal,
        task_queue=CONTROL_TASK_QUEUE,
        workflows=[JobWorkflow, PipelineWorkflow, StepWorkflow],
        activities=[*control.all(), *dispatch.all(), *pipeline.all()],
    ):
        yield


async def test_a_pipeline_the_engine_fails_streams_to_done(
    api: httpx.AsyncClient, app: FastAPI, control_worker: None
) -> None:
    """No box could ever run the first step: its job ends unschedulable, the step fails, the
    `always` step after it too, and the pipeline fails; the stream follows it to `done`."""
    body = {
        "steps": {
            "a": {"box_group": "nobody-has-this", "script": "true"},
            "cleanup": {"box_group": "nobody-has-this", "needs": ["a"], "when": "always", "script": "true"},
            "after": {"box_group": "nobody-has-this", "needs": ["a"], "script": "true"},
        }
    }
    p = await submit(api, body)
    async with asyncio.timeout(60):
        resp = await api.get(f"/api/pipelines/{p['id']}/events")
    events, _ = parse_sse(resp.text)
    assert events[-1]["event"] == "done" and events[-1]["data"]["state"] == "failed", events
    changes = [(e["data"]["step"], e["data"]["state"]) for e in events[:-1]]
    assert changes[0] == (None, "queued") and changes[-1] == (None, "failed")
    assert ("a", "failed") in changes and ("cleanup", "failed") in changes and ("after", "skipped") in changes
    got = (await api.get(f"/api/pipelines/{p['id']}")).json()
    steps = {s["name"]: s for s in got["steps"]}
    assert [a["state"] for a in steps["a"]["attempts"]] == ["unschedulable"]
    assert steps["after"]["attempts"] == [] and got["finished_at"] is not None
    jobs = (await api.get("/api/jobs", params={"pipeline_id": p["id"]})).json()
    assert sorted(j["step"] for j in jobs["data"]) == ["a", "cleanup"]
    await _workflow_ends(app, p["id"], WorkflowExecutionStatus.FAILED)


async def test_cancel_through_the_engine(api: httpx.AsyncClient, app: FastAPI, pbox: str, control_worker: None) -> None:
    """A step waiting for its box (in maintenance) is cancelled with the pipeline; the stream
    ends `done` cancelled."""
    resp = await api.put(f"/api/boxes/{pbox}/maintenance", json={"on": True, "reason": "test"})
    assert resp.status_code == 200, resp.text
    p = await submit(
        api, {"steps": {"a": {"box": pbox, "script": "true"}, "b": {"box": pbox, "needs": ["a"], "script": "true"}}}
    )

    async def waiting() -> bool:
        got = (await api.get(f"/api/pipelines/{p['id']}")).json()
        attempts = got["steps"][0]["attempts"]
        return bool(attempts) and attempts[0]["state"] == "waiting_for_box"

    await wait_for(waiting, timeout=30, what="step a's job waiting for its box")
    resp = await api.post(f"/api/pipelines/{p['id']}/cancel")
    assert resp.status_code == 202, resp.text
    async with asyncio.timeout(60):
        events, _ = parse_sse((await api.get(f"/api/pipelines/{p['id']}/events")).text)
    assert events[-1] == {"event": "done", "data": {"state": "cancelled", "error": events[-1]["data"]["error"]}}
    got = (await api.get(f"/api/pipelines/{p['id']}")).json()
    assert {s["name"]: s["state"] for s in got["steps"]} == {"a": "cancelled", "b": "cancelled"}
    assert got["steps"][0]["attempts"][0]["state"] == "cancelled"
    await _workflow_ends(app, p["id"], WorkflowExecutionStatus.CANCELED)


async def _workflow_ends(app: FastAPI, workflow_id: str, status: WorkflowExecutionStatus) -> None:
    """The pipeline records its end before its workflow returns: wait for the workflow to close."""

    async def closed() -> WorkflowExecutionStatus | None:
        got = (await app.state.temporal.get_workflow_handle(workflow_id).describe()).status
        return got if got != WorkflowExecutionStatus.RUNNING else None

    assert await wait_for(closed, timeout=30, what=f"workflow {workflow_id} to close") == status
