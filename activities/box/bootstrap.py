"""Runs a job's script on the box with ordered stdout/stderr (stdlib only; executed by the box's python3).

Python-level writes to sys.stdout and sys.stderr go through ONE pipe (fd $BOXRUN_LOG_FD) as small
frames: 1 byte stream code, 2 bytes big-endian length, payload (<= 4093 bytes, so every frame is
one atomic pipe write even from forked children). One pipe keeps the order between the two
streams exactly as the script produced it. Writes that bypass sys.stdout (subprocesses, C code,
os.write(1, ...)) still reach the agent through the plain fd 1 / fd 2 pipes.

A third stream, `output`, carries structured results: the script does
`import boxrun_job; boxrun_job.emit({"voltage": 3.3})` and the value arrives as one JSON line on
stream "output" (a str is sent as it is, one line per line).

If the agent dies (even by SIGKILL), a watcher thread notices the parent change within 0.2 s and
kills the job's whole process group: a job never runs on without its agent.
"""

import io
import json
import os
import runpy
import signal
import sys
import threading
import time
import types

_FD = int(os.environ.pop("BOXRUN_LOG_FD"))
_MAX = 4093  # PIPE_BUF (4096) minus the 3-byte header
_LOCK = threading.Lock()


class _FramedStream(io.RawIOBase):
    def __init__(self, code: bytes, fd: int) -> None:
        super().__init__()
        self._code = code
        self._fd = fd

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self._fd  # subprocess.Popen(stdout=sys.stdout) inherits the plain pipe

    def write(self, data) -> int:
        data = bytes(data)
        with _LOCK:
            for start in range(0, len(data), _MAX):
                chunk = data[start:start + _MAX]
                os.write(_FD, self._code + len(chunk).to_bytes(2, "big") + chunk)
        return len(data)


def _emit(value) -> None:
    """Send `value` on the job's "output" stream: JSON for anything but a str."""
    text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"), default=str)
    raw = _FramedStream(b"u", -1)
    for line in text.split("\n"):
        raw.write((line + "\n").encode("utf-8", "backslashreplace"))


def _wrap(code: bytes, fd: int) -> io.TextIOWrapper:
    return io.TextIOWrapper(_FramedStream(code, fd), encoding="utf-8", errors="backslashreplace",
                            line_buffering=True, write_through=True)


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(0.2)
    os.killpg(os.getpgid(0), signal.SIGKILL)  # the agent is gone: take the whole job with it


def main() -> None:
    threading.Thread(target=_watch_parent, args=(os.getppid(),), name="boxrun-parent-watch", daemon=True).start()
    script = sys.argv[1]
    sys.argv = sys.argv[1:]
    helper = types.ModuleType("boxrun_job", "Helpers for scripts run by boxrun.")
    helper.emit = _emit
    sys.modules["boxrun_job"] = helper
    sys.stdout = _wrap(b"o", 1)
    sys.stderr = _wrap(b"e", 2)
    sys.path[0] = os.path.dirname(os.path.abspath(script))
    sys.path.insert(0, os.getcwd())
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()
