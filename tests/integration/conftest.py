"""A whole `boxrun dev` stack in subprocesses, as a newcomer starts it, shared by the e2e tests."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from boxrun.client import BoxrunClient
from tests.conftest import pid_alive


class DevStackProcess:
    def __init__(self, data_dir: Path, boxes: int = 2) -> None:
        self.data_dir = data_dir
        self.log = open(data_dir.parent / f"{data_dir.name}-dev.log", "ab")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "boxrun.cli",
                "dev",
                "--ports",
                "auto",
                "--data-dir",
                str(data_dir),
                "--boxes",
                str(boxes),
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        self.endpoints = self._wait_endpoints()

    def _wait_endpoints(self, timeout: float = 120) -> dict:
        path = self.data_dir / "endpoints.json"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"boxrun dev exited {self.proc.returncode}: {self.log_text()[-3000:]}")
            if path.exists():
                data = json.loads(path.read_text())
                if data["pids"].get("agent-local-1") and pid_alive(data["boxes"][0]["pid"]):
                    return data
            time.sleep(0.05)
        raise RuntimeError(f"boxrun dev not ready after {timeout}s: {self.log_text()[-3000:]}")

    def log_text(self) -> str:
        return Path(self.log.name).read_text(errors="replace")

    def stop(self, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout)
        self.log.close()
        return code


@pytest.fixture
def tmp_path() -> Iterator[Path]:
    """A fresh directory that jobs can write in too: as root the agents run each job as their
    box's slot user (boxrun/agent/jobusers.py), who cannot enter pytest's 0700 base temp dir."""
    root = Path(tempfile.mkdtemp(prefix="boxrun-test-jobs-"))
    root.chmod(0o1777)
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def dev_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevStackProcess]:
    # outside pytest's base temp dir, which a second pytest session would reset to mode 0700 (see pg_port)
    root = Path(tempfile.mkdtemp(prefix="boxrun-test-stack-"))
    stack = DevStackProcess(root / "dev")
    yield stack
    stack.stop()
    keep = tmp_path_factory.mktemp("stack")  # the logs, where pytest keeps a session's files
    shutil.copytree(root / "dev" / "logs", keep / "logs", dirs_exist_ok=True)
    shutil.copy(root / "dev-dev.log", keep)
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def endpoints(dev_stack: DevStackProcess) -> dict:
    return dev_stack.endpoints


@pytest.fixture
async def api(endpoints: dict) -> AsyncIterator[httpx.AsyncClient]:
    """A raw HTTP client, for tests that assert statuses and bodies on the wire."""
    async with httpx.AsyncClient(
        base_url=endpoints["api_url"], timeout=30, headers={"Authorization": f"Bearer {endpoints['token']}"}
    ) as client:
        yield client


@pytest.fixture
async def client(endpoints: dict) -> AsyncIterator[BoxrunClient]:
    """The product's typed client (boxrun.client) on the shared stack."""
    async with BoxrunClient(endpoints["api_url"], endpoints["token"]) as typed:
        yield typed
