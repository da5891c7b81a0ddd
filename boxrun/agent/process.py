"""Spawning a job's process group on the box, reading its output, and killing it."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Mapping
from pathlib import Path

from boxrun.agent.lines import FrameDecoder, LineFramer
from boxrun.agent.logpump import LogPump

BOOTSTRAP = Path(__file__).with_name("bootstrap.py")
_READ = 1 << 16
# After the main process exits, how long stray writers may keep the pipes open.
DRAIN_S = 5.0


def child_env(base: Mapping[str, str], job_env: Mapping[str, str], extra: Mapping[str, str]) -> dict[str, str]:
    """The agent's environment minus its own secrets, plus the job's env and boxrun's variables."""
    env = {k: v for k, v in base.items() if not k.startswith(("BOXRUN_", "AWS_"))}
    env.update(job_env)
    env.update(extra)
    env["PYTHONUNBUFFERED"] = "1"
    return env


class JobProcess:
    """One job's process group: python3 bootstrap.py script.py, output into a LogPump."""

    def __init__(self, pump: LogPump) -> None:
        self.pump = pump
        self.proc: asyncio.subprocess.Process | None = None
        self._readers: list[asyncio.Task] = []

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    async def spawn(self, python: str, script: Path, cwd: Path, env: dict[str, str]) -> int:
        read_fd, write_fd = os.pipe()
        try:
            env = {**env, "BOXRUN_LOG_FD": str(write_fd)}
            self.proc = await asyncio.create_subprocess_exec(
                python,
                "-u",
                str(BOOTSTRAP),
                str(script),
                cwd=cwd,
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                pass_fds=(write_fd,),
                start_new_session=True,  # its own process group
            )
        except BaseException:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)
        out, err = self._framer("stdout"), self._framer("stderr")
        framed = FrameDecoder(
            {b"o": self._framer("stdout"), b"e": self._framer("stderr"), b"u": self._framer("output")}
        )
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self._readers = [
            asyncio.create_task(self._pump_stream(self.proc.stdout, out)),
            asyncio.create_task(self._pump_stream(self.proc.stderr, err)),
            asyncio.create_task(self._pump_fd(read_fd, framed)),
        ]
        return self.proc.pid

    def _framer(self, stream: str) -> LineFramer:
        return LineFramer(lambda block, lines: self.pump.add_block(stream, block, lines))

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
        """After the main process exits: kill stragglers in its group, then read the pipes dry."""
        self.signal_group(signal.SIGKILL)
        done, pending = await asyncio.wait(self._readers, timeout=DRAIN_S)
        for task in pending:
            task.cancel()
        for task in done:
            task.result()

    async def terminate(self, grace_s: float) -> int:
        """SIGTERM the whole group, SIGKILL it after `grace_s`; returns the exit status."""
        assert self.proc is not None
        self.signal_group(signal.SIGTERM)
        code = await self.wait(grace_s)
        if code is None:
            self.signal_group(signal.SIGKILL)
            code = await self.proc.wait()
        return code

    def signal_group(self, sig: int) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass  # the group is already gone
