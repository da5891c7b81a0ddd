"""Validation of workspace-relative paths, shared by the API (at submission) and the agent."""

from __future__ import annotations

from pathlib import PurePosixPath

MAX_PATH_LEN = 1024

# One path segment: any characters but '/', '\\', NUL and lone surrogates, and not '.' or '..'.
_CHAR = r"[^/\\\x00\ud800-\udfff]"
_NOT_DOT = r"[^/\\\x00\ud800-\udfff.]"
_SEGMENT = rf"(?:{_NOT_DOT}{_CHAR}*|\.{_NOT_DOT}{_CHAR}*|\.\.{_CHAR}+)"
# A path as clean_relative_path returns it: segments joined by single '/', nothing to normalise.
NORMAL_PATH_PATTERN = rf"^{_SEGMENT}(?:/{_SEGMENT})*$"


def refuse_unstorable(text: str) -> None:
    """Raise ValueError if `text` holds a NUL (no Postgres text column takes one) or a lone UTF-16
    surrogate (not Unicode text: JSON's "\\ud800" produces one, UTF-8 cannot encode it)."""
    if "\x00" in text:
        raise ValueError("contains a NUL character (\\u0000)")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("contains a lone UTF-16 surrogate (not valid Unicode)") from None


def clean_relative_path(raw: str) -> str:
    """Return `raw` normalised if it is a safe path inside a workspace, else raise ValueError."""
    if not raw or len(raw) > MAX_PATH_LEN:
        raise ValueError(f"path must be 1..{MAX_PATH_LEN} characters")
    refuse_unstorable(raw)
    if "\\" in raw:
        raise ValueError(f"path {raw[:80]!r} contains a backslash")
    path = PurePosixPath(raw)
    if path.is_absolute():
        raise ValueError(f"path {raw[:80]!r} must be relative to the workspace")
    parts = [p for p in path.parts if p != "."]
    if not parts or any(p == ".." for p in parts):
        raise ValueError(f"path {raw[:80]!r} must stay inside the workspace (no '..')")
    return "/".join(parts)
