"""Who may call what, generated over every route of the app (HTTP and WebSocket, as app.routes has
them: the OpenAPI document leaves the WebSocket routes out), so a new route cannot forget it.

ROUTES maps each route to an `Access` row; a route missing from it fails
test_every_route_is_in_the_table. Then:
- the role matrix: each route called by the viewer, the operator and the admin of org A, on org
  A's resources: 403 (code `forbidden`) below the route's minimum role, neither 401 nor 403 at or
  above it;
- the cross-org rule: each route with a path parameter called on org A's resources by org B's
  admin and by the platform admin (who is in org `default`): 404 (the WebSocket closes before it
  is accepted, reason "... not found"); each agent route with a path parameter called with org
  B's node token on org A's job: 404; each list route (GET without path parameters) called by
  them shows none of org A's rows.

The rows of routes that arrive with other branches (users, tokens, orgs, audit, job spec) are
added at merge: one line each."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import uuid
from collections.abc import Callable, MutableMapping
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest
from fastapi import FastAPI, routing
from fastapi.routing import APIRoute, APIWebSocketRoute

from boxrun import logbatch
from boxrun.constants import JobState, PipelineState, StepState
from boxrun.db import Q
from boxrun.messages import RecordPipelineInput, RecordStepInput
from boxrun.schemas import JobCreate
from boxrun.services.identity import Role
from boxrun.services.pipelines import record_pipeline, record_step
from boxrun.services.submission import spec_hash
from boxrun.transitions import transition
from tests.api.conftest import ADMIN_TOKEN, BASE_URL
from tests.api.helpers import assert_error
from tests.api.people_fixtures import Person, add_org, add_token, add_user
from tests.api.test_pipelines import stored_pipeline

ORG_A, ORG_B = "acme", "beta"
# Routes FastAPI adds for its own documents: no data behind them.
DOC_PATHS = {"/openapi.json", "/docs", "/docs/oauth2-redirect", "/docs/assets/{path}"}

PLATFORM_ADMIN = "platform_admin"  # a platform admin only (orgs)
NODE = "node"  # a box agent's node token only (a user token is 401)
PUBLIC = "none"  # no token at all
WS = "WS"  # the "method" of a WebSocket route in ROUTES


@dataclass
class World:
    """Org A with a user of each role, two boxes (one to delete), a maintenance window and an ended
    job owned by its operator; org B with an admin and a box (its agent session open)."""

    viewer: Person
    operator: Person
    admin: Person
    b_admin: Person
    box: str  # org A's box
    spare_box: str  # org A's box that DELETE may take
    window_id: int  # a window on `box`
    job_id: str  # org A's job, owned by the operator, ended (so its streams end)
    b_box: str
    b_node_token: str
    b_session: str
    viewer_name: str  # org A's viewer, by name (path parameter)
    admin_name: str
    spare_token_id: str  # a second token of org A's admin, that DELETE may revoke
    pipeline_id: str  # org A's pipeline, owned by the operator, ended (so its event stream ends)
    webhook_id: str  # org A's webhook
    delivery_id: str  # a delivery of it
    artifact: str = "out/a.txt"
    secret_name: str = "ACME_ONLY_SECRET"  # org A's secret (build_world puts it)
    org: str = ORG_A
    template: str = "acme-tpl"  # org A's template, created by its operator (build_world puts it)
    template_secret: str = ""  # its trigger secret
    rotated_template: str = "acme-tpl-rot"  # org A's template whose trigger secret POST rotates
    spare_template: str = "acme-tpl-spare"  # org A's template that DELETE may take
    schedule_id: str = ""  # org A's schedule of acme-tpl, created by its operator
    spare_schedule_id: str = ""  # another, that DELETE may take
    markers: list[str] = field(default_factory=list)  # strings naming org A's rows

    def by_role(self, role: Role) -> Person:
        return {Role.VIEWER: self.viewer, Role.OPERATOR: self.operator, Role.ADMIN: self.admin}[role]


def _none(w: World) -> dict[str, Any]:
    return {}


@dataclass(frozen=True)
class Access:
    """One route's row.

    role: the least role of the caller's org that may call it (Role.VIEWER/OPERATOR/ADMIN), or
        PLATFORM_ADMIN, NODE (agent routes: node token), PUBLIC (no token).
    params: path parameter -> the World attribute that fills it (org A's resource).
    send: World -> extra keyword arguments of the request (json=, params=, content=, headers=):
        a VALID request, so that what a test sees is the access decision, not a 422.
    platform_reaches_other_orgs: True on the management routes where a platform admin may name
        any org (users, tokens): the cross-org test then leaves the platform admin out.
    names_in_own_org: True where the path names a resource inside the caller's own org by a name
        each org chooses (PUT /api/secrets/{name} creates or replaces the caller's org's secret):
        another org's caller reaches its own org's, never org A's, so instead of a 404 the
        cross-org test checks that org A's resource is left as it was (then DELETEs what the
        caller made in its own org, so the route's DELETE still finds nothing of org B's).
    """

    role: Role | str
    params: dict[str, str] = field(default_factory=dict)
    send: Callable[[World], dict[str, Any]] = _none
    platform_reaches_other_orgs: bool = False
    names_in_own_org: bool = False


JOB = {"job_id": "job_id"}
PIPELINE = {"pipeline_id": "pipeline_id"}
BOX = {"name": "box"}
WEBHOOK = {"webhook_id": "webhook_id"}
TEMPLATE = {"name": "template"}
SCHEDULE = {"schedule_id": "schedule_id"}
TEMPLATE_BODY = {
    "params": {"n": {"type": "int", "default": 1}},
    "job": {"box": "acme-box", "script": "echo ${{ params.n }}"},
}


def _signed_push(w: World) -> dict[str, Any]:
    """A GitHub push delivery signed with org A's template's trigger secret (a new delivery id each time)."""
    raw = json.dumps({"ref": "refs/heads/main", "after": "abc", "repository": {"full_name": "acme/x"}}).encode()
    sig = "sha256=" + hmac.new(w.template_secret.encode(), raw, hashlib.sha256).hexdigest()
    headers = {"X-Hub-Signature-256": sig, "X-GitHub-Delivery": str(uuid.uuid4()), "Content-Type": "application/json"}
    return {"content": raw, "headers": headers}


def _window(w: World) -> dict[str, Any]:
    start = datetime.now(UTC) + timedelta(days=1)
    end = start + timedelta(hours=1)
    return {"json": {"starts_at": start.isoformat(), "ends_at": end.isoformat(), "reason": "test"}}


def _batch(w: World) -> dict[str, Any]:
    body = logbatch.encode(1, [(1, "stdout", 1795000000.0)], b"hello\n")
    return {"content": body, "headers": {"Content-Type": logbatch.MEDIA_TYPE}}


UPLOAD = b"access test upload"


def _upload(w: World) -> dict[str, Any]:
    return {"content": UPLOAD, "params": {"sha256": hashlib.sha256(UPLOAD).hexdigest()}}


def _session(w: World) -> dict[str, str]:
    return {"X-Boxrun-Session": w.b_session}


# (method, path as FastAPI formats it) -> Access. WebSocket routes have the method WS.
ROUTES: dict[tuple[str, str], Access] = {
    ("GET", "/api/health"): Access(PUBLIC),
    ("GET", "/api/ready"): Access(PUBLIC),
    # people (orgs, users, tokens)
    ("POST", "/api/orgs"): Access(
        PLATFORM_ADMIN, send=lambda w: {"json": {"id": f"o-{uuid.uuid4().hex[:8]}", "name": "An org"}}
    ),
    ("GET", "/api/orgs"): Access(PLATFORM_ADMIN),
    ("POST", "/api/users"): Access(
        Role.ADMIN, send=lambda w: {"json": {"name": f"u-{uuid.uuid4().hex[:8]}", "role": "viewer"}}
    ),
    ("GET", "/api/users"): Access(Role.VIEWER),
    ("PATCH", "/api/users/{name}"): Access(
        Role.ADMIN,
        {"name": "viewer_name"},
        send=lambda w: {"json": {"role": "viewer"}},
        platform_reaches_other_orgs=True,
    ),
    ("POST", "/api/users/{name}/tokens"): Access(
        Role.ADMIN, {"name": "admin_name"}, send=lambda w: {"json": {}}, platform_reaches_other_orgs=True
    ),
    ("GET", "/api/tokens"): Access(Role.VIEWER),
    ("DELETE", "/api/tokens/{token_id}"): Access(
        Role.ADMIN, {"token_id": "spare_token_id"}, platform_reaches_other_orgs=True
    ),
    ("GET", "/api/me"): Access(Role.VIEWER),
    # dashboard sessions (sign-in takes the token in the body)
    ("POST", "/api/session"): Access(PUBLIC, send=lambda w: {"json": {"token": w.viewer.token}}),
    ("GET", "/api/session"): Access(Role.VIEWER),
    ("DELETE", "/api/session"): Access(Role.VIEWER),
    # jobs
    ("POST", "/api/jobs"): Access(Role.OPERATOR, send=lambda w: {"json": {"box": w.box, "script": "echo hi"}}),
    ("GET", "/api/jobs"): Access(Role.VIEWER),
    ("GET", "/api/jobs/{job_id}"): Access(Role.VIEWER, JOB),
    ("GET", "/api/jobs/{job_id}/events"): Access(Role.VIEWER, JOB),
    ("POST", "/api/jobs/{job_id}/cancel"): Access(Role.OPERATOR, JOB),
    ("POST", "/api/jobs/{job_id}/rerun"): Access(Role.OPERATOR, JOB),
    ("GET", "/api/jobs/{job_id}/logs"): Access(Role.VIEWER, JOB),
    ("GET", "/api/jobs/{job_id}/logs/stream"): Access(Role.VIEWER, JOB),
    ("GET", "/api/jobs/{job_id}/logs.txt"): Access(Role.VIEWER, JOB),
    (WS, "/api/jobs/{job_id}/logs/ws"): Access(Role.VIEWER, JOB),
    ("GET", "/api/jobs/{job_id}/logs/archive"): Access(Role.VIEWER, JOB),
    ("GET", "/api/jobs/{job_id}/artifacts"): Access(Role.VIEWER, JOB),
    ("GET", "/api/jobs/{job_id}/artifacts/{path}"): Access(Role.VIEWER, {**JOB, "path": "artifact"}),
    ("POST", "/api/files"): Access(Role.OPERATOR, send=_upload),
    ("GET", "/api/jobs/{job_id}/spec"): Access(Role.VIEWER, JOB),
    # the job's owner (the operator) or an org admin; the world's job has ended
    ("DELETE", "/api/jobs/{job_id}/outputs"): Access(Role.OPERATOR, JOB),
    # the org's keeping policy (docs/retention.md): members read, admins write
    ("GET", "/api/org/retention"): Access(Role.VIEWER),
    ("PUT", "/api/org/retention"): Access(Role.ADMIN, send=lambda w: {"json": {"logs_days": 30}}),
    ("GET", "/api/org/quota"): Access(Role.VIEWER),
    ("PUT", "/api/org/quota"): Access(Role.ADMIN, send=lambda w: {"json": {"storage_bytes": 1 << 40}}),
    ("GET", "/api/org/usage"): Access(Role.VIEWER),
    # pipelines
    ("POST", "/api/pipelines"): Access(
        Role.OPERATOR, send=lambda w: {"json": {"steps": {"a": {"box": w.box, "script": "echo hi"}}}}
    ),
    ("GET", "/api/pipelines"): Access(Role.VIEWER),
    ("GET", "/api/pipelines/{pipeline_id}"): Access(Role.VIEWER, PIPELINE),
    ("POST", "/api/pipelines/{pipeline_id}/cancel"): Access(Role.OPERATOR, PIPELINE),
    ("POST", "/api/pipelines/{pipeline_id}/rerun"): Access(
        Role.OPERATOR, PIPELINE, send=lambda w: {"json": {"only_failed": False}}
    ),
    ("GET", "/api/pipelines/{pipeline_id}/events"): Access(Role.VIEWER, PIPELINE),
    # the audit trail
    ("GET", "/api/audit"): Access(Role.ADMIN),
    # boxes
    ("GET", "/api/boxes"): Access(Role.VIEWER),
    ("POST", "/api/boxes"): Access(Role.ADMIN, send=lambda w: {"json": {"name": f"new-{uuid.uuid4().hex[:8]}"}}),
    ("GET", "/api/boxes/{name}"): Access(Role.VIEWER, BOX),
    ("PATCH", "/api/boxes/{name}"): Access(Role.ADMIN, BOX, send=lambda w: {"json": {"capacity": 2}}),
    ("DELETE", "/api/boxes/{name}"): Access(Role.ADMIN, {"name": "spare_box"}),
    ("POST", "/api/boxes/{name}/token"): Access(Role.ADMIN, BOX),
    ("GET", "/api/boxes/{name}/queue"): Access(Role.VIEWER, BOX),
    ("GET", "/api/boxes/{name}/maintenance"): Access(Role.VIEWER, BOX),
    ("PUT", "/api/boxes/{name}/maintenance"): Access(
        Role.ADMIN, BOX, send=lambda w: {"json": {"on": True, "reason": "test"}}
    ),
    ("POST", "/api/boxes/{name}/maintenance/windows"): Access(Role.ADMIN, BOX, send=_window),
    ("DELETE", "/api/boxes/{name}/maintenance/windows/{window_id}"): Access(
        Role.ADMIN, {**BOX, "window_id": "window_id"}
    ),
    # organisation secrets (names only out; operators list, admins put and delete)
    ("GET", "/api/secrets"): Access(Role.OPERATOR),
    ("PUT", "/api/secrets/{name}"): Access(
        Role.ADMIN, {"name": "secret_name"}, send=lambda w: {"json": {"value": "v"}}, names_in_own_org=True
    ),
    ("DELETE", "/api/secrets/{name}"): Access(Role.ADMIN, {"name": "secret_name"}),
    # webhooks: org admins only
    ("POST", "/api/webhooks"): Access(
        Role.ADMIN, send=lambda w: {"json": {"url": "http://93.184.216.34/in", "events": ["job.failed"]}}
    ),
    ("GET", "/api/webhooks"): Access(Role.ADMIN),
    ("GET", "/api/webhooks/{webhook_id}"): Access(Role.ADMIN, WEBHOOK),
    ("DELETE", "/api/webhooks/{webhook_id}"): Access(Role.ADMIN, WEBHOOK),
    ("GET", "/api/webhooks/{webhook_id}/deliveries"): Access(Role.ADMIN, WEBHOOK),
    ("POST", "/api/webhooks/{webhook_id}/deliveries/{delivery_id}/redeliver"): Access(
        Role.ADMIN, {**WEBHOOK, "delivery_id": "delivery_id"}
    ),
    # templates: everyone reads; operators put (their own) and run; admins rotate the trigger secret
    ("GET", "/api/templates"): Access(Role.VIEWER),
    ("GET", "/api/templates/{name}"): Access(Role.VIEWER, TEMPLATE),
    ("PUT", "/api/templates/{name}"): Access(
        Role.OPERATOR, TEMPLATE, send=lambda w: {"json": TEMPLATE_BODY}, names_in_own_org=True
    ),
    ("POST", "/api/templates/{name}/run"): Access(
        Role.OPERATOR, TEMPLATE, send=lambda w: {"json": {"params": {"n": 2}}}
    ),
    ("POST", "/api/templates/{name}/trigger-secret"): Access(Role.ADMIN, {"name": "rotated_template"}),
    ("DELETE", "/api/templates/{name}"): Access(Role.OPERATOR, {"name": "spare_template"}),
    # schedules: everyone reads; operators create, and pause, unpause or delete their own
    ("POST", "/api/schedules"): Access(
        Role.OPERATOR, send=lambda w: {"json": {"template": w.template, "params": {}, "cron": "0 3 * * *"}}
    ),
    ("GET", "/api/schedules"): Access(Role.VIEWER),
    ("GET", "/api/schedules/{schedule_id}"): Access(Role.VIEWER, SCHEDULE),
    ("POST", "/api/schedules/{schedule_id}/pause"): Access(Role.OPERATOR, SCHEDULE),
    ("POST", "/api/schedules/{schedule_id}/unpause"): Access(Role.OPERATOR, SCHEDULE),
    ("DELETE", "/api/schedules/{schedule_id}"): Access(Role.OPERATOR, {"schedule_id": "spare_schedule_id"}),
    # a template's CI trigger: no token, the template's trigger secret signs the request
    # (another org's: tests/api/test_triggers.py)
    ("POST", "/api/orgs/{org}/templates/{name}/trigger"): Access(PUBLIC, {"org": "org", **TEMPLATE}, send=_signed_push),
    ("POST", "/api/templates/{name}/trigger"): Access(PUBLIC, TEMPLATE, send=_signed_push),
    # the agent side: node tokens only
    ("GET", "/api/agent/me"): Access(NODE),
    ("POST", "/api/agent/session"): Access(NODE, send=lambda w: {"json": {"agent_version": "t", "slots": 1}}),
    ("GET", "/api/agent/events"): Access(NODE),
    ("POST", "/api/agent/heartbeat"): Access(NODE, send=lambda w: {"json": {"agent_version": "t"}}),
    ("POST", "/api/agent/jobs/{job_id}/claim"): Access(NODE, JOB, send=lambda w: {"headers": _session(w)}),
    ("GET", "/api/agent/jobs/{job_id}/bundle"): Access(NODE, JOB),
    ("POST", "/api/agent/jobs/{job_id}/progress"): Access(NODE, JOB, send=lambda w: {"json": {"log_seq": 0}}),
    ("POST", "/api/agent/jobs/{job_id}/artifacts"): Access(NODE, JOB, send=lambda w: {"json": {"entries": []}}),
    ("POST", "/api/agent/jobs/{job_id}/result"): Access(NODE, JOB, send=lambda w: {"json": {"exit_code": 0}}),
    ("POST", "/api/agent/jobs/{job_id}/logs"): Access(NODE, JOB, send=_batch),
}


def app_routes(app: FastAPI) -> list[tuple[str, str, bool]]:
    """(method or WS, path, has path parameters) for every route of the app but FastAPI's docs."""
    out = []
    for context in routing.iter_route_contexts(app.routes):
        route, path = context.original_route, context.path_format
        assert path is not None
        if path in DOC_PATHS or path == "/" or path.startswith("/ui/"):
            continue  # the dashboard's static pages (tests/browser), not the API
        if isinstance(route, APIWebSocketRoute):
            out.append((WS, path, "{" in path))
        elif isinstance(route, APIRoute):
            out.extend((method, path, "{" in path) for method in sorted(route.methods or ()))
        else:  # a mount or a plain Starlette route: the table cannot know what it serves
            raise AssertionError(f"route of unexpected kind {type(route).__name__}: {path}")
    return out


def test_every_route_is_in_the_table(app_for_routes: FastAPI) -> None:
    routes = app_routes(app_for_routes)
    missing = [f"{m} {p}" for m, p, _ in routes if (m, p) not in ROUTES]
    assert not missing, f"routes without an Access row in tests/api/test_access.py ROUTES: {missing}"
    stale = sorted(set(ROUTES) - {(m, p) for m, p, _ in routes})
    assert not stale, f"ROUTES rows for routes the app does not have: {stale}"
    assert any(m == WS for m, _, _ in routes), "the WebSocket route is walked too"
    for (method, path), access in ROUTES.items():
        names = {part[1:-1] for part in path.split("/") if part.startswith("{")}
        assert names == set(access.params), f"{method} {path}: params {access.params} do not fill {names}"


@pytest.fixture
def app_for_routes() -> FastAPI:
    from boxrun.api.app import create_app
    from boxrun.settings import Settings

    return create_app(Settings())


# ---------------------------------------------------------------- the world and the callers


async def insert_ended_job(conn: asyncpg.Connection, org: str, owner: str, box: str) -> str:
    """A job row as submission writes it (no workflow), then cancelled: terminal, so its log
    streams end at once."""
    job_id = str(uuid.uuid4())
    spec = JobCreate(box=box, script="echo hi").frozen_spec()
    await conn.execute(
        Q.insert_job, job_id, org, owner, box, None, [], spec, spec_hash(spec), 60, False, 0, None, 10, None
    )
    await conn.execute(Q.insert_first_event, org, job_id, {"owner": owner})
    await transition(conn, job_id, JobState.CANCELLED, error="ended for the access tests")
    return job_id


async def insert_ended_pipeline(conn: asyncpg.Connection, org: str, owner: str, box: str) -> str:
    """A pipeline's rows as create_pipeline writes them (no workflow), then cancelled: terminal,
    so its event stream ends at once."""
    pipeline_id = await stored_pipeline(conn, org, owner, box)
    await record_step(conn, RecordStepInput(pipeline_id=pipeline_id, step="a", state=StepState.CANCELLED))
    await record_pipeline(conn, RecordPipelineInput(pipeline_id=pipeline_id, state=PipelineState.CANCELLED))
    return pipeline_id


def client(app: FastAPI, token: str | None) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE_URL, headers=headers)


async def build_world(app: FastAPI, db: asyncpg.Connection) -> World:
    await add_org(db, ORG_A)
    await add_org(db, ORG_B)
    viewer = await add_user(db, "acme-viewer", ORG_A, Role.VIEWER)
    operator = await add_user(db, "acme-operator", ORG_A, Role.OPERATOR)
    admin = await add_user(db, "acme-admin", ORG_A, Role.ADMIN)
    b_admin = await add_user(db, "beta-admin", ORG_B, Role.ADMIN)
    async with client(app, admin.token) as a, client(app, b_admin.token) as b:
        for name in ("acme-box", "acme-spare"):
            assert (await a.post("/api/boxes", json={"name": name, "groups": ["acme-g"]})).status_code == 201
        start = datetime.now(UTC) + timedelta(days=2)
        resp = await a.post(
            "/api/boxes/acme-box/maintenance/windows",
            json={"starts_at": start.isoformat(), "ends_at": (start + timedelta(hours=1)).isoformat(), "reason": "t"},
        )
        assert resp.status_code == 201, resp.text
        window_id = resp.json()["id"]
        resp = await b.post("/api/boxes", json={"name": "beta-box"})
        assert resp.status_code == 201, resp.text
        b_node_token = resp.json()["node_token"]
    async with client(app, b_node_token) as agent:
        resp = await agent.post("/api/agent/session", json={"agent_version": "t", "slots": 1})
        assert resp.status_code in (200, 201), resp.text
        b_session = resp.json()["session"]
    async with client(app, admin.token) as a:
        resp = await a.put("/api/secrets/ACME_ONLY_SECRET", json={"value": "acme-only-value"})
        assert resp.status_code == 204, resp.text
    job_id = await insert_ended_job(db, ORG_A, operator.name, "acme-box")
    spare_token_id, _ = await add_token(db, admin.name, label="spare")
    pipeline_id = await insert_ended_pipeline(db, ORG_A, operator.name, "acme-box")
    async with client(app, admin.token) as a:
        resp = await a.post("/api/webhooks", json={"url": "http://93.184.216.34/acme", "events": ["job.failed"]})
        assert resp.status_code == 201, resp.text
        webhook_id = resp.json()["id"]
    delivery_id = str(uuid.uuid4())
    await db.execute(
        "INSERT INTO webhook_deliveries (id, webhook_id, org_id, event, subject, state)"
        " VALUES ($1, $2, $3, 'job.failed', $4, 'failed')",
        uuid.UUID(delivery_id),
        uuid.UUID(webhook_id),
        ORG_A,
        job_id,
    )
    async with client(app, operator.token) as o:
        for name in ("acme-tpl", "acme-tpl-rot", "acme-tpl-spare"):
            resp = await o.put(f"/api/templates/{name}", json={**TEMPLATE_BODY, "description": "acme-template-marker"})
            assert resp.status_code == 201, resp.text
        schedule_ids = []
        for _ in range(2):
            resp = await o.post("/api/schedules", json={"template": "acme-tpl", "params": {}, "cron": "0 3 * * *"})
            assert resp.status_code == 201, resp.text
            schedule_ids.append(resp.json()["id"])
    async with client(app, admin.token) as a:
        template_secret = (await a.get("/api/templates/acme-tpl")).json()["trigger_secret"]
    markers = [job_id, pipeline_id, "acme-box", "acme-spare", viewer.name, operator.name, admin.name, webhook_id]
    markers += ["ACME_ONLY_SECRET", "acme-template-marker", *schedule_ids]
    return World(
        viewer=viewer,
        operator=operator,
        admin=admin,
        b_admin=b_admin,
        box="acme-box",
        spare_box="acme-spare",
        window_id=window_id,
        job_id=job_id,
        b_box="beta-box",
        b_node_token=b_node_token,
        b_session=b_session,
        markers=markers,
        viewer_name=viewer.name,
        admin_name=admin.name,
        spare_token_id=spare_token_id,
        pipeline_id=pipeline_id,
        webhook_id=webhook_id,
        delivery_id=delivery_id,
        template_secret=template_secret,
        schedule_id=schedule_ids[0],
        spare_schedule_id=schedule_ids[1],
    )


@pytest.fixture
async def world(app: FastAPI, db: asyncpg.Connection) -> World:
    return await build_world(app, db)


def fill(path: str, access: Access, w: World) -> str:
    for name, attr in access.params.items():
        path = path.replace(f"{{{name}}}", str(getattr(w, attr)))
    return path


@dataclass
class WsOutcome:
    accepted: bool
    close_code: int | None
    close_reason: str
    messages: list[str]


async def ws_call(app: FastAPI, path: str, token: str, timeout_s: float = 10.0) -> WsOutcome:
    """Drive the app's WebSocket route as an ASGI server would (httpx has no WebSocket client):
    connect, collect what the route sends until it closes (or the deadline), then disconnect."""
    scope = {
        "type": "websocket",
        "asgi": {"version": "3.0"},
        "scheme": "ws",
        "http_version": "1.1",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"boxrun.test"), (b"authorization", f"Bearer {token}".encode())],
        "client": ("127.0.0.1", 1),
        "server": ("boxrun.test", 80),
        "subprotocols": [],
        "state": {},
    }
    incoming: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    await incoming.put({"type": "websocket.connect"})
    out = WsOutcome(accepted=False, close_code=None, close_reason="", messages=[])
    closed = asyncio.Event()

    async def receive() -> MutableMapping[str, Any]:
        return await incoming.get()

    async def send(message: MutableMapping[str, Any]) -> None:
        if message["type"] == "websocket.accept":
            out.accepted = True
        elif message["type"] == "websocket.send":
            out.messages.append(message.get("text") or "")
        elif message["type"] == "websocket.close":
            out.close_code, out.close_reason = message.get("code", 1000), message.get("reason") or ""
            closed.set()

    task = asyncio.create_task(app(scope, receive, send))
    try:
        async with asyncio.timeout(timeout_s):
            await closed.wait()
    except TimeoutError:
        pass
    await incoming.put({"type": "websocket.disconnect", "code": 1000})
    task.cancel()
    with suppress(asyncio.CancelledError):  # cancelled above, if it was still streaming
        await task
    return out


async def call(app: FastAPI, method: str, path: str, access: Access, w: World, token: str) -> httpx.Response:
    async with client(app, token) as c:
        return await c.request(method, fill(path, access, w), **access.send(w))


# ---------------------------------------------------------------- the role matrix

USER_ROLES = (Role.VIEWER, Role.OPERATOR, Role.ADMIN)


async def test_role_matrix_over_every_route(app: FastAPI, world: World) -> None:
    seen = 0
    for method, path, _ in app_routes(app):
        access = ROUTES[(method, path)]
        for role in USER_ROLES:
            person = world.by_role(role)
            where = f"{role.value} on {method} {path}"
            if method == WS:
                outcome = await ws_call(app, fill(path, access, world), person.token)
                assert isinstance(access.role, Role), where
                assert outcome.accepted, f"{where}: closed {outcome.close_code} {outcome.close_reason}"
                continue
            resp = await call(app, method, path, access, world, person.token)
            if access.role == PUBLIC:
                assert resp.status_code not in (401, 403), f"{where}: {resp.status_code} {resp.text}"
            elif access.role == NODE:
                assert_error(resp, 401, "unauthorized")  # a user token is no node token
            elif access.role == PLATFORM_ADMIN or (isinstance(access.role, Role) and not role.includes(access.role)):
                try:
                    assert_error(resp, 403, "forbidden")
                except AssertionError as exc:
                    raise AssertionError(f"{where}: {exc}") from None
            else:
                assert resp.status_code not in (401, 403), f"{where}: {resp.status_code} {resp.text}"
                assert resp.status_code < 500, f"{where}: {resp.status_code} {resp.text}"
            seen += 1
    assert seen >= 3 * 30


async def test_a_role_too_low_is_403_with_the_reason(app: FastAPI, world: World) -> None:
    async with client(app, world.viewer.token) as viewer:
        resp = await viewer.post("/api/jobs", json={"box": world.box, "script": "echo"})
    assert_error(resp, 403, "forbidden", detail="needs the operator role")
    async with client(app, world.operator.token) as operator:
        resp = await operator.delete(f"/api/boxes/{world.spare_box}")
    assert_error(resp, 403, "forbidden", detail="needs the admin role")


async def test_an_operator_cancels_and_reruns_only_its_own_jobs(
    app: FastAPI, world: World, db: asyncpg.Connection
) -> None:
    await add_user(db, "acme-op2", ORG_A, Role.OPERATOR)
    theirs = await insert_ended_job(db, ORG_A, "acme-op2", world.box)
    async with client(app, world.operator.token) as operator, client(app, world.admin.token) as admin:
        for verb in ("cancel", "rerun"):
            resp = await operator.post(f"/api/jobs/{theirs}/{verb}")
            assert_error(resp, 403, "forbidden", detail=f"you may {verb} only your own jobs")
        # its own: the rerun is a new job that belongs to it
        resp = await operator.post(f"/api/jobs/{world.job_id}/rerun")
        assert resp.status_code == 201, resp.text
        assert resp.json()["owner"] == world.operator.name
        # the admin may act on any job of the org; the rerun belongs to the admin
        resp = await admin.post(f"/api/jobs/{theirs}/rerun")
        assert resp.status_code == 201, resp.text
        assert resp.json()["owner"] == world.admin.name
        rerun_of_theirs = resp.json()["id"]
        assert_error(await admin.post(f"/api/jobs/{theirs}/cancel"), 409, "conflict")  # allowed; it ended
        # a live job of someone else: the admin cancels it
        resp = await admin.post(f"/api/jobs/{rerun_of_theirs}/cancel")
        assert resp.status_code == 202, resp.text


async def test_an_operator_cancels_and_reruns_only_its_own_pipelines(
    app: FastAPI, world: World, db: asyncpg.Connection
) -> None:
    await add_user(db, "acme-op2", ORG_A, Role.OPERATOR)
    theirs = await stored_pipeline(db, ORG_A, "acme-op2", world.box)
    async with client(app, world.operator.token) as operator, client(app, world.admin.token) as admin:
        for verb in ("cancel", "rerun"):
            resp = await operator.post(f"/api/pipelines/{theirs}/{verb}")
            assert_error(resp, 403, "forbidden", detail=f"you may {verb} only your own pipelines")
        # its own: the rerun is a new pipeline that belongs to it
        resp = await operator.post(f"/api/pipelines/{world.pipeline_id}/rerun", json={"only_failed": True})
        assert resp.status_code == 201, resp.text
        assert resp.json()["owner"] == world.operator.name and resp.json()["rerun_of"] == world.pipeline_id
        # the admin may act on any pipeline of the org; the rerun belongs to the admin
        resp = await admin.post(f"/api/pipelines/{theirs}/rerun")
        assert resp.status_code == 201, resp.text
        assert resp.json()["owner"] == world.admin.name
        resp = await admin.post(f"/api/pipelines/{theirs}/cancel")  # no workflow: the rows are cancelled
        assert resp.status_code == 202 and resp.json()["state"] == "cancelled", resp.text
    # another org's pipeline filters org B's jobs to nothing
    async with client(app, world.b_admin.token) as b:
        resp = await b.get("/api/jobs", params={"pipeline_id": world.pipeline_id})
        assert resp.status_code == 200 and resp.json() == {"data": [], "count": 0, "next_cursor": None}


async def test_owner_filter(app: FastAPI, world: World, db: asyncpg.Connection) -> None:
    await add_user(db, "acme-op2", ORG_A, Role.OPERATOR)
    theirs = await insert_ended_job(db, ORG_A, "acme-op2", world.box)
    async with client(app, world.operator.token) as operator, client(app, world.viewer.token) as viewer:
        mine = (await operator.get("/api/jobs", params={"owner": "me"})).json()
        assert [j["id"] for j in mine["data"]] == [world.job_id] and mine["count"] == 1
        named = (await viewer.get("/api/jobs", params={"owner": "acme-op2"})).json()
        assert [j["id"] for j in named["data"]] == [theirs] and named["count"] == 1
        mine = (await viewer.get("/api/jobs", params={"owner": "me"})).json()
        assert mine == {"data": [], "count": 0, "next_cursor": None}
        everyone = (await viewer.get("/api/jobs")).json()
        assert {j["id"] for j in everyone["data"]} == {world.job_id, theirs}
        nobody = await viewer.get("/api/jobs", params={"owner": "no-such-user"})
        assert nobody.status_code == 200 and nobody.json() == {"data": [], "count": 0, "next_cursor": None}
        for bad in ("Bad Name", "-x", "x" * 64, ""):
            assert_error(
                await viewer.get("/api/jobs", params={"owner": bad}), 422, "invalid_input", field="query.owner"
            )


# ---------------------------------------------------------------- another org: 404


async def test_another_orgs_resources_are_404_on_every_route(app: FastAPI, world: World) -> None:
    outsiders = [("org B's admin", world.b_admin.token, False), ("the platform admin", ADMIN_TOKEN, True)]
    checked = 0
    for method, path, has_params in app_routes(app):
        access = ROUTES[(method, path)]
        if not has_params:
            continue
        if access.role == PUBLIC:  # no token to come from another org (a trigger: tests/api/test_triggers.py)
            continue
        if access.role == NODE:
            callers = [("org B's node token", world.b_node_token, False)]
        else:
            callers = [c for c in outsiders if not (c[2] and access.platform_reaches_other_orgs)]
        for who, token, _ in callers:
            where = f"{who} on {method} {path}"
            if access.names_in_own_org:
                before = await _org_a_rows(app, world)
                resp = await call(app, method, path, access, world, token)
                assert resp.status_code < 500, f"{where}: {resp.status_code} {resp.text}"
                assert await _org_a_rows(app, world) == before, f"{where} changed org A's rows"
                async with client(app, token) as outsider:  # what it made in its own org goes again
                    await outsider.delete(fill(path, access, world))
                checked += 1
                continue
            if method == WS:
                outcome = await ws_call(app, fill(path, access, world), token)
                assert not outcome.accepted, where
                assert outcome.close_code == 1008 and "not found" in outcome.close_reason, (where, outcome)
            else:
                resp = await call(app, method, path, access, world, token)
                try:
                    assert_error(resp, 404, "not_found")
                except AssertionError as exc:
                    raise AssertionError(f"{where}: {exc}") from None
            checked += 1
    assert checked >= 2 * 18 + 6, checked


async def _org_a_rows(app: FastAPI, w: World) -> str:
    """What org A's admin reads of the resources named inside each org (its secrets, its templates)."""
    async with client(app, w.admin.token) as admin:
        resp = await admin.get("/api/secrets")
        templates = await admin.get("/api/templates")
    assert resp.status_code == 200, resp.text
    assert templates.status_code == 200, templates.text
    return resp.text + templates.text


async def test_list_routes_never_show_another_orgs_rows(app: FastAPI, world: World) -> None:
    for method, path, has_params in app_routes(app):
        access = ROUTES[(method, path)]
        if method != "GET" or has_params or access.role in (PUBLIC, NODE):
            continue
        for token in (world.b_admin.token, ADMIN_TOKEN):
            if access.role == PLATFORM_ADMIN and token != ADMIN_TOKEN:
                continue
            resp = await call(app, method, path, access, world, token)
            assert resp.status_code == 200, f"{method} {path}: {resp.status_code} {resp.text}"
            leaked = [m for m in world.markers if m in resp.text]
            assert not leaked, f"{method} {path} shows org A's {leaked}"
    # and org A's own admin does see them (the markers would catch a leak)
    async with client(app, world.admin.token) as admin:
        assert world.job_id in (await admin.get("/api/jobs")).text
        assert world.pipeline_id in (await admin.get("/api/pipelines")).text
        assert world.box in (await admin.get("/api/boxes")).text
