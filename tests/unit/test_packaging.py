"""The built wheel holds every module of the tree (boxrun/ and the folders its symlinks name)."""

from __future__ import annotations

import os
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
            if name.endswith((".py", ".sql", ".typed")):
                found.add((rel / name).as_posix())
    return found


def test_the_wheel_holds_every_module_of_the_tree(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(tmp_path), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("boxrun-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        packed = {n for n in zf.namelist() if n.startswith("boxrun/")}
    expected = tree_files()
    assert "boxrun/api/live/follower.py" in expected and "boxrun/db/sql/jobs.sql" in expected
    assert expected - packed == set(), "modules missing from the wheel"
    assert {n for n in packed if not n.endswith("/")} - expected == set(), "the wheel holds files the tree lacks"
