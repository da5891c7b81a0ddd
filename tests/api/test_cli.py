"""The `boxrun` user commands (typer's CliRunner) against the in-process app on the real parts: the
CLI's SDK client is an AsyncClient over the app's ASGI transport, and its coroutines run on the
test's event loop (the app's pools live there) while the CLI itself runs in a thread. No agent
runs: a submitted job stays queued."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import stat
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from fastapi import FastAPI
from typer.testing import CliRunner

from boxrun.cli import app as cli_app
from boxrun.cli import context
from boxrun.sdk.aio import AsyncClient
from tests.api.conftest import ADMIN_TOKEN, BASE_URL
from tests.api.helpers import Box


@dataclass
class Outcome:
    code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)


Cli = Callable[..., Awaitable[Outcome]]


@pytest.fixture
async def cli(app: FastAPI, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> AsyncIterator[Cli]:
    """`await cli("jobs", "--json", token=...)`: the CLI with the admin token (or `token`) on the
    in-process app; a --url other than the app's goes to the real default client."""
    loop = asyncio.get_running_loop()
    opened: list[httpx.AsyncClient] = []

    def make_client(url: str | None, token: str | None) -> AsyncClient:
        if url not in (None, BASE_URL):
            return context.default_client(url, token)
        headers = {"Authorization": f"Bearer {token or ADMIN_TOKEN}"}
        http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE_URL, headers=headers)
        opened.append(http)
        return AsyncClient(http=http)

    monkeypatch.setattr(context, "make_client", make_client)
    monkeypatch.setattr(context, "run_async", lambda coro: asyncio.run_coroutine_threadsafe(coro, loop).result())
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    for name in ("BOXRUN_URL", "BOXRUN_TOKEN", "BOXRUN_API_URL", "BOXRUN_API_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    runner = CliRunner()

    async def invoke(*args: str, token: str | None = None, input: str | None = None) -> Outcome:
        argv = (["--token", token] if token else []) + list(args)
        result = await asyncio.to_thread(runner.invoke, cli_app, argv, input=input)
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise result.exception
        return Outcome(result.exit_code, result.stdout, result.stderr)

    yield invoke
    for http in opened:
        await http.aclose()


def one_line_error(out: Outcome, *needles: str) -> None:
    """boxrun's failure: exit 125, exactly one line on stderr, naming each needle, no traceback."""
    assert out.code == 125, out
    lines = out.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("boxrun"), out.stderr
    assert "Traceback" not in out.stderr + out.stdout
    for needle in needles:
        assert needle in lines[0], out.stderr


@pytest.fixture
def script(tmp_path: Path) -> Path:
    path = tmp_path / "job.py"
    path.write_text("print('hello')\n")
    return path


async def test_run_detached_submits_with_files_env_and_labels(cli: Cli, script: Path, tmp_path: Path, api) -> None:
    data = tmp_path / "data.bin"
    data.write_bytes(bytes(range(256)) * 4)
    notes = tmp_path / "notes.txt"
    notes.write_text("notes\n")
    out = await cli(
        "run", str(script), "--group", "g", "--require", "gpu", "--file", f"{data}:in/data.bin", "--file", str(notes),
        "--env", "MODE=fast", "--env", "EMPTY=", "--label", "team=fw", "--timeout", "90", "--lock", "--detach",
    )  # fmt: skip
    assert out.code == 0, out
    job_id = out.stdout.strip()
    uuid.UUID(job_id)
    job = (await api.get(f"/api/jobs/{job_id}")).json()
    assert job["state"] == "queued" and job["box_group"] == "g" and job["requires"] == ["gpu"]
    assert job["labels"] == {"team": "fw"} and job["timeout_s"] == 90 and job["lock"] is True
    spec = (await api.get(f"/api/jobs/{job_id}/spec")).json()
    assert spec["script"] == "print('hello')\n" and spec["env"] == {"MODE": "fast", "EMPTY": ""}
    files = {f["path"]: f["sha256"] for f in spec["files"]}
    assert files == {
        "in/data.bin": hashlib.sha256(data.read_bytes()).hexdigest(),
        "notes.txt": hashlib.sha256(b"notes\n").hexdigest(),
    }


async def test_run_reads_the_script_from_stdin_and_prints_json(cli: Cli) -> None:
    out = await cli("run", "-", "--group", "g", "--detach", "--json", input="print('from stdin')\n")
    assert out.code == 0, out
    job = out.json()
    assert isinstance(job, dict) and job["state"] == "queued" and job["box_group"] == "g"


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--env", "NOEQUALS"], "--env 'NOEQUALS': expected KEY=VALUE"),
        (["--env", "=x"], "--env '=x'"),
        (["--label", "k"], "--label 'k': expected KEY=VALUE"),
        (["--file", "/no/such/file"], "/no/such/file"),
        (["--timeout", "soon"], "--timeout"),
        (["--no-such-option"], "--no-such-option"),
    ],
)
async def test_run_refuses_bad_arguments_in_one_line_with_125(
    cli: Cli, script: Path, args: list[str], needle: str
) -> None:
    one_line_error(await cli("run", str(script), "--group", "g", "--detach", *args), needle)


async def test_run_refusals_of_the_api_are_one_line_125(cli: Cli, script: Path) -> None:
    # neither box nor group: the API's own rule, checked before anything is sent
    out = await cli("run", str(script), "--detach")
    assert out.code == 125 and len(out.stderr.splitlines()) == 1, out
    one_line_error(await cli("run", str(script), "--box", "nowhere", "--detach"), "nowhere")


async def test_jobs_filters_and_job_json(cli: Cli, script: Path, make_box: Callable[..., Awaitable[Box]]) -> None:
    await make_box("bench-1")
    a = (await cli("run", str(script), "--box", "bench-1", "--label", "team=fw", "--detach")).stdout.strip()
    b = (await cli("run", str(script), "--group", "g", "--label", "team=hw", "--detach")).stdout.strip()

    listed = await cli("jobs", "--json")
    assert listed.code == 0 and [j["id"] for j in listed.json()] == [b, a]
    by_label = await cli("jobs", "--label", "team=fw", "--json")
    assert [j["id"] for j in by_label.json()] == [a]
    by_box = await cli("jobs", "--box", "bench-1", "--json")
    assert [j["id"] for j in by_box.json()] == [a]
    assert [j["id"] for j in (await cli("jobs", "--mine", "--limit", "1", "--json")).json()] == [b]
    assert (await cli("jobs", "--state", "completed", "--json")).json() == []
    bad_state = await cli("jobs", "--state", "sleeping")
    one_line_error(bad_state, "sleeping")

    table = await cli("jobs")
    assert table.code == 0 and "STATE" in table.stdout and a in table.stdout and "team=fw" in table.stdout

    shown = await cli("job", a, "--json")
    assert shown.code == 0 and shown.json()["id"] == a and shown.json()["labels"] == {"team": "fw"}
    plain = await cli("job", a)
    assert "id:" in plain.stdout and a in plain.stdout and "queued" in plain.stdout


async def test_cancel_of_a_queued_job(cli: Cli, script: Path, db: asyncpg.Connection) -> None:
    job_id = (await cli("run", str(script), "--group", "g", "--detach")).stdout.strip()
    out = await cli("cancel", job_id)
    assert out.code == 0 and out.stdout.strip() == f"job {job_id}: queued (cancel requested)", out
    audit = await db.fetchval(
        "SELECT count(*) FROM audit_log WHERE action = 'job.cancel' AND job_id::text = $1", job_id
    )
    assert audit == 1


async def test_logs_and_artifacts_of_a_queued_job(cli: Cli, script: Path) -> None:
    job_id = (await cli("run", str(script), "--group", "g", "--detach")).stdout.strip()
    logs = await cli("logs", job_id)
    assert logs.code == 0 and logs.stdout == "", logs  # still going, nothing logged: 0
    arts = await cli("artifacts", job_id, "--json")
    assert arts.code == 0 and arts.json() == []
    one_line_error(await cli("download", job_id, "nothing.txt"), f"job {job_id} has no artifact 'nothing.txt'")


async def test_a_missing_job_is_one_line_and_125(cli: Cli) -> None:
    missing = str(uuid.uuid4())
    for args in (
        ["job", missing],
        ["logs", missing, "--follow"],
        ["cancel", missing],
        ["rerun", missing],
        ["pipeline", missing],
        ["pipeline", "show", missing],
        ["pipeline", "cancel", missing],
    ):
        one_line_error(await cli(*args), missing)  # "job ... not found", "pipeline ... does not exist"


async def test_boxes_and_maintenance(cli: Cli, make_box: Callable[..., Awaitable[Box]]) -> None:
    await make_box("bench-1", groups=("lab",))
    listed = await cli("boxes", "--json")
    assert listed.code == 0 and [b["name"] for b in listed.json()] == ["bench-1"]
    assert "bench-1" in (await cli("boxes")).stdout

    on = await cli("box", "maintenance", "bench-1", "on", "--reason", "recabling")
    assert on.code == 0 and on.stdout.strip() == "box bench-1: maintenance on", on
    shown = await cli("box", "show", "bench-1", "--json")
    assert shown.json()["maintenance"] is True and shown.json()["groups"] == ["lab"]
    off = await cli("box", "maintenance", "bench-1", "off", "--json")
    assert off.code == 0 and off.json()["maintenance"] is False
    one_line_error(await cli("box", "maintenance", "bench-1", "maybe"), "maybe")
    one_line_error(await cli("box", "show", "nope-1"), "box", "not found")
    short = await cli("box", "bench-1", "--json")  # `box NAME` is `box show NAME`
    assert short.code == 0 and short.json()["name"] == "bench-1" and short.json()["maintenance"] is False


async def test_users_and_tokens_and_what_a_viewer_or_a_revoked_token_gets(cli: Cli, script: Path) -> None:
    made = await cli("users", "create", "vera", "--role", "viewer", "--json")
    assert made.code == 0 and made.json()["role"] == "viewer", made
    assert "vera" in (await cli("users")).stdout
    assert "vera" in [u["name"] for u in (await cli("users", "ls", "--json")).json()]

    token = await cli("tokens", "create", "vera", "--label", "ci")
    assert token.code == 0 and "shown this once" in token.stderr
    secret = token.stdout.strip()
    listed = (await cli("tokens", "--json")).json()
    (mine,) = [t for t in listed if t["user"] == "vera"]
    assert mine["label"] == "ci" and secret not in json.dumps(listed)

    assert (await cli("boxes", token=secret)).code == 0  # a viewer reads
    one_line_error(await cli("run", str(script), "--group", "g", "--detach", token=secret), "viewer")
    one_line_error(await cli("users", "create", "x", token=secret))

    promoted = await cli("users", "set-role", "vera", "operator", "--json")
    assert promoted.code == 0 and promoted.json()["role"] == "operator"
    assert (await cli("run", str(script), "--group", "g", "--detach", token=secret)).code == 0

    revoked = await cli("tokens", "revoke", mine["id"])
    assert revoked.code == 0 and revoked.stdout.strip() == f"token {mine['id']} revoked"
    one_line_error(await cli("jobs", token=secret))

    disabled = await cli("users", "disable", "vera")
    assert disabled.code == 0 and disabled.stdout.strip() == "user vera disabled"


async def test_login_checks_the_token_and_saves_the_profile(cli: Cli, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(ADMIN_TOKEN + "\n")
    out = await cli("login", BASE_URL, "--token-file", str(token_file))
    assert out.code == 0 and "as admin" in out.stdout, out
    profile = Path(os.environ["XDG_CONFIG_HOME"]) / "boxrun" / "profile.json"
    assert json.loads(profile.read_text()) == {"url": BASE_URL, "token": ADMIN_TOKEN}
    assert stat.S_IMODE(profile.stat().st_mode) == 0o600

    profile.unlink()
    prompted = await cli("login", BASE_URL, input="wrong-token\n")
    one_line_error(prompted)
    assert not profile.exists()


async def test_an_unreachable_api_is_one_line_naming_the_url(cli: Cli, script: Path) -> None:
    url = "http://127.0.0.1:1"
    for args in (["jobs"], ["job", "x"], ["run", str(script), "--box", "b"], ["logs", "x", "--follow"], ["boxes"]):
        out = await cli("--url", url, "--token", "t", *args)
        one_line_error(out)
        assert out.stderr == f"boxrun: cannot reach the boxrun API at {url} (connection refused)\n"


async def test_no_credentials_anywhere_names_the_options(cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(context, "make_client", context.default_client)
    monkeypatch.setattr("boxrun.sdk.config.dev_endpoints_path", lambda: Path("/nonexistent/endpoints.json"))
    one_line_error(await cli("jobs"), "--url/--token", "boxrun login")
