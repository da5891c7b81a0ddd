"""A job's workspace on the box: materialised files, the script, the artifacts directory.

Layout of `<workdir>/jobs/<job id>/` (the workspace root):
- the root itself belongs to the agent, mode 0710 with the job user's group (0700 without a job
  user): only the agent and the job's user can enter it, and the job cannot create, replace or
  remove anything directly in it, so the agent's own files there (`pgid`, `logs.spill`) are safe
  from it;
- `script.py` (0600), `work/` (the job's cwd), `artifacts/`, `home/` ($HOME) and `tmp/` ($TMPDIR)
  (0700) belong to the job's user.

Whatever the job leaves in artifacts/ is hostile: it is scanned and opened without following any
link (openat relative to directory fds, O_NOFOLLOW), and hard-linked files, files not owned by the
job's user, special files and names the store cannot take are refused with a reason.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import stat
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from boxrun.agent.jobusers import JobUser
from boxrun.agent.supervisor import descendants
from boxrun.messages import ArtifactEntry, JobSpec
from boxrun.workspace_paths import MAX_PATH_LEN, clean_relative_path

SCRIPT_NAME = "script.py"
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_READ = 1 << 20


@dataclass(frozen=True)
class RefusedArtifact:
    """An artifact that is not uploaded, and why (a directory is listed with a trailing '/')."""

    path: str
    reason: str


class ArtifactRefused(ValueError):
    """open_artifact: the file is no longer what the scan accepted (the message is the reason)."""


def artifact_name_problem(rel: str) -> str | None:
    """Why the store cannot take the artifact name `rel`, or None if it can."""
    try:
        size = len(rel.encode("utf-8"))
    except UnicodeEncodeError:
        return "name is not valid UTF-8"
    if any(unicodedata.category(c) == "Cc" for c in rel):
        return "control characters in the name"
    if size > MAX_PATH_LEN:
        return f"name longer than {MAX_PATH_LEN:,} bytes (UTF-8)"
    if "\\" in rel:
        return "backslash in the name"
    return None


def printable(rel: str) -> str:
    """`rel` as valid Unicode text (undecodable bytes as U+FFFD), fit for JSON and Postgres."""
    return rel.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


@dataclass(frozen=True)
class Workspace:
    root: Path

    @property
    def work(self) -> Path:
        return self.root / "work"

    @property
    def artifacts(self) -> Path:
        return self.root / "artifacts"

    @property
    def script(self) -> Path:
        return self.root / SCRIPT_NAME

    @property
    def home(self) -> Path:
        return self.root / "home"

    @property
    def tmp(self) -> Path:
        return self.root / "tmp"

    @classmethod
    def for_job(cls, base: Path, job_id: str) -> Workspace:
        return cls(base.resolve() / "jobs" / clean_relative_path(job_id))

    def env(self) -> dict[str, str]:
        """What the job's environment needs from its workspace: HOME, TMPDIR, BOXRUN_ARTIFACTS_DIR."""
        return {"HOME": str(self.home), "TMPDIR": str(self.tmp), "BOXRUN_ARTIFACTS_DIR": str(self.artifacts)}

    def create(self, spec: JobSpec, *, user: JobUser | None = None) -> None:
        """Fresh every time: anything left from an earlier attempt is removed first. `user`: the
        job's OS user (None: the agent's own), who gets the script and the directories."""
        self.create_from(spec.script, spec.files, user=user)

    def create_from(self, script: str, files: Mapping[str, str], *, user: JobUser | None = None) -> None:
        """create() from a script and inline text files ({path: content}) instead of a JobSpec.
        Files written later (downloads: file_target) need a hand_over(user) before the job starts."""
        self.remove()
        self.root.parent.mkdir(mode=0o711, parents=True, exist_ok=True)  # jobs/: not listable
        self.root.mkdir()
        os.chmod(self.root, 0o710 if user else 0o700)
        if user is not None:
            os.chown(self.root, -1, user.gid)
        for path in (self.work, self.artifacts, self.home, self.tmp):
            path.mkdir(mode=0o700)
        self.script.write_text(script)
        os.chmod(self.script, 0o600)
        for raw, content in files.items():
            self.file_target(raw).write_text(content)
        if user is not None:
            self.hand_over(user)

    def file_target(self, raw: str) -> Path:
        """Where the job's file `raw` goes (under work/; parent directories created). ValueError if
        the path is not a clean relative path or leaves work/."""
        target = self.work / clean_relative_path(raw)  # re-checked here: the box trusts no one
        if not target.resolve().is_relative_to(self.work.resolve()):
            raise ValueError(f"file path {raw!r} escapes the workspace")
        target.parent.mkdir(parents=True, exist_ok=True)
        return target

    def hand_over(self, user: JobUser) -> None:
        """Give the script and everything under work/, artifacts/, home/, tmp/ to `user` (links are
        not followed). Call it after the last file is written and before the job starts."""
        os.chown(self.script, user.uid, user.gid, follow_symlinks=False)
        for top in (self.work, self.artifacts, self.home, self.tmp):
            os.chown(top, user.uid, user.gid, follow_symlinks=False)
            for dirpath, dirnames, filenames in os.walk(top, followlinks=False):
                for name in dirnames + filenames:
                    os.chown(os.path.join(dirpath, name), user.uid, user.gid, follow_symlinks=False)

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
        if os.path.lexists(self.root):  # a job (as the agent's user) locked some directory: reopen it
            _unlock(str(self.root))
            shutil.rmtree(self.root, ignore_errors=True)

    def record_pgid(self, pgid: int) -> None:
        (self.root / "pgid").write_text(str(pgid))

    def manifest(self) -> list[ArtifactEntry]:
        """The artifacts scan_artifacts() accepts (the refused ones are left out)."""
        return self.scan_artifacts()[0]

    def scan_artifacts(self, *, uid: int | None = None) -> tuple[list[ArtifactEntry], list[RefusedArtifact]]:
        """Every file under artifacts/, accepted (path, size, SHA-256) or refused with a reason,
        both sorted by path. Nothing is followed: symbolic links (to files or directories) are
        refused, so are hard-linked files (st_nlink > 1), files not owned by `uid` (default: the
        owner of artifacts/, i.e. the job's user), anything but regular files and directories, and
        names the store cannot take (artifact_name_problem; a directory with such a name is refused
        once, with a trailing '/', and not entered). Empty directories are skipped."""
        entries: list[ArtifactEntry] = []
        refused: list[RefusedArtifact] = []
        try:
            top = os.open(self.artifacts, _DIR_FLAGS)
        except FileNotFoundError:
            return entries, refused
        try:
            owner = os.fstat(top).st_uid if uid is None else uid
            pending = [""]
            while pending:
                rel_dir = pending.pop()
                try:
                    fd = _open_dir(top, rel_dir)
                except OSError as exc:
                    refused.append(
                        RefusedArtifact(printable(rel_dir) + "/", f"cannot open the directory: {exc.strerror}")
                    )
                    continue
                try:
                    self._scan_dir(fd, rel_dir, owner, entries, refused, pending)
                finally:
                    if fd != top:
                        os.close(fd)
        finally:
            os.close(top)
        entries.sort(key=lambda e: e.path)
        refused.sort(key=lambda r: r.path)
        return entries, refused

    @staticmethod
    def _scan_dir(
        fd: int,
        rel_dir: str,
        owner: int,
        entries: list[ArtifactEntry],
        refused: list[RefusedArtifact],
        pending: list[str],
    ) -> None:
        with os.scandir(fd) as it:
            names = sorted(entry.name for entry in it)
        for name in names:
            rel = f"{rel_dir}/{name}" if rel_dir else name
            try:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except OSError as exc:
                refused.append(RefusedArtifact(printable(rel), f"cannot stat: {exc.strerror}"))
                continue
            problem = artifact_name_problem(rel)
            if stat.S_ISDIR(st.st_mode):
                if problem:
                    refused.append(RefusedArtifact(printable(rel) + "/", f"{problem} (directory not uploaded)"))
                else:
                    pending.append(rel)
                continue
            why = problem or _file_problem(st, owner)
            if why is None:
                try:
                    entries.append(_hash_at(fd, name, rel, owner))
                    continue
                except ArtifactRefused as exc:
                    why = str(exc)
                except OSError as exc:
                    why = f"cannot read: {exc.strerror}"
            refused.append(RefusedArtifact(printable(rel), why))

    def open_artifact(self, path: str, *, size: int | None = None, uid: int | None = None) -> BinaryIO:
        """Open an accepted artifact for upload, safely: every directory and the file itself are
        opened relative to their parent's fd without following links, and the file is re-checked
        (regular, one link, owned by `uid` (default: the owner of artifacts/), `size` if given).
        Raises ArtifactRefused (with the reason) or OSError. The caller closes the file."""
        try:
            normal = clean_relative_path(path) == path
        except ValueError:
            normal = False
        if not normal:
            raise ArtifactRefused(f"{path!r} is not a normal relative path")
        parent, _, name = path.rpartition("/")
        top = os.open(self.artifacts, _DIR_FLAGS)
        try:
            owner = os.fstat(top).st_uid if uid is None else uid
            dfd = _open_dir(top, parent)
            try:
                fd = os.open(name, _FILE_FLAGS, dir_fd=dfd)
            finally:
                if dfd != top:
                    os.close(dfd)
        except OSError as exc:
            raise ArtifactRefused(f"cannot open {path!r} without following links: {exc.strerror}") from exc
        finally:
            os.close(top)
        try:
            st = os.fstat(fd)
            problem = _file_problem(st, owner)
            if problem is None and size is not None and st.st_size != size:
                problem = f"size changed since the scan ({size} -> {st.st_size} bytes)"
            if problem:
                raise ArtifactRefused(problem)
            os.set_blocking(fd, True)
            return os.fdopen(fd, "rb")
        except BaseException:
            os.close(fd)
            raise


def _open_dir(top: int, rel_dir: str) -> int:
    """The directory `rel_dir` under the directory fd `top`, opened one component at a time without
    following links (`top` itself for "")."""
    fd = top
    for part in rel_dir.split("/") if rel_dir else []:
        try:
            nxt = os.open(part, _DIR_FLAGS, dir_fd=fd)
        finally:
            if fd != top:
                os.close(fd)
        fd = nxt
    return fd


def _file_problem(st: os.stat_result, owner: int) -> str | None:
    mode = st.st_mode
    if stat.S_ISLNK(mode):
        return "symbolic link (not followed)"
    if not stat.S_ISREG(mode):
        kind = "fifo" if stat.S_ISFIFO(mode) else "socket" if stat.S_ISSOCK(mode) else "device or special file"
        return f"not a regular file ({kind})"
    if st.st_nlink > 1:
        return f"hard link ({st.st_nlink} names for one file)"
    if st.st_uid != owner:
        return f"owned by uid {st.st_uid}, not by the job's user (uid {owner})"
    return None


def _hash_at(dir_fd: int, name: str, rel: str, owner: int) -> ArtifactEntry:
    fd = os.open(name, _FILE_FLAGS, dir_fd=dir_fd)
    try:
        st = os.fstat(fd)
        problem = _file_problem(st, owner)  # what was opened, not what was listed
        if problem:
            raise ArtifactRefused(problem)
        os.set_blocking(fd, True)
        digest, size = hashlib.sha256(), 0
        while chunk := os.read(fd, _READ):
            digest.update(chunk)
            size += len(chunk)
        if size != st.st_size:
            raise ArtifactRefused(f"changed while read ({st.st_size} -> {size} bytes)")
        return ArtifactEntry(path=rel, size=size, sha256=digest.hexdigest())
    finally:
        os.close(fd)


def _unlock(path: str) -> None:
    """Make every directory under `path` (links not followed) rwx for its owner, so it can go."""
    try:
        st = os.lstat(path)
        if not stat.S_ISDIR(st.st_mode):
            return
        os.chmod(path, 0o700)
        names = os.listdir(path)
    except OSError:
        return
    for name in names:
        _unlock(os.path.join(path, name))


def sweep_stale(base: Path) -> list[str]:
    """At agent start: kill process groups left by jobs of a previous agent run (their jobs have
    already failed with "box heartbeat lost"), with every descendant of their leader (the job's
    supervisor), and remove their workspaces. Returns the job ids. (Supervisors kill their jobs
    when the agent dies; this is the backstop. With slot users, SlotUsers.kill_leftovers() too.)"""
    swept: list[str] = []
    jobs = base.resolve() / "jobs"
    if not jobs.is_dir():
        return swept
    for root in jobs.iterdir():
        try:
            pgid = int((root / "pgid").read_text())
        except (OSError, ValueError):
            pgid = 0  # no pgid recorded
        if pgid > 1:
            below = descendants(pgid) if _is_supervisor(pgid) else []  # not a pid reused since
            with contextlib.suppress(OSError):  # that group is gone already
                os.killpg(pgid, signal.SIGKILL)
            for pid in below:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
        shutil.rmtree(root, ignore_errors=True)
        swept.append(root.name)
    return swept


def _is_supervisor(pid: int) -> bool:
    try:
        return b"supervisor.py" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
