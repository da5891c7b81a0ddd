"""Child processes of the dev stack: start, wait for readiness, stop in order."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def beside_python(name: str) -> str | None:
    """An executable installed next to this interpreter (a wheel's binary, a console script),
    else the one on PATH, else None."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else shutil.which(name)


def installed_binary(name: str, missing: str) -> str:
    """beside_python(name), or FileNotFoundError saying `missing` (how to install it)."""
    found = beside_python(name)
    if not found:
        raise FileNotFoundError(missing)
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def free_ports(names: Iterable[str], *, taken: Iterable[int] = ()) -> dict[str, int]:
    """A distinct free port for each name, none of them in `taken`."""
    used = set(taken)
    ports: dict[str, int] = {}
    for name in names:
        port = free_port()
        while port in used:
            port = free_port()
        used.add(port)
        ports[name] = port
    return ports


def port_is_free(port: int) -> bool:
    """True if a server could listen on 127.0.0.1:`port` now. SO_REUSEADDR as the servers we start
    set it (uvicorn, PostgreSQL, the Go binaries): a socket of an earlier run still in TIME_WAIT
    does not make the port busy, a listening socket does."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    stop_signal: int = signal.SIGTERM
    # how long stop() waits after the signal before it kills the process, and whether that kill
    # is an expected way to stop it (then logged as info, not as a warning)
    stop_timeout: float = 15.0
    kill_expected: bool = False
    # files the process leaves behind when killed (removed once it has exited)
    leftovers: list[Path] = field(default_factory=list)
    # how it was started, so it can be started again the same way
    argv: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    base_env: dict[str, str] | None = None
    popen_kwargs: dict[str, Any] = field(default_factory=dict)

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
            self.name,
            self.argv,
            self.log_path.parent,
            env=self.env,
            base_env=self.base_env,
            stop_signal=self.stop_signal,
            stop_timeout=self.stop_timeout,
            **self.popen_kwargs,
        )
        self.proc = fresh.proc

    def signal_stop(self) -> None:
        """Ask the process to stop (its stop signal) without waiting; see wait_stopped."""
        if self.alive():
            self.proc.send_signal(self.stop_signal)

    def wait_stopped(self, timeout: float | None = None) -> int | None:
        """Wait up to `timeout` (default stop_timeout) for the exit, then kill the process."""
        limit = self.stop_timeout if timeout is None else timeout
        try:
            code = self.proc.wait(limit)
        except subprocess.TimeoutExpired:
            level = logging.INFO if self.kill_expected else logging.WARNING
            log.log(level, "%s did not stop within %.0fs: killed", self.name, limit)
            self.proc.kill()
            code = self.proc.wait(5)
        for path in self.leftovers:
            path.unlink(missing_ok=True)
        return code

    def stop(self, timeout: float | None = None) -> int | None:
        self.signal_stop()
        return self.wait_stopped(timeout)


def stop_together(children: list[Child], timeout: float | None = None) -> None:
    """Signal every child at once, then wait for each (each by its own stop_timeout unless
    `timeout` is given): independent processes stop in parallel, not one after another."""
    for child in children:
        try:
            child.signal_stop()
        except OSError as exc:  # gone already; its wait below reaps it
            log.warning("signalling %s: %s", child.name, exc)
    deadline = time.monotonic() + (timeout or 0)
    for child in children:
        try:
            child.wait_stopped(None if timeout is None else max(0.0, deadline - time.monotonic()))
        except Exception as exc:  # keep stopping the others
            log.warning("stopping %s: %s", child.name, exc)


def spawn(
    name: str,
    argv: list[str],
    log_dir: Path,
    *,
    env: dict[str, str] | None = None,
    base_env: Mapping[str, str] | None = None,
    stop_signal: int = signal.SIGTERM,
    stop_timeout: float = 15.0,
    **kwargs: Any,
) -> Child:
    """Start `argv` with its output in log_dir/NAME.log, in a process group of its own: Ctrl-C in a
    terminal signals the whole foreground group, and the stack, not the terminal, decides the
    order in which its children stop (agents first, see DevStack.stop).

    The environment is `base_env` (default: this process's) plus `env`. Everything the child
    creates is private to its user (umask 077), and so is its log (mode 0600 in a 0700 dir)."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log_dir.chmod(0o700)
    log_path = log_dir / f"{name}.log"
    kwargs.setdefault("process_group", 0)
    kwargs.setdefault("umask", 0o077)
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.fchmod(fd, 0o600)  # a log left by an older run may be 0644
    with os.fdopen(fd, "ab") as out:
        proc = subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**(os.environ if base_env is None else base_env), **(env or {})},
            **kwargs,
        )
    return Child(
        name=name,
        proc=proc,
        log_path=log_path,
        stop_signal=stop_signal,
        stop_timeout=stop_timeout,
        argv=list(argv),
        env=dict(env or {}),
        base_env=None if base_env is None else dict(base_env),
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
