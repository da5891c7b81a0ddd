"""The `boxrun` command as a user runs it (a subprocess) against a whole stack (Temporal dev server,
PostgreSQL, S3 store, API, control worker, one agent running real processes): `run` follows a job
and exits with its code (0, the script's 3, 124 timed out, 130 cancelled from another process),
Ctrl-C detaches, files go in and artifacts come out checked, `pipeline run --follow` exits as the
pipeline ended, and `login` saves the profile later commands use. One stack for the module."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.integration.faultstack import FaultStack, fault_stack

pytestmark = pytest.mark.e2e

BOX = "local-1"
BOXRUN = [shutil.which("boxrun", path=str(Path(sys.executable).parent)) or sys.executable]
if BOXRUN[0] == sys.executable:
    BOXRUN += ["-m", "boxrun.cli"]

LONG = """
import time
print("started", flush=True)
time.sleep(600)
"""


@pytest.fixture(scope="module")
async def fs(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[FaultStack]:
    async with fault_stack(tmp_path_factory.mktemp("clistack") / "dev", boxes=1, capacity=2) as stack:
        yield stack


@pytest.fixture
def env(fs: FaultStack, tmp_path: Path) -> dict[str, str]:
    """The environment of a user whose BOXRUN_URL/BOXRUN_TOKEN name the stack (no profile)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("BOXRUN_")}
    return {
        **base,
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
        "BOXRUN_URL": fs.endpoints["api_url"],
        "BOXRUN_TOKEN": fs.endpoints["token"],
        "COLUMNS": "200",
    }


def boxrun(
    env: dict[str, str], *args: str, timeout: float = 180, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*BOXRUN, *args], env=env, capture_output=True, text=True, timeout=timeout, cwd=cwd, stdin=subprocess.DEVNULL
    )


def script(tmp_path: Path, text: str, name: str = "job.py") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def job_of(env: dict[str, str], job_id: str) -> dict:
    done = boxrun(env, "job", job_id, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def submitted_id(stderr_line: str) -> str:
    """The id in "[boxrun] job ID submitted to ..."."""
    assert stderr_line.startswith("[boxrun] job ") and " submitted to " in stderr_line, stderr_line
    return stderr_line.split()[2]


def test_run_follows_the_output_and_exits_0(env: dict[str, str], tmp_path: Path) -> None:
    text = "import sys\nfor i in range(3):\n    print('out', i, flush=True)\nprint('to err', file=sys.stderr)\n"
    done = boxrun(env, "run", script(tmp_path, text), "--box", BOX, "--env", "X=1")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["out 0", "out 1", "out 2"]
    errs = done.stderr.splitlines()
    job_id = submitted_id(errs[0])
    assert "to err" in errs and "Traceback" not in done.stderr
    assert job_of(env, job_id)["state"] == "completed"


def test_run_exits_with_the_scripts_code(env: dict[str, str], tmp_path: Path) -> None:
    done = boxrun(env, "run", script(tmp_path, "print('bye')\nraise SystemExit(3)\n"), "--box", BOX)
    assert done.returncode == 3, done.stderr
    assert done.stdout.splitlines() == ["bye"]
    assert "failed (exit code 3)" in done.stderr.splitlines()[-1]


def test_run_from_stdin_with_json(env: dict[str, str]) -> None:
    done = subprocess.run(
        [*BOXRUN, "run", "-", "--box", BOX, "--json"],
        env=env, input="print('quiet')\n", capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    job = json.loads(done.stdout)  # the final job, not its log
    assert job["state"] == "completed" and job["exit_code"] == 0


def test_a_timed_out_job_exits_124(env: dict[str, str], tmp_path: Path) -> None:
    done = boxrun(env, "run", script(tmp_path, LONG), "--box", BOX, "--timeout", "2")
    assert done.returncode == 124, (done.stdout, done.stderr)
    assert done.stdout.splitlines()[0] == "started"
    assert "timed_out" in done.stderr.splitlines()[-1]


def as_in_a_terminal() -> None:
    """SIGINT as a terminal's foreground job has it. A test run started in the background by a
    non-interactive shell (`nohup ... &`) ignores SIGINT, children inherit that, and Python then
    leaves it ignored: Ctrl-C would never reach the command."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_long(env: dict[str, str], tmp_path: Path) -> tuple[subprocess.Popen[str], str]:
    """`boxrun run LONG` in the background, once its script has printed "started"; its job id."""
    proc = subprocess.Popen(
        [*BOXRUN, "run", script(tmp_path, LONG, "long.py"), "--box", BOX],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL,
        preexec_fn=as_in_a_terminal,
    )  # fmt: skip
    assert proc.stderr is not None and proc.stdout is not None
    job_id = submitted_id(proc.stderr.readline().rstrip("\n"))
    assert proc.stdout.readline() == "started\n"  # blocks until the script runs
    return proc, job_id


def test_a_job_cancelled_from_another_process_exits_130(env: dict[str, str], tmp_path: Path) -> None:
    proc, job_id = start_long(env, tmp_path)
    try:
        cancel = boxrun(env, "cancel", job_id)
        assert cancel.returncode == 0 and cancel.stdout.startswith(f"job {job_id}: "), cancel.stderr
        assert proc.wait(120) == 130
        assert job_of(env, job_id)["state"] == "cancelled"
    finally:
        proc.kill()
        proc.communicate()


def test_ctrl_c_detaches_and_leaves_the_job_running(env: dict[str, str], tmp_path: Path) -> None:
    proc, job_id = start_long(env, tmp_path)
    try:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 130
        assert f"boxrun cancel {job_id}" in err and "Traceback" not in err
        assert job_of(env, job_id)["state"] == "running"
        follow = subprocess.Popen([*BOXRUN, "logs", job_id, "--follow"], env=env, stdout=subprocess.PIPE, text=True)
        assert follow.stdout is not None and follow.stdout.readline() == "started\n"
        assert boxrun(env, "cancel", job_id).returncode == 0
        assert follow.wait(120) == 130
    finally:
        proc.kill()
        subprocess.run([*BOXRUN, "cancel", job_id], env=env, capture_output=True, timeout=60)


FILES = """
import hashlib, os, pathlib
data = pathlib.Path("in/data.bin").read_bytes()
print("sha256", hashlib.sha256(data).hexdigest(), flush=True)
out = pathlib.Path(os.environ["BOXRUN_ARTIFACTS_DIR"])
(out / "sub").mkdir()
(out / "sub" / "copy.bin").write_bytes(data)
(out / "note.txt").write_text(pathlib.Path("notes.txt").read_text().upper())
"""


def test_files_in_and_artifacts_out_checked(env: dict[str, str], tmp_path: Path) -> None:
    data = tmp_path / "data.bin"
    data.write_bytes(os.urandom(2 * 1024 * 1024 + 5))
    (tmp_path / "notes.txt").write_text("hello\n")
    sha = hashlib.sha256(data.read_bytes()).hexdigest()
    done = boxrun(
        env, "run", script(tmp_path, FILES), "--box", BOX,
        "--file", f"{data}:in/data.bin", "--file", str(tmp_path / "notes.txt"), "--label", "suite=cli",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [f"sha256 {sha}"]
    job_id = submitted_id(done.stderr.splitlines()[0])

    listed = json.loads(boxrun(env, "artifacts", job_id, "--json").stdout)
    assert {a["path"]: a["sha256"] for a in listed}["sub/copy.bin"] == sha

    everything = boxrun(env, "download", job_id, "-o", str(tmp_path / "all"))
    assert everything.returncode == 0, everything.stderr
    assert hashlib.sha256((tmp_path / "all" / "sub" / "copy.bin").read_bytes()).hexdigest() == sha
    assert (tmp_path / "all" / "note.txt").read_text() == "HELLO\n"
    one = boxrun(env, "download", job_id, "sub/copy.bin", "-o", str(tmp_path / "one"), "--json")
    assert one.returncode == 0, one.stderr
    assert json.loads(one.stdout) == [
        {"path": "sub/copy.bin", "size": data.stat().st_size, "sha256": sha, "file": str(tmp_path / "one" / "copy.bin")}
    ]
    assert sorted(p.name for p in (tmp_path / "one").iterdir()) == ["copy.bin"]

    labelled = json.loads(boxrun(env, "jobs", "--label", "suite=cli", "--json").stdout)
    assert [j["id"] for j in labelled] == [job_id]

    rerun = boxrun(env, "rerun", job_id, "--follow")
    assert rerun.returncode == 0 and rerun.stdout.splitlines() == [f"sha256 {sha}"], rerun.stderr


def test_org_policy_and_outputs_rm(env: dict[str, str], tmp_path: Path) -> None:
    text = "import os, pathlib\nprint('kept for now', flush=True)\n"
    text += "pathlib.Path(os.environ['BOXRUN_ARTIFACTS_DIR'], 'r.txt').write_text('r')\n"
    done = boxrun(env, "run", script(tmp_path, text), "--box", BOX)
    assert done.returncode == 0, done.stderr
    job_id = submitted_id(done.stderr.splitlines()[0])
    quota = boxrun(env, "org", "quota", "--storage", "10G", "--json")
    assert quota.returncode == 0 and json.loads(quota.stdout)["storage_bytes"] == 10 << 30, quota.stderr
    usage = json.loads(boxrun(env, "org", "usage", "--json").stdout)
    assert usage["artifacts"] >= 1 and usage["quota_bytes"] == 10 << 30
    kept = boxrun(env, "org", "retention", "--logs-days", "30", "--json")
    assert kept.returncode == 0 and json.loads(kept.stdout)["logs_days"] == 30, kept.stderr
    removed = boxrun(env, "outputs", "rm", job_id)
    assert removed.returncode == 0, removed.stderr
    for args in (("logs", job_id), ("artifacts", job_id), ("download", job_id, "-o", str(tmp_path / "gone"))):
        gone = boxrun(env, *args)
        assert gone.returncode == 125 and "deleted by" in gone.stderr and "Traceback" not in gone.stderr, gone
    assert job_of(env, job_id)["outputs_deleted_at"] is not None
    for reset in (("org", "quota", "--storage", "none"), ("org", "retention", "--logs-days", "none")):
        assert boxrun(env, *reset).returncode == 0


def pipeline_file(tmp_path: Path, name: str, test_script: str) -> str:
    text = f"""
name: {name}
steps:
  build:
    box: {BOX}
    script: |
      print("built", flush=True)
  test:
    needs: [build]
    box: {BOX}
    script: |
      {test_script}
"""
    return script(tmp_path, text, f"{name}.yaml")


def test_pipeline_run_follow_exits_as_the_pipeline_ended(env: dict[str, str], tmp_path: Path) -> None:
    ok = boxrun(env, "pipeline", "run", pipeline_file(tmp_path, "cli-ok", "print('tested')"), "--follow")
    assert ok.returncode == 0, (ok.stdout, ok.stderr)
    assert "completed" in ok.stdout and "build" in ok.stdout and "test" in ok.stdout  # the final step table

    bad = boxrun(
        env, "pipeline", "run", pipeline_file(tmp_path, "cli-bad", "raise SystemExit(4)"), "--follow", "--json"
    )
    assert bad.returncode == 123, (bad.stdout, bad.stderr)
    pipe = json.loads(bad.stdout)
    assert pipe["state"] == "failed" and {s["name"]: s["state"] for s in pipe["steps"]}["test"] == "failed"

    listed = json.loads(boxrun(env, "pipeline", "ls", "--json").stdout)
    assert [p["name"] for p in listed[:2]] == ["cli-bad", "cli-ok"]
    shown = boxrun(env, "pipeline", "show", pipe["id"])
    assert shown.returncode == 0 and "failed" in shown.stdout
    again = boxrun(env, "pipeline", "rerun", pipe["id"], "--only-failed", "--json")
    assert again.returncode == 0 and json.loads(again.stdout)["rerun_of"] == pipe["id"], again.stderr


def test_template_run_wait_exits_as_the_job_ended(env: dict[str, str], tmp_path: Path) -> None:
    body = {
        "params": {"code": {"type": "int", "default": 0}, "who": {"type": "string"}},
        "job": {"box": BOX, "script": "print('hi ${{ params.who }}')\nraise SystemExit(${{ params.code }})"},
    }
    spec = tmp_path / "tpl.json"
    spec.write_text(json.dumps(body))
    put = boxrun(env, "template", "put", "cli-tpl", "-f", str(spec))
    assert put.returncode == 0 and put.stdout.strip() == "template cli-tpl version 1", (put.stdout, put.stderr)
    ok = boxrun(env, "template", "run", "cli-tpl", "-p", "who=ann", "--wait")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.splitlines()[-1] == "hi ann"
    bad = boxrun(env, "template", "run", "cli-tpl", "-p", "who=bo", "-p", "code=5", "--wait")
    assert bad.returncode == 5, (bad.stdout, bad.stderr)
    # a param of the wrong type: one line, exit 125, nothing sent
    wrong = boxrun(env, "template", "run", "cli-tpl", "-p", "who=x", "-p", "code=five")
    assert wrong.returncode == 125 and len(wrong.stderr.strip().splitlines()) == 1, wrong.stderr
    assert "code" in wrong.stderr and "Traceback" not in wrong.stderr
    ran = json.loads(boxrun(env, "jobs", "--json").stdout)
    assert [j["template"] for j in ran[:2]] == [{"name": "cli-tpl", "version": 1}] * 2


def test_login_saves_the_profile_later_commands_use(fs: FaultStack, env: dict[str, str], tmp_path: Path) -> None:
    bare = {k: v for k, v in env.items() if k not in ("BOXRUN_URL", "BOXRUN_TOKEN")}
    token_file = tmp_path / "token"
    token_file.write_text(fs.endpoints["token"] + "\n")
    login = boxrun(bare, "login", fs.endpoints["api_url"], "--token-file", str(token_file))
    assert login.returncode == 0 and " as " in login.stdout, login.stderr
    profile = tmp_path / "config" / "boxrun" / "profile.json"
    assert profile.stat().st_mode & 0o777 == 0o600
    assert json.loads(profile.read_text())["url"] == fs.endpoints["api_url"].rstrip("/")

    boxes = boxrun(bare, "boxes", "--json")  # no environment: the profile
    assert boxes.returncode == 0 and [b["name"] for b in json.loads(boxes.stdout)] == [BOX], boxes.stderr

    wrong = boxrun({**bare, "BOXRUN_TOKEN": "nope"}, "login", fs.endpoints["api_url"])
    assert wrong.returncode == 125 and len(wrong.stderr.splitlines()) == 1, wrong.stderr


def test_an_unreachable_api_is_one_line(env: dict[str, str], tmp_path: Path) -> None:
    started = time.monotonic()
    done = boxrun({**env, "BOXRUN_URL": "http://127.0.0.1:1"}, "run", script(tmp_path, "print(1)"), "--box", BOX)
    assert done.returncode == 125
    assert done.stderr.splitlines() == [done.stderr.strip()] and "http://127.0.0.1:1" in done.stderr
    assert time.monotonic() - started < 60
