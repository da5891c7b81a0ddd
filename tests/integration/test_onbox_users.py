"""Jobs as per-slot OS users, on the real thing (needs root: it creates two users and removes them):
two running jobs cannot read each other's workspace or environ nor signal each other; a job cannot
read the agent's token file or environ; its artifacts are judged as hostile paths."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pytest

from boxrun.agent.jobusers import (
    JobUserError,
    SlotUsers,
    check_job_user_can_run,
    kill_user_processes,
    prepare_runtime,
    slot_user_name,
)
from tests.conftest import pid_alive, wait_for
from tests.unit.test_onbox_process import Job

# The job users need an interpreter they can reach (this venv's lives under root's 0700 home).
JOB_PYTHON = "/usr/bin/python3"
pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="creating job users needs root"),
    pytest.mark.skipif(not os.access(JOB_PYTHON, os.X_OK), reason=f"needs {JOB_PYTHON}"),
]


@pytest.fixture
def slots():
    box = f"t{uuid.uuid4().hex[:8]}"
    users = SlotUsers(box, 2)
    try:
        yield users
    finally:
        for user in users.users:
            kill_user_processes(user.uid)
            subprocess.run(["userdel", user.name], check=False, capture_output=True)


@pytest.fixture
def workdir():
    base = Path(tempfile.mkdtemp(prefix="boxrun-onbox-", dir="/tmp"))
    os.chmod(base, 0o711)
    try:
        yield base / "agent"
    finally:
        subprocess.run(["rm", "-rf", str(base)], check=False)


def test_slot_users_are_distinct_unprivileged_and_reused(slots):
    a, b = slots.user_for_slot(0), slots.user_for_slot(1)
    assert a is not None and b is not None
    assert a.name == slot_user_name(slots.box, 0) and len({a.uid, b.uid}) == 2 and 0 not in (a.uid, b.uid, a.gid)
    assert SlotUsers(slots.box, 2).users == slots.users, "a restarted agent gets the same users"
    first, second = slots.acquire(), slots.acquire()
    assert (first.user, second.user) == (a, b)
    with pytest.raises(JobUserError, match="busy"):
        slots.acquire()
    slots.release(first)
    assert slots.acquire() == first


def test_the_start_up_check_names_what_the_job_user_cannot_reach(slots, tmp_path, workdir):
    user = slots.user_for_slot(0)
    closed = tmp_path / "closed"
    closed.mkdir()
    closed.chmod(0o700)  # other users cannot enter it
    runtime = prepare_runtime(closed)
    with pytest.raises(JobUserError, match=f"job user {user.name}.*cannot run jobs.*Permission denied.*o\\+x"):
        check_job_user_can_run(JOB_PYTHON, user, runtime=runtime, workdir=closed)
    if os.path.realpath(sys.executable).startswith("/root/"):  # this venv's interpreter, under root's 0700 home
        with pytest.raises(JobUserError, match=f"cannot run {sys.executable}: .*Permission denied"):
            check_job_user_can_run(sys.executable, user, runtime=prepare_runtime(workdir), workdir=workdir)
    with pytest.raises(JobUserError, match="cannot run /nonexistent/python3"):
        check_job_user_can_run("/nonexistent/python3", user, runtime=runtime)
    check_job_user_can_run(JOB_PYTHON, user, runtime=prepare_runtime(workdir), workdir=workdir)


async def test_two_jobs_as_two_slot_users_cannot_reach_each_other_nor_the_agent(slots, workdir):
    runtime = prepare_runtime(workdir)
    check_job_user_can_run(JOB_PYTHON, slots.user_for_slot(0), runtime=runtime, workdir=workdir)
    token = workdir / "node-token"
    token.write_text("NODE-TOKEN-SECRET")
    os.chmod(token, 0o600)
    os.environ["BOXRUN_TEST_AGENT_MARK"] = "agent-env-marker"  # only in this (agent) process's environ

    a_slot, b_slot = slots.acquire(), slots.acquire()
    a_script = """
import os, time
with open(os.path.join(os.environ["HOME"], "secret"), "w") as f:
    f.write("A-secret")
print(os.getpid(), flush=True)
time.sleep(300)
"""
    a = Job(
        workdir, "job-a", a_script, user=a_slot.user, runtime=runtime, env={"A_MARK": "env-of-a"}, python=JOB_PYTHON
    )
    await a.start()
    await wait_for(lambda: a.lines(), what="job A to start")
    a_pid = int(a.lines()[0][1])
    assert Path(f"/proc/{a_pid}/status").read_text().count(f"\t{a_slot.user.uid}\t") >= 1
    root_st = a.ws.root.stat()
    assert stat.S_IMODE(root_st.st_mode) == 0o710 and root_st.st_gid == a_slot.user.gid
    assert a.ws.work.stat().st_uid == a_slot.user.uid and stat.S_IMODE(a.ws.work.stat().st_mode) == 0o700

    b_script = """
import json, os, signal
tries = {
    "a_home_secret": lambda: open(os.path.join(os.environ["A_HOME"], "secret")).read(),
    "a_script": lambda: open(os.environ["A_SCRIPT"]).read(),
    "a_workspace": lambda: os.listdir(os.environ["A_ROOT"]),
    "a_environ": lambda: open(f"/proc/{os.environ['A_PID']}/environ", "rb").read(),
    "kill_a": lambda: os.kill(int(os.environ["A_PID"]), signal.SIGKILL),
    "token_file": lambda: open(os.environ["TOKEN"]).read(),
    "agent_environ": lambda: open(f"/proc/{os.environ['AGENT_PID']}/environ", "rb").read(),
    "list_jobs": lambda: os.listdir(os.environ["JOBS"]),
    "own_environ": lambda: open("/proc/self/environ", "rb").read() and "ok",
    "own_home": lambda: open(os.path.join(os.environ["HOME"], "x"), "w").write("ok") and "ok",
}
out = {}
for name, attempt in tries.items():
    try:
        value = attempt()
        out[name] = "ALLOWED " + repr(value)[:80]
    except PermissionError:
        out[name] = "denied"
print(json.dumps(out, sort_keys=True))
"""
    b_env = {
        "A_HOME": str(a.ws.home),
        "A_SCRIPT": str(a.ws.script),
        "A_ROOT": str(a.ws.root),
        "A_PID": str(a_pid),
        "TOKEN": str(token),
        "AGENT_PID": str(os.getpid()),
        "JOBS": str(workdir / "jobs"),
    }
    b = Job(workdir, "job-b", b_script, user=b_slot.user, runtime=runtime, env=b_env, python=JOB_PYTHON)
    await b.start()
    try:
        assert await b.finish() == 0, b.lines()
        got = json.loads(b.lines()[-1][1])
        assert got == {
            "a_home_secret": "denied",
            "a_script": "denied",
            "a_workspace": "denied",
            "a_environ": "denied",
            "kill_a": "denied",
            "token_file": "denied",
            "agent_environ": "denied",
            "list_jobs": "denied",
            "own_environ": "ALLOWED 'ok'",
            "own_home": "ALLOWED 'ok'",
        }, got
        assert pid_alive(a_pid), "job B must not be able to kill job A"
    finally:
        os.environ.pop("BOXRUN_TEST_AGENT_MARK", None)
        await a.proc.terminate(5)
        await a.proc.finish_output()
        await a.pump.close()
    assert not pid_alive(a_pid)
    slots.release(a_slot)
    slots.release(b_slot)


async def test_artifacts_of_a_slot_user_job_are_judged_as_hostile(slots, workdir):
    runtime = prepare_runtime(workdir)
    token = workdir / "node-token"
    token.write_text("NODE-TOKEN-SECRET")
    os.chmod(token, 0o600)
    slot = slots.acquire()
    script = """
import os
art = os.environ["BOXRUN_ARTIFACTS_DIR"]
open(os.path.join(art, "good.txt"), "w").write("good")
open(os.path.join(art, "mine.txt"), "w").write("mine")
os.link(os.path.join(art, "mine.txt"), os.path.join(art, "mine-again.txt"))
os.symlink(os.environ["TOKEN"], os.path.join(art, "token-link"))
os.symlink("/etc", os.path.join(art, "etc-dir"))
try:
    os.link(os.environ["TOKEN"], os.path.join(art, "token-hard"))
    print("hard-linked the token")
except OSError as exc:
    print("no hard link to the token:", exc.strerror)
open(os.path.join(art, "bad\\nname"), "w").write("lf")
"""
    job = Job(workdir, "job-art", script, user=slot.user, runtime=runtime, env={"TOKEN": str(token)}, python=JOB_PYTHON)
    await job.start()
    assert await job.finish() == 0, job.lines()
    (job.ws.artifacts / "planted-by-root").write_text("root's")
    entries, refused = job.ws.scan_artifacts()
    assert [e.path for e in entries] == ["good.txt"]
    reasons = {r.path: r.reason for r in refused}
    assert reasons.pop("token-link") == "symbolic link (not followed)"
    assert reasons.pop("etc-dir") == "symbolic link (not followed)"
    assert reasons.pop("mine.txt").startswith("hard link") and reasons.pop("mine-again.txt").startswith("hard link")
    assert reasons.pop("bad\nname") == "control characters in the name"
    assert reasons.pop("planted-by-root") == f"owned by uid 0, not by the job's user (uid {slot.user.uid})"
    if "token-hard" in reasons:  # only where the kernel's protected_hardlinks is off
        assert reasons.pop("token-hard").startswith("hard link")
    assert reasons == {}
    with job.ws.open_artifact("good.txt", size=4) as fh:
        assert fh.read() == b"good"
    job.ws.remove()
    assert not job.ws.root.exists()
    slots.release(slot)


@pytest.mark.skipif(
    not os.path.realpath(sys.executable).startswith("/root/"), reason="needs an interpreter the job user cannot reach"
)
async def test_a_job_its_user_cannot_start_fails_with_the_reason(slots, workdir):
    """The supervisor (root) runs, the job's exec as the slot user is refused: exit 127, reason on stderr."""
    slot = slots.acquire()
    job = Job(workdir, "job-x", "print('never')", user=slot.user, runtime=prepare_runtime(workdir))
    await job.start()
    assert await job.finish() == 127
    assert job.lines() == [
        ("stderr", f"boxrun: could not start the job: [Errno 13] Permission denied: '{sys.executable}'")
    ]
    slots.release(slot)
