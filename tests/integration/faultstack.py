"""An in-process `DevStack` whose children tests can kill, stop and start again."""

from __future__ import annotations

import shutil
import signal
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx

from boxrun.dev.procs import Child, StartupError
from boxrun.dev.stack import DevStack, StackOptions, resolve_ports

# Short bounds so fault tests finish quickly; the defaults are documented in docs/architecture.md.
FAST = {
    "BOXRUN_ACTIVITY_HEARTBEAT_TIMEOUT_S": "4",
    "BOXRUN_BOX_OFFLINE_AFTER_S": "3",
    "BOXRUN_AGENT_HEARTBEAT_INTERVAL_S": "1",
    "BOXRUN_WAITER_SWEEP_INTERVAL_S": "5",
    "BOXRUN_REAPER_INTERVAL_S": "3",
    "BOXRUN_DISPATCH_TIMEOUT_S": "20",
}


class FaultStack:
    def __init__(self, stack: DevStack) -> None:
        self.stack = stack
        self.endpoints = stack.endpoints

    def child(self, name: str) -> Child:
        return self.stack.child(name)

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Kill a child abruptly (SIGKILL by default) and reap it."""
        child = self.child(name)
        child.proc.send_signal(sig)
        child.proc.wait(30)

    def stop(self, name: str) -> None:
        self.child(name).stop()

    def start(self, name: str) -> Child:
        child = self.child(name)
        child.respawn()
        return child

    def api(self, replica: str | None = None) -> httpx.AsyncClient:
        """A client of the stack's API URL (the proxy's, if it has one), or of one replica
        ("api-1") when it runs several."""
        if replica is None:
            url = self.endpoints["api_url"]
        else:
            url = next(r["url"] for r in self.endpoints["api_replicas"] if r["name"] == replica)
        return httpx.AsyncClient(
            base_url=url, timeout=30, headers={"Authorization": f"Bearer {self.endpoints['token']}"}
        )


START_TRIES = 3


@asynccontextmanager
async def fault_stack(
    log_dir: Path,
    *,
    boxes: int = 2,
    capacity: int = 1,
    env: dict[str, str] | None = None,
    data_dir: Path | None = None,
    api_replicas: int = 1,
    workers: int = 1,
    proxy: bool = False,
) -> AsyncIterator[FaultStack]:
    """The stack's data lives in its own directory under the system temp dir (pytest's base temp
    dir is reset to mode 0700 by every pytest session, which would lock the postgres system user
    out of a data dir below it); its logs are copied to `log_dir` at the end. A `data_dir` given
    (e.g. one an older version left) is used as it is and left to the caller to remove."""
    own = data_dir is None
    data_dir = data_dir or Path(tempfile.mkdtemp(prefix="boxrun-test-")) / "dev"
    options = StackOptions(
        data_dir=data_dir,
        boxes=boxes,
        capacity=capacity,
        env={**FAST, **(env or {})},
        api_replicas=api_replicas,
        workers=workers,
        proxy=proxy,
    )
    stack = DevStack(options, resolve_ports(None, auto=True))
    try:
        for attempt in range(1, START_TRIES + 1):
            try:
                await stack.start()
                break
            except StartupError as exc:
                # a free port picked for a child was taken by another process before the child
                # bound it (other tests and stacks run on this machine): again on fresh ports
                if "address already in use" not in str(exc) or attempt == START_TRIES:
                    raise
                stack.stop()
                stack = DevStack(options, resolve_ports(None, auto=True))
        yield FaultStack(stack)
    finally:
        stack.stop()
        shutil.copytree(data_dir / "logs", log_dir / "stack-logs", dirs_exist_ok=True)
        if own:
            shutil.rmtree(data_dir.parent, ignore_errors=True)
