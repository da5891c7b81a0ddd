"""boxrun's Python SDK (docs/sdk.md).

    from boxrun.sdk import Client

    with Client() as client:          # url/token: arguments, BOXRUN_URL/BOXRUN_TOKEN, profile, dev stack
        job = client.jobs.submit("echo hello", box="local-1")
        for line in job.follow():
            print(line.text)

`AsyncClient` is the one implementation (asyncio); `Client` runs it for blocking code. Answers are
the API's own pydantic models (boxrun.sdk.models); errors are boxrun.errors classes
(boxrun.sdk.errors)."""

from boxrun.errors import (
    BoxrunError,
    Conflict,
    Forbidden,
    Gone,
    InvalidInput,
    NotFound,
    TooLarge,
    Unauthorized,
    Unavailable,
    ValidationError,
)
from boxrun.sdk.aio import (
    AsyncClient,
    Audit,
    Boxes,
    IntegrityError,
    Job,
    Jobs,
    Org,
    Pipeline,
    Pipelines,
    Schedules,
    Secrets,
    Templates,
    Tokens,
    Users,
)
from boxrun.sdk.config import Connection, load_profile, profile_path, resolve, save_profile
from boxrun.sdk.sync import Client

__all__ = [
    "AsyncClient",
    "Audit",
    "Boxes",
    "BoxrunError",
    "Client",
    "Conflict",
    "Connection",
    "Forbidden",
    "Gone",
    "IntegrityError",
    "InvalidInput",
    "Job",
    "Jobs",
    "NotFound",
    "Org",
    "Pipeline",
    "Pipelines",
    "Schedules",
    "Secrets",
    "Templates",
    "TooLarge",
    "Tokens",
    "Unauthorized",
    "Unavailable",
    "Users",
    "ValidationError",
    "load_profile",
    "profile_path",
    "resolve",
    "save_profile",
]
