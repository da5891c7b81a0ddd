"""The one HTTP client of the boxrun API (async): BoxrunClient for users, AgentClient for boxes.

Used by the CLI, the demo, the dev stack, the benchmarks and the tests; the SDK grows from it.
Answers are the API's pydantic models (boxrun.schemas); errors are boxrun.errors classes."""

from boxrun.client.agent import AgentClient, LogBatchRefused
from boxrun.client.api import BoxrunClient
from boxrun.client.base import error_from_answer
from boxrun.client.credentials import dev_endpoints_path, resolve
from boxrun.client.sse import DoneEvent, DroppedEvent, Event, FollowEvent, LogEvent, StateEvent, read_events

__all__ = [
    "AgentClient",
    "BoxrunClient",
    "DoneEvent",
    "DroppedEvent",
    "Event",
    "FollowEvent",
    "LogBatchRefused",
    "LogEvent",
    "StateEvent",
    "dev_endpoints_path",
    "error_from_answer",
    "read_events",
    "resolve",
]
