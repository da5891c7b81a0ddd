"""What the Server-Sent Events routes share: their OpenAPI answer and the resume cursor."""

from __future__ import annotations

from typing import Any

from boxrun.errors import InvalidInput
from boxrun.schemas import MAX_SEQ


def resume_cursor(after: int | None, last_event_id: str | None, *, of: str) -> int:
    """Where a stream resumes: ?after= if given, else the Last-Event-ID header (`of` says what
    an id is, for the 422), else the start."""
    if after is not None:
        return after
    if last_event_id is None or last_event_id == "":
        return 0
    if not (last_event_id.isascii() and last_event_id.isdigit() and int(last_event_id) <= MAX_SEQ):
        raise InvalidInput(
            f"Last-Event-ID must be {of} (0..{MAX_SEQ}), not {last_event_id[:40]!r}",
            field="header.last-event-id",
        )
    return int(last_event_id)


# The route returns an EventStream itself; this documents it as FastAPI documents an SSE route.
SSE_DOC: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "Successful Response",
        "content": {
            "text/event-stream": {
                "itemSchema": {
                    "type": "object",
                    "properties": {
                        "data": {"type": "string"},
                        "event": {"type": "string"},
                        "id": {"type": "string"},
                        "retry": {"type": "integer", "minimum": 0},
                    },
                }
            }
        },
    }
}
