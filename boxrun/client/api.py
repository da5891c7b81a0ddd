"""BoxrunClient: the user-token face of the REST API, every answer a model of boxrun.schemas."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterable, AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any
from urllib.parse import quote

import httpx
from pydantic import ValidationError

from boxrun.client.base import DEFAULT_TIMEOUT_S, Transport, error_from_answer, unreachable
from boxrun.client.credentials import resolve
from boxrun.client.sse import DoneEvent, DroppedEvent, Event, FollowEvent, LogEvent, read_events, typed
from boxrun.constants import JobState, PipelineState
from boxrun.errors import InvalidInput, Unauthorized, Unavailable
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
    UploadPublic,
    WindowCreate,
    WindowPublic,
)
from boxrun.schemas.audit import AuditPublic, JobSpecPublic
from boxrun.schemas.org import OrgQuota, OrgQuotaPublic, OrgRetention, OrgRetentionPublic, OrgUsage
from boxrun.schemas.people import (
    MePublic,
    TokenCreate,
    TokenCreated,
    TokensPublic,
    UserCreate,
    UserCreated,
    UserPublic,
    UsersPublic,
    UserUpdate,
)
from boxrun.schemas.pipelines import PipelinePublic, PipelinesPublic
from boxrun.schemas.schedules import ScheduleCreate, SchedulePublic, SchedulesPublic
from boxrun.schemas.secrets import SecretPut, SecretsPublic
from boxrun.schemas.templates import (
    TemplatePublic,
    TemplatePut,
    TemplateRun,
    TemplateRunPublic,
    TemplatesPublic,
    TriggerSecretPublic,
)
from boxrun.schemas.webhooks import (
    WebhookCreate,
    WebhookCreated,
    WebhookDeliveriesPublic,
    WebhookDeliveryPublic,
    WebhookPublic,
    WebhooksPublic,
)

LOG_PAGE = 5000  # lines per GET .../logs page (the API allows up to 10 000)
MAX_TAIL = 10_000  # the most lines one GET .../logs?tail= answers
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
    Forbidden, InvalidInput with `field`, TooLarge, Gone, Unavailable) with the API's `detail` as its
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
        self,
        *,
        state: JobState | str | None = None,
        box: str | None = None,
        limit: int = 50,
        offset: int = 0,
        owner: str | None = None,
        pipeline_id: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        labels: dict[str, str] | None = None,
        cursor: str | None = None,
    ) -> JobsPublic:
        """One page of jobs, newest first; `count` is the total that match. `cursor` (the
        answer's `next_cursor`, where the API gives one) continues instead of `offset`."""
        return JobsPublic.model_validate(
            await self.list_jobs_raw(
                state=state,
                box=box,
                limit=limit,
                offset=offset,
                owner=owner,
                pipeline_id=pipeline_id,
                since=since,
                until=until,
                labels=labels,
                cursor=cursor,
            )
        )

    async def list_jobs_raw(
        self,
        *,
        state: JobState | str | None = None,
        box: str | None = None,
        limit: int = 50,
        offset: int = 0,
        owner: str | None = None,
        pipeline_id: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        labels: dict[str, str] | None = None,
        cursor: str | None = None,
    ) -> dict[str, Any]:
        """GET /api/jobs as its JSON object (it may carry fields newer than this client's models,
        such as `next_cursor`)."""
        params: list[tuple[str, str | int]] = [("limit", limit)]
        if cursor is not None:
            params.append(("cursor", cursor))
        elif offset:
            params.append(("offset", offset))
        for key, value in (("state", state), ("box", box), ("owner", owner), ("pipeline_id", pipeline_id)):
            if value is not None:
                params.append((key, str(value)))
        for key, when in (("since", since), ("until", until)):
            if when is not None:
                params.append((key, when.isoformat()))
        for key, value in (labels or {}).items():
            params.append(("label", f"{key}:{value}"))
        resp = await self.send("GET", "/api/jobs", params=params)
        got: dict[str, Any] = resp.json()
        return got

    async def spec(self, job_id: str) -> JobSpecPublic:
        """The job's frozen spec as it ran (script, files with SHA-256, env names, settings)."""
        return await self.call(JobSpecPublic, "GET", f"/api/jobs/{_seg(job_id)}/spec")

    async def upload(self, content: bytes | AsyncIterable[bytes], *, sha256: str) -> UploadPublic:
        """Store a file's bytes (POST /api/files) for a job's `files` to reference; `sha256` is
        the hex SHA-256 of the bytes (the API refuses a body that does not hash to it)."""
        return await self.call(
            UploadPublic,
            "POST",
            "/api/files",
            params={"sha256": sha256},
            content=content,
            headers={"content-type": "application/octet-stream"},
            timeout=httpx.Timeout(STREAM_CONNECT_S, read=None, write=None),
        )

    async def cancel(self, job_id: str) -> JobPublic:
        """Ask the job to stop (Conflict if it already ended); follow it to see it end."""
        return await self.call(JobPublic, "POST", f"/api/jobs/{_seg(job_id)}/cancel")

    async def rerun(self, job_id: str) -> JobPublic:
        """A new job from the job's frozen spec."""
        return await self.call(JobPublic, "POST", f"/api/jobs/{_seg(job_id)}/rerun")

    async def delete_outputs(self, job_id: str) -> None:
        """Delete the ended job's transcript and artifacts (its owner or an org admin); the job row
        stays, and reading what went answers Gone with who deleted it and when. Conflict while
        the job still runs; deleting again is harmless."""
        await self.send("DELETE", f"/api/jobs/{_seg(job_id)}/outputs")

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

    async def log_page(
        self, job_id: str, *, after: int = 0, limit: int = LOG_PAGE, stream: str | None = None, tail: int | None = None
    ) -> LogsPublic:
        """One page of stored lines after seq `after` (of one `stream` when given: stdout, stderr,
        output, system); with `tail`, the last `tail` lines instead (`after`/`limit` not sent)."""
        params: dict[str, Any] = {"after": after, "limit": limit} if tail is None else {"tail": tail}
        if stream is not None:
            params["stream"] = stream
        return await self.call(LogsPublic, "GET", f"/api/jobs/{_seg(job_id)}/logs", params=params)

    async def logs(self, job_id: str, *, after: int = 0, page: int = LOG_PAGE) -> AsyncIterator[LogLinePublic]:
        """Every stored line after seq `after`, page by page."""
        while True:
            got = (await self.log_page(job_id, after=after, limit=page)).data
            for line in got:
                yield line
            if len(got) < page:
                return
            after = got[-1].seq

    @asynccontextmanager
    async def _event_stream(self, path: str, after: int) -> AsyncIterator[AsyncIterator[Event]]:
        """One connection to a server-sent-events route, resuming after event id `after`: its
        events. An error answer is raised (Unavailable for a 5xx, which the caller retries), and
        so is a connection that cannot be made or breaks (Unavailable naming the URL)."""
        try:
            async with self.http.stream(
                "GET",
                path,
                headers={"Last-Event-ID": str(after), "Accept": "text/event-stream"},
                timeout=httpx.Timeout(STREAM_CONNECT_S, read=None),
            ) as resp:
                if resp.status_code >= 400:
                    await resp.aread()
                    raise error_from_answer(resp)
                yield read_events(resp)
        except httpx.HTTPError as exc:
            _still_cancelled()  # a cancel that broke the stream is a cancel, not an outage
            raise unreachable(self.http.base_url.join(path), exc) from exc

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
                async with self._event_stream(path, after) as events:
                    connected, failing_since = True, None
                    problem = Unavailable(f"the log stream of job {job_id} ended without `done`")
                    async for raw in events:
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
            except Unavailable as exc:
                _still_cancelled()
                problem = exc
            if connected:
                yield DroppedEvent(problem.reason, after)
            now = time.monotonic()
            failing_since = failing_since or now
            if now - failing_since > reconnect_for_s:
                raise problem
            if not connected and failing_since != now:
                await asyncio.sleep(retry_s)  # the API restarts or the network blinked: try again

    # ------------------------------------------------------------------ artifacts

    async def artifacts(self, job_id: str, *, limit: int = 100, offset: int = 0) -> ArtifactsPublic:
        """One page of the job's artifacts, by path; `count` is how many there are in all."""
        params = {"limit": limit, "offset": offset}
        return await self.call(ArtifactsPublic, "GET", f"/api/jobs/{_seg(job_id)}/artifacts", params=params)

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

    # ------------------------------------------------------------------ pipelines

    async def submit_pipeline(self, definition: bytes | str, *, media_type: str) -> PipelinePublic:
        """Submit a pipeline definition as sent: `application/json` or `application/yaml`."""
        body = definition.encode() if isinstance(definition, str) else definition
        return await self.call(
            PipelinePublic, "POST", "/api/pipelines", content=body, headers={"content-type": media_type}
        )

    async def get_pipeline(self, pipeline_id: str) -> PipelinePublic:
        return await self.call(PipelinePublic, "GET", f"/api/pipelines/{_seg(pipeline_id)}")

    async def list_pipelines(
        self, *, state: PipelineState | str | None = None, limit: int = 50, offset: int = 0
    ) -> PipelinesPublic:
        params: dict[str, Any] = {"limit": limit, "offset": offset}
        if state is not None:
            params["state"] = str(state)
        return await self.call(PipelinesPublic, "GET", "/api/pipelines", params=params)

    async def cancel_pipeline(self, pipeline_id: str) -> PipelinePublic:
        return await self.call(PipelinePublic, "POST", f"/api/pipelines/{_seg(pipeline_id)}/cancel")

    async def rerun_pipeline(self, pipeline_id: str, *, only_failed: bool = False) -> PipelinePublic:
        return await self.call(
            PipelinePublic, "POST", f"/api/pipelines/{_seg(pipeline_id)}/rerun", json={"only_failed": only_failed}
        )

    async def pipeline_events(
        self, pipeline_id: str, *, after: int = 0, retry_s: float = 1.0, reconnect_for_s: float = 60.0
    ) -> AsyncIterator[Event]:
        """The pipeline's `step` and `pipeline` events (data: id, step, state, at, detail) until
        `done` {"state", "error"} (inclusive), resuming with Last-Event-ID after a dropped
        connection; an error answer other than 5xx is raised at once, Unavailable once
        reconnecting has failed for reconnect_for_s; a revoked token raises Unauthorized."""
        path = f"/api/pipelines/{_seg(pipeline_id)}/events"
        failing_since: float | None = None
        while True:
            problem: Unavailable
            connected = False
            try:
                async with self._event_stream(path, after) as events:
                    connected, failing_since = True, None
                    problem = Unavailable(f"the event stream of pipeline {pipeline_id} ended without `done`")
                    async for ev in events:
                        if ev.event == "revoked":
                            raise Unauthorized(str(ev.data.get("reason", "token no longer valid")))
                        if ev.id is not None and ev.id.isdigit():
                            after = int(ev.id)
                        yield ev
                        if ev.event == "done":
                            return
            except Unavailable as exc:
                problem = exc
            now = time.monotonic()
            failing_since = failing_since or now
            if now - failing_since > reconnect_for_s:
                raise problem
            if not connected:  # a stream that broke is resumed at once, a refused connect later
                await asyncio.sleep(retry_s)

    # ------------------------------------------------------------------ people

    async def me(self) -> MePublic:
        """Who the token names: user, org, role."""
        return await self.call(MePublic, "GET", "/api/me")

    async def list_users(self, *, org: str | None = None) -> UsersPublic:
        return await self.call(UsersPublic, "GET", "/api/users", params={"org": org} if org else None)

    async def create_user(self, spec: UserCreate) -> UserCreated:
        return await self.call(UserCreated, "POST", "/api/users", json=spec.model_dump(mode="json", exclude_none=True))

    async def update_user(self, name: str, spec: UserUpdate) -> UserPublic:
        return await self.call(
            UserPublic, "PATCH", f"/api/users/{_seg(name)}", json=spec.model_dump(mode="json", exclude_none=True)
        )

    async def create_token(self, user: str, spec: TokenCreate) -> TokenCreated:
        """A new API token for `user` (yourself, or anyone for a user admin); shown this once."""
        return await self.call(
            TokenCreated,
            "POST",
            f"/api/users/{_seg(user)}/tokens",
            json=spec.model_dump(mode="json", exclude_none=True),
        )

    async def list_tokens(self, *, org: str | None = None) -> TokensPublic:
        return await self.call(TokensPublic, "GET", "/api/tokens", params={"org": org} if org else None)

    async def revoke_token(self, token_id: str) -> None:
        await self.send("DELETE", f"/api/tokens/{_seg(token_id)}")

    # ------------------------------------------------------------------ audit

    async def audit(
        self,
        *,
        job_id: str | None = None,
        actor: str | None = None,
        action: str | None = None,
        box: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> AuditPublic:
        """One page of the audit log (admins), newest first; `next_cursor` continues."""
        params: dict[str, Any] = {"limit": limit}
        for key, value in (("job_id", job_id), ("actor", actor), ("action", action), ("box", box), ("cursor", cursor)):
            if value is not None:
                params[key] = value
        for key, when in (("since", since), ("until", until)):
            if when is not None:
                params[key] = when.isoformat()
        return await self.call(AuditPublic, "GET", "/api/audit", params=params)

    # ------------------------------------------------------------------ health

    async def health(self) -> Health:
        """The API, its database and Temporal; Unavailable if one is down."""
        return await self.call(Health, "GET", "/api/health")

    # ------------------------------------------------------------------ secrets

    async def list_secrets(self) -> SecretsPublic:
        """Your org's secrets by name (operators and admins): never a value."""
        return await self.call(SecretsPublic, "GET", "/api/secrets")

    async def put_secret(self, name: str, spec: SecretPut) -> None:
        """Create or replace secret `name` of your org (admins); the value is never shown again."""
        await self.send("PUT", f"/api/secrets/{_seg(name)}", json=spec.model_dump(mode="json"))

    async def delete_secret(self, name: str) -> None:
        """Delete secret `name` of your org (admins)."""
        await self.send("DELETE", f"/api/secrets/{_seg(name)}")

    # ------------------------------------------------------------------ webhooks (docs/webhooks.md)

    async def create_webhook(self, spec: WebhookCreate) -> WebhookCreated:
        """A webhook of your org (admins): its signing `secret` is in this answer only."""
        return await self.call(WebhookCreated, "POST", "/api/webhooks", json=spec.model_dump(mode="json"))

    async def list_webhooks(self) -> WebhooksPublic:
        return await self.call(WebhooksPublic, "GET", "/api/webhooks")

    async def get_webhook(self, webhook_id: str) -> WebhookPublic:
        return await self.call(WebhookPublic, "GET", f"/api/webhooks/{_seg(webhook_id)}")

    async def delete_webhook(self, webhook_id: str) -> None:
        await self.send("DELETE", f"/api/webhooks/{_seg(webhook_id)}")

    async def webhook_deliveries(
        self, webhook_id: str, *, limit: int = 50, cursor: str | None = None
    ) -> WebhookDeliveriesPublic:
        """One page of the webhook's deliveries, newest first, each with every attempt."""
        params: dict[str, Any] = {"limit": limit}
        if cursor is not None:
            params["cursor"] = cursor
        return await self.call(
            WebhookDeliveriesPublic, "GET", f"/api/webhooks/{_seg(webhook_id)}/deliveries", params=params
        )

    async def redeliver(self, webhook_id: str, delivery_id: str) -> WebhookDeliveryPublic:
        """Send a delivery again (same id, same body); Conflict while it is still being attempted."""
        return await self.call(
            WebhookDeliveryPublic,
            "POST",
            f"/api/webhooks/{_seg(webhook_id)}/deliveries/{_seg(delivery_id)}/redeliver",
        )

    # ------------------------------------------------------------------ org policy (docs/retention.md)

    async def org_retention(self) -> OrgRetentionPublic:
        """Days your org keeps transcripts, artifacts and job rows after a job ended (null: forever)."""
        return await self.call(OrgRetentionPublic, "GET", "/api/org/retention")

    async def set_org_retention(self, spec: OrgRetention) -> OrgRetentionPublic:
        """Replace your org's retention (admins): a field left null keeps forever."""
        return await self.call(OrgRetentionPublic, "PUT", "/api/org/retention", json=spec.model_dump(mode="json"))

    async def org_quota(self) -> OrgQuotaPublic:
        """Your org's storage quota and per-job transcript cap."""
        return await self.call(OrgQuotaPublic, "GET", "/api/org/quota")

    async def set_org_quota(self, spec: OrgQuota) -> OrgQuotaPublic:
        """Replace your org's quota (admins): null storage_bytes is no quota, null transcript_cap_bytes
        the deployment's default cap."""
        return await self.call(OrgQuotaPublic, "PUT", "/api/org/quota", json=spec.model_dump(mode="json"))

    async def org_usage(self) -> OrgUsage:
        """What your org keeps now (object storage, which the quota counts, and transcripts)."""
        return await self.call(OrgUsage, "GET", "/api/org/usage")

    # ------------------------------------------------------------------ templates (docs/templates.md)

    async def put_template(self, name: str, spec: TemplatePut) -> TemplatePublic:
        """Create template `name` (version 1, with a trigger secret) or add a version to it."""
        body = spec.model_dump(mode="json", exclude_unset=True)
        return await self.call(TemplatePublic, "PUT", f"/api/templates/{_seg(name)}", json=body)

    async def list_templates(self) -> TemplatesPublic:
        return await self.call(TemplatesPublic, "GET", "/api/templates")

    async def get_template(self, name: str, *, version: int | None = None) -> TemplatePublic:
        """The template at its latest version (or `version`); org admins also get `trigger_secret`."""
        params = {"version": version} if version is not None else None
        return await self.call(TemplatePublic, "GET", f"/api/templates/{_seg(name)}", params=params)

    async def delete_template(self, name: str) -> None:
        await self.send("DELETE", f"/api/templates/{_seg(name)}")

    async def rotate_trigger_secret(self, name: str) -> TriggerSecretPublic:
        """A new trigger secret (org admins); the old one is refused from now on."""
        return await self.call(TriggerSecretPublic, "POST", f"/api/templates/{_seg(name)}/trigger-secret")

    async def run_template(self, name: str, spec: TemplateRun) -> TemplateRunPublic:
        """Run the template with params: `kind` says whether a job or a pipeline was made."""
        body = spec.model_dump(mode="json", exclude_unset=True)
        return await self.call(TemplateRunPublic, "POST", f"/api/templates/{_seg(name)}/run", json=body)

    # ------------------------------------------------------------------ schedules (docs/templates.md)

    async def create_schedule(self, spec: ScheduleCreate) -> SchedulePublic:
        body = spec.model_dump(mode="json", exclude_unset=True)
        return await self.call(SchedulePublic, "POST", "/api/schedules", json=body)

    async def list_schedules(self) -> SchedulesPublic:
        return await self.call(SchedulesPublic, "GET", "/api/schedules")

    async def get_schedule(self, schedule_id: str) -> SchedulePublic:
        return await self.call(SchedulePublic, "GET", f"/api/schedules/{_seg(schedule_id)}")

    async def pause_schedule(self, schedule_id: str, *, paused: bool = True) -> SchedulePublic:
        action = "pause" if paused else "unpause"
        return await self.call(SchedulePublic, "POST", f"/api/schedules/{_seg(schedule_id)}/{action}")

    async def delete_schedule(self, schedule_id: str) -> None:
        await self.send("DELETE", f"/api/schedules/{_seg(schedule_id)}")


def _still_cancelled() -> None:
    """Raise CancelledError if the current task is being cancelled: closing a stream when a
    cancel (Ctrl-C in the CLI) lands can raise a transport error instead, and following must
    then end, not reconnect."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError()
