"""BoxrunClient: the user-token face of the REST API, every answer a model of boxrun.schemas."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import httpx
from pydantic import ValidationError

from boxrun.client.base import DEFAULT_TIMEOUT_S, Transport, error_from_answer, unreachable
from boxrun.client.credentials import resolve
from boxrun.client.sse import DoneEvent, DroppedEvent, FollowEvent, LogEvent, read_events, typed
from boxrun.constants import JobState
from boxrun.errors import InvalidInput, Unavailable
from boxrun.schemas import (
    ArtifactsPublic,
    BoxCreate,
    BoxCreated,
    BoxesPublic,
    BoxPublic,
    BoxQueuePublic,
    Health,
    JobCreate,
    JobEventsPublic,
    JobPublic,
    JobsPublic,
    LogLinePublic,
    LogsPublic,
    MaintenancePublic,
    WindowCreate,
    WindowPublic,
)

LOG_PAGE = 5000  # lines per GET .../logs page (the API allows up to 10 000)
STREAM_CONNECT_S = 10.0


def _seg(value: str) -> str:
    """One path segment: a job id or box name cannot reach another route."""
    return quote(value, safe="")


def _refused(exc: ValidationError) -> InvalidInput:
    first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid"}
    field = ".".join(str(p) for p in first.get("loc", ())) or "body"
    return InvalidInput(f"body.{field}: {first.get('msg', 'invalid')}", field=f"body.{field}")


class BoxrunClient(Transport):
    """Async client of the boxrun API with a user token:

        async with BoxrunClient(url, token) as client:
            job = await client.submit(box="local-1", script="print('hi')")
            async for ev in client.follow(job.id): ...

    An error answer raises the matching `boxrun.errors` class (NotFound, Conflict, Unauthorized,
    Forbidden, InvalidInput with `field`, TooLarge, Unavailable) with the API's `detail` as its
    reason; an API that cannot be reached raises Unavailable naming the address tried."""

    @classmethod
    def from_env(
        cls, api_url: str | None = None, token: str | None = None, *, timeout: float = DEFAULT_TIMEOUT_S
    ) -> BoxrunClient:
        """Explicit values, else BOXRUN_API_URL / BOXRUN_API_TOKEN, else the local dev stack."""
        url, key = resolve(api_url, token)
        return cls(url, key, timeout=timeout)

    # ------------------------------------------------------------------ jobs

    async def submit(self, spec: JobCreate | None = None, /, **fields: Any) -> JobPublic:
        """Submit a job (a JobCreate, or its fields as keywords). With an idempotency key seen
        before, the first job is returned."""
        if spec is None:
            try:
                spec = JobCreate(**fields)
            except ValidationError as exc:
                raise _refused(exc) from None
        elif fields:
            raise TypeError("give a JobCreate or keyword fields, not both")
        body = spec.model_dump(mode="json", exclude_unset=True)
        return await self.call(JobPublic, "POST", "/api/jobs", json=body)

    async def get(self, job_id: str) -> JobPublic:
        return await self.call(JobPublic, "GET", f"/api/jobs/{_seg(job_id)}")

    async def list_jobs(
        self, *, state: JobState | str | None = None, box: str | None = None, limit: int = 50, offset: int = 0
    ) -> JobsPublic:
        """One page of jobs, newest first; `count` is the total that match."""
        params: dict[str, Any] = {"limit": limit, "offset": offset}
        if state is not None:
            params["state"] = str(state)
        if box is not None:
            params["box"] = box
        return await self.call(JobsPublic, "GET", "/api/jobs", params=params)

    async def cancel(self, job_id: str) -> JobPublic:
        """Ask the job to stop (Conflict if it already ended); follow it to see it end."""
        return await self.call(JobPublic, "POST", f"/api/jobs/{_seg(job_id)}/cancel")

    async def rerun(self, job_id: str) -> JobPublic:
        """A new job from the job's frozen spec."""
        return await self.call(JobPublic, "POST", f"/api/jobs/{_seg(job_id)}/rerun")

    async def events(self, job_id: str) -> JobEventsPublic:
        """The job's state transitions, oldest first."""
        return await self.call(JobEventsPublic, "GET", f"/api/jobs/{_seg(job_id)}/events")

    async def wait(
        self, job_id: str, *, poll_s: float = 0.5, timeout_s: float | None = None, states: set[JobState] | None = None
    ) -> JobPublic:
        """Poll until the job is terminal (or in one of `states`); TimeoutError after timeout_s."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            job = await self.get(job_id)
            if job.state.terminal or (states is not None and job.state in states):
                return job
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {job.state} after {timeout_s:g}s")
            await asyncio.sleep(poll_s)

    # ------------------------------------------------------------------ logs

    async def log_page(self, job_id: str, *, after: int = 0, limit: int = LOG_PAGE) -> LogsPublic:
        return await self.call(
            LogsPublic, "GET", f"/api/jobs/{_seg(job_id)}/logs", params={"after": after, "limit": limit}
        )

    async def logs(self, job_id: str, *, after: int = 0, page: int = LOG_PAGE) -> AsyncIterator[LogLinePublic]:
        """Every stored line after seq `after`, page by page."""
        while True:
            got = (await self.log_page(job_id, after=after, limit=page)).data
            for line in got:
                yield line
            if len(got) < page:
                return
            after = got[-1].seq

    async def follow(
        self, job_id: str, *, after: int = 0, retry_s: float = 1.0, reconnect_for_s: float = 60.0
    ) -> AsyncIterator[FollowEvent]:
        """The job's live log stream until `done` (inclusive): LogEvent, StateEvent, DroppedEvent,
        DoneEvent. When the server drops this follower or the connection breaks, it yields a
        DroppedEvent and reconnects with Last-Event-ID = the last seq it yielded, so the lines go
        on exactly after that one. Unavailable once reconnecting has failed for reconnect_for_s;
        an error answer other than 5xx (NotFound, Unauthorized, ...) is raised at once."""
        path = f"/api/jobs/{_seg(job_id)}/logs/stream"
        failing_since: float | None = None
        while True:
            connected = False
            problem: Unavailable
            try:
                async with self.http.stream(
                    "GET",
                    path,
                    headers={"Last-Event-ID": str(after), "Accept": "text/event-stream"},
                    timeout=httpx.Timeout(STREAM_CONNECT_S, read=None),
                ) as resp:
                    if resp.status_code >= 400:
                        await resp.aread()
                        error = error_from_answer(resp)
                        if not isinstance(error, Unavailable):
                            raise error
                        problem = error
                    else:
                        connected, failing_since = True, None
                        problem = Unavailable(f"the log stream of job {job_id} ended without `done`")
                        async for raw in read_events(resp):
                            ev = typed(raw)
                            if ev is None:
                                continue
                            if isinstance(ev, DroppedEvent):
                                problem = Unavailable(f"dropped by the server: {ev.reason}")
                                ev = DroppedEvent(ev.reason, after)
                                connected = False  # said so already
                            elif isinstance(ev, LogEvent):
                                after = ev.line.seq
                            yield ev
                            if isinstance(ev, DoneEvent):
                                return
                            if isinstance(ev, DroppedEvent):
                                break
            except httpx.HTTPError as exc:
                problem = unreachable(self.http.base_url.join(path), exc)
            if connected:
                yield DroppedEvent(problem.reason, after)
            now = time.monotonic()
            failing_since = failing_since or now
            if now - failing_since > reconnect_for_s:
                raise problem
            if not connected and failing_since != now:
                await asyncio.sleep(retry_s)  # the API restarts or the network blinked: try again

    # ------------------------------------------------------------------ artifacts

    async def artifacts(self, job_id: str) -> ArtifactsPublic:
        return await self.call(ArtifactsPublic, "GET", f"/api/jobs/{_seg(job_id)}/artifacts")

    def artifact_url(self, job_id: str, path: str) -> str:
        """The API's download address of an artifact (needs the token; redirects to storage)."""
        return f"{self.url}/api/jobs/{_seg(job_id)}/artifacts/{quote(path, safe='/')}"

    async def download_url(self, job_id: str, path: str) -> str:
        """A short-lived presigned URL of the artifact in storage (no token needed)."""
        resp = await self.send(
            "GET", f"/api/jobs/{_seg(job_id)}/artifacts/{quote(path, safe='/')}", follow_redirects=False
        )
        return resp.headers["location"]

    # ------------------------------------------------------------------ boxes

    async def list_boxes(self) -> BoxesPublic:
        return await self.call(BoxesPublic, "GET", "/api/boxes")

    async def get_box(self, name: str) -> BoxPublic:
        return await self.call(BoxPublic, "GET", f"/api/boxes/{_seg(name)}")

    async def register_box(self, spec: BoxCreate | None = None, /, **fields: Any) -> BoxCreated:
        """Register a box (admin); the answer holds its node token, shown this once."""
        if spec is None:
            try:
                spec = BoxCreate(**fields)
            except ValidationError as exc:
                raise _refused(exc) from None
        return await self.call(BoxCreated, "POST", "/api/boxes", json=spec.model_dump(mode="json"))

    async def rotate_token(self, name: str) -> BoxCreated:
        """A new node token for the box (admin); the old one stops working at once."""
        return await self.call(BoxCreated, "POST", f"/api/boxes/{_seg(name)}/token")

    async def box_queue(self, name: str) -> BoxQueuePublic:
        return await self.call(BoxQueuePublic, "GET", f"/api/boxes/{_seg(name)}/queue")

    async def maintenance(self, name: str) -> MaintenancePublic:
        return await self.call(MaintenancePublic, "GET", f"/api/boxes/{_seg(name)}/maintenance")

    async def set_maintenance(self, name: str, on: bool, *, reason: str = "manual") -> MaintenancePublic:
        return await self.call(
            MaintenancePublic, "PUT", f"/api/boxes/{_seg(name)}/maintenance", json={"on": on, "reason": reason}
        )

    async def add_window(self, name: str, window: WindowCreate) -> WindowPublic:
        return await self.call(
            WindowPublic,
            "POST",
            f"/api/boxes/{_seg(name)}/maintenance/windows",
            json=window.model_dump(mode="json"),
        )

    async def delete_window(self, name: str, window_id: int) -> None:
        await self.send("DELETE", f"/api/boxes/{_seg(name)}/maintenance/windows/{window_id}")

    # ------------------------------------------------------------------ health

    async def health(self) -> Health:
        """The API, its database and Temporal; Unavailable if one is down."""
        return await self.call(Health, "GET", "/api/health")
