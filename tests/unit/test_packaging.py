"""The built wheel holds every module of the tree (boxrun/ and the folders its symlinks name)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def tree_files() -> set[str]:
    """Every file the package is made of, as the wheel names them (boxrun/api/app.py, ...)."""
    found = set()
    for dirpath, dirnames, filenames in os.walk(ROOT / "boxrun", followlinks=True):
        dirnames[:] = [d for d in dirnames if d != "__pycache__"]
        rel = Path(dirpath).relative_to(ROOT)
        for name in filenames:
            # /docs's Swagger UI and the dashboard ship as package data
            if (
                name.endswith((".py", ".pyi", ".sql", ".typed"))
                or "docs_assets" in rel.parts
                or rel.as_posix() == "boxrun/api/ui"
            ):
                found.add((rel / name).as_posix())
    return found


def source_copy(dest: Path) -> Path:
    """What the wheel is built from, copied with its symlinks, so no stale build/ dir counts."""
    dest.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, dest / name)
    linked = [os.readlink(p).removeprefix("../") for p in (ROOT / "boxrun").iterdir() if p.is_symlink()]
    for name in ["boxrun", *linked]:
        shutil.copytree(ROOT / name, dest / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def test_the_wheel_holds_every_module_of_the_tree(tmp_path: Path) -> None:
    src = source_copy(tmp_path / "src")
    out = tmp_path / "dist"
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(out), str(src)]
    subprocess.run(cmd, check=True, capture_output=True, timeout=300)
    (wheel,) = out.glob("boxrun-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        packed = {n for n in zf.namelist() if n.startswith("boxrun/")}
    expected = tree_files()
    assert "boxrun/api/live/follower.py" in expected and "boxrun/db/sql/jobs.sql" in expected
    assert expected - packed == set(), "modules missing from the wheel"
    assert {n for n in packed if not n.endswith("/")} - expected == set(), "the wheel holds files the tree lacks"
