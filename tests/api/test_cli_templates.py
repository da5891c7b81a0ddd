"""Templates, schedules and box holds through the SDK (AsyncClient over the in-process app) and the
CLI (`boxrun template`, `boxrun schedule`, `boxrun box show`): put versions, run them as a Job or a
Pipeline handle with typed params, the trigger secret for admins only, schedules on the real
Temporal (created, paused, deleted), and a pipeline's hold shown with the box's queue."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from fastapi import FastAPI

from boxrun.errors import Conflict, Forbidden, InvalidInput, NotFound
from boxrun.sdk.aio import AsyncClient, Job, Pipeline
from tests.api import test_cli
from tests.api.conftest import BASE_URL
from tests.api.people_fixtures import add_user
from tests.api.test_cli import Cli, one_line_error

cli = test_cli.cli  # the CLI-on-the-app fixture

FLASH: dict[str, Any] = {
    "description": "flash a board",
    "params": {
        "board": {"type": "string", "required": True},
        "image": {"type": "choice", "choices": ["stable", "nightly"], "default": "stable"},
        "retries": {"type": "int", "default": 2},
        "verbose": {"type": "bool", "default": False},
    },
    "job": {"box": "tbox", "script": "flash ${{ params.board }} ${{ params.image }} -r ${{ params.retries }}"},
}

BENCH_YAML = """\
description: flash then test on one bench
params:
  board: {type: string, default: b1}
pipeline:
  name: bench-${{ params.board }}
  steps:
    flash:
      box: tbox
      keep_box: true
      script: echo flash ${{ params.board }}
    test:
      needs: [flash]
      same_box_as: flash
      script: echo test
"""


@pytest.fixture
async def tbox(make_box: Callable[..., Any]) -> str:
    await make_box("tbox")
    return "tbox"


def as_user(app: FastAPI, token: str) -> AsyncClient:
    headers = {"Authorization": f"Bearer {token}"}
    return AsyncClient(
        http=httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE_URL, headers=headers)
    )


# ---------------------------------------------------------------- SDK


async def test_the_sdk_puts_runs_and_reads_templates(
    app: FastAPI, api: httpx.AsyncClient, db: asyncpg.Connection, tbox: str
) -> None:
    async with AsyncClient(http=api) as client:
        made = await client.templates.put(
            "flash", job=FLASH["job"], params=FLASH["params"], description=FLASH["description"]
        )
        assert made.version == 1 and made.kind == "job" and made.trigger_secret  # an admin sees it
        again = await client.templates.put("flash", job={**FLASH["job"], "lock": True}, params=FLASH["params"])
        assert again.version == 2 and again.description == ""
        assert [t.name for t in await client.templates.list()] == ["flash"]
        old = await client.templates.get("flash", version=1)
        assert old.version == 1 and old.latest_version == 2 and old.description == "flash a board"
        assert old.params["retries"].default == 2

        job = await client.templates.run("flash", {"board": "b7", "retries": 5}, version=1)
        assert isinstance(job, Job) and job.state == "queued"
        assert (await job.spec()).script == "flash b7 stable -r 5"
        assert job.template is not None and (job.template.name, job.template.version) == ("flash", 1)

        pipe = await client.templates.put(
            "bench", pipeline=_bench(), params={"board": {"type": "string", "default": "b1"}}
        )
        assert pipe.kind == "pipeline"
        run = await client.templates.run("bench", {"board": "b9"})
        assert isinstance(run, Pipeline) and run.model.name == "bench-b9"
        assert {s.name for s in run.model.steps} == {"flash", "test"}

        with pytest.raises(InvalidInput) as bad:
            await client.templates.run("flash", {"board": "b1", "retries": "5"})
        assert bad.value.field == "body.params.retries"
        with pytest.raises(InvalidInput) as neither:
            await client.templates.put("nothing", params={})
        assert "exactly one" in str(neither.value)
        with pytest.raises(NotFound):
            await client.templates.get("nope")

        old_secret = made.trigger_secret
        new_secret = await client.templates.rotate_trigger_secret("flash")
        assert new_secret != old_secret and (await client.templates.get("flash")).trigger_secret == new_secret

    viewer = await add_user(db, "vic", "default", "viewer")
    async with as_user(app, viewer.token) as client:
        seen = await client.templates.get("flash")
        assert seen.trigger_secret is None and all(t.trigger_secret is None for t in await client.templates.list())
        with pytest.raises(Forbidden):
            await client.templates.run("flash", {"board": "b1"})
        with pytest.raises(Forbidden):
            await client.templates.rotate_trigger_secret("flash")

    async with AsyncClient(http=api) as client:
        await client.templates.delete("bench")
        with pytest.raises(NotFound):
            await client.templates.delete("bench")


def _bench() -> dict[str, Any]:
    """BENCH_YAML's pipeline as a dict (the SDK takes a dict, YAML text or a file)."""
    from boxrun.pipelines.yamlload import load_yaml

    loaded: dict[str, Any] = load_yaml(BENCH_YAML)["pipeline"]
    return loaded


async def test_the_sdk_takes_a_pipeline_as_yaml_text_or_a_file(
    api: httpx.AsyncClient, tbox: str, tmp_path: Path
) -> None:
    text = BENCH_YAML.split("pipeline:\n", 1)[1]
    body = "\n".join(line[2:] for line in text.splitlines())  # the definition, dedented
    file = tmp_path / "bench.yaml"
    file.write_text(body)
    async with AsyncClient(http=api) as client:
        params = {"board": {"type": "string", "default": "b1"}}
        one = await client.templates.put("bench", pipeline=body, params=params)
        two = await client.templates.put("bench", pipeline=file, params=params)
        assert one.pipeline == two.pipeline == _bench() and two.version == 2
        with pytest.raises(InvalidInput) as bad:
            await client.templates.put("bench", pipeline="steps: [\n  a: b\n", params=params)
        assert bad.value.field == "pipeline" and "line" in str(bad.value)  # refused before it is sent


async def test_the_sdk_creates_pauses_and_deletes_schedules(api: httpx.AsyncClient, tbox: str) -> None:
    async with AsyncClient(http=api) as client:
        await client.templates.put("flash", job=FLASH["job"], params=FLASH["params"])
        sched = await client.schedules.create(template="flash", cron="0 3 * * *", params={"board": "b1"}, version=1)
        assert sched.template == "flash" and sched.version == 1 and not sched.paused
        assert [s.id for s in await client.schedules.list()] == [sched.id]
        assert (await client.schedules.pause(sched.id)).paused
        assert not (await client.schedules.unpause(sched.id)).paused
        got = await client.schedules.get(sched.id)
        assert got.cron == "0 3 * * *" and got.next_runs and all(t.hour == 3 and t.minute == 0 for t in got.next_runs)
        assert (await client.schedules.list())[0].next_runs is None  # the list leaves them out
        with pytest.raises(Conflict):
            await client.templates.delete("flash")  # a schedule uses it
        with pytest.raises(InvalidInput) as bad:
            await client.schedules.create(template="flash", cron="every day", params={"board": "b1"})
        assert bad.value.field == "body.cron"
        await client.schedules.delete(sched.id)
        with pytest.raises(NotFound):
            await client.schedules.get(sched.id)


async def test_the_sdk_shows_a_boxs_holds(api: httpx.AsyncClient, db: asyncpg.Connection, tbox: str) -> None:
    pid = await hold_tbox(api, db)
    async with AsyncClient(http=api) as client:
        (hold,) = (await client.boxes.queue("tbox")).holds
        assert hold.pipeline_id == pid and hold.step == "flash" and hold.steps == ["flash", "test"]


async def hold_tbox(api: httpx.AsyncClient, db: asyncpg.Connection) -> str:
    """A pipeline holding tbox after its flash step (as the pipeline's activity records it)."""
    resp = await api.post("/api/pipelines", json=_bench())
    assert resp.status_code == 201, resp.text
    pid: str = resp.json()["id"]
    await db.execute(
        "INSERT INTO box_holds (org_id, box_id, pipeline_id, step, steps)"
        " SELECT org_id, id, $1, 'flash', ARRAY['flash', 'test'] FROM boxes WHERE name = 'tbox'",
        pid,
    )
    return pid


# ---------------------------------------------------------------- CLI


async def test_the_cli_puts_shows_runs_and_removes_templates(
    cli: Cli, tmp_path: Path, tbox: str, db: asyncpg.Connection, api: httpx.AsyncClient
) -> None:
    body = tmp_path / "flash.json"
    body.write_text(json.dumps(FLASH))
    out = await cli("template", "put", "flash", "-f", str(body))
    assert out.code == 0 and out.stdout.strip() == "template flash version 1", out
    assert "boxrun template show flash" in out.stderr and f"{BASE_URL}/api/templates/flash/trigger" in out.stderr
    out = await cli("template", "put", "flash", "-f", str(body))
    assert out.stdout.strip() == "template flash version 2" and out.stderr == ""
    yaml_file = tmp_path / "bench.yml"
    yaml_file.write_text(BENCH_YAML)
    assert (await cli("template", "put", "bench", "-f", str(yaml_file), "--json")).json()["kind"] == "pipeline"

    listed = await cli("template", "ls")
    assert "flash" in listed.stdout and "bench" in listed.stdout and "board,image,retries,verbose" in listed.stdout
    assert [t["name"] for t in (await cli("template", "ls", "--json")).json()] == ["bench", "flash"]

    shown = await cli("template", "show", "flash", "--version", "1")
    assert "1 of 2" in shown.stdout and "choice [stable|nightly] = stable" in shown.stdout
    assert "string (required)" in shown.stdout and "flash ${{ params.board }}" in shown.stdout
    secret = (await api.get("/api/templates/flash")).json()["trigger_secret"]
    assert secret in shown.stdout and f"{BASE_URL}/api/templates/flash/trigger" in shown.stdout
    assert (await cli("template", "flash", "--json")).json()["version"] == 2  # `template NAME` shows it

    out = await cli("template", "run", "flash", "-p", "board=b3", "-p", "retries=7", "-p", "verbose=yes")
    assert out.code == 0, out
    job_id = out.stdout.strip()
    spec = (await api.get(f"/api/jobs/{job_id}/spec")).json()
    assert spec["script"] == "flash b3 stable -r 7"
    shown_job = await cli("job", job_id)
    assert "queued" in shown_job.stdout and "template:   flash v2" in shown_job.stdout
    made = (await cli("template", "run", "bench", "--json")).json()
    assert made["name"] == "bench-b1" and len(made["steps"]) == 2  # the pipeline's JSON
    assert made["template"] == {"name": "bench", "version": 1}
    assert "bench v1" in (await cli("pipeline", made["id"])).stdout

    one_line_error(await cli("template", "run", "flash", "-p", "retries=many"), "retries is an int param")
    one_line_error(await cli("template", "run", "flash", "-p", "colour=red"), "no param 'colour'", "board")
    one_line_error(await cli("template", "run", "flash", "-p", "board=b", "-p", "image=beta"), "image", "stable")
    one_line_error(await cli("template", "run", "flash"), "board")
    one_line_error(await cli("template", "show", "nope"), "template 'nope' not found")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**FLASH, "extra": 1}))
    one_line_error(await cli("template", "put", "flash", "-f", str(bad)), "unknown key 'extra'")
    bad.write_text("{")
    one_line_error(await cli("template", "put", "flash", "-f", str(bad)), "not JSON")

    rotated = await cli("template", "rotate-secret", "flash")
    assert rotated.code == 0 and rotated.stdout.strip() != secret
    assert (await api.get("/api/templates/flash")).json()["trigger_secret"] == rotated.stdout.strip()

    viewer = await add_user(db, "vic", "default", "viewer")
    seen = await cli("template", "show", "flash", token=viewer.token)
    assert seen.code == 0 and rotated.stdout.strip() not in seen.stdout and "trigger" not in seen.stdout
    assert 'trigger_secret": null' in (await cli("template", "show", "flash", "--json", token=viewer.token)).stdout
    one_line_error(await cli("template", "rotate-secret", "flash", token=viewer.token), "admin")

    out = await cli("template", "rm", "bench")
    assert out.code == 0 and out.stdout.strip() == "template bench deleted"
    one_line_error(await cli("template", "rm", "bench"), "not found")


async def test_the_cli_creates_shows_pauses_and_removes_schedules(cli: Cli, tmp_path: Path, tbox: str) -> None:
    body = tmp_path / "flash.json"
    body.write_text(json.dumps(FLASH))
    assert (await cli("template", "put", "flash", "-f", str(body))).code == 0
    out = await cli("schedule", "create", "flash", "--cron", "0 3 * * *", "-p", "board=b2", "-p", "retries=4")
    assert out.code == 0, out
    sid = out.stdout.strip()
    listed = await cli("schedule", "ls")
    assert sid in listed.stdout and "0 3 * * *" in listed.stdout and "board=b2,retries=4" in listed.stdout
    got = (await cli("schedule", "ls", "--json")).json()
    assert got[0]["params"] == {"board": "b2", "retries": 4}
    shown = await cli("schedule", sid)
    assert "0 3 * * * (UTC)" in shown.stdout and f"boxrun-schedule-{sid}" in shown.stdout
    assert "next runs (UTC)" in shown.stdout and " 03:00," in shown.stdout
    assert (await cli("schedule", "pause", sid)).stdout.strip() == f"schedule {sid}: paused"
    assert (await cli("schedule", "show", sid, "--json")).json()["paused"] is True
    assert (await cli("schedule", "unpause", sid)).stdout.strip() == f"schedule {sid}: running"
    one_line_error(await cli("schedule", "create", "flash", "--cron", "0 3 * * *", "-p", "retries=x"), "int param")
    one_line_error(await cli("schedule", "create", "flash", "--cron", "never", "-p", "board=b"), "cron 'never'")
    out = await cli("schedule", "rm", sid)
    assert out.code == 0 and out.stdout.strip() == f"schedule {sid} deleted"
    assert (await cli("schedule", "ls", "--json")).json() == []


async def test_box_show_prints_the_holds(cli: Cli, api: httpx.AsyncClient, db: asyncpg.Connection, tbox: str) -> None:
    pid = await hold_tbox(api, db)
    out = await cli("box", "show", "tbox")
    assert out.code == 0 and "HELD BY PIPELINE" in out.stdout and pid in out.stdout and "flash,test" in out.stdout
    assert (await cli("box", "tbox", "--json")).json()["queue"]["holds"][0]["pipeline_id"] == pid
