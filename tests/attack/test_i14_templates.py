"""Attacks on templates (issue 14) as a hostile user would make them: another org's names and
versions, roles that must not change what they do not own, params of every wrong shape, values
that try to smuggle a `${{ secrets.X }}` reference into a rendered body, rendered bodies that aim
at another org's box or a restricted one, bodies invalid only once rendered, and numbers that do
not fit. Each test fails when its defence is missing (docs/templates.md)."""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable
from typing import Any

import asyncpg
import httpx
import pytest

from boxrun.services.identity import Role
from tests.api.helpers import assert_error
from tests.api.people_fixtures import add_org, add_user

JOB = {
    "params": {"board": {"type": "string"}, "n": {"type": "int", "default": 1}},
    "job": {"box": "abox", "script": "flash ${{ params.board }} x${{ params.n }}"},
}


@pytest.fixture
async def abox(make_box: Callable[..., Any]) -> str:
    await make_box("abox")
    return "abox"


async def put(api: httpx.AsyncClient, name: str, body: dict[str, Any], status: int = 201) -> dict[str, Any]:
    resp = await api.put(f"/api/templates/{name}", json=body)
    assert resp.status_code == status, resp.text
    out: dict[str, Any] = resp.json()
    return out


async def job_count(db: asyncpg.Connection) -> int:
    n: int = await db.fetchval("SELECT count(*) FROM jobs")
    return n


# ---------------------------------------------------------------- another org, other roles


async def test_another_orgs_template_is_404_on_every_route_and_never_leaks(
    api: httpx.AsyncClient, db: asyncpg.Connection, as_token: Callable[[str], httpx.AsyncClient], abox: str
) -> None:
    await put(api, "flash", JOB)
    await add_org(db, "beta")
    beta = as_token((await add_user(db, "bea", "beta", Role.ADMIN)).token)
    answers = []
    for name in ("flash", "nope"):  # an existing name of another org and a name nobody has
        for resp in (
            await beta.get(f"/api/templates/{name}"),
            await beta.get(f"/api/templates/{name}", params={"version": 1}),
            await beta.post(f"/api/templates/{name}/run", json={"params": {"board": "b"}}),
            await beta.post(f"/api/templates/{name}/trigger-secret"),
            await beta.delete(f"/api/templates/{name}"),
        ):
            body = assert_error(resp, 404, "not_found")
            answers.append(body["detail"].replace(name, "NAME"))
    assert answers[:5] == answers[5:]  # the same words for a name of another org as for none
    assert (await beta.get("/api/templates")).json()["data"] == []
    # beta's PUT of the same name makes beta's own template; default's is untouched
    mine = await put(beta, "flash", {**JOB, "job": {"box_group": "g", "script": "beta ${{ params.board }}"}})
    assert mine["version"] == 1
    theirs = (await api.get("/api/templates/flash")).json()
    assert theirs["version"] == 1 and theirs["job"] == JOB["job"] and theirs["trigger_secret"] != mine["trigger_secret"]
    assert await job_count(db) == 0


async def test_roles_viewer_and_another_operator(
    api: httpx.AsyncClient, db: asyncpg.Connection, as_token: Callable[[str], httpx.AsyncClient], abox: str
) -> None:
    viewer = as_token((await add_user(db, "vic", "default", Role.VIEWER)).token)
    op1 = as_token((await add_user(db, "opa", "default", Role.OPERATOR)).token)
    op2 = as_token((await add_user(db, "opb", "default", Role.OPERATOR)).token)
    made = await put(op1, "flash", JOB)
    assert made["trigger_secret"] is None  # its creator, an operator, does not see it either
    # a viewer reads but never sees the secret, never writes, never runs
    seen = await viewer.get("/api/templates/flash")
    assert seen.status_code == 200 and seen.json()["trigger_secret"] is None
    assert all(t["trigger_secret"] is None for t in (await viewer.get("/api/templates")).json()["data"])
    assert_error(await viewer.put("/api/templates/flash", json=JOB), 403, "forbidden")
    assert_error(await viewer.put("/api/templates/other", json=JOB), 403, "forbidden")
    assert_error(await viewer.post("/api/templates/flash/run", json={"params": {"board": "b"}}), 403, "forbidden")
    assert_error(await viewer.delete("/api/templates/flash"), 403, "forbidden")
    assert_error(await viewer.post("/api/templates/flash/trigger-secret"), 403, "forbidden")
    # another operator may run it but neither change nor delete it, nor rotate nor see its secret
    assert_error(await op2.put("/api/templates/flash", json={**JOB, "description": "mine"}), 403, "forbidden")
    assert_error(await op2.delete("/api/templates/flash"), 403, "forbidden")
    assert_error(await op2.post("/api/templates/flash/trigger-secret"), 403, "forbidden")
    assert_error(await op1.post("/api/templates/flash/trigger-secret"), 403, "forbidden")  # its creator too
    assert (await op2.get("/api/templates/flash")).json()["trigger_secret"] is None
    assert (await op1.get("/api/templates/flash")).json()["trigger_secret"] is None
    ran = await op2.post("/api/templates/flash/run", json={"params": {"board": "b"}})
    assert ran.status_code == 201 and ran.json()["job"]["owner"] == "opb"
    got = (await api.get("/api/templates/flash")).json()
    assert got["latest_version"] == 1 and got["description"] == ""
    # no audit row names the secret
    rows = await db.fetch("SELECT detail::text AS d FROM audit_log WHERE action LIKE 'template.%'")
    assert rows and all("tgsec_" not in r["d"] for r in rows)


# ---------------------------------------------------------------- params of every wrong shape


BAD_RUN_PARAMS: list[tuple[dict[str, Any], str]] = [
    ({"board": "a\x00b"}, "body.params.board"),
    ({"board": "x" * 4097}, "body.params.board"),
    ({"board": "b", "n": 2**53 + 1}, "body.params.n"),
    ({"board": "b", "n": -(2**53) - 1}, "body.params.n"),
    ({"board": "b", "n": True}, "body.params.n"),
    ({"board": "b", "n": "5"}, "body.params.n"),
    ({"board": "b", "n": 1.0}, "body.params.n"),
    ({"board": 5}, "body.params.board"),
    ({"board": ["b"]}, "body.params.board"),
    ({"board": {"x": 1}}, "body.params.board"),
    ({"board": "${{ secrets.DB }}"}, "body.params.board"),
    ({"board": "$ {{ x }}${{params.n}}"}, "body.params.board"),
    ({}, "body.params.board"),
    ({"board": None}, "body.params.board"),
    ({"board": "b", "nope": 1}, "body.params.nope"),
]


@pytest.mark.parametrize(("params", "field"), BAD_RUN_PARAMS)
async def test_bad_params_are_422_naming_the_param(
    api: httpx.AsyncClient, db: asyncpg.Connection, abox: str, params: dict[str, Any], field: str
) -> None:
    await put(api, "flash", JOB)
    assert_error(await api.post("/api/templates/flash/run", json={"params": params}), 422, "invalid_input", field=field)
    assert await job_count(db) == 0


async def test_lone_surrogates_and_odd_names_never_500(
    api: httpx.AsyncClient, db: asyncpg.Connection, abox: str
) -> None:
    await put(api, "flash", JOB)
    for raw in (
        b'{"params": {"board": "a\\ud800b"}}',  # a lone surrogate in a value
        b'{"params": {"board": "b", "\\ud800": 1}}',  # ... in a param name
        b'{"params": {"board": "b", "a\\u0000b": 1}}',  # NUL in a param name
        b'{"params": {"board": "b", "' + b"x" * 5000 + b'": 1}}',  # a name of 5000 characters
    ):
        resp = await api.post("/api/templates/flash/run", content=raw, headers={"Content-Type": "application/json"})
        assert_error(resp, 422, "invalid_input")
    too_many = {f"p{i}": "x" for i in range(51)}
    assert_error(await api.post("/api/templates/flash/run", json={"params": too_many}), 422, "invalid_input")
    assert await job_count(db) == 0


BAD_DECLARATIONS: list[dict[str, Any]] = [
    {f"p{i}": {"type": "string", "default": ""} for i in range(51)},  # 51 params
    {"1bad": {"type": "string"}},  # not a name
    {"a-b": {"type": "string"}},
    {"a.b": {"type": "string"}},
    {"": {"type": "string"}},
    {"x" * 65: {"type": "string"}},
    {"p": {"type": "string", "default": "a\x00"}},
    {"p": {"type": "string", "default": "x" * 4097}},
    {"p": {"type": "string", "default": "${{ secrets.DB }}"}},
    {"p": {"type": "int", "default": 2**53 + 1}},
    {"p": {"type": "int", "default": True}},
    {"p": {"type": "int", "default": "5"}},
    {"p": {"type": "bool", "default": 0}},
    {"p": {"type": "choice", "choices": []}},
    {"p": {"type": "choice", "choices": ["a", "a"]}},
    {"p": {"type": "choice", "choices": ["a"], "default": "b"}},
    {"p": {"type": "choice", "choices": ["${{ secrets.DB }}"]}},
    {"p": {"type": "string", "choices": ["a"]}},
    {"p": {"type": "float"}},
    {"p": {"type": "string", "default": "a", "required": True}},
    {"p": {"type": "string", "extra": 1}},
]


@pytest.mark.parametrize("params", BAD_DECLARATIONS, ids=range(len(BAD_DECLARATIONS)))
async def test_bad_param_declarations_are_422(api: httpx.AsyncClient, abox: str, params: dict[str, Any]) -> None:
    resp = await api.put("/api/templates/t", json={"params": params, "job": {"box": "abox", "script": "x"}})
    assert_error(resp, 422, "invalid_input")
    assert_error(await api.get("/api/templates/t"), 404, "not_found")


# ---------------------------------------------------------------- smuggling and rendering


async def test_undeclared_reference_and_keys_are_never_rendered(
    api: httpx.AsyncClient, db: asyncpg.Connection, abox: str
) -> None:
    undeclared = {"params": {}, "job": {"box": "abox", "script": "x ${{ params.X }}"}}
    assert_error(await api.put("/api/templates/t", json=undeclared), 422, "invalid_input", field="body.job")
    in_key = {
        "params": {"k": {"type": "string"}},
        "job": {"box": "abox", "script": "x", "env": {"A": "${{ params.k }}"}, "files": {"f.txt": "${{ params.k }}"}},
    }
    await put(api, "t", in_key)
    ran = await api.post("/api/templates/t/run", json={"params": {"k": "v"}})
    assert ran.status_code == 201, ran.text
    spec = await db.fetchval("SELECT spec FROM jobs WHERE id = $1::uuid", ran.json()["job"]["id"])
    assert spec["env"] == {"A": "v"}
    # a key holding a reference is kept as it is (an env name with `${{` is not a valid name: 422 at PUT)
    key_ref = {
        "params": {"k": {"type": "string"}},
        "job": {"box": "abox", "script": "x", "env": {"${{ params.k }}": "v"}},
    }
    assert_error(await api.put("/api/templates/t2", json=key_ref), 422, "invalid_input")


SMUGGLES: list[tuple[dict[str, str], dict[str, str]]] = [
    # env value -> params: pieces that are harmless alone and a secret reference side by side
    ({"A": "${{ params.a }}${{ params.b }}"}, {"a": "$", "b": "{{ secrets.DB }}"}),
    ({"A": "${{ params.a }}${{ params.b }}"}, {"a": "${", "b": "{ secrets.DB }}"}),
    ({"A": "$${{ params.b }}"}, {"a": "", "b": "{{ secrets.DB }}"}),
    ({"A": "$${{ params.a }}{ secrets.DB }}"}, {"a": "{", "b": ""}),
    ({"A": "${{ params.a }}{{ secrets.DB }}"}, {"a": "$", "b": ""}),
    ({"A": "${{ params.a }}{ secrets.DB }}"}, {"a": "${", "b": ""}),
]


@pytest.mark.parametrize(("env", "params"), SMUGGLES)
async def test_params_side_by_side_never_make_a_secret_reference(
    api: httpx.AsyncClient, db: asyncpg.Connection, abox: str, env: dict[str, str], params: dict[str, str]
) -> None:
    """A CI branch name `{{ secrets.DB }}` after a `$` (in the template, or in another param) must
    not become `${{ secrets.DB }}` in the rendered env, where the box's bundle would resolve it."""
    resp = await api.put("/api/secrets/DB", json={"value": "hunter2-db"})
    assert resp.status_code in (200, 201, 204), resp.text
    body = {
        "params": {"a": {"type": "string", "default": ""}, "b": {"type": "string", "default": ""}},
        "job": {"box": "abox", "script": "x", "env": env},
    }
    await put(api, "t", body)
    ran = await api.post("/api/templates/t/run", json={"params": params})
    assert_error(ran, 422, "invalid_input")
    assert await job_count(db) == 0


async def test_a_param_filling_a_matrix_value_never_makes_a_secret_reference(
    api: httpx.AsyncClient, db: asyncpg.Connection, abox: str
) -> None:
    """The param is clean on its own (no `${{`), but the step puts a `$` before the matrix
    reference its value fills: the expanded env would refer to a secret the template never names.
    Held by the matrix's own rule (a matrix value is a short name: no braces, no spaces)."""
    resp = await api.put("/api/secrets/DB", json={"value": "hunter2-db"})
    assert resp.status_code in (200, 201, 204), resp.text
    body = {
        "params": {"b": {"type": "string", "default": "b"}},
        "pipeline": {
            "steps": {
                "s": {
                    "box": "abox",
                    "script": "x",
                    "env": {"A": "$${{ matrix.b }}"},
                    "matrix": {"b": ["${{ params.b }}"]},
                }
            }
        },
    }
    await put(api, "p", body)
    ran = await api.post("/api/templates/p/run", json={"params": {"b": "{{ secrets.DB }}"}})
    assert_error(ran, 422, "invalid_input", field="body.params.steps.s.matrix.b.0")
    assert await db.fetchval("SELECT count(*) FROM pipelines") == 0


async def test_a_ci_branch_name_holding_a_secret_reference_is_refused(
    api: httpx.AsyncClient, db: asyncpg.Connection, abox: str
) -> None:
    body = {
        "params": {"ref": {"type": "string"}},
        "job": {"box": "abox", "script": "x", "env": {"R": "${{ params.ref }}"}},
    }
    await put(api, "t", body)
    for ref in ("${{ secrets.DB }}", "${{secrets.DB}}", "refs/heads/${{ secrets.DB }}", "${{ params.ref }}"):
        resp = await api.post("/api/templates/t/run", json={"params": {"ref": ref}})
        assert_error(resp, 422, "invalid_input", field="body.params.ref")
    assert await job_count(db) == 0


async def test_a_rendered_box_of_another_org_or_a_restricted_box_is_refused(
    api: httpx.AsyncClient,
    db: asyncpg.Connection,
    as_token: Callable[[str], httpx.AsyncClient],
    make_box: Callable[..., Any],
    abox: str,
) -> None:
    await make_box("secret-bench")
    await add_user(db, "olga", "default", Role.OPERATOR)
    op = as_token((await add_user(db, "otto", "default", Role.OPERATOR)).token)
    resp = await api.patch("/api/boxes/secret-bench", json={"allowed_users": ["olga"]})
    assert resp.status_code == 200, resp.text
    await add_org(db, "beta")
    beta = as_token((await add_user(db, "bea", "beta", Role.OPERATOR)).token)
    body = {
        "params": {"box": {"type": "string", "default": "abox"}},
        "job": {"box": "${{ params.box }}", "script": "x"},
    }
    await put(beta, "t", body)  # abox is default's: the placeholder render passes (boxes are checked at run)
    await put(op, "t", body)
    for client, box in ((beta, "abox"), (op, "secret-bench")):
        ran = await client.post("/api/templates/t/run", json={"params": {"box": box}})
        body_ = assert_error(ran, 422, "invalid_input")
        assert "secret-bench" not in body_["detail"] or "does not exist" in body_["detail"]
    assert_error(await op.post("/api/templates/t/run", json={"params": {"box": "bad box!"}}), 422, "invalid_input")
    assert await job_count(db) == 0


async def test_a_body_invalid_only_once_rendered(api: httpx.AsyncClient, db: asyncpg.Connection, abox: str) -> None:
    body = {
        "params": {"g": {"type": "string", "default": "grp"}, "s": {"type": "string", "default": "x"}},
        "job": {"box_group": "${{ params.g }}", "script": "${{ params.s }}"},
    }
    await put(api, "t", body)
    resp = await api.post("/api/templates/t/run", json={"params": {"g": "not a name!"}})
    assert_error(resp, 422, "invalid_input")
    resp = await api.post("/api/templates/t/run", json={"params": {"s": ""}})  # an empty script
    assert_error(resp, 422, "invalid_input")
    assert await job_count(db) == 0


async def test_a_pipeline_whose_rendered_matrix_explodes(
    api: httpx.AsyncClient, db: asyncpg.Connection, abox: str
) -> None:
    """Matrix values are strings a param can fill, but never lists: a param cannot widen a matrix."""
    body = {
        "params": {"b": {"type": "string", "default": "b1"}},
        "pipeline": {
            "steps": {
                "s": {
                    "box": "abox",
                    "script": "x ${{ matrix.a }} ${{ matrix.b }}",
                    "matrix": {
                        "a": [str(i) for i in range(30)],
                        "b": ["${{ params.b }}"] + [f"v{i}" for i in range(29)],
                    },
                }
            }
        },
    }
    resp = await api.put("/api/templates/p", json=body)
    # 900 jobs from one step is over the step cap: refused at PUT already
    assert_error(resp, 422, "invalid_input")
    # a matrix value the param makes equal to another: duplicates collapse or are refused, never a 500
    body2 = {
        "params": {"b": {"type": "string", "default": "b1"}},
        "pipeline": {
            "steps": {"s": {"box": "abox", "script": "x ${{ matrix.b }}", "matrix": {"b": ["${{ params.b }}", "v"]}}}
        },
    }
    await put(api, "p2", body2)
    resp = await api.post("/api/templates/p2/run", json={"params": {"b": "v"}})
    assert resp.status_code in (201, 422), resp.text
    if resp.status_code == 422:
        assert_error(resp, 422, "invalid_input")


async def test_huge_bodies_and_the_template_limit(
    api: httpx.AsyncClient, db: asyncpg.Connection, abox: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    huge = {"params": {}, "job": {"box": "abox", "script": "x" * (2 * 1024 * 1024)}}
    assert_error(await api.put("/api/templates/t", json=huge), 413, "too_large")
    from boxrun.services import templates as service

    monkeypatch.setattr(service, "MAX_TEMPLATES_PER_ORG", 3)
    for i in range(3):
        await put(api, f"t{i}", JOB)
    assert_error(await api.put("/api/templates/t3", json=JOB), 409, "conflict")
    await put(api, "t0", JOB, status=200)  # a new version of an existing one is no new template


@pytest.mark.parametrize("version", [0, -1, 2**31, 2**63, 2**64, "1", 1.5, True])
async def test_versions_out_of_range_never_500(
    api: httpx.AsyncClient, db: asyncpg.Connection, abox: str, version: Any
) -> None:
    await put(api, "flash", JOB)
    ran = await api.post("/api/templates/flash/run", json={"params": {"board": "b"}, "version": version})
    assert ran.status_code in (404, 422), ran.text
    if version != "1":
        got = await api.get("/api/templates/flash", params={"version": str(version)})
        assert got.status_code in (404, 422), got.text
    assert await job_count(db) == 0


async def test_a_body_nested_too_deep_is_422_not_a_recursion_error(api: httpx.AsyncClient, abox: str) -> None:
    for depth in (40, 500):
        nested = "[" * depth + '"x"' + "]" * depth
        raw = '{"params": {}, "job": {"box": "abox", "script": "x", "labels": {"a": ' + nested + "}}}"
        resp = await api.put("/api/templates/deep", content=raw.encode(), headers={"Content-Type": "application/json"})
        assert_error(resp, 422, "invalid_input", detail="nested deeper")
    resp = await api.put("/api/templates/deep", content=b'{"params": {}, "pipeline": ' + b"[" * 600 + b"]" * 600 + b"}")
    assert resp.status_code in (400, 422), resp.text


async def test_references_cannot_blow_a_run_up(api: httpx.AsyncClient, db: asyncpg.Connection, abox: str) -> None:
    """19,000 references to one param in a 250 KB script, run with a value of 4,096 characters:
    78 million characters, refused before they are made (422), not built and then refused."""
    body = {
        "params": {"a": {"type": "string", "default": "x"}},
        "job": {"box": "abox", "script": "${{params.a}}" * 19000},
    }
    await put(api, "amp", body)
    tracemalloc.start()
    try:
        resp = await api.post("/api/templates/amp/run", json={"params": {"a": "y" * 4096}})
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert_error(resp, 422, "invalid_input", field="body.params")
    assert peak < 40 * 1024 * 1024, peak
    assert await job_count(db) == 0
    # the same template with a short value renders and runs
    ok = await api.post("/api/templates/amp/run", json={"params": {"a": "y"}})
    assert ok.status_code == 201, ok.text


async def test_the_1001st_template_is_409(api: httpx.AsyncClient, db: asyncpg.Connection, app: Any, abox: str) -> None:
    """1,000 templates written as rows (a PUT each would take minutes), then the 1,001st PUT."""
    sealed = app.state.settings.secret_box().seal("tgsec_" + "8" * 43)
    await db.execute(
        "INSERT INTO templates (id, org_id, name, latest_version, trigger_secret_sealed, created_by, updated_by)"
        " SELECT gen_random_uuid(), 'default', 'bulk' || g, 1, $1, 'admin', 'admin' FROM generate_series(1, 1000) g",
        sealed,
    )
    await db.execute(
        "INSERT INTO template_versions (template_id, version, description, params, kind, body, created_by)"
        " SELECT id, 1, '', '{}'::jsonb, 'job', '{\"box\": \"abox\", \"script\": \"x\"}'::jsonb, 'admin'"
        " FROM templates WHERE name LIKE 'bulk%'"
    )
    assert_error(await api.put("/api/templates/one-more", json=JOB), 409, "conflict", detail="1000 templates")
    assert_error(await api.get("/api/templates/one-more"), 404, "not_found")
    await put(api, "bulk1", JOB, status=200)  # a new version of one of them is fine


async def test_an_orgs_templates_together_are_bounded(
    api: httpx.AsyncClient, abox: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GET /api/templates answers every latest body at once: 1,000 bodies of 1 MiB would be a
    gigabyte in one answer. The latest versions together are bounded (here made 20,000 bytes)."""
    from boxrun.services import templates as service

    monkeypatch.setattr(service, "MAX_TEMPLATE_BYTES_PER_ORG", 20_000)

    def body(n: int) -> dict[str, Any]:
        return {"params": {}, "job": {"box": "abox", "script": "x" * n}}

    await put(api, "t1", body(9000))
    await put(api, "t2", body(9000))
    assert_error(await api.put("/api/templates/t3", json=body(9000)), 409, "conflict", detail="MiB")
    await put(api, "t1", body(9000), status=200)  # a new version replaces its own size
    assert_error(await api.put("/api/templates/t1", json=body(15000)), 409, "conflict")
    got = (await api.get("/api/templates")).json()["data"]
    assert [t["name"] for t in got] == ["t1", "t2"] and got[0]["latest_version"] == 2
