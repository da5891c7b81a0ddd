"""Child processes of the dev stack: start, wait for readiness, stop in order."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


@dataclass
class Child:
    name: str
    proc: subprocess.Popen
    log_path: Path
    stop_signal: int = signal.SIGTERM
    extra: dict = field(default_factory=dict)
    # how it was started, so it can be started again the same way
    argv: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    popen_kwargs: dict = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def respawn(self) -> None:
        """Start the same command again (after it stopped or was killed)."""
        if self.alive():
            raise RuntimeError(f"{self.name} is still running")
        fresh = spawn(
            self.name, self.argv, self.log_path.parent, env=self.env, stop_signal=self.stop_signal, **self.popen_kwargs
        )
        self.proc = fresh.proc

    def stop(self, timeout: float = 15.0) -> int | None:
        if self.alive():
            try:
                self.proc.send_signal(self.stop_signal)
                return self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait(5)


def spawn(
    name: str,
    argv: list[str],
    log_dir: Path,
    *,
    env: dict[str, str] | None = None,
    stop_signal: int = signal.SIGTERM,
    **kwargs,
) -> Child:
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
            **kwargs,
        )
    return Child(
        name=name,
        proc=proc,
        log_path=log_path,
        stop_signal=stop_signal,
        argv=list(argv),
        env=dict(env or {}),
        popen_kwargs=kwargs,
    )


class StartupError(RuntimeError):
    pass


async def wait_ready(child: Child, probe: Callable[[], Awaitable[bool]], timeout: float = 60.0) -> None:
    """Poll `probe` until it is true; fail early (with the child's log) if the child dies."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not child.alive():
            raise StartupError(f"{child.name} exited with {child.proc.returncode}:\n{child.log_tail()}")
        try:
            if await probe():
                return
        except Exception:  # not up yet: any error of the probe means "try again"
            pass
        await asyncio.sleep(0.05)
    raise StartupError(f"{child.name} not ready after {timeout:.0f}s:\n{child.log_tail()}")
