"""The agent's job runner on real processes, with the API replaced by an in-memory fake and
storage by httpx.MockTransport (no server needed)."""

import asyncio
import hashlib
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from boxrun.agent.jobusers import SlotUsers
from boxrun.agent.runner import DRAIN_LIMIT, JobRunner, RunningJob
from boxrun.agent.workspace import Workspace
from boxrun.errors import Conflict, TooLarge
from boxrun.logbatch import Batch
from boxrun.messages import JobSpec
from boxrun.schemas import BundleFile, JobBundle, ManifestAnswer, UploadTargetPublic
from tests.conftest import pid_alive, wait_for


class ApiFake:
    """Stands in for the API's agent routes: keeps every log line by seq, the progress reports,
    the manifest pages and the result."""

    def __init__(self) -> None:
        self.lines: dict[int, dict] = {}
        self.progress_reports: list[tuple[int | None, int]] = []
        self.pages: list[list] = []
        self.totals: list[int | None] = []  # total_bytes of each manifest page
        self.results: list = []
        self.cancel_answer = False
        self.progress_error: Exception | None = None
        self.manifest_error: Exception | None = None

    async def send_logs(self, job_id, first_seq, runs, data) -> int:
        for seq, _ts, stream, text in Batch(first_seq, runs, data).unpack():
            self.lines.setdefault(seq, {"stream": stream, "text": text})
        return max(self.lines)

    async def progress(self, job_id, *, pid, log_seq) -> bool:
        if self.progress_error is not None:
            raise self.progress_error
        self.progress_reports.append((pid, log_seq))
        return self.cancel_answer

    async def manifest(self, job_id, entries, *, done, total_bytes=None) -> ManifestAnswer:
        self.totals.append(total_bytes)
        if self.manifest_error is not None:
            raise self.manifest_error
        self.pages.append(entries)
        return ManifestAnswer(
            targets=[
                UploadTargetPublic(path=e.path, url=f"http://s3.test/{e.path}", headers={"x-sha": e.sha256})
                for e in entries
            ],
            refused=[],
        )

    async def result(self, job_id, report) -> None:
        self.results.append(report)

    def ordered(self) -> list[tuple[str, str]]:
        assert sorted(self.lines) == list(range(1, len(self.lines) + 1)), "seqs must be contiguous from 1"
        return [(self.lines[s]["stream"], self.lines[s]["text"]) for s in sorted(self.lines)]


class StorageMock:
    """httpx.MockTransport standing in for the object store's presigned PUTs."""

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}

    def handler(self, request: httpx.Request) -> httpx.Response:
        if request.method == "PUT":
            self.objects[request.url.path.lstrip("/")] = request.content
            return httpx.Response(200)
        if request.method == "GET":
            return httpx.Response(200, content=b"binary\x00file")
        return httpx.Response(405)


def bundle(script: str, **kw) -> JobBundle:
    return JobBundle(
        script=script,
        env=kw.pop("env", {}),
        files=kw.pop("files", []),
        timeout_s=kw.pop("timeout_s", 60),
        cancel_grace_s=kw.pop("cancel_grace_s", 10.0),
    )


@pytest.fixture
def api() -> ApiFake:
    return ApiFake()


@pytest.fixture
def storage() -> StorageMock:
    return StorageMock()


@pytest.fixture(params=["cold", "warm"])
async def runner(request, tmp_path: Path, api: ApiFake, storage: StorageMock) -> AsyncIterator[JobRunner]:
    """Every runner test twice: each job's interpreter started for it, and pre-started per slot."""
    http = httpx.AsyncClient(transport=httpx.MockTransport(storage.handler))
    warm = request.param == "warm"
    slots = SlotUsers("t", 1, separate=False) if warm else None
    made = JobRunner(
        api,  # type: ignore[arg-type]
        workdir=tmp_path / "agent",
        python=sys.executable,
        progress_s=0.05,
        http=http,
        slots=slots,
        warm=warm,
    )
    made.prestart_all()
    yield made
    await made.close()


async def test_output_order_env_files_artifacts_and_result(runner, api, storage, monkeypatch):
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
    files = [BundleFile(path="data/input.txt", content="materialised\n")]
    report = await runner.run(RunningJob("job-1"), bundle(script, files=files, env={"MY_VAR": "v1"}))
    assert report.exit_code == 0 and not report.timed_out and not report.cancelled and report.error is None
    expected = [s for i in range(50) for s in (("stdout", f"out {i}"), ("stderr", f"err {i}"))]
    expected += [("stdout", "from a child"), ("stdout", "materialised"), ("stdout", "no token v1 job-1")]
    assert api.ordered() == expected
    assert report.log_seq == len(expected) and api.results == [report]
    data = bytes(range(256)) * 10
    assert [(e.path, e.size, e.sha256) for e in api.pages[0]] == [
        ("sub/r.bin", len(data), hashlib.sha256(data).hexdigest())
    ]
    assert api.totals == [len(data)], "the first page announces every artifact's size (the org's quota)"
    assert storage.objects == {"sub/r.bin": data} and report.uploaded_count == 1
    assert api.progress_reports, "the runner reports progress while the job runs"
    assert not Workspace.for_job(runner.workdir, "job-1").root.exists(), "the workspace is removed after the job"


async def test_non_zero_exit_is_reported_and_the_workspace_removed(runner, api):
    report = await runner.run(RunningJob("job-1"), bundle("import sys; print('bye'); sys.exit(3)"))
    assert report.exit_code == 3 and api.results == [report]
    assert api.ordered() == [("stdout", "bye")]
    assert api.pages == [], "no artifacts: no manifest"
    assert not Workspace.for_job(runner.workdir, "job-1").root.exists()


async def test_uncaught_exception_shows_traceback_on_stderr(runner, api):
    report = await runner.run(RunningJob("job-1"), bundle("raise RuntimeError('boom')"))
    assert report.exit_code == 1
    assert ("stderr", "RuntimeError: boom") in api.ordered()


SLEEPER = """
import subprocess, time
child = subprocess.Popen(["sleep", "300"])
open({pidfile!r}, "w").write(str(child.pid))
print("started", flush=True)
time.sleep(300)
"""


async def test_timeout_kills_the_whole_process_group(runner, api, tmp_path):
    pidfile = tmp_path / "child.pid"
    report = await runner.run(RunningJob("job-1"), bundle(SLEEPER.format(pidfile=str(pidfile)), timeout_s=1))
    assert report.timed_out
    assert not pid_alive(report.pid) and not pid_alive(int(pidfile.read_text()))
    assert api.ordered() == [("stdout", "started")], "the box never writes the system stream"


@pytest.mark.parametrize("how", ["pushed", "progress-answer"])
async def test_cancel_terminates_the_process_group_and_is_reported(runner, api, tmp_path, how):
    pidfile = tmp_path / "child.pid"
    job = RunningJob("job-1")
    task = asyncio.create_task(runner.run(job, bundle(SLEEPER.format(pidfile=str(pidfile)))))
    await wait_for(lambda: api.lines and pidfile.exists() and pidfile.read_text(), what="job to start")
    if how == "pushed":
        job.cancel.set()  # what the agent's long-poll does with a cancel event
    else:
        api.cancel_answer = True
    report = await asyncio.wait_for(task, 15)
    assert report.cancelled and api.results == [report]
    assert not pid_alive(int(pidfile.read_text()))


async def test_drain_limit_stops_the_job_and_says_so(runner, api, tmp_path):
    pidfile = tmp_path / "child.pid"
    job = RunningJob("job-1")
    task = asyncio.create_task(runner.run(job, bundle(SLEEPER.format(pidfile=str(pidfile)), cancel_grace_s=0.5)))
    await wait_for(lambda: pidfile.exists() and pidfile.read_text(), what="job to start")
    job.stop.set()
    report = await asyncio.wait_for(task, 15)
    assert report.error == DRAIN_LIMIT and not pid_alive(int(pidfile.read_text()))


async def test_a_job_the_control_plane_ended_is_killed(runner, api, tmp_path):
    """Progress answered 409 (the job failed "box heartbeat lost" meanwhile): kill it at once."""
    pidfile = tmp_path / "child.pid"
    task = asyncio.create_task(runner.run(RunningJob("job-1"), bundle(SLEEPER.format(pidfile=str(pidfile)))))
    await wait_for(lambda: pidfile.exists() and pidfile.read_text(), what="job to start")
    api.progress_error = Conflict("job ended")
    report = await asyncio.wait_for(task, 15)
    assert report.error == "the control plane ended the job" and not pid_alive(int(pidfile.read_text()))


async def test_missing_interpreter_is_an_error_not_a_crash(tmp_path, api):
    runner = JobRunner(api, workdir=tmp_path / "agent", python="/nonexistent/python3")  # type: ignore[arg-type]
    report = await runner.run(RunningJob("job-1"), bundle("print(1)"))
    assert report.exit_code is None and report.pid is None and "could not start" in report.error
    assert api.results == [report]


async def test_binary_file_is_downloaded_and_checked_before_the_script_starts(runner, api, tmp_path):
    data = b"binary\x00file"
    good = BundleFile(
        path="in/blob.bin", url="http://s3.test/get", size=len(data), sha256=hashlib.sha256(data).hexdigest()
    )
    script = "import sys; d = open('in/blob.bin', 'rb').read(); print(len(d), d[6])"
    report = await runner.run(RunningJob("job-1"), bundle(script, files=[good]))
    assert report.exit_code == 0 and api.ordered() == [("stdout", f"{len(data)} 0")]

    marker = tmp_path / "ran"
    bad = good.model_copy(update={"sha256": "00" * 32})
    report = await runner.run(RunningJob("job-2"), bundle(f"open({str(marker)!r}, 'w')", files=[bad]))
    assert report.exit_code is None and report.error.startswith("file in/blob.bin: SHA-256 mismatch")
    assert not marker.exists(), "a file that fails its check never lets the script start"


async def test_too_many_artifacts_fails_with_the_api_reason(runner, api):
    api.manifest_error = TooLarge("too many artifacts: a job may keep at most 2 (max_artifacts_per_job)")
    script = "import os\nfor i in range(3): open(os.path.join(os.environ['BOXRUN_ARTIFACTS_DIR'], str(i)), 'w')"
    report = await runner.run(RunningJob("job-1"), bundle(script))
    assert report.exit_code == 0 and report.error.startswith("too many artifacts")
    assert not Workspace.for_job(runner.workdir, "job-1").root.exists()


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
    ws.create(JobSpec(job_id="old-job", script="print(1)", timeout_s=60))
    proc = subprocess.Popen(["sleep", "300"], start_new_session=True)
    ws.record_pgid(proc.pid)
    assert sweep_stale(tmp_path) == ["old-job"]
    assert proc.wait(5) == -9 and not ws.root.exists()


async def test_cancel_during_a_hung_upload_is_reported_at_once(tmp_path, api):
    """The store hangs (a PUT never answers): a cancel still ends the job, reported cancelled."""
    hung = asyncio.Event()

    async def never_answers(request: httpx.Request) -> httpx.Response:
        hung.set()
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")

    http = httpx.AsyncClient(transport=httpx.MockTransport(never_answers))
    runner = JobRunner(api, workdir=tmp_path / "agent", python=sys.executable, progress_s=0.05, http=http)  # type: ignore[arg-type]
    job = RunningJob("job-1")
    script = "import os\nopen(os.path.join(os.environ['BOXRUN_ARTIFACTS_DIR'], 'r.bin'), 'wb').write(b'x')"
    task = asyncio.create_task(runner.run(job, bundle(script)))
    await asyncio.wait_for(hung.wait(), 15)
    job.cancel.set()
    report = await asyncio.wait_for(task, 5)
    assert report.cancelled and report.exit_code == 0 and api.results == [report]
    assert not Workspace.for_job(runner.workdir, "job-1").root.exists()


async def test_a_secret_in_an_artifact_name_or_the_report_never_leaves_the_box(runner, api, storage):
    """The bundle's mask covers more than the output: an artifact named after a secret's value is
    refused on the box (its name would go up unmasked) and the report's text is masked."""
    script = """
import os
art = os.environ["BOXRUN_ARTIFACTS_DIR"]
open(os.path.join(art, "dump-" + os.environ["PW"] + ".txt"), "w").write("x")
open(os.path.join(art, "fine.txt"), "w").write("y")
"""
    b = bundle(script, env={"PW": "hunter2-value"})
    b.mask = ["hunter2-value"]
    report = await runner.run(RunningJob("job-secret-name"), b)
    assert [e.path for page in api.pages for e in page] == ["fine.txt"]
    assert storage.objects == {"fine.txt": b"y"}
    assert [(f.path, f.reason) for f in report.upload_failures] == [("dump-***.txt", "its name holds a secret's value")]
    assert "hunter2-value" not in report.model_dump_json()


def test_a_bundle_shows_no_env_value_or_mask_in_its_repr():
    b = bundle("print(1)", env={"PW": "hunter2-value"})
    b.mask = ["hunter2-value"]
    assert "hunter2-value" not in repr(b) and "hunter2-value" not in str(b)
    assert b.env == {"PW": "hunter2-value"}, "only the repr hides it"


# -- the warm interpreter per slot

CMDLINE = "print(open('/proc/self/cmdline', 'rb').read().split(b'\\0')[3:4][0].decode())"


def warm_runner(tmp_path: Path, api: ApiFake, slots: int = 1) -> JobRunner:
    runner = JobRunner(
        api,  # type: ignore[arg-type]
        workdir=tmp_path / "agent",
        python=sys.executable,
        progress_s=0.05,
        slots=SlotUsers("t", slots, separate=False),
        warm=True,
    )
    runner.prestart_all()
    return runner


async def test_each_job_takes_its_slots_pre_started_interpreter_once(tmp_path, api):
    """The job runs in the interpreter pre-started for its slot (bootstrap.py --warm), every job
    in a process of its own, with its own directory, environment and argv."""
    runner = warm_runner(tmp_path, api)
    script = (
        CMDLINE
        + "\nimport os, sys\nprint(os.getpid())\nprint(os.environ['MARK'], sys.argv[0] == os.environ['SCRIPT'])\n"
    )
    try:
        lines: list[str] = []
        for i in range(2):
            ws = Workspace.for_job(tmp_path / "agent", f"w{i}")
            env = {"MARK": f"m{i}", "SCRIPT": str(ws.script)}
            report = await runner.run(RunningJob(f"w{i}"), bundle(script, env=env))
            assert report.exit_code == 0, api.ordered()
            lines += [text for _, text in api.ordered()]
            api.lines.clear()
        assert lines[0] == lines[3] == "--warm", lines  # the bootstrap's first argument
        assert lines[2] == "m0 True" and lines[5] == "m1 True", lines
        assert lines[1] != lines[4]  # a process of its own for each job
        assert 0 in runner._warm  # the slot's next interpreter is already starting
    finally:
        await runner.close()


async def test_a_job_setting_a_start_up_variable_starts_cold(tmp_path, api):
    """PYTHONPATH (any PYTHON*, LANG, LC_*) is read at start-up: such a job gets a fresh interpreter."""
    runner = warm_runner(tmp_path, api)
    try:
        script = CMDLINE + "\nimport sys\nprint('/extra/path' in sys.path)\n"
        report = await runner.run(RunningJob("c1"), bundle(script, env={"PYTHONPATH": "/extra/path"}))
        assert report.exit_code == 0
        lines = [text for _, text in api.ordered()]
        assert lines[0] != "--warm", lines
        assert lines[1] == "True"
    finally:
        await runner.close()


async def test_a_warm_interpreter_gone_before_its_job_falls_back_to_a_cold_start(tmp_path, api):
    runner = warm_runner(tmp_path, api)
    try:
        warm = await runner._warm[0]
        assert warm is not None and warm.pid is not None
        os.kill(warm.pid, signal.SIGKILL)  # its supervisor: the interpreter goes with it
        await warm.wait(10)
        report = await runner.run(RunningJob("g1"), bundle(CMDLINE))
        assert report.exit_code == 0
        assert [text for _, text in api.ordered()] != ["--warm"]
    finally:
        await runner.close()


async def test_close_drops_the_unused_warm_interpreters(tmp_path, api):
    runner = warm_runner(tmp_path, api, slots=2)
    procs = [await task for task in runner._warm.values()]
    assert len(procs) == 2 and all(p is not None and p.pid is not None for p in procs)
    await runner.close()
    for proc in procs:
        assert proc is not None and await proc.wait(10) is not None
    assert not runner._warm
