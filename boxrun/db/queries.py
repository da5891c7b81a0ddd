"""Named SQL queries loaded once from db/sql/*.sql (`-- name: foo` starts query `foo`)."""

from __future__ import annotations

import re
from importlib import resources

_NAME = re.compile(r"^--\s*name:\s*(\w+)\s*$", re.MULTILINE)


def parse(text: str) -> dict[str, str]:
    parts = _NAME.split(text)
    queries: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name in queries:
            raise ValueError(f"query {name!r} is defined twice")
        queries[name] = body.strip()
    return queries


class Queries:
    def __init__(self) -> None:
        self._q: dict[str, str] = {}
        for entry in sorted(resources.files("boxrun.db").joinpath("sql").iterdir(), key=lambda p: p.name):
            if entry.name.endswith(".sql"):
                for name, sql in parse(entry.read_text()).items():
                    if name in self._q:
                        raise ValueError(f"query {name!r} is defined in two files")
                    self._q[name] = sql

    def __getattr__(self, name: str) -> str:
        try:
            return self._q[name]
        except KeyError:
            raise AttributeError(f"no SQL query named {name!r}") from None


Q = Queries()
