"""Server-Sent Events: the wire reader (`read_events`) and the typed events of a job's log stream."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx

from boxrun.constants import JobState
from boxrun.schemas import LogLinePublic


@dataclass
class Event:
    """One event as sent: its name, its JSON data, its id (a log line's seq)."""

    event: str
    data: Any
    id: str | None


async def read_events(resp: httpx.Response) -> AsyncIterator[Event]:
    """The events of an SSE answer (keepalive comments skipped)."""
    event, data, ident = "message", list[str](), None
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


@dataclass(frozen=True)
class LogEvent:
    """A stored line of the job's log."""

    line: LogLinePublic


@dataclass(frozen=True)
class StateEvent:
    """The job changed state."""

    state: JobState


@dataclass(frozen=True)
class DoneEvent:
    """The job ended: its final state and its last seq; the stream ends after this."""

    state: JobState
    last_seq: int


@dataclass(frozen=True)
class DroppedEvent:
    """The server dropped this follower (too slow, or the connection broke); `follow` resumes
    after `resume_after`, the last seq it received."""

    reason: str
    resume_after: int


FollowEvent = LogEvent | StateEvent | DoneEvent | DroppedEvent


def typed(ev: Event) -> FollowEvent | None:
    """The typed form of a log-stream event; None for an event this client does not know."""
    if ev.event == "log":
        return LogEvent(LogLinePublic.model_validate(ev.data))
    if ev.event == "state":
        return StateEvent(JobState(ev.data["state"]))
    if ev.event == "done":
        return DoneEvent(JobState(ev.data["state"]), int(ev.data.get("last_seq", 0)))
    if ev.event == "dropped":
        return DroppedEvent(str(ev.data.get("reason", "dropped")), int(ev.data.get("resume_after", 0)))
    return None
