"""run_job on real processes, through temporalio's ActivityEnvironment (no server needed)."""

import asyncio
import hashlib
import sys
from pathlib import Path

import pytest
from temporalio.testing import ActivityEnvironment

from boxrun.agent.activities import BoxActivities
from boxrun.agent.workspace import Workspace
from boxrun.logbatch import Batch
from boxrun.messages import JobSpec, RunJobInput
from tests.conftest import pid_alive, wait_for


class MemorySinkFake:
    """Stands in for the API log ingest: keeps every line by seq."""

    def __init__(self) -> None:
        self.lines: dict[int, dict] = {}

    async def send(self, job_id, first_seq, runs, data) -> int:
        for seq, _ts, stream, text in Batch(first_seq, runs, data).unpack():
            self.lines.setdefault(seq, {"stream": stream, "text": text})
        return max(self.lines)

    def ordered(self) -> list[tuple[str, str]]:
        assert sorted(self.lines) == list(range(1, len(self.lines) + 1)), "seqs must be contiguous from 1"
        return [(self.lines[s]["stream"], self.lines[s]["text"]) for s in sorted(self.lines)]


def spec(script: str, **kw) -> JobSpec:
    return JobSpec(
        job_id=kw.pop("job_id", "job-1"),
        owner="t",
        box="b",
        box_group=None,
        script=script,
        timeout_s=kw.pop("timeout_s", 60),
        **kw,
    )


@pytest.fixture
def sink() -> MemorySinkFake:
    return MemorySinkFake()


@pytest.fixture
def box(tmp_path: Path, sink: MemorySinkFake) -> BoxActivities:
    return BoxActivities(sink=sink, workdir=tmp_path / "agent", python=sys.executable, heartbeat_s=0.1)


async def test_output_order_env_files_and_artifacts(box, sink, monkeypatch):
    monkeypatch.setenv("BOXRUN_NODE_TOKEN", "secret-of-the-agent")
    script = """
import os, subprocess, sys
for i in range(50):
    print(f"out {i}")
    print(f"err {i}", file=sys.stderr)
sys.stdout.flush()
subprocess.run(["echo", "from a child"], check=True)
print(open("data/input.txt").read().strip())
print("token leaked" if "BOXRUN_NODE_TOKEN" in os.environ else "no token", os.environ["MY_VAR"], os.environ["BOXRUN_JOB_ID"])
art = os.path.join(os.environ["BOXRUN_ARTIFACTS_DIR"], "sub")
os.makedirs(art)
with open(os.path.join(art, "r.bin"), "wb") as f:
    f.write(bytes(range(256)) * 10)
"""
    heartbeats: list = []
    env = ActivityEnvironment()
    env.on_heartbeat = lambda *d: heartbeats.append(d)
    result = await env.run(
        box.run_job, RunJobInput(spec=spec(script, files={"data/input.txt": "materialised\n"}, env={"MY_VAR": "v1"}))
    )
    assert result.exit_code == 0 and not result.timed_out and result.error is None
    expected = [s for i in range(50) for s in (("stdout", f"out {i}"), ("stderr", f"err {i}"))]
    expected += [("stdout", "from a child"), ("stdout", "materialised"), ("stdout", "no token v1 job-1")]
    assert sink.ordered() == expected
    assert result.log_lines == len(expected)
    data = bytes(range(256)) * 10
    assert [(a.path, a.size, a.sha256) for a in result.artifacts] == [
        ("sub/r.bin", len(data), hashlib.sha256(data).hexdigest())
    ]
    assert heartbeats, "run_job must heartbeat"
    assert Workspace.for_job(box.workdir, "job-1").artifacts.is_dir(), "kept for upload_artifacts"


async def test_non_zero_exit_is_reported(box, sink):
    result = await ActivityEnvironment().run(
        box.run_job, RunJobInput(spec=spec("import sys; print('bye'); sys.exit(3)"))
    )
    assert result.exit_code == 3
    assert sink.ordered() == [("stdout", "bye")]
    assert not Workspace.for_job(box.workdir, "job-1").root.exists(), "no artifacts: workspace removed"


async def test_uncaught_exception_shows_traceback_on_stderr(box, sink):
    result = await ActivityEnvironment().run(box.run_job, RunJobInput(spec=spec("raise RuntimeError('boom')")))
    assert result.exit_code == 1
    assert ("stderr", "RuntimeError: boom") in sink.ordered()


async def test_timeout_kills_the_whole_process_group(box, sink, tmp_path):
    pidfile = tmp_path / "child.pid"
    script = f"""
import subprocess, time
child = subprocess.Popen(["sleep", "300"])
open({str(pidfile)!r}, "w").write(str(child.pid))
print("started", flush=True)
time.sleep(300)
"""
    result = await ActivityEnvironment().run(box.run_job, RunJobInput(spec=spec(script, timeout_s=1)))
    assert result.timed_out
    child = int(pidfile.read_text())
    assert not pid_alive(result.pid) and not pid_alive(child)
    assert sink.ordered()[0] == ("stdout", "started")
    assert sink.ordered()[-1][0] == "system" and "timed out" in sink.ordered()[-1][1]


async def test_cancel_terminates_the_process_group(box, sink, tmp_path):
    pidfile = tmp_path / "child.pid"
    script = f"""
import subprocess, time
child = subprocess.Popen(["sleep", "300"])
open({str(pidfile)!r}, "w").write(str(child.pid))
print("ready", flush=True)
time.sleep(300)
"""
    env = ActivityEnvironment()
    task = asyncio.create_task(env.run(box.run_job, RunJobInput(spec=spec(script))))
    await wait_for(lambda: sink.lines and pidfile.exists() and pidfile.read_text(), what="job to start")
    env.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not pid_alive(int(pidfile.read_text()))
    assert any("cancelled" in text for stream, text in sink.ordered() if stream == "system")


async def test_missing_interpreter_is_an_error_not_a_crash(tmp_path, sink):
    box = BoxActivities(sink=sink, workdir=tmp_path / "agent", python="/nonexistent/python3")
    result = await ActivityEnvironment().run(box.run_job, RunJobInput(spec=spec("print(1)")))
    assert result.exit_code is None and result.pid is None and "could not start" in result.error


async def test_job_dies_with_its_agent(tmp_path):
    """A job process whose parent (the agent) dies kills its whole group, grandchildren included."""
    import signal
    import subprocess

    pidfile = tmp_path / "pids"
    script = f"""
import subprocess, time
child = subprocess.Popen(["sleep", "300"])
open({str(pidfile)!r}, "w").write(str(child.pid))
time.sleep(300)
"""
    (tmp_path / "s.py").write_text(script)
    from boxrun.agent.process import BOOTSTRAP

    # a stand-in agent: spawns bootstrap like the real one, then is SIGKILLed
    fake_agent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"""
import os, subprocess, sys, time
r, w = os.pipe()
env = dict(os.environ, BOXRUN_LOG_FD=str(w))
p = subprocess.Popen([sys.executable, {str(BOOTSTRAP)!r}, {str(tmp_path / "s.py")!r}], env=env, pass_fds=(w,),
                     start_new_session=True)
print(p.pid, flush=True)
time.sleep(300)
""",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    job_pid = int(fake_agent.stdout.readline())
    await wait_for(lambda: pidfile.exists() and pidfile.read_text(), what="grandchild pid")
    grandchild = int(pidfile.read_text())
    fake_agent.send_signal(signal.SIGKILL)
    fake_agent.wait()
    await wait_for(
        lambda: not pid_alive(job_pid) and not pid_alive(grandchild),
        timeout=5,
        what="the orphaned job's process group to die",
    )


def test_sweep_kills_leftover_groups_and_removes_workspaces(tmp_path):
    import subprocess

    from boxrun.agent.workspace import sweep_stale

    ws = Workspace.for_job(tmp_path, "old-job")
    ws.create(spec("print(1)", job_id="old-job"))
    proc = subprocess.Popen(["sleep", "300"], start_new_session=True)
    ws.record_pgid(proc.pid)
    assert sweep_stale(tmp_path) == ["old-job"]
    assert proc.wait(5) == -9 and not ws.root.exists()


async def test_a_job_the_api_no_longer_dispatches_here_never_starts(tmp_path, sink):
    class RefusingClaimerFake:
        async def claim(self, job_id):
            return "job is cancelled and not leased to b"

    marker = tmp_path / "ran"
    box = BoxActivities(sink=sink, workdir=tmp_path / "agent", python=sys.executable, claimer=RefusingClaimerFake())
    result = await ActivityEnvironment().run(
        box.run_job, RunJobInput(spec=spec(f"open({str(marker)!r}, 'w').write('x')"))
    )
    assert result.pid is None and result.error == "not started: job is cancelled and not leased to b"
    assert not marker.exists() and sink.lines == {}
