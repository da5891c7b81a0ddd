"""The OS users jobs run as: one unprivileged user per concurrent slot of the box (agent as root).

When the agent runs as root, slot n of box B runs its jobs as `boxrun-<B>-<n>` (created on first
use: a system user with its own group, no home directory, no login shell). Two running jobs then
have two different uids: neither can read the other's workspace or /proc/<pid>/environ, nor signal
it, and neither can read the agent's (root's) files or environment. When the agent is not root,
jobs run as the agent's own user (`Slot.user` is None): they can then read whatever the agent can
read, including its token file, and signal its processes.
"""

from __future__ import annotations

import hashlib
import os
import pwd
import re
import shutil
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

MAX_USER_NAME = 32  # useradd's limit (and utmp's)
RUNTIME_FILES = ("bootstrap.py", "supervisor.py")
PACKAGE_RUNTIME = Path(__file__).parent  # where the shipped copies live
_NOLOGIN = ("/usr/sbin/nologin", "/sbin/nologin", "/bin/false")


class JobUserError(RuntimeError):
    """A job user cannot be created or cannot run jobs (the message says what to fix)."""


@dataclass(frozen=True)
class JobUser:
    """An unprivileged OS user a job runs as."""

    name: str
    uid: int
    gid: int

    def env(self) -> dict[str, str]:
        return {"USER": self.name, "LOGNAME": self.name}


@dataclass(frozen=True)
class Slot:
    """One concurrent job slot of the box; `user` is None when jobs run as the agent's user."""

    index: int
    user: JobUser | None


def slot_user_name(box: str, slot: int) -> str:
    """`boxrun-<box>-<slot>`, normalised to a valid user name of at most 32 characters: lower case,
    [a-z0-9_-] only; a box name that must be cut keeps a short hash so two boxes never share users."""
    norm = re.sub(r"[^a-z0-9_-]+", "-", box.lower()).strip("-_") or "box"
    name = f"boxrun-{norm}-{slot}"
    if norm == box and len(name) <= MAX_USER_NAME:
        return name
    tag = hashlib.sha256(box.encode()).hexdigest()[:6]
    room = MAX_USER_NAME - len(f"boxrun--{tag}-{slot}")
    return f"boxrun-{norm[:room].rstrip('-_') or 'box'}-{tag}-{slot}"


def ensure_user(name: str) -> JobUser:
    """The user `name`, created (system user, own group, no home, no login shell) if missing."""
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        useradd = shutil.which("useradd") or "/usr/sbin/useradd"
        shell = next((s for s in _NOLOGIN if os.path.exists(s)), "/bin/false")
        cmd = [useradd, "--system", "--no-create-home", "--home-dir", "/nonexistent", "--shell", shell]
        cmd += ["--user-group", name]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        try:
            entry = pwd.getpwnam(name)  # another agent may have created it meanwhile
        except KeyError:
            raise JobUserError(f"cannot create job user {name}: {done.stderr.strip() or done.returncode}") from None
    if entry.pw_uid == 0 or entry.pw_gid == 0:
        raise JobUserError(f"job user {name} has uid/gid 0: refusing to run jobs as root")
    return JobUser(entry.pw_name, entry.pw_uid, entry.pw_gid)


class SlotUsers:
    """The box's job slots and their users. `acquire()` when a job starts, `release()` when it ends.

    As root, `SlotUsers(box, slots)` creates (or reuses) one user per slot at construction; not as
    root (or with `separate=False`) every slot's user is None: jobs run as the agent's user."""

    def __init__(self, box: str, slots: int, *, separate: bool | None = None) -> None:
        self.box = box
        self.separate = os.geteuid() == 0 if separate is None else separate
        self._slots = [Slot(i, ensure_user(slot_user_name(box, i)) if self.separate else None) for i in range(slots)]
        self._free = list(self._slots)

    @property
    def users(self) -> list[JobUser]:
        return [s.user for s in self._slots if s.user is not None]

    def user_for_slot(self, index: int) -> JobUser | None:
        return self._slots[index].user

    def free(self) -> int:
        return len(self._free)

    def acquire(self) -> Slot:
        """A free slot (lowest index first); raises JobUserError if all are taken."""
        if not self._free:
            raise JobUserError(f"all {len(self._slots)} slots of box {self.box} are busy")
        self._free.sort(key=lambda s: s.index)
        return self._free.pop(0)

    def release(self, slot: Slot) -> None:
        """Give the slot back. Kills any process its user still has (a job's leftovers)."""
        if slot.user is not None:
            kill_user_processes(slot.user.uid)
        if slot not in self._free:
            self._free.append(slot)

    def kill_leftovers(self) -> list[int]:
        """At agent start: SIGKILL every process of the slot users (jobs of an earlier agent run)."""
        killed: list[int] = []
        for user in self.users:
            killed += kill_user_processes(user.uid)
        return killed


def kill_user_processes(uid: int) -> list[int]:
    """SIGKILL every process whose real uid is `uid` (never uid 0); returns their pids."""
    if uid == 0:
        raise ValueError("refusing to kill every process of root")
    killed = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/status", "rb") as fh:
                status = fh.read()
            line = next(ln for ln in status.splitlines() if ln.startswith(b"Uid:"))
            if int(line.split()[1]) == uid:
                os.kill(int(name), signal.SIGKILL)
                killed.append(int(name))
        except (OSError, StopIteration, ValueError):
            continue  # gone meanwhile
    return killed


def prepare_runtime(workdir: Path) -> Path:
    """Set up the agent's workdir for jobs run as other users; returns the runtime directory.

    `<workdir>/runtime/` (0755) gets fresh copies of bootstrap.py and supervisor.py (0644), so
    they are reachable whatever the permissions of the place boxrun is installed in;
    `<workdir>/jobs/` is 0711 (traversable, not listable: a job cannot list other jobs' ids). Both
    are owned by the agent's user and writable by it only; a workdir it creates is 0711 too (an
    existing one keeps its mode: check_job_user_can_run says if it is closed to the job users)."""
    workdir = workdir.resolve()
    runtime, jobs = workdir / "runtime", workdir / "jobs"
    if not workdir.exists():
        workdir.mkdir(parents=True)
        os.chmod(workdir, 0o711)  # ours: traversable for the job users, not listable
    for path, mode in ((runtime, 0o755), (jobs, 0o711)):
        path.mkdir(exist_ok=True)
        os.chmod(path, mode)
    for name in RUNTIME_FILES:
        tmp = runtime / f".{name}.tmp"
        shutil.copyfile(PACKAGE_RUNTIME / name, tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, runtime / name)
    return runtime


def check_job_user_can_run(python: str, user: JobUser | None, *, runtime: Path, workdir: Path | None = None) -> None:
    """At agent start: raise JobUserError (a message that says what to fix) unless `user` can run
    `python`, read the bootstrap in `runtime` and reach `<workdir>/jobs`. None: the agent's user."""
    targets = [str(runtime / "bootstrap.py")]
    if workdir is not None:
        targets.append(str(workdir.resolve() / "jobs"))
    code = (
        "import os, sys\n"
        "open(sys.argv[1], 'rb').close()\n"
        "for t in sys.argv[2:]:\n"
        "    os.stat(t)\n"
        "    if not os.access(t, os.X_OK): raise PermissionError(13, 'Permission denied', t)\n"
    )

    def as_user() -> None:
        if user is not None:
            os.setgroups([])
            os.setgid(user.gid)
            os.setuid(user.uid)

    who = f"job user {user.name} (uid {user.uid})" if user else f"the agent's user (uid {os.geteuid()})"
    try:
        done = subprocess.run(
            [python, "-I", "-c", code, *targets],
            preexec_fn=as_user,
            capture_output=True,
            text=True,
            timeout=60,
            cwd="/",
            env={"PATH": os.environ.get("PATH", os.defpath)},
            check=False,
        )
    except OSError as exc:
        raise JobUserError(f"{who} cannot run {python}: {exc}") from exc
    except subprocess.SubprocessError as exc:  # preexec failures and timeouts
        raise JobUserError(f"{who} cannot run {python}: {exc}") from exc
    if done.returncode != 0:
        why = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit status {done.returncode}"
        raise JobUserError(
            f"{who} cannot run jobs with {python}: {why}. The interpreter, {runtime} and every directory"
            f" above {targets[-1]} must be readable and traversable (o+rx, o+x) by other users"
        )
