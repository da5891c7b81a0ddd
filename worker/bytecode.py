"""Bytecode for the workflow modules, written before the worker polls.

Temporal's sandbox re-runs a workflow's module (and its packages) for every workflow instance it
creates, through the normal import machinery: with no .pyc beside the source (an environment with
PYTHONDONTWRITEBYTECODE=1, or an install that skipped compiling) it compiles the source again each
time, 2-3x the cost of the instance (bench/sandbox_cost.py). Python reads bytecode that exists
even when it is told not to write any, so the worker writes it once at start. A read-only install
keeps its source-only cost: nothing fails."""

from __future__ import annotations

import importlib.util
import logging
import py_compile
import sys
from collections.abc import Iterable
from pathlib import Path

log = logging.getLogger(__name__)


def _sources(classes: Iterable[type]) -> set[Path]:
    """The source files of the classes' modules and of every package above them."""
    found: set[Path] = set()
    for cls in classes:
        parts = cls.__module__.split(".")
        for i in range(1, len(parts) + 1):
            module = sys.modules.get(".".join(parts[:i]))
            origin = getattr(getattr(module, "__spec__", None), "origin", None)
            if origin and origin.endswith(".py"):
                found.add(Path(origin))
    return found


def _fresh(cached: Path, source: Path) -> bool:
    """Whether the import system would use `cached` for `source`: the check it makes itself (magic
    number, timestamp-based, the source's mtime and size as recorded in the header), so a source
    dated older than its bytecode still counts as changed."""
    try:
        with cached.open("rb") as f:
            header = f.read(16)
    except OSError:
        return False
    st = source.stat()
    return (
        len(header) == 16
        and header[:4] == importlib.util.MAGIC_NUMBER
        and int.from_bytes(header[4:8], "little") == 0
        and int.from_bytes(header[8:12], "little") == int(st.st_mtime) & 0xFFFFFFFF
        and int.from_bytes(header[12:16], "little") == st.st_size & 0xFFFFFFFF
    )


def compile_workflow_modules(classes: Iterable[type]) -> int:
    """Write missing or stale bytecode for the workflows' modules; how many files were written."""
    written = 0
    for source in sorted(_sources(classes)):
        cached = Path(importlib.util.cache_from_source(str(source)))
        try:
            if _fresh(cached, source):
                continue
            py_compile.compile(
                str(source), cfile=str(cached), doraise=True, invalidation_mode=py_compile.PycInvalidationMode.TIMESTAMP
            )
            written += 1
        except (OSError, py_compile.PyCompileError) as exc:
            log.debug("no bytecode for %s: %s", source, exc)
    return written
