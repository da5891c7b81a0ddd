"""Templates on the real parts (the API in-process, Postgres, Temporal, storage): put versions,
read them, run them with params; a queued run keeps the version it was made from."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import asyncpg
import httpx
import pytest

from boxrun.errors import InvalidInput
from boxrun.schemas.templates import ParamSpec
from boxrun.services.identity import Role
from boxrun.templating import references, render, resolve
from tests.api.helpers import assert_error
from tests.api.people_fixtures import add_org, add_user

FLASH = {
    "description": "flash a board",
    "params": {
        "board": {"type": "string", "required": True},
        "image": {"type": "choice", "choices": ["stable", "nightly"], "default": "stable"},
        "retries": {"type": "int", "default": 2},
        "verbose": {"type": "bool", "default": False},
    },
    "job": {
        "box": "tbox",
        "script": "flash ${{ params.board }} ${{params.image}} -r ${{ params.retries }} v=${{ params.verbose }}",
        "env": {"BOARD": "${{ params.board }}", "TOKEN": "${{ secrets.FLASH_TOKEN }}"},
        "labels": {"board": "${{ params.board }}"},
        "files": {"cfg.txt": "board=${{ params.board }}"},
    },
}


@pytest.fixture
async def tbox(make_box: Callable[..., Any], api: httpx.AsyncClient) -> str:
    await make_box("tbox")
    resp = await api.put("/api/secrets/FLASH_TOKEN", json={"value": "s3cret"})
    assert resp.status_code in (200, 201, 204), resp.text
    return "tbox"


async def put(api: httpx.AsyncClient, name: str, body: dict[str, Any], status: int = 201) -> dict[str, Any]:
    resp = await api.put(f"/api/templates/{name}", json=body)
    assert resp.status_code == status, resp.text
    return resp.json()


# ---------------------------------------------------------------- rendering (pure)


def test_render_substitutes_params_only_in_string_values() -> None:
    body = {
        "script": "a ${{ params.x }} ${{ secrets.S }} ${{ matrix.m }}",
        "${{ params.x }}": 5,
        "l": ["${{params.x}}"],
    }
    assert references(body) == {"x"}
    out = render(body, {"x": "X"})
    assert out == {"script": "a X ${{ secrets.S }} ${{ matrix.m }}", "${{ params.x }}": 5, "l": ["X"]}
    # one pass: a value holding a reference is not expanded again
    assert render("${{ params.a }}", {"a": "${{ params.b }}", "b": "no"}) == "${{ params.b }}"


def test_resolve_types_defaults_and_refusals() -> None:
    specs = {k: ParamSpec.model_validate(v) for k, v in FLASH["params"].items()}  # type: ignore[attr-defined]
    assert resolve(specs, {"board": "b1", "retries": 5, "verbose": True}) == {
        "board": "b1",
        "image": "stable",
        "retries": "5",
        "verbose": "true",
    }
    cases: list[tuple[dict[str, Any], str]] = [
        ({}, "board"),
        ({"board": "b", "nope": 1}, "nope"),
        ({"board": 1}, "board"),
        ({"board": "b", "retries": "5"}, "retries"),
        ({"board": "b", "retries": True}, "retries"),
        ({"board": "b", "verbose": "yes"}, "verbose"),
        ({"board": "b", "image": "beta"}, "image"),
        ({"board": "a\x00b"}, "board"),
        ({"board": "x" * 5000}, "board"),
        ({"board": "${{ secrets.FLASH_TOKEN }}"}, "board"),
    ]
    for given, name in cases:
        with pytest.raises(InvalidInput) as err:
            resolve(specs, given)
        assert err.value.field == f"body.params.{name}", (given, err.value)


# ---------------------------------------------------------------- put, get, list


async def test_put_creates_then_versions(api: httpx.AsyncClient, tbox: str) -> None:
    t = await put(api, "flash", FLASH)
    assert t["name"] == "flash" and t["version"] == 1 and t["latest_version"] == 1 and t["kind"] == "job"
    assert t["job"] == FLASH["job"] and t["pipeline"] is None
    assert t["trigger_secret"].startswith("tgsec_")  # the admin sees it
    t2 = await put(api, "flash", {**FLASH, "description": "v2"}, status=200)
    assert t2["version"] == 2 and t2["description"] == "v2" and t2["trigger_secret"] == t["trigger_secret"]
    got = (await api.get("/api/templates/flash")).json()
    assert got["version"] == 2
    old = (await api.get("/api/templates/flash", params={"version": 1})).json()
    assert old["version"] == 1 and old["latest_version"] == 2 and old["description"] == "flash a board"
    assert_error(await api.get("/api/templates/flash", params={"version": 3}), 404, "not_found")
    assert_error(await api.get("/api/templates/nope"), 404, "not_found")
    listed = (await api.get("/api/templates")).json()["data"]
    assert [x["name"] for x in listed] == ["flash"] and listed[0]["version"] == 2


async def test_put_validates_the_body_with_the_defaults(api: httpx.AsyncClient, tbox: str) -> None:
    bad: list[tuple[dict[str, Any], str]] = [
        ({"params": {}, "job": {"box": "tbox", "script": "${{ params.who }}"}}, "body.job"),
        ({"params": {}, "job": {"box": "tbox"}}, "body.job.script"),
        ({"params": {}, "job": {"box": "tbox", "script": "x", "timeout_s": "${{ params.t }}"}}, "body.job"),
        (
            {
                "params": {"t": {"type": "int", "default": 1}},
                "job": {"box": "tbox", "script": "x", "timeout_s": "${{ params.t }}"},
            },
            "body.job.timeout_s",
        ),
        ({"params": {}, "job": {"box": "tbox", "script": "x"}, "pipeline": {"steps": {}}}, "body"),
        ({"params": {}}, "body"),
        ({"params": {"c": {"type": "choice"}}, "job": {"box": "tbox", "script": "x"}}, "body.params.c"),
        ({"params": {"c": {"type": "int", "default": "1"}}, "job": {"box": "tbox", "script": "x"}}, "body.params.c"),
        ({"params": {"1bad": {"type": "string"}}, "job": {"box": "tbox", "script": "x"}}, "body.params"),
        ({"params": {}, "pipeline": {"steps": {"a": {"box": "tbox", "script": "x", "needs": ["b"]}}}}, "body.pipeline"),
        ({"params": {}, "job": {"box": "tbox", "script": "a\x00b"}}, "body.job.script"),
    ]
    for body, field in bad:
        resp = await api.put("/api/templates/t", json=body)
        err = assert_error(resp, 422, "invalid_input")
        fields = [e["field"] for e in err["errors"]]
        assert any(f.startswith(field) for f in fields), (body, err)
    assert_error(await api.put("/api/templates/-bad", json=FLASH), 422, "invalid_input")
    assert (await api.get("/api/templates")).json()["data"] == []


# ---------------------------------------------------------------- run


async def test_run_renders_and_freezes_the_version(api: httpx.AsyncClient, db: asyncpg.Connection, tbox: str) -> None:
    await put(api, "flash", FLASH)
    resp = await api.post("/api/templates/flash/run", json={"params": {"board": "b7", "verbose": True}})
    assert resp.status_code == 201, resp.text
    out = resp.json()
    assert out["kind"] == "job" and out["pipeline"] is None
    job = out["job"]
    assert job["state"] == "queued" and job["owner"] == "admin" and job["labels"] == {"board": "b7"}
    assert job["template"] == {"name": "flash", "version": 1}
    spec = (await api.get(f"/api/jobs/{job['id']}/spec")).json()
    row = await db.fetchrow("SELECT spec FROM jobs WHERE id = $1::uuid", job["id"])
    assert row is not None
    frozen = row["spec"]
    assert frozen["template"] == {"name": "flash", "version": 1}
    assert frozen["script"] == "flash b7 stable -r 2 v=true"
    assert frozen["env"] == {"BOARD": "b7", "TOKEN": "${{ secrets.FLASH_TOKEN }}"}  # never rendered
    assert frozen["files"] == {"cfg.txt": "board=b7"}
    assert spec["spec_hash"] and spec["template"] == {"name": "flash", "version": 1}
    audit = await db.fetch("SELECT detail FROM audit_log WHERE action = 'template.run'")
    assert [dict(a["detail"]) for a in audit] == [
        {"name": "flash", "version": 1, "kind": "job", "id": job["id"], "via": "run"}
    ]


async def test_a_queued_run_keeps_its_version(api: httpx.AsyncClient, db: asyncpg.Connection, tbox: str) -> None:
    """PUT v1, run it while no box is free (no worker: it stays queued), PUT v2: the queued job still
    has v1's script and says v1; a run now makes v2's; a run of version 1 asked for makes v1's."""
    await put(api, "t", {"params": {}, "job": {"box": "tbox", "script": "echo v1"}})
    first = (await api.post("/api/templates/t/run", json={})).json()["job"]
    await put(api, "t", {"params": {}, "job": {"box": "tbox", "script": "echo v2"}}, status=200)
    second = (await api.post("/api/templates/t/run", json={})).json()["job"]
    pinned = (await api.post("/api/templates/t/run", json={"version": 1})).json()["job"]
    specs = {
        r["id"]: r["spec"]
        for r in await db.fetch(
            "SELECT id::text, spec, state FROM jobs WHERE id = ANY($1::uuid[])",
            [first["id"], second["id"], pinned["id"]],
        )
    }
    assert (await api.get(f"/api/jobs/{first['id']}")).json()["state"] == "queued"
    assert (await api.get(f"/api/jobs/{first['id']}/spec")).json()["template"] == {"name": "t", "version": 1}
    assert specs[first["id"]]["script"] == "echo v1" and specs[first["id"]]["template"] == {"name": "t", "version": 1}
    assert specs[second["id"]]["script"] == "echo v2" and specs[second["id"]]["template"] == {"name": "t", "version": 2}
    assert specs[pinned["id"]]["script"] == "echo v1" and specs[pinned["id"]]["template"]["version"] == 1


async def test_bad_params_are_422_naming_the_param(api: httpx.AsyncClient, db: asyncpg.Connection, tbox: str) -> None:
    await put(api, "flash", FLASH)
    cases: list[tuple[Any, str]] = [
        ({}, "body.params.board"),
        ({"board": "b", "zzz": 1}, "body.params.zzz"),
        ({"board": 5}, "body.params.board"),
        ({"board": "b", "retries": "2"}, "body.params.retries"),
        ({"board": "b", "image": "beta"}, "body.params.image"),
        ({"board": "b\x00"}, "body.params.board"),
        ({"board": "b" * 10_000}, "body.params.board"),
    ]
    for params, field in cases:
        resp = await api.post("/api/templates/flash/run", json={"params": params})
        body = assert_error(resp, 422, "invalid_input", field=None)
        assert body["errors"][0]["field"].startswith(field), (params, body)
    assert_error(await api.post("/api/templates/flash/run", json={"params": []}), 422, "invalid_input")
    assert_error(await api.post("/api/templates/flash/run", json={"version": 9}), 404, "not_found")
    # a value that makes the rendered job invalid: refused as the job would be, under body.params
    await put(
        api,
        "boxed",
        {"params": {"b": {"type": "string", "default": "tbox"}}, "job": {"box": "${{ params.b }}", "script": "x"}},
    )
    err = assert_error(
        await api.post("/api/templates/boxed/run", json={"params": {"b": "bad box!"}}), 422, "invalid_input"
    )
    assert err["errors"][0]["field"] == "body.params.box", err
    err = assert_error(
        await api.post("/api/templates/boxed/run", json={"params": {"b": "nobox"}}), 422, "invalid_input"
    )
    assert "nobox" in err["detail"], err
    assert await db.fetchval("SELECT count(*) FROM jobs") == 0


async def test_run_of_a_pipeline_template(api: httpx.AsyncClient, db: asyncpg.Connection, tbox: str) -> None:
    body = {
        "params": {"board": {"type": "string", "default": "b1"}},
        "pipeline": {
            "name": "flash-${{ params.board }}",
            "steps": {
                "flash": {"box": "tbox", "script": "flash ${{ params.board }}"},
                "test": {
                    "box": "tbox",
                    "needs": ["flash"],
                    "matrix": {"suite": ["a", "b"]},
                    "script": "test ${{ params.board }} ${{ matrix.suite }}",
                },
            },
        },
    }
    t = await put(api, "pipe", body)
    assert t["kind"] == "pipeline" and t["job"] is None
    resp = await api.post("/api/templates/pipe/run", json={"params": {"board": "b9"}})
    assert resp.status_code == 201, resp.text
    out = resp.json()
    assert out["kind"] == "pipeline" and out["job"] is None
    p = out["pipeline"]
    assert p["name"] == "flash-b9" and p["state"] == "queued" and len(p["steps"]) == 3
    assert p["template"] == {"name": "pipe", "version": 1}
    (listed,) = (await api.get("/api/pipelines")).json()["data"]
    assert listed["template"] == {"name": "pipe", "version": 1}
    row = await db.fetchrow("SELECT spec FROM pipelines WHERE id = $1::uuid", p["id"])
    assert row is not None and row["spec"]["template"] == {"name": "pipe", "version": 1}
    scripts = sorted(r["spec"]["job"]["script"] for r in await db.fetch("SELECT spec FROM pipeline_steps"))
    assert scripts == ["flash b9", "test b9 a", "test b9 b"]


async def test_rerun_of_a_template_job(api: httpx.AsyncClient, tbox: str) -> None:
    await put(api, "t", {"params": {}, "job": {"box": "tbox", "script": "echo"}})
    job = (await api.post("/api/templates/t/run", json={})).json()["job"]
    await api.post(f"/api/jobs/{job['id']}/cancel")
    resp = await api.post(f"/api/jobs/{job['id']}/rerun")
    assert resp.status_code == 201, resp.text


# ---------------------------------------------------------------- roles and orgs


async def test_roles(
    api: httpx.AsyncClient, db: asyncpg.Connection, as_token: Callable[[str], httpx.AsyncClient], tbox: str
) -> None:
    viewer = as_token((await add_user(db, "vic", "default", Role.VIEWER)).token)
    op = as_token((await add_user(db, "olga", "default", Role.OPERATOR)).token)
    op2 = as_token((await add_user(db, "otto", "default", Role.OPERATOR)).token)
    simple = {"params": {}, "job": {"box": "tbox", "script": "echo"}}
    assert_error(await viewer.put("/api/templates/v", json=simple), 403, "forbidden")
    t = await put(op, "mine", simple)
    assert t["trigger_secret"] is None  # not an admin
    await put(op, "mine", simple, status=200)
    assert_error(await op2.put("/api/templates/mine", json=simple), 403, "forbidden")
    await put(api, "mine", simple, status=200)  # an admin may change any
    got = (await viewer.get("/api/templates/mine")).json()
    assert got["version"] == 3 and got["trigger_secret"] is None
    assert_error(await viewer.post("/api/templates/mine/run", json={}), 403, "forbidden")
    assert (await op2.post("/api/templates/mine/run", json={})).json()["job"]["owner"] == "otto"
    assert_error(await op.post("/api/templates/mine/trigger-secret"), 403, "forbidden")
    rotated = (await api.post("/api/templates/mine/trigger-secret")).json()["trigger_secret"]
    assert rotated != t["trigger_secret"] and (await api.get("/api/templates/mine")).json()["trigger_secret"] == rotated


async def test_another_orgs_templates_are_not_found(
    api: httpx.AsyncClient, db: asyncpg.Connection, as_token: Callable[[str], httpx.AsyncClient], tbox: str
) -> None:
    await put(api, "flash", FLASH)
    await add_org(db, "beta")
    other = as_token((await add_user(db, "bea", "beta", Role.ADMIN)).token)
    assert_error(await other.get("/api/templates/flash"), 404, "not_found")
    assert_error(await other.post("/api/templates/flash/run", json={"params": {"board": "b"}}), 404, "not_found")
    assert_error(await other.post("/api/templates/flash/trigger-secret"), 404, "not_found")
    assert (await other.get("/api/templates")).json()["data"] == []
    # the same name in another org is another template
    mine = await put(other, "flash", {"params": {}, "job": {"box_group": "g", "script": "echo"}})
    assert mine["version"] == 1
    assert (await api.get("/api/templates/flash")).json()["job"] == FLASH["job"]


async def test_delete(
    api: httpx.AsyncClient, db: asyncpg.Connection, as_token: Callable[[str], httpx.AsyncClient], tbox: str
) -> None:
    op = as_token((await add_user(db, "olga", "default", Role.OPERATOR)).token)
    op2 = as_token((await add_user(db, "otto", "default", Role.OPERATOR)).token)
    await put(op, "t", {"params": {}, "job": {"box": "tbox", "script": "echo kept"}})
    job = (await op.post("/api/templates/t/run", json={})).json()["job"]
    assert_error(await op2.delete("/api/templates/t"), 403, "forbidden")
    assert (await op.delete("/api/templates/t")).status_code == 204
    assert_error(await op.delete("/api/templates/t"), 404, "not_found")
    assert_error(await op.post("/api/templates/t/run", json={}), 404, "not_found")
    row = await db.fetchrow("SELECT spec FROM jobs WHERE id = $1::uuid", job["id"])
    assert row is not None and row["spec"]["script"] == "echo kept"
    # the name is free again: a new template, version 1
    assert (await put(api, "t", {"params": {}, "job": {"box": "tbox", "script": "x"}}))["version"] == 1
