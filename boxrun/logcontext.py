"""What a log line says it is about: request_id, job_id, box and org, held in a context variable.

A request (api/observe.py), an activity (boxrun/propagation.py) or an agent's job binds a context
with `bound(...)`; code further down adds what it learns (`note(box=...)`), and every log line
written meanwhile carries the fields (boxrun/logsetup.py). Nothing here imports a server library:
the agent and the CLI use it too.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

FIELDS = ("job_id", "box", "org", "request_id")
REQUEST_ID_HEADER = "X-Request-ID"
# A request id a client sends is kept if it is this tame (it lands in logs and headers), else
# replaced by a fresh one.
_TAME_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")

_current: ContextVar[dict[str, str] | None] = ContextVar("boxrun_log_context", default=None)


def current() -> dict[str, str]:
    """The fields known here (a copy)."""
    return dict(_current.get() or {})


def get(name: str) -> str | None:
    return (_current.get() or {}).get(name)


@contextmanager
def bound(**fields: str | None) -> Iterator[dict[str, str]]:
    """A context for the block: the enclosing one's fields and these (None dropped). The dict it
    yields is the block's own: `note` adds to it, for every task of the block to see."""
    fields_now = {**(_current.get() or {}), **{k: v for k, v in fields.items() if v}}
    token = _current.set(fields_now)
    try:
        yield fields_now
    finally:
        try:
            _current.reset(token)
        except ValueError:
            pass  # closed from another context (a workflow's coroutine at eviction): that one ends with it


def note(**fields: str | None) -> None:
    """Add what a step learnt (the box of a node token, the org of a user) to the current context;
    outside any `bound` block it does nothing."""
    fields_now = _current.get()
    if fields_now is not None:
        fields_now.update({k: v for k, v in fields.items() if v})


def request_id_from(sent: str | None) -> str:
    """The client's request id if it is a tame one, else a new one."""
    if sent and _TAME_ID.match(sent):
        return sent
    return uuid.uuid4().hex
