"""A job's workspace on the box: materialised files, the script, the artifacts directory."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
from dataclasses import dataclass
from pathlib import Path

from boxrun.messages import ArtifactEntry, JobSpec
from boxrun.workspace_paths import clean_relative_path

SCRIPT_NAME = "script.py"


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

    @classmethod
    def for_job(cls, base: Path, job_id: str) -> Workspace:
        return cls(base.resolve() / "jobs" / clean_relative_path(job_id))

    def create(self, spec: JobSpec) -> None:
        """Fresh every time: anything left from an earlier attempt is removed first."""
        self.remove()
        self.work.mkdir(parents=True)
        self.artifacts.mkdir()
        self.script.write_text(spec.script)
        for raw, content in spec.files.items():
            target = self.work / clean_relative_path(raw)  # re-checked here: the box trusts no one
            if not target.resolve().is_relative_to(self.work.resolve()):
                raise ValueError(f"file path {raw!r} escapes the workspace")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(content)

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    def record_pgid(self, pgid: int) -> None:
        (self.root / "pgid").write_text(str(pgid))

    def manifest(self) -> list[ArtifactEntry]:
        """Every regular file under artifacts/ (symlinks are skipped, never followed)."""
        entries = []
        for dirpath, dirnames, filenames in os.walk(self.artifacts, followlinks=False):
            for name in sorted(filenames):
                path = Path(dirpath) / name
                if path.is_symlink() or not path.is_file():
                    continue
                digest = hashlib.sha256()
                size = 0
                with path.open("rb") as fh:
                    for chunk in iter(lambda: fh.read(1 << 20), b""):
                        digest.update(chunk)
                        size += len(chunk)
                rel = path.relative_to(self.artifacts).as_posix()
                entries.append(ArtifactEntry(path=rel, size=size, sha256=digest.hexdigest()))
            dirnames.sort()
        return sorted(entries, key=lambda e: e.path)


def sweep_stale(base: Path) -> list[str]:
    """At agent start: kill process groups left by jobs of a previous agent run (their jobs have
    already failed with "box heartbeat lost") and remove their workspaces. Returns the job ids."""
    swept: list[str] = []
    jobs = base.resolve() / "jobs"
    if not jobs.is_dir():
        return swept
    for root in jobs.iterdir():
        try:
            os.killpg(int((root / "pgid").read_text()), signal.SIGKILL)
        except (OSError, ValueError):
            pass  # no pgid recorded, or that group is gone already
        shutil.rmtree(root, ignore_errors=True)
        swept.append(root.name)
    return swept
