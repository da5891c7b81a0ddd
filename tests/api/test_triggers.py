"""CI triggers of templates on the real parts: GitHub's signed form and GitLab's token form, a bad
signature (401, the same answer as an unknown template), a replayed delivery (the same run)."""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid
from collections.abc import Callable
from typing import Any

import asyncpg
import httpx
import pytest

from tests.api.helpers import assert_error
from tests.api.people_fixtures import add_org

TEMPLATE = {
    "params": {
        "ref": {"type": "string"},
        "sha": {"type": "string"},
        "repo": {"type": "string", "default": "none"},
        "event": {"type": "string", "required": False},
    },
    "job": {
        "box": "cibox",
        "script": "build ${{ params.repo }}@${{ params.sha }} (${{ params.ref }}, ${{ params.event }})",
    },
}
GITHUB_PUSH = {
    "ref": "refs/heads/main",
    "after": "0123456789abcdef0123456789abcdef01234567",
    "repository": {"full_name": "acme/fw"},
    "pusher": {"name": "octo"},
    "sender": {"login": "octo"},
}
GITLAB_PUSH = {
    "object_kind": "push",
    "ref": "refs/heads/dev",
    "after": "1111111111111111111111111111111111111111",
    "checkout_sha": "2222222222222222222222222222222222222222",
    "user_username": "gl-user",
    "project": {"path_with_namespace": "acme/fw"},
}
URL = "/api/orgs/default/templates/ci/trigger"


@pytest.fixture
async def secret(make_box: Callable[..., Any], api: httpx.AsyncClient) -> str:
    await make_box("cibox")
    resp = await api.put("/api/templates/ci", json=TEMPLATE)
    assert resp.status_code == 201, resp.text
    return str(resp.json()["trigger_secret"])


def github(secret: str, payload: Any, *, delivery: str | None = None, event: str = "push") -> dict[str, Any]:
    raw = json.dumps(payload).encode()
    sig = "sha256=" + hmac.new(secret.encode(), raw, hashlib.sha256).hexdigest()
    headers = {
        "X-Hub-Signature-256": sig,
        "X-GitHub-Delivery": delivery or str(uuid.uuid4()),
        "X-GitHub-Event": event,
        "Content-Type": "application/json",
    }
    return {"content": raw, "headers": headers}


def gitlab(secret: str, payload: Any, *, delivery: str | None = None) -> dict[str, Any]:
    headers = {
        "X-Gitlab-Token": secret,
        "X-Gitlab-Event-UUID": delivery or str(uuid.uuid4()),
        "X-Gitlab-Event": "Push Hook",
        "Content-Type": "application/json",
    }
    return {"content": json.dumps(payload).encode(), "headers": headers}


async def spec_of(db: asyncpg.Connection, job_id: str) -> dict[str, Any]:
    row = await db.fetchrow("SELECT spec, owner FROM jobs WHERE id = $1::uuid", job_id)
    assert row is not None
    return {**row["spec"], "owner": row["owner"]}


async def test_github_push_runs_the_template_once_per_delivery(
    anon: httpx.AsyncClient, db: asyncpg.Connection, secret: str
) -> None:
    req = github(secret, GITHUB_PUSH, delivery="d-1")
    resp = await anon.post(URL, **req)
    assert resp.status_code == 201, resp.text
    out = resp.json()
    assert out["kind"] == "job" and out["job"]["owner"] == "trigger:ci" and out["job"]["state"] == "queued"
    spec = await spec_of(db, out["job"]["id"])
    assert spec["script"] == "build acme/fw@0123456789abcdef0123456789abcdef01234567 (refs/heads/main, push)"
    assert spec["template"] == {"name": "ci", "version": 1} and spec["owner"] == "trigger:ci"
    # the same delivery again: the same run, nothing new
    again = await anon.post(URL, **req)
    assert again.status_code == 200, again.text
    assert again.json()["job"]["id"] == out["job"]["id"]
    assert await db.fetchval("SELECT count(*) FROM jobs") == 1
    # another push (another body) under another delivery id: another run
    push2 = {**GITHUB_PUSH, "after": "f" * 40}
    other = await anon.post(URL, **github(secret, push2, delivery="d-2"))
    assert other.status_code == 201 and other.json()["job"]["id"] != out["job"]["id"]
    # the first signed request captured and sent again under a fresh delivery id (GitHub's
    # signature does not cover X-GitHub-Delivery): the same body, so the same run, nothing new
    captured = github(secret, GITHUB_PUSH, delivery="d-forged")
    forged = await anon.post(URL, **captured)
    assert forged.status_code == 200 and forged.json()["job"]["id"] == out["job"]["id"], forged.text
    # a delivery id seen before with another body: its run, the new body is not read
    changed = github(secret, {**GITHUB_PUSH, "ref": "refs/heads/evil"}, delivery="d-1")
    again2 = await anon.post(URL, **changed)
    assert again2.status_code == 200 and again2.json()["job"]["id"] == out["job"]["id"]
    audit = await db.fetch("SELECT actor, detail FROM audit_log WHERE action = 'template.run' ORDER BY id")
    assert [a["actor"] for a in audit] == ["trigger:ci", "trigger:ci"]
    assert audit[0]["detail"]["via"] == "trigger:github:d-1"


async def test_gitlab_push_runs_the_template(anon: httpx.AsyncClient, db: asyncpg.Connection, secret: str) -> None:
    req = gitlab(secret, GITLAB_PUSH, delivery="gl-1")
    resp = await anon.post(URL, **req)
    assert resp.status_code == 201, resp.text
    spec = await spec_of(db, resp.json()["job"]["id"])
    assert spec["script"] == "build acme/fw@2222222222222222222222222222222222222222 (refs/heads/dev, Push Hook)"
    again = await anon.post(URL, **req)
    assert again.status_code == 200 and again.json()["job"]["id"] == resp.json()["job"]["id"]
    # Idempotency-Key stands for the delivery id when GitLab's header is absent
    headers = {k: v for k, v in req["headers"].items() if k != "X-Gitlab-Event-UUID"}
    first = await anon.post(URL, content=req["content"], headers={**headers, "Idempotency-Key": "k1"})
    second = await anon.post(URL, content=req["content"], headers={**headers, "Idempotency-Key": "k1"})
    assert (first.status_code, second.status_code) == (201, 200)
    assert first.json()["job"]["id"] == second.json()["job"]["id"]


async def test_bad_signatures_are_401_with_one_answer(
    anon: httpx.AsyncClient, api: httpx.AsyncClient, db: asyncpg.Connection, secret: str
) -> None:
    good = github(secret, GITHUB_PUSH)
    tampered = {**good, "content": good["content"].replace(b"main", b"evil")}
    wrong_key = github("tgsec_wrong", GITHUB_PUSH)
    no_sig = {**good, "headers": {k: v for k, v in good["headers"].items() if k != "X-Hub-Signature-256"}}
    bad_token = gitlab("tgsec_wrong", GITLAB_PUSH)
    details = set()
    for req, url in [
        (tampered, URL),
        (wrong_key, URL),
        (no_sig, URL),
        (bad_token, URL),
        (good, "/api/orgs/default/templates/nope/trigger"),  # unknown template
        (good, "/api/orgs/beta/templates/ci/trigger"),  # unknown org
        (good, "/api/orgs/default/templates/-x/trigger"),  # not a name
    ]:
        body = assert_error(await anon.post(url, **req), 401, "unauthorized")
        details.add(body["detail"])
    assert len(details) == 1
    # a bearer token is no credential here: the signature is
    assert_error(await api.post(URL, **no_sig), 401, "unauthorized")
    # after a rotation the old secret is refused, the new one taken
    new = (await api.post("/api/templates/ci/trigger-secret")).json()["trigger_secret"]
    assert_error(await anon.post(URL, **github(secret, GITHUB_PUSH)), 401, "unauthorized")
    assert (await anon.post(URL, **github(new, GITHUB_PUSH))).status_code == 201
    assert await db.fetchval("SELECT count(*) FROM jobs") == 1


async def test_the_org_in_the_path_scopes_the_template(
    anon: httpx.AsyncClient, db: asyncpg.Connection, as_token: Callable[[str], httpx.AsyncClient], secret: str
) -> None:
    """Org beta's template of the same name has its own secret: org default's does not open it."""
    from boxrun.services.identity import Role
    from tests.api.people_fixtures import add_user

    await add_org(db, "beta")
    beta = as_token((await add_user(db, "bea", "beta", Role.ADMIN)).token)
    resp = await beta.put("/api/templates/ci", json={**TEMPLATE, "job": {"box_group": "g", "script": "x"}})
    assert resp.status_code == 201, resp.text
    beta_secret = resp.json()["trigger_secret"]
    assert beta_secret != secret
    assert_error(
        await anon.post("/api/orgs/beta/templates/ci/trigger", **github(secret, GITHUB_PUSH)), 401, "unauthorized"
    )
    ok = await anon.post("/api/orgs/beta/templates/ci/trigger", **github(beta_secret, GITHUB_PUSH))
    assert ok.status_code == 201, ok.text
    row = await db.fetchrow("SELECT org_id FROM jobs WHERE id = $1::uuid", ok.json()["job"]["id"])
    assert row is not None and row["org_id"] == "beta"


async def test_payloads_of_no_known_shape_and_missing_ids_are_422(
    anon: httpx.AsyncClient, db: asyncpg.Connection, secret: str
) -> None:
    assert_error(await anon.post(URL, **github(secret, {"zen": "hi"})), 422, "invalid_input", field="body")
    assert_error(await anon.post(URL, **github(secret, [1, 2])), 422, "invalid_input", field="body")
    raw = b"not json"
    sig = "sha256=" + hmac.new(secret.encode(), raw, hashlib.sha256).hexdigest()
    resp = await anon.post(URL, content=raw, headers={"X-Hub-Signature-256": sig, "X-GitHub-Delivery": "x"})
    assert_error(resp, 422, "invalid_input", field="body")
    req = github(secret, GITHUB_PUSH)
    del req["headers"]["X-GitHub-Delivery"]
    assert_error(await anon.post(URL, **req), 422, "invalid_input", field="header.delivery")
    # a required param the payload does not give: 422 naming it
    no_sha = {k: v for k, v in GITHUB_PUSH.items() if k != "after"}
    assert_error(await anon.post(URL, **github(secret, no_sha)), 422, "invalid_input", field="body.params.sha")
    # a failed run frees its delivery id: the same delivery fixed and sent again runs
    assert await db.fetchval("SELECT count(*) FROM trigger_deliveries") == 0
    assert await db.fetchval("SELECT count(*) FROM jobs") == 0


async def test_a_github_pull_request(anon: httpx.AsyncClient, db: asyncpg.Connection, secret: str) -> None:
    payload = {
        "action": "opened",
        "pull_request": {"head": {"ref": "feature", "sha": "abc"}},
        "repository": {"full_name": "acme/fw"},
        "sender": {"login": "dev"},
    }
    resp = await anon.post(URL, **github(secret, payload, event="pull_request"))
    assert resp.status_code == 201, resp.text
    spec = await spec_of(db, resp.json()["job"]["id"])
    assert spec["script"] == "build acme/fw@abc (feature, pull_request)"


async def test_a_pipeline_template_from_a_gitlab_merge_request(
    anon: httpx.AsyncClient, api: httpx.AsyncClient, db: asyncpg.Connection, secret: str
) -> None:
    body = {
        "params": {"ref": {"type": "string"}, "actor": {"type": "string"}},
        "pipeline": {
            "name": "mr-${{ params.ref }}",
            "steps": {"a": {"box": "cibox", "script": "test ${{ params.actor }}"}},
        },
    }
    resp = await api.put("/api/templates/mr", json=body)
    assert resp.status_code == 201, resp.text
    payload = {
        "object_kind": "merge_request",
        "object_attributes": {"source_branch": "feat", "last_commit": {"id": "c0ffee"}},
        "project": {"path_with_namespace": "acme/fw"},
        "user": {"username": "gl-dev"},
    }
    url = "/api/orgs/default/templates/mr/trigger"
    req = gitlab(resp.json()["trigger_secret"], payload, delivery="mr-1")
    first = await anon.post(url, **req)
    assert first.status_code == 201, first.text
    out = first.json()
    assert (
        out["kind"] == "pipeline" and out["pipeline"]["name"] == "mr-feat" and out["pipeline"]["owner"] == "trigger:mr"
    )
    again = await anon.post(url, **req)
    assert again.status_code == 200 and again.json()["pipeline"]["id"] == out["pipeline"]["id"]
    (step,) = await db.fetch("SELECT spec FROM pipeline_steps")
    assert step["spec"]["job"]["script"] == "test gl-dev"


ORGLESS_URL = "/api/templates/ci/trigger"


async def test_the_url_without_an_org_finds_it_by_the_secret(
    anon: httpx.AsyncClient,
    api: httpx.AsyncClient,
    db: asyncpg.Connection,
    as_token: Callable[[str], httpx.AsyncClient],
    secret: str,
) -> None:
    """POST /api/templates/{name}/trigger (the issue's form): two orgs' templates named `ci`, each
    run is made in the org whose secret signed it; a wrong secret, or an unknown name, is the one 401."""
    from boxrun.services.identity import Role
    from tests.api.people_fixtures import add_user

    await add_org(db, "beta")
    beta = as_token((await add_user(db, "bea", "beta", Role.ADMIN)).token)
    resp = await beta.put("/api/templates/ci", json={**TEMPLATE, "job": {"box_group": "g", "script": "x"}})
    assert resp.status_code == 201, resp.text
    beta_secret = resp.json()["trigger_secret"]
    made = {}
    for org, key, req in (
        ("default", secret, github(secret, GITHUB_PUSH)),
        ("beta", beta_secret, gitlab(beta_secret, GITLAB_PUSH)),
    ):
        out = await anon.post(ORGLESS_URL, **req)
        assert out.status_code == 201, out.text
        job_id = out.json()["job"]["id"]
        assert await db.fetchval("SELECT org_id FROM jobs WHERE id = $1::uuid", job_id) == org
        made[org] = job_id
        # the same delivery to the org-scoped URL: the same run
        again = await anon.post(f"/api/orgs/{org}/templates/ci/trigger", **req)
        assert again.status_code == 200 and again.json()["job"]["id"] == job_id, key
    # `?org=` narrows: beta's secret is no good for default's template
    assert_error(await anon.post(ORGLESS_URL + "?org=default", **github(beta_secret, GITHUB_PUSH)), 401, "unauthorized")
    assert_error(await anon.post(ORGLESS_URL, **github("tgsec_" + "1" * 43, GITHUB_PUSH)), 401, "unauthorized")
    assert_error(await anon.post("/api/templates/nope/trigger", **github(secret, GITHUB_PUSH)), 401, "unauthorized")
    assert_error(await anon.post(ORGLESS_URL, **gitlab("", GITLAB_PUSH)), 401, "unauthorized")
    assert await db.fetchval("SELECT count(*) FROM jobs") == 2
    # the run says which template made it, at which version
    shown = await api.get(f"/api/jobs/{made['default']}")
    assert shown.json()["template"] == {"name": "ci", "version": 1}
    # the org's jobs a trigger made: ?owner=trigger:<name> (a bad owner filter is a 422)
    by_trigger = (await api.get("/api/jobs", params={"owner": "trigger:ci"})).json()
    assert [j["id"] for j in by_trigger["data"]] == [made["default"]]
    assert_error(await api.get("/api/jobs", params={"owner": "trigger:"}), 422, "invalid_input")


async def test_a_github_ping_is_answered_and_runs_nothing(
    anon: httpx.AsyncClient, db: asyncpg.Connection, secret: str
) -> None:
    ping = {"zen": "Keep it logically awesome.", "hook_id": 1}
    resp = await anon.post(ORGLESS_URL, **github(secret, ping, event="ping"))
    assert resp.status_code == 200, resp.text
    assert resp.json()["ping"] is True
    # a ping still needs the signature
    assert_error(await anon.post(ORGLESS_URL, **github("tgsec_" + "2" * 43, ping, event="ping")), 401, "unauthorized")
    assert await db.fetchval("SELECT count(*) FROM jobs") == 0
