"""Spawning a job on the box under its supervisor, reading its output, and killing it.

The agent starts `python3 -I supervisor.py ... -- python3 -u bootstrap.py script.py`: the supervisor
(boxrun/agent/supervisor.py) is the job's child subreaper; it starts the bootstrap in a session of
its own, as the job's user when one is given, forwards SIGTERM to the job's process group and, when
the job ends or is killed, SIGKILLs every process the job left (double-forked ones included) before
it exits with the job's status. The job's environment reaches the supervisor through a memfd, never
as the environment of a process that may run as root.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
from collections.abc import Mapping
from pathlib import Path

from boxrun.agent.jobusers import JobUser
from boxrun.agent.lines import FrameDecoder, LineFramer
from boxrun.agent.logpump import LogPump

BOOTSTRAP = Path(__file__).with_name("bootstrap.py")
SUPERVISOR = Path(__file__).with_name("supervisor.py")
_READ = 1 << 16
# After the main process exits, how long stray writers may keep the pipes open.
DRAIN_S = 5.0
# After asking the supervisor to kill everything, how long before it is killed itself.
KILL_WAIT_S = 5.0


def child_env(base: Mapping[str, str], job_env: Mapping[str, str], extra: Mapping[str, str]) -> dict[str, str]:
    """The agent's environment minus its own secrets, plus the job's env and boxrun's variables."""
    env = {k: v for k, v in base.items() if not k.startswith(("BOXRUN_", "AWS_"))}
    env.update(job_env)
    env.update(extra)
    env["PYTHONUNBUFFERED"] = "1"
    return env


class JobProcess:
    """One job: its supervisor running python3 bootstrap.py script.py, output into a LogPump.

    Cold: `spawn()` starts the interpreter for a job. Warm: `prestart()` starts it before the job
    exists (bootstrap.py --warm, blocked on its job channel) and `go()` hands it the job; a
    JobProcess is used for one job only."""

    def __init__(self, pump: LogPump | None = None) -> None:
        self.pump = pump
        self.proc: asyncio.subprocess.Process | None = None
        self._readers: list[asyncio.Task] = []
        self._read_fd = -1
        self._go: socket.socket | None = None  # a warm start's job channel (agent's end)
        self.user: JobUser | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    async def spawn(
        self,
        python: str,
        script: Path,
        cwd: Path,
        env: dict[str, str],
        *,
        user: JobUser | None = None,
        runtime: Path | None = None,
    ) -> int:
        """Start the job; returns the supervisor's pid (what `signal_group` and `wait` act on).

        `user`: the OS user the job runs as (the agent must be root); None runs it as the agent's
        own user. `runtime`: a directory holding bootstrap.py and supervisor.py that `user` can
        read (jobusers.prepare_runtime); None uses the installed package's copies. `env` is the
        job's whole environment (child_env + Workspace.env()); USER/LOGNAME follow `user`."""
        assert self.pump is not None
        pid = await self._start(python, [str(script)], cwd, env, user=user, runtime=runtime)
        self._attach(self.pump)
        return pid

    async def prestart(
        self, python: str, env: dict[str, str], *, user: JobUser | None = None, runtime: Path | None = None
    ) -> int:
        """Start a warm interpreter for `user`'s next job: `env` is the start-up environment (no
        job's yet; see warm_env), the working directory `/`. It waits for go()."""
        ours, theirs = socket.socketpair()
        try:
            pid = await self._start(
                python,
                ["--warm"],
                Path("/"),
                {**env, "BOXRUN_GO_FD": str(theirs.fileno())},
                user=user,
                runtime=runtime,
                keep_fd=theirs.fileno(),
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self._go = ours
        self.user = user
        return pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None and self._go is not None

    async def go(self, pump: LogPump, script: Path, cwd: Path, env: dict[str, str]) -> int:
        """Hand a pre-started interpreter its job (runs `script` in `cwd` with exactly `env`, plus
        USER/LOGNAME of its user). OSError if it is gone: then nothing ran, start cold instead."""
        if not self.alive():
            raise OSError("the warm interpreter is gone")
        assert self._go is not None and self.proc is not None
        job = {"script": str(script), "cwd": str(cwd), "env": {**env, **(self.user.env() if self.user else {})}}
        data = json.dumps(job).encode("utf-8", "surrogatepass")
        sock, self._go = self._go, None
        try:
            sock.setblocking(False)
            await asyncio.get_running_loop().sock_sendall(sock, data)
        finally:
            sock.close()  # EOF: the job is complete
        self.pump = pump
        self._attach(pump)
        return self.proc.pid

    def drop(self) -> None:
        """An unused warm interpreter: close its channel (it exits 0) and kill its group."""
        if self._go is not None:
            self._go.close()
            self._go = None
        self.signal_group(signal.SIGKILL)
        if self._read_fd >= 0:
            os.close(self._read_fd)
            self._read_fd = -1

    async def _start(
        self,
        python: str,
        args: list[str],
        cwd: Path,
        env: dict[str, str],
        *,
        user: JobUser | None,
        runtime: Path | None,
        keep_fd: int = -1,
    ) -> int:
        where = runtime or BOOTSTRAP.parent
        python = shutil.which(python) or python  # resolved with the agent's PATH, not the job's
        read_fd, write_fd = os.pipe()
        env_fd = -1
        try:
            env = {**env, **(user.env() if user else {}), "BOXRUN_LOG_FD": str(write_fd)}
            env_fd = _memfd(_environ_bytes(env))
            cmd = [python, "-I", "-S", "-u", str(where / "supervisor.py"), "--env-fd", str(env_fd)]
            cmd += ["--watch", str(os.getpid())]
            if user is not None:
                cmd += ["--uid", str(user.uid), "--gid", str(user.gid)]
            cmd += ["--", python, "-u", str(where / "bootstrap.py"), *args]
            self.proc = await asyncio.create_subprocess_exec(
                *cmd,
                cwd=cwd,
                env={"PATH": os.environ.get("PATH", os.defpath)},  # not the job's: see _memfd
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                pass_fds=(write_fd, env_fd, *((keep_fd,) if keep_fd >= 0 else ())),
                start_new_session=True,  # the supervisor's own session; the job gets another
            )
        except BaseException:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)
            if env_fd >= 0:
                os.close(env_fd)
        self._read_fd = read_fd
        return self.proc.pid

    def _attach(self, pump: LogPump) -> None:
        """Start reading the job's output into `pump` (what a warm one wrote waits in the pipes)."""
        assert self.proc is not None and self.proc.stdout is not None and self.proc.stderr is not None
        out, err = self._framer("stdout"), self._framer("stderr")
        framed = FrameDecoder(
            {b"o": self._framer("stdout"), b"e": self._framer("stderr"), b"u": self._framer("output")}
        )
        read_fd, self._read_fd = self._read_fd, -1
        self._readers = [
            asyncio.create_task(self._pump_stream(self.proc.stdout, out)),
            asyncio.create_task(self._pump_stream(self.proc.stderr, err)),
            asyncio.create_task(self._pump_fd(read_fd, framed)),
        ]

    def _framer(self, stream: str) -> LineFramer:
        pump = self.pump
        assert pump is not None
        return LineFramer(lambda block, lines: pump.add_block(stream, block, lines))

    async def _pump_stream(self, reader: asyncio.StreamReader, framer: LineFramer) -> None:
        while chunk := await reader.read(_READ):
            framer.feed(chunk)
        framer.close()

    async def _pump_fd(self, fd: int, decoder: FrameDecoder) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=_READ * 4)
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(fd, "rb", 0)
        )
        try:
            while chunk := await reader.read(_READ):
                decoder.feed(chunk)
        finally:
            transport.close()
        decoder.close()

    async def wait(self, timeout_s: float | None) -> int | None:
        """Wait for exit; None if `timeout_s` passed first (the process is still running)."""
        assert self.proc is not None
        try:
            return await asyncio.wait_for(self.proc.wait(), timeout_s)
        except TimeoutError:
            return None

    async def finish_output(self) -> None:
        """After the supervisor exits (it kills what the job left): read the pipes dry."""
        self.signal_group(signal.SIGKILL)
        done, pending = await asyncio.wait(self._readers, timeout=DRAIN_S)
        for task in pending:
            task.cancel()
        for task in done:
            task.result()

    async def terminate(self, grace_s: float) -> int:
        """SIGTERM the job's group, kill everything after `grace_s`; returns the exit status."""
        assert self.proc is not None
        self.signal_group(signal.SIGTERM)
        code = await self.wait(grace_s)
        if code is None:
            self.signal_group(signal.SIGKILL)
            code = await self.wait(KILL_WAIT_S)
        if code is None:  # the supervisor does not answer: kill it (the bootstrap follows its parent)
            self._signal(signal.SIGKILL)
            code = await self.proc.wait()
        return code

    def signal_group(self, sig: int) -> None:
        """SIGTERM: to the job's process group (through its supervisor). SIGKILL: the supervisor
        SIGKILLs every process of the job, then exits. Anything else goes to the supervisor."""
        self._signal(signal.SIGUSR1 if sig == signal.SIGKILL else sig)

    def _signal(self, sig: int) -> None:
        if self.proc is None or self.proc.returncode is not None:
            return  # gone (and reaped: its pid may belong to another process by now)
        try:
            os.kill(self.proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


# Variables an interpreter reads at start-up (site, encodings, hash seed, paths): a job whose
# environment differs from a warm interpreter's in one of these starts cold.
STARTUP_PREFIXES = ("PYTHON", "LC_")
STARTUP_NAMES = frozenset({"LANG", "LANGUAGE"})


def warm_env(base: Mapping[str, str]) -> dict[str, str]:
    """A warm interpreter's start-up environment: the agent's minus its secrets (child_env with
    no job), and a HOME with nothing in it, as a job's fresh one (site looks for user
    site-packages there)."""
    return {**child_env(base, {}, {}), "HOME": "/nonexistent"}


def starts_alike(warm: Mapping[str, str], job: Mapping[str, str]) -> bool:
    """True if an interpreter started with `warm` starts like one started with `job`: they agree
    on every variable Python reads at start-up. (HOME differs: a job's HOME is a fresh empty
    directory, so site finds no user site-packages in it either way.)"""
    for key in set(warm) | set(job):
        if warm.get(key) != job.get(key) and (key.startswith(STARTUP_PREFIXES) or key in STARTUP_NAMES):
            return False
    return True


def _environ_bytes(env: Mapping[str, str]) -> bytes:
    """`env` as /proc/PID/environ holds it: KEY=VALUE entries, each ended by NUL."""
    out = bytearray()
    for key, value in env.items():
        if not key or "=" in key or "\0" in key or "\0" in value:
            raise ValueError(f"invalid environment variable {key[:80]!r}")
        out += os.fsencode(key) + b"=" + os.fsencode(value) + b"\0"
    return bytes(out)


def _memfd(data: bytes) -> int:
    """An anonymous file holding `data`, positioned at its start (closed on exec unless passed)."""
    fd = os.memfd_create("boxrun-job-env", os.MFD_CLOEXEC)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.lseek(fd, 0, os.SEEK_SET)
    except BaseException:
        os.close(fd)
        raise
    return fd
