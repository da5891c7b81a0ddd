"""A job's supervisor on the box: the child subreaper that outlives the job and kills what it left.

Stdlib only, Linux, Python >= 3.7: it runs under the box's python3, started by the agent as

    python3 -I -S -u supervisor.py --env-fd N [--uid U --gid G] [--watch PPID] -- ARGV...

- It makes itself the child subreaper (prctl(PR_SET_CHILD_SUBREAPER)), so every process the job
  leaves behind, even one that double-forked into a new session, is re-parented to it instead of
  init.
- It reads the job's environment (NUL-ended KEY=VALUE entries, as in /proc/PID/environ) from fd N
  (a memfd the agent filled) and closes it: the job's environment never becomes the environment of
  a process that may run as root (an LD_PRELOAD or PYTHONPATH there would run code with its
  privileges).
- It starts ARGV (python3 bootstrap.py script.py) in a new session, umask 077, as user U / group G
  when given (supplementary groups dropped), with the job's environment; then it lets go of the
  job's output pipes (stdout, stderr and $BOXRUN_LOG_FD), so the agent's readers see EOF as soon
  as the job's last process is gone. A warm start (bootstrap.py --warm) also gets $BOXRUN_GO_FD,
  the channel its job arrives on later; the supervisor lets go of it too.
- SIGTERM (and SIGINT, SIGHUP) is forwarded to the job's process group; SIGUSR1 means "kill
  everything now".
- When the job's main process exits, when it is told to kill, or when its parent (the agent,
  named by --watch PPID) is gone (noticed within POLL_S), it SIGKILLs every remaining descendant
  (walking /proc for processes below it, repeatedly, until it has no child left to reap) and then
  exits with the job's exit status (killed by signal S: it kills itself with S).
"""

from __future__ import annotations

import os
import signal
import sys

PR_SET_CHILD_SUBREAPER = 36
POLL_S = 0.2  # how often the watched process (the agent) is checked
SETUP_FAILED = 127
_SIGNALS = {signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1}


def _set_subreaper() -> None:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, "prctl(PR_SET_CHILD_SUBREAPER): " + os.strerror(err))


def _parents() -> dict:
    """pid -> ppid of every process visible in /proc."""
    found = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open("/proc/" + name + "/stat", "rb") as fh:
                stat = fh.read()
        except OSError:
            continue  # gone meanwhile
        # the command name (field 2) may hold spaces and parentheses: split after the last ')'
        fields = stat[stat.rfind(b")") + 2 :].split()
        found[int(name)] = int(fields[1])
    return found


def descendants(root: int) -> list:
    """Every process below `root` in the process tree (one /proc pass)."""
    children: dict[int, list[int]] = {}
    for pid, ppid in _parents().items():
        children.setdefault(ppid, []).append(pid)
    out, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


class Supervisor:
    def __init__(self, argv: list[str], env: dict[bytes, bytes], uid: int | None, gid: int | None, watch: int) -> None:
        self.argv = argv
        self.env = env
        self.uid = uid
        self.gid = gid
        self.watch = watch
        self.main = 0  # the job's main process (its pid is also its session and group id)
        self.status: int | None = None  # its wait status, once it exited

    def _exec_job(self) -> None:
        """In the forked child: a session of its own, default signals, the job's user, exec."""
        signal.pthread_sigmask(signal.SIG_SETMASK, set())
        for sig in (signal.SIGPIPE, signal.SIGXFSZ):
            signal.signal(sig, signal.SIG_DFL)  # Python ignores them; the job starts with defaults
        os.setsid()
        os.umask(0o077)  # what the job creates in shared places (/tmp, /dev/shm) is its own
        if self.gid is not None:
            os.setgroups([])
            os.setgid(self.gid)
        if self.uid is not None:
            os.setuid(self.uid)
        os.execvpe(self.argv[0], self.argv, self.env)

    def start(self) -> None:
        """Fork and exec the job (no `subprocess`: it costs the supervisor's start-up ~15 ms). An
        exec that fails comes back through a close-on-exec pipe as an OSError."""
        log_fd = int(self.env.get(b"BOXRUN_LOG_FD", b"-1"))
        go_fd = int(self.env.get(b"BOXRUN_GO_FD", b"-1"))  # a warm start's job channel
        for fd in (log_fd, go_fd):
            if fd >= 0:
                os.set_inheritable(fd, True)
        err_r, err_w = os.pipe()  # close-on-exec: EOF at a successful exec
        pid = os.fork()
        if pid == 0:
            try:
                os.close(err_r)
                self._exec_job()
            except BaseException as exc:
                os.write(err_w, str(exc).encode("utf-8", "replace")[:4000])
            finally:
                os._exit(SETUP_FAILED)
        os.close(err_w)
        with os.fdopen(err_r, "rb") as fh:
            failed = fh.read()
        if failed:
            os.waitpid(pid, 0)
            raise OSError(failed.decode("utf-8", "replace"))
        self.main = pid
        # Let go of the job's output: the agent's readers must see EOF once the job's processes end.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        os.close(devnull)
        for fd in (log_fd, go_fd):
            if fd >= 0:
                os.close(fd)

    def _signal_job(self, sig: int) -> None:
        if self.status is not None:
            return  # reaped: its pid (and group id) may be reused; the /proc walk finds the rest
        try:
            os.killpg(self.main, sig)
        except OSError:
            pass  # the group is gone already

    def _reap(self) -> bool:
        """Collect every exited child (orphans included); False once no child is left."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return False
            if pid == 0:
                return True
            if pid == self.main:
                self.status = status

    def _watched_gone(self) -> bool:
        """The agent is gone once this process has another parent (re-parented on its death)."""
        return self.watch > 0 and os.getppid() != self.watch

    def kill_all(self) -> None:
        """SIGKILL every descendant, again and again, until no child is left to reap."""
        me = os.getpid()
        while True:
            self._signal_job(signal.SIGKILL)
            for pid in descendants(me):
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            if not self._reap():
                return
            signal.sigtimedwait([signal.SIGCHLD], 0.05)

    def run(self) -> int:
        """Wait for the job's main process; returns its wait status (after the cleanup)."""
        while self.status is None:
            info = signal.sigtimedwait(list(_SIGNALS), POLL_S)
            if info is not None and info.si_signo == signal.SIGUSR1:
                break
            if info is not None and info.si_signo in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                self._signal_job(signal.SIGTERM)
            self._reap()
            if self._watched_gone():
                break  # the agent is gone: a job never runs on without it
        self.kill_all()
        if self.status is None:
            return signal.SIGKILL  # killed on request, or its agent died: as if by SIGKILL
        return self.status


def _exit_like(status: int) -> None:
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        import resource

        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # no core file of the supervisor
        if sig != signal.SIGKILL:
            signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), sig)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {sig})
        os._exit(128 + sig)  # only if the signal did not end us
    os._exit(os.WEXITSTATUS(status) if os.WIFEXITED(status) else 1)


def _parse(args: list) -> tuple:
    opts: dict = {}
    argv: list = []
    i = 0
    while i < len(args):
        if args[i] == "--":
            argv = args[i + 1 :]
            break
        opts[args[i].lstrip("-")] = args[i + 1]
        i += 2
    return opts, argv


def main() -> None:
    opts, argv = _parse(sys.argv[1:])
    signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
    try:
        if not argv or "env-fd" not in opts:
            raise ValueError("usage: supervisor.py --env-fd N [--uid U --gid G] [--watch PPID] -- ARGV...")
        env_fd = int(opts["env-fd"])
        with os.fdopen(env_fd, "rb") as fh:
            env = dict(item.partition(b"=")[::2] for item in fh.read().split(b"\0") if item)
        _set_subreaper()
        uid = int(opts["uid"]) if "uid" in opts else None
        gid = int(opts["gid"]) if "gid" in opts else None
        watch = int(opts.get("watch", os.getppid()))
        sup = Supervisor(argv, env, uid, gid, watch)
        sup.start()
    except Exception as exc:
        sys.stderr.write(f"boxrun: could not start the job: {exc}\n")
        sys.stderr.flush()
        os._exit(SETUP_FAILED)
    _exit_like(sup.run())


if __name__ == "__main__":
    main()
