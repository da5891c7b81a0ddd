"""What a new workflow instance makes the sandbox re-run: only the workflow's own module and its
packages (the workflows package imports none of its workflows), and the worker writes their
bytecode so the sandbox does not compile source per instance."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from boxrun.worker.bytecode import compile_workflow_modules


def test_the_workflows_package_imports_no_workflow() -> None:
    code = "import sys, boxrun.workflows; print(sorted(m for m in sys.modules if m.startswith('boxrun.workflows.')))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def _package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[type, list[Path]]:
    pkg = tmp_path / "wfpkg_probe"
    (pkg / "inner").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "inner" / "__init__.py").write_text("")
    (pkg / "inner" / "flow.py").write_text("class Flow:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(sys, "dont_write_bytecode", True)  # as under PYTHONDONTWRITEBYTECODE=1
    for name in ("wfpkg_probe", "wfpkg_probe.inner", "wfpkg_probe.inner.flow"):
        monkeypatch.delitem(sys.modules, name, raising=False)  # this test's copy, not an earlier test's
    module = importlib.import_module("wfpkg_probe.inner.flow")
    sources = [pkg / "__init__.py", pkg / "inner" / "__init__.py", pkg / "inner" / "flow.py"]
    return module.Flow, sources


def test_bytecode_is_written_for_the_module_and_its_packages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    flow, sources = _package(tmp_path, monkeypatch)
    cached = [Path(importlib.util.cache_from_source(str(s))) for s in sources]
    assert not any(c.exists() for c in cached)
    assert compile_workflow_modules([flow]) == 3
    assert all(c.exists() for c in cached)
    assert compile_workflow_modules([flow]) == 0  # fresh: nothing written again
    later = sources[2].stat().st_mtime + 10
    os.utime(sources[2], (later, later))
    assert compile_workflow_modules([flow]) == 1  # the source changed: rewritten
    earlier = sources[2].stat().st_mtime - 3600
    sources[2].write_text("class Flow:\n    changed = True\n")
    os.utime(sources[2], (earlier, earlier))  # e.g. unpacked from an archive dated before the .pyc
    assert compile_workflow_modules([flow]) == 1, "a source older-dated than its bytecode still changed"
    assert compile_workflow_modules([flow]) == 0


def test_where_bytecode_cannot_be_written_nothing_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    flow, _ = _package(tmp_path, monkeypatch)
    for folder in (tmp_path / "wfpkg_probe", tmp_path / "wfpkg_probe" / "inner"):
        (folder / "__pycache__").write_text("not a directory")  # as unwritable as read-only, even for root
    assert compile_workflow_modules([flow]) == 0
