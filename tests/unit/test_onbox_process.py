"""The job's supervisor on real processes: descendants die with the job (double-forked ones too),
exit statuses and output unchanged, the job's env never reaches the supervisor, tracebacks start at
the user's script."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from boxrun.agent.jobusers import JobUser
from boxrun.agent.logpump import LogPump
from boxrun.agent.process import JobProcess, child_env, warm_env
from boxrun.agent.workspace import Workspace
from tests.conftest import pid_alive, wait_for
from tests.unit.fakes import MemorySinkFake

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only (prctl, /proc)")

# The job double-forks: the grandchild leaves the job's session (setsid), writes its pid and sleeps.
DOUBLE_FORK = """
import os, sys, time
pidfile = sys.argv[0] + ".escaped"
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        with open(os.environ["ESCAPE_PIDFILE"], "w") as f:
            f.write(str(os.getpid()))
        time.sleep(300)
    os._exit(0)
os.wait()
while not (os.path.exists(os.environ["ESCAPE_PIDFILE"]) and open(os.environ["ESCAPE_PIDFILE"]).read()):
    time.sleep(0.01)
print("forked away", flush=True)
"""


class Job:
    """A job as the agent runs it: workspace, LogPump into a memory sink, JobProcess."""

    def __init__(
        self,
        base: Path,
        job_id: str,
        script: str,
        *,
        user: JobUser | None = None,
        runtime=None,
        env=None,
        python: str = sys.executable,
    ):
        self.python = python
        self.ws = Workspace.for_job(base, job_id)
        self.ws.create_from(script, {}, user=user)
        self.sink = MemorySinkFake()
        self.pump = LogPump(self.sink, job_id, spill_path=self.ws.root / "logs.spill")
        self.proc = JobProcess(self.pump)
        self.user, self.runtime = user, runtime
        self.env = child_env(os.environ, env or {}, {"BOXRUN_JOB_ID": job_id, **self.ws.env()})

    warm = False  # start_mode below: the interpreter pre-started (bootstrap.py --warm), then handed the job

    async def start(self) -> int:
        self.pump.start()
        if self.warm:
            pre = JobProcess()
            await pre.prestart(self.python, warm_env(os.environ), user=self.user, runtime=self.runtime)
            self.proc = pre
            return await pre.go(self.pump, self.ws.script, self.ws.work, self.env)
        return await self.proc.spawn(
            self.python, self.ws.script, self.ws.work, self.env, user=self.user, runtime=self.runtime
        )

    async def finish(self, timeout_s: float = 30) -> int | None:
        code = await self.proc.wait(timeout_s)
        if code is None:
            code = await self.proc.terminate(1)
        await self.proc.finish_output()
        await self.pump.close()
        return code

    def lines(self) -> list[tuple[str, str]]:
        return self.sink.ordered() if self.sink.lines else []


@pytest.fixture(autouse=True, params=["cold", "warm"])
def start_mode(request, monkeypatch):
    """Every test here twice: the job's interpreter started for it, and pre-started then handed it."""
    monkeypatch.setattr(Job, "warm", request.param == "warm")


async def test_a_double_forked_setsid_grandchild_dies_with_the_job(tmp_path):
    pidfile = tmp_path / "escaped.pid"
    job = Job(tmp_path, "j1", DOUBLE_FORK, env={"ESCAPE_PIDFILE": str(pidfile)})
    await job.start()
    started = time.monotonic()
    code = await job.finish()
    assert code == 0 and job.lines() == [("stdout", "forked away")]
    escaped = int(pidfile.read_text())
    await wait_for(lambda: not pid_alive(escaped), timeout=5, what=f"the double-forked process {escaped} to die")
    # the escaped process held the log pipe: the supervisor's cleanup is what lets the output end
    assert time.monotonic() - started < 4, "output did not end with the job (DRAIN_S waited out)"


async def test_terminate_kills_a_double_forked_grandchild_and_reports_sigterm(tmp_path):
    pidfile = tmp_path / "escaped.pid"
    job = Job(tmp_path, "j2", DOUBLE_FORK + "import time\ntime.sleep(300)\n", env={"ESCAPE_PIDFILE": str(pidfile)})
    await job.start()
    await wait_for(lambda: job.sink.lines, what="the job to print")
    code = await job.proc.terminate(5)
    await job.proc.finish_output()
    await job.pump.close()
    assert code == -signal.SIGTERM
    escaped = int(pidfile.read_text())
    await wait_for(lambda: not pid_alive(escaped), timeout=5, what=f"the double-forked process {escaped} to die")


async def test_a_job_that_ignores_sigterm_is_killed_after_the_grace(tmp_path):
    script = (
        "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nprint('up', flush=True)\ntime.sleep(300)\n"
    )
    job = Job(tmp_path, "j3", script)
    await job.start()
    await wait_for(lambda: job.sink.lines, what="the job to print")
    assert await job.proc.terminate(0.3) == -signal.SIGKILL


@pytest.mark.parametrize(
    ("script", "expected"),
    [
        ("import sys; sys.exit(3)", 3),
        ("print('ok')", 0),
        ("import os, signal; os.kill(os.getpid(), signal.SIGUSR2)", -12),
    ],
)
async def test_exit_status_of_the_script_is_the_jobs(tmp_path, script, expected):
    job = Job(tmp_path, "j4", script)
    await job.start()
    assert await job.finish() == expected


async def test_output_keeps_its_order_through_the_supervisor(tmp_path):
    script = """
import subprocess, sys
for i in range(200):
    print(f"out {i}")
    print(f"err {i}", file=sys.stderr)
sys.stdout.flush()
subprocess.run(["echo", "child"], check=True)
print("end")
"""
    job = Job(tmp_path, "j5", script)
    await job.start()
    assert await job.finish() == 0
    expected = [s for i in range(200) for s in (("stdout", f"out {i}"), ("stderr", f"err {i}"))]
    assert job.lines() == [*expected, ("stdout", "child"), ("stdout", "end")]


async def test_the_jobs_env_never_becomes_the_supervisors(tmp_path):
    """LD_PRELOAD or PYTHONPATH in a job's env must not reach a process that may run as root."""
    script = "import os, time\nprint(os.environ['MARK'], os.environ['LD_PRELOAD'], flush=True)\ntime.sleep(300)\n"
    job = Job(tmp_path, "j6", script, env={"MARK": "job-env-marker", "LD_PRELOAD": "/nonexistent/evil.so"})
    sup = await job.start()
    # (the job's own python warns on stderr that it cannot preload the library: that is the job's)
    await wait_for(lambda: ("stdout", "job-env-marker /nonexistent/evil.so") in job.lines(), what="the job's env")
    environ = Path(f"/proc/{sup}/environ").read_bytes()
    assert b"job-env-marker" not in environ and b"LD_PRELOAD" not in environ
    await job.proc.terminate(5)
    await job.proc.finish_output()
    await job.pump.close()


async def test_home_and_tmpdir_point_into_the_workspace(tmp_path):
    script = "import os, tempfile\nprint(os.environ['HOME'])\nprint(tempfile.gettempdir())\n"
    job = Job(tmp_path, "j7", script)
    await job.start()
    assert await job.finish() == 0
    assert job.lines() == [("stdout", str(job.ws.home)), ("stdout", str(job.ws.tmp))]


async def test_a_traceback_starts_at_the_users_script(tmp_path):
    script = "def inner():\n    raise RuntimeError('boom')\n\ninner()\n"
    job = Job(tmp_path, "j8", script)
    await job.start()
    assert await job.finish() == 1
    err = [text for stream, text in job.lines() if stream == "stderr"]
    assert err == [
        "Traceback (most recent call last):",
        f'  File "{job.ws.script}", line 4, in <module>',
        "    inner()",
        f'  File "{job.ws.script}", line 2, in inner',
        "    raise RuntimeError('boom')",
        "RuntimeError: boom",
    ], err


async def test_a_syntax_error_shows_no_bootstrap_frame(tmp_path):
    job = Job(tmp_path, "j9", "print('a'\n")
    await job.start()
    assert await job.finish() == 1
    err = "\n".join(text for stream, text in job.lines() if stream == "stderr")
    assert "SyntaxError" in err and str(job.ws.script) in err
    assert "bootstrap" not in err and "runpy" not in err and "Traceback" not in err, err


async def test_the_job_and_its_escapees_die_with_the_agent(tmp_path):
    """A stand-in agent spawns a job through JobProcess (supervisor and all), then is SIGKILLed:
    the job's process and its double-forked grandchild are gone within a deadline."""
    pidfile = tmp_path / "escaped.pid"
    ws_base = tmp_path / "agent"
    fake_agent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"""
import asyncio, os, sys
sys.path.insert(0, {str(Path(__file__).parents[2])!r})
from tests.unit.test_onbox_process import Job, DOUBLE_FORK
async def main():
    job = Job(__import__("pathlib").Path({str(ws_base)!r}), "jd", DOUBLE_FORK + "import time\\ntime.sleep(300)\\n",
              env={{"ESCAPE_PIDFILE": {str(pidfile)!r}}})
    print(await job.start(), flush=True)
    await asyncio.sleep(300)
asyncio.run(main())
""",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert fake_agent.stdout is not None
        supervisor = int(fake_agent.stdout.readline())
        await wait_for(lambda: pidfile.exists() and pidfile.read_text(), what="the escaped pid")
        escaped = int(pidfile.read_text())
        assert pid_alive(supervisor) and pid_alive(escaped)
    finally:
        fake_agent.send_signal(signal.SIGKILL)
        fake_agent.wait()
    await wait_for(
        lambda: not pid_alive(supervisor) and not pid_alive(escaped),
        timeout=5,
        what="the supervisor and the double-forked process to die with their agent",
    )


async def test_asyncio_child_watcher_still_sees_the_exit(tmp_path):
    """Two jobs at once: each supervisor's exit reaches its own JobProcess."""
    jobs = [Job(tmp_path, f"p{i}", f"import sys; print({i}); sys.exit({i})") for i in range(2)]
    for job in jobs:
        await job.start()
    codes = await asyncio.gather(*(job.finish() for job in jobs))
    assert codes == [0, 1] and [job.lines() for job in jobs] == [[("stdout", "0")], [("stdout", "1")]]


async def test_sweep_kills_a_leftover_supervisor_and_everything_below_it(tmp_path):
    from boxrun.agent.workspace import sweep_stale

    pidfile = tmp_path / "escaped.pid"
    job = Job(tmp_path, "js", DOUBLE_FORK + "import time\ntime.sleep(300)\n", env={"ESCAPE_PIDFILE": str(pidfile)})
    supervisor = await job.start()
    job.ws.record_pgid(supervisor)
    await wait_for(lambda: job.sink.lines, what="the job to print")
    escaped = int(pidfile.read_text())
    assert sweep_stale(tmp_path) == ["js"]
    await wait_for(lambda: not pid_alive(escaped), timeout=5, what="the escaped process to die in the sweep")
    assert await job.proc.wait(5) == -signal.SIGKILL and not job.ws.root.exists()
    await job.proc.finish_output()
    await job.pump.close()
