"""Attack findings against issues 10 (people, roles, tokens, audit) and 11 (pipelines).

Each test asserts a promise of the issues or the docs and FAILS while the hole exists. They run
in-process like tests/api (real Postgres, Temporal dev server, S3)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import asyncpg
import httpx
from fastapi import FastAPI
from temporalio.service import RPCError, RPCStatusCode

from boxrun.constants import JobState, StepState
from boxrun.db import connect
from boxrun.messages import RecordStepInput
from boxrun.process_lifecycle import redact
from boxrun.services.identity import Role, mint_token
from boxrun.services.people import USER_TOKEN_PREFIX
from boxrun.services.pipelines import prepare_attempt, record_step
from boxrun.transitions import transition
from tests.api.conftest import _client
from tests.api.people_fixtures import add_user
from tests.conftest import wait_for

# ---------------------------------------------------------------- helpers


async def _submit(api: httpx.AsyncClient, body: dict[str, Any]) -> dict[str, Any]:
    resp = await api.post("/api/pipelines", json=body)
    assert resp.status_code == 201, resp.text
    out: dict[str, Any] = resp.json()
    return out


async def _add_artifact(db: asyncpg.Connection, job_id: str, path: str, sha256: str, size: int) -> None:
    await db.execute(
        "INSERT INTO artifacts (job_id, org_id, path, key, size, sha256) VALUES ($1, 'default', $2, $3, $4, $5)",
        uuid.UUID(job_id),
        path,
        f"artifacts/{job_id}/{path}",
        size,
        sha256,
    )


async def _step_job_with_inputs(api: httpx.AsyncClient, app: FastAPI, db: asyncpg.Connection) -> str:
    """A two-step pipeline whose second step takes the first's artifact as an input (dest
    `in/fw.bin`); drives the first step to completed as the engine would and prepares the second
    step's attempt (its job row, with the input resolved). Returns that job's id."""
    p = await _submit(
        api,
        {
            "steps": {
                "build": {"box": "abox", "script": "echo fw > fw.bin"},
                "flash": {
                    "box": "abox",
                    "needs": ["build"],
                    "inputs": [{"from": "build", "path": "fw.bin", "dest": "in/fw.bin"}],
                    "script": "cat in/fw.bin",
                },
            }
        },
    )
    pid, settings = p["id"], app.state.settings
    await app.state.temporal.get_workflow_handle(pid).terminate("driven by the test")
    build = (await prepare_attempt(db, settings, pid, "build", 1)).job_id
    await _add_artifact(db, build, "fw.bin", "ab" * 32, 3)
    await record_step(
        db, RecordStepInput(pipeline_id=pid, step="build", state=StepState.COMPLETED, job_id=build, attempt=1)
    )
    flash = await prepare_attempt(db, settings, pid, "flash", 1)
    assert flash.outcome is None, flash  # the input resolved: the job is queued to run
    return flash.job_id


# ---------------------------------------------------------------- F1: audit rows suppressed by the runtime role


async def test_runtime_role_cannot_commit_a_transition_that_leaves_no_audit_row(
    api: httpx.AsyncClient, db: asyncpg.Connection, db_url: str, make_box: Callable[..., Any]
) -> None:
    """docs/audit.md: the trail is written by triggers "in the writer's transaction (... one that
    commits always has one), so no code path can forget them", and the runtime role "holds only
    data rights". But the trigger functions name `audit_log` unqualified and run with the
    caller's search_path, where pg_temp comes first: the runtime role (boxrun_app) may CREATE
    TEMP TABLE audit_log, after which every job transition it commits writes its audit row into
    its own throw-away temp table. (The same shadow even makes `DROP TRIGGER
    audit_log_append_only ON audit_log` answer "does not exist".)"""
    await make_box("abox")
    job = (await api.post("/api/jobs", json={"box": "abox", "script": "true"})).json()
    rogue = await connect(db_url)  # the runtime role, as the API and the worker connect
    try:
        assert await rogue.fetchval("SELECT current_user") == "boxrun_app"
        try:
            await rogue.execute("CREATE TEMP TABLE audit_log (LIKE public.audit_log INCLUDING DEFAULTS)")
        except asyncpg.InsufficientPrivilegeError:
            pass  # the fix may take TEMP away from the runtime role: then nothing is shadowed
        await transition(rogue, job["id"], JobState.CANCELLED, error="cancelled without a trace")
    finally:
        await rogue.close()
    assert await db.fetchval("SELECT state::text FROM jobs WHERE id = $1", uuid.UUID(job["id"])) == "cancelled"
    rows = await db.fetch(
        "SELECT actor FROM audit_log WHERE job_id = $1 AND action = 'job.cancelled'", uuid.UUID(job["id"])
    )
    assert len(rows) == 1, "a committed transition of the runtime role left no row in public.audit_log"


# ---------------------------------------------------------------- F2: a step job with inputs cannot be rerun


async def test_a_pipeline_step_job_with_inputs_can_be_rerun(
    api: httpx.AsyncClient, app: FastAPI, db: asyncpg.Connection, make_box: Callable[..., Any]
) -> None:
    """Issue 11: "Each step attempt is an ordinary boxrun job"; issue 10: operators rerun their
    own jobs, admins any job (POST /api/jobs/{id}/rerun → 201). A step attempt that took inputs
    is refused: its frozen spec holds the resolved `inputs`, which JobCreate.from_frozen does not
    accept (422 "the frozen spec no longer passes validation: Extra inputs are not permitted")."""
    await make_box("abox")
    job_id = await _step_job_with_inputs(api, app, db)
    resp = await api.post(f"/api/jobs/{job_id}/rerun")
    assert resp.status_code == 201, resp.text


# ---------------------------------------------------------------- F3: the spec hides a step job's inputs


async def test_the_spec_of_a_step_job_shows_the_inputs_it_ran_with(
    api: httpx.AsyncClient, app: FastAPI, db: asyncpg.Connection, make_box: Callable[..., Any]
) -> None:
    """Issue 10: GET /api/jobs/{id}/spec "returns what the job ran: script, env, files (path,
    size, sha256) ... so two runs can be diffed". A step job's inputs are files the box places
    in the workspace (SHA-256-checked) before the script starts, and they are in the frozen spec
    and its spec_hash, but the spec route shows neither their paths nor their sha256: two
    attempts fed different artifacts show identical specs with different hashes."""
    await make_box("abox")
    job_id = await _step_job_with_inputs(api, app, db)
    resp = await api.get(f"/api/jobs/{job_id}/spec")
    assert resp.status_code == 200, resp.text
    spec = resp.json()
    shown = {f["path"]: f for f in spec["files"]}
    listed_inputs = spec.get("inputs") or []
    assert "in/fw.bin" in shown or any(i.get("dest") == "in/fw.bin" for i in listed_inputs), spec
    assert "ab" * 32 in str(spec), "the input's sha256 is not shown"


# ---------------------------------------------------------------- F4: an audit row for a cancel that did not happen


class _UnavailableHandle:
    async def describe(self) -> Any:
        raise RPCError("temporal is down (test)", RPCStatusCode.UNAVAILABLE, b"")

    async def cancel(self) -> None:
        raise RPCError("temporal is down (test)", RPCStatusCode.UNAVAILABLE, b"")


class _UnavailableTemporal:
    def get_workflow_handle(self, workflow_id: str) -> _UnavailableHandle:
        return _UnavailableHandle()


async def test_a_pipeline_cancel_refused_with_503_leaves_no_cancel_audit_row(
    api: httpx.AsyncClient, app: FastAPI, db: asyncpg.Connection, make_box: Callable[..., Any]
) -> None:
    """docs/audit.md: the services write their rows "through Q.audit in their own transaction"
    (docs/people.md: "in the same transaction as the change"). cancel_pipeline_as writes
    `pipeline.cancel` on autocommit BEFORE asking Temporal; when Temporal refuses, the caller
    gets 503 (nothing was cancelled, the pipeline runs on) while the trail says they cancelled
    it. (`job.cancel` in services/jobs.cancel_job has the same order.)"""
    await make_box("abox")
    p = await _submit(api, {"steps": {"a": {"box": "abox", "script": "true"}}})
    real = app.state.temporal
    app.state.temporal = _UnavailableTemporal()
    try:
        resp = await api.post(f"/api/pipelines/{p['id']}/cancel")
    finally:
        app.state.temporal = real
    assert resp.status_code == 503, resp.text
    assert (await api.get(f"/api/pipelines/{p['id']}")).json()["state"] == "queued"
    rows = await db.fetch("SELECT detail FROM audit_log WHERE action = 'pipeline.cancel'")
    assert rows == [], f"the trail records a cancel that was refused: {[dict(r) for r in rows]}"


# ---------------------------------------------------------------- F5: user API tokens are not redacted from logs


def test_a_user_api_token_in_a_log_line_is_redacted() -> None:
    """docs/architecture.md: "No token in any log line: every handler setup_logging installs
    redacts ...token=... query values, Bearer/Basic credentials and node tokens (bxn_...)
    anywhere". Issue 10 added user API tokens (`brt_<43 chars>`, docs/people.md), but the
    filter still only knows node tokens: a user token outside a header or `token=` (a secret
    pasted where the token id goes, `DELETE /api/tokens/brt_...`, logged by uvicorn's access log
    and by the 404's path; a token in an error message or traceback) reaches the log in clear."""
    secret = mint_token(USER_TOKEN_PREFIX)
    node = mint_token("bxn")
    lines = [
        f'127.0.0.1:5000 - "DELETE /api/tokens/{secret} HTTP/1.1" 404',
        f"could not use {secret} for the request",
        f"could not use {node} for the request",  # a node token: redacted today
    ]
    for line in lines:
        clean = redact(line)
        assert secret not in clean and node not in clean, clean


# ---------------------------------------------------------------- F6: a step job cancelled with its pipeline names no one


async def test_a_step_job_cancelled_with_its_pipeline_names_who_cancelled_it_in_its_trail(
    api: httpx.AsyncClient, app: FastAPI, db: asyncpg.Connection, make_box: Callable[..., Any], control_worker: None
) -> None:
    """Issue 10: the audit log is filtered "by the failing job's ID" and records "cancel and
    rerun (who)". A step job cancelled because olga cancelled its pipeline has, under
    `GET /api/audit?job_id=<that job>`, only `job.cancelled` by `system`: the `pipeline.cancel`
    row that names olga has no job_id and is not found from the job (a job cancelled directly
    has `job.cancel` by its canceller under its id)."""
    olga = await add_user(db, "olga", "default", Role.OPERATOR)
    await make_box("abox")
    resp = await api.put("/api/boxes/abox/maintenance", json={"on": True, "reason": "hold the step"})
    assert resp.status_code == 200, resp.text
    async with _client(app, olga.token) as o:
        p = await _submit(o, {"steps": {"a": {"box": "abox", "script": "true"}}})

        async def waiting() -> str | None:
            attempts = (await o.get(f"/api/pipelines/{p['id']}")).json()["steps"][0]["attempts"]
            return attempts[0]["job_id"] if attempts and attempts[0]["state"] == "waiting_for_box" else None

        job_id = await wait_for(waiting, timeout=90, what="the step's job waiting for its box")
        assert (await o.post(f"/api/pipelines/{p['id']}/cancel")).status_code == 202

        async def cancelled() -> bool:
            return (await o.get(f"/api/jobs/{job_id}")).json()["state"] == "cancelled"

        await wait_for(cancelled, timeout=90, what="the step job cancelled")
    trail = (await api.get("/api/audit", params={"job_id": job_id, "limit": 1000})).json()["data"]
    assert "olga" in {r["actor"] for r in trail if r["action"] != "job.queued"}, [
        (r["action"], r["actor"]) for r in trail
    ]


# ---------------------------------------------------------------- F7: a YAML control character: no line and column


async def test_invalid_yaml_with_a_control_character_names_line_and_column(api: httpx.AsyncClient) -> None:
    """Issue 11: "Bad definitions → 422 naming the problem: ... invalid YAML (with line and
    column)". A control character (a BEL, a NUL) in the YAML is a 422 whose reason says
    `in "<unicode string>", position 37` (PyYAML's ReaderError, a character offset) and repeats
    "invalid YAML: invalid YAML:", instead of the line and column every other YAML error gives."""
    body = b"steps:\n  a: {box: b, script: x}\n  c: \x07\n"
    resp = await api.post("/api/pipelines", content=body, headers={"Content-Type": "application/yaml"})
    assert resp.status_code == 422, resp.text
    detail = resp.json()["detail"]
    assert "line 3" in detail and "column" in detail, detail
    assert "invalid YAML: invalid YAML" not in detail, detail
