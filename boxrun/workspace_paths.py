"""Validation of workspace-relative paths, shared by the API (at submission) and the agent."""

from __future__ import annotations

from pathlib import PurePosixPath

MAX_PATH_LEN = 1024


def clean_relative_path(raw: str) -> str:
    """Return `raw` normalised if it is a safe path inside a workspace, else raise ValueError."""
    if not raw or len(raw) > MAX_PATH_LEN:
        raise ValueError(f"path must be 1..{MAX_PATH_LEN} characters")
    if "\x00" in raw or "\\" in raw:
        raise ValueError(f"path {raw!r} contains a NUL or backslash")
    path = PurePosixPath(raw)
    if path.is_absolute():
        raise ValueError(f"path {raw!r} must be relative to the workspace")
    parts = [p for p in path.parts if p != "."]
    if not parts or any(p == ".." for p in parts):
        raise ValueError(f"path {raw!r} must stay inside the workspace (no '..')")
    return "/".join(parts)
