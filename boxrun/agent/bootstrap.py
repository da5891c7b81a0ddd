"""Runs a job's script on the box with ordered stdout/stderr (stdlib only; executed by the box's python3).

Python-level writes to sys.stdout and sys.stderr go through ONE pipe (fd $BOXRUN_LOG_FD) as
frames: 1 byte stream code, 2 bytes big-endian length, payload. One pipe keeps the order between
the two streams exactly as the script produced it. Writes that bypass sys.stdout (subprocesses,
C code, os.write(1, ...)) land in pipes the bootstrap put behind fd 1 and fd 2; it frames them
into the same channel, draining them before each flush of the script's own output.

Each stream is buffered (as Python buffers a pipe) so a chatty script costs few system calls; a
flusher thread pushes pending output within FLUSH_S (5 ms) of its write, and writing to one
stream first flushes the other, which keeps the order between them. Each os.write carries one
frame of at most PIPE_BUF (4096) bytes, so frames from forked children never interleave; the
buffers are flushed before a fork and before a subprocess starts, so a script's output keeps its
place relative to what its children print.

A third stream, `output`, carries structured results: the script does
`import boxrun_job; boxrun_job.emit({"voltage": 3.3})` and the value arrives as one JSON line on
stream "output" (a str is sent as it is, one line per line).

If the agent dies (even by SIGKILL), a watcher thread notices the parent change within 0.2 s and
kills the job's whole process group: a job never runs on without its agent. (The agent starts the
bootstrap through supervisor.py, which watches the agent too and kills every descendant.)

An uncaught exception prints its traceback from the script's first frame on (none of the
bootstrap's or runpy's frames), through sys.excepthook, and exits 1 as Python would.

Warm (`bootstrap.py --warm`, $BOXRUN_GO_FD set): the agent starts the interpreter before the job
exists (one per slot, as the slot's user, under its supervisor), so the job does not pay Python's
start-up. It sets everything up as above, then blocks reading fd $BOXRUN_GO_FD until EOF: one JSON
object {"script", "cwd", "env"} sent by the agent when a job takes the slot. It then changes to the
job's directory, replaces its whole environment with the job's (os.environ, so children inherit
it) and runs the script as a cold start would. EOF without a job: it exits 0 (the agent dropped it).
"""

import atexit
import io
import json
import os
import runpy
import select
import signal
import subprocess
import sys
import threading
import time
import types

_FD = int(os.environ.pop("BOXRUN_LOG_FD"))
_MAX = 4096 - 3  # a whole frame fits PIPE_BUF: one atomic write, even from forked children
FLUSH_S = 0.005
_BUFFER_SIZE = 64 * 1024


class _FramedRaw(io.RawIOBase):
    """Raw sink of one stream: cuts what the buffers hand it into frames on the shared pipe."""

    def __init__(self, code: bytes, fd: int) -> None:
        super().__init__()
        self._code = code
        self._fd = fd

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self._fd  # subprocess.Popen(stdout=sys.stdout) inherits the plain pipe

    def write(self, data) -> int:
        _drain_raw()  # what children wrote before this flush goes first
        return _write_frames(self._code, data)


def _write_frames(code: bytes, data) -> int:
    view = memoryview(data)
    for start in range(0, len(view), _MAX):
        chunk = view[start : start + _MAX]
        os.write(_FD, code + len(chunk).to_bytes(2, "big") + chunk)
    return len(view)


# fd 1 and fd 2 themselves (children, C code, os.write) are pipes the bootstrap reads and frames
# into the same channel, so even a child's output keeps its place among the script's own lines.
_RAW: list[tuple[int, bytes]] = []
_RAW_LOCK = threading.Lock()


def _capture(fd: int, code: bytes) -> None:
    r, w = os.pipe()
    os.dup2(w, fd)
    os.close(w)
    os.set_blocking(r, False)
    _RAW.append((r, code))


def _drain_raw() -> None:
    with _RAW_LOCK:
        for r, code in _RAW:
            while True:
                try:
                    data = os.read(r, 65536)
                except BlockingIOError:
                    break
                if not data:
                    break
                _write_frames(code, data)


def _raw_reader() -> None:
    poller = select.poll()
    for r, _ in _RAW:
        poller.register(r, select.POLLIN)
    while True:
        poller.poll()
        _drain_raw()


_last = None  # the stream written last: switching streams flushes it first, which keeps order
_dirty = threading.Event()


class _OrderedText(io.TextIOWrapper):
    def write(self, s: str) -> int:
        global _last
        if _last is not self:
            if _last is not None:
                _last.flush()
            _last = self
        n = super().write(s)
        if not _dirty.is_set():
            _dirty.set()
        return n

    def flush(self) -> None:
        _flush_all()  # flushing one stream flushes all: what was written before stays before


def _stream(code: bytes, fd: int) -> _OrderedText:
    raw = io.BufferedWriter(_FramedRaw(code, fd), buffer_size=_BUFFER_SIZE)
    return _OrderedText(raw, encoding="utf-8", errors="backslashreplace")


_STREAMS: list[_OrderedText] = []


def _flush_all() -> None:
    for stream in _STREAMS:
        try:
            io.TextIOWrapper.flush(stream)
        except (OSError, ValueError):
            pass  # closed by the script, or the agent is gone


def _flushing(func):
    """Wrap a process-starting function so the script's pending output precedes the child's."""

    def wrapper(*args, **kwargs):
        _flush_all()
        return func(*args, **kwargs)

    return wrapper


def _flusher() -> None:
    """Output reaches the agent within FLUSH_S of being written, without a system call per line."""
    while True:
        _dirty.wait()
        time.sleep(FLUSH_S)
        _dirty.clear()
        _flush_all()


def _emit(value) -> None:
    """Send `value` on the job's "output" stream: JSON for anything but a str."""
    text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"), default=str)
    _STREAMS[2].write(text + "\n")
    _STREAMS[2].flush()


def _after_fork_in_child() -> None:
    _RAW.clear()  # the parent reads the captured pipes; a forked child only writes to them
    threading.Thread(target=_flusher, name="boxrun-log-flush", daemon=True).start()


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(0.2)
    os.killpg(os.getpgid(0), signal.SIGKILL)  # the agent is gone: take the whole job with it


def _await_job(go_fd: int) -> str:
    """Warm start: block until the agent sends the job, then take its directory and environment.
    Returns the script's path."""
    chunks = []
    while True:
        data = os.read(go_fd, 65536)
        if not data:
            break
        chunks.append(data)
    os.close(go_fd)
    if not chunks:
        os._exit(0)  # dropped before any job came: nothing was run, nothing to report
    job = json.loads(b"".join(chunks))
    os.chdir(job["cwd"])
    os.environ.clear()
    os.environ.update(job["env"])
    time.tzset()  # TZ may differ from the start-up environment
    tempfile = sys.modules.get("tempfile")
    if tempfile is not None:
        tempfile.tempdir = None  # type: ignore[attr-defined]  # TMPDIR is the job's
    return job["script"]


def main() -> None:
    go_fd = int(os.environ.pop("BOXRUN_GO_FD", "-1"))
    threading.Thread(target=_watch_parent, args=(os.getppid(),), name="boxrun-parent-watch", daemon=True).start()
    _capture(1, b"o")
    _capture(2, b"e")
    threading.Thread(target=_raw_reader, name="boxrun-raw-reader", daemon=True).start()
    _STREAMS.extend([_stream(b"o", 1), _stream(b"e", 2), _stream(b"u", -1)])
    threading.Thread(target=_flusher, name="boxrun-log-flush", daemon=True).start()
    os.register_at_fork(before=_flush_all, after_in_child=_after_fork_in_child)
    subprocess.Popen._execute_child = _flushing(subprocess.Popen._execute_child)  # type: ignore[attr-defined]
    os.system = _flushing(os.system)
    atexit.register(_drain_raw)
    atexit.register(_flush_all)  # atexit runs last-registered first: flush, then drain
    if go_fd >= 0:
        script = _await_job(go_fd)
        sys.argv = [script]
    else:
        script = sys.argv[1]
        sys.argv = sys.argv[1:]
    helper = types.ModuleType("boxrun_job", "Helpers for scripts run by boxrun.")
    helper.emit = _emit  # type: ignore[attr-defined]
    sys.modules["boxrun_job"] = helper
    sys.stdout, sys.stderr = _STREAMS[0], _STREAMS[1]
    sys.path[0] = os.path.dirname(os.path.abspath(script))
    sys.path.insert(0, os.getcwd())
    try:
        runpy.run_path(script, run_name="__main__")
    except SystemExit:
        raise
    except BaseException as exc:
        _report(exc)
    finally:
        _flush_all()
        _drain_raw()


_OWN_FILES = {os.path.abspath(__file__), os.path.abspath(runpy.__file__ or ""), "<frozen runpy>"}


def _report(exc: BaseException) -> None:
    """Print `exc` as Python would for the script itself, then end like Python: exit 1 (killed by
    SIGINT for a KeyboardInterrupt)."""
    tb = exc.__traceback__
    while tb is not None and (
        tb.tb_frame.f_code.co_filename in _OWN_FILES or os.path.abspath(tb.tb_frame.f_code.co_filename) in _OWN_FILES
    ):
        tb = tb.tb_next
    exc.__traceback__ = tb
    sys.excepthook(type(exc), exc, tb)
    if isinstance(exc, KeyboardInterrupt):
        _flush_all()
        _drain_raw()
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    sys.exit(1)


if __name__ == "__main__":
    main()
