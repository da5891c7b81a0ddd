"""A small Server-Sent Events reader over httpx (used by the CLI, the demo and the tests)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx


@dataclass
class Event:
    event: str
    data: Any
    id: str | None


async def read_events(resp: httpx.Response) -> AsyncIterator[Event]:
    event, data, ident = "message", [], None
    async for line in resp.aiter_lines():
        if line == "":
            if data:
                yield Event(event=event, data=json.loads("\n".join(data)), id=ident)
            event, data, ident = "message", [], None
        elif line.startswith(":"):
            continue  # keepalive comment
        else:
            field, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if field == "event":
                event = value
            elif field == "data":
                data.append(value)
            elif field == "id":
                ident = value


async def follow(http: httpx.AsyncClient, job_id: str, *, after: int = 0) -> AsyncIterator[Event]:
    """Yield log/state events of a job until its `done` event (inclusive)."""
    async with http.stream(
        "GET", f"/api/jobs/{job_id}/logs/stream", params={"after": after}, timeout=httpx.Timeout(10.0, read=None)
    ) as resp:
        resp.raise_for_status()
        async for ev in read_events(resp):
            yield ev
            if ev.event == "done":
                return
