"""The SDK's one implementation (async): AsyncClient, its resources (jobs, pipelines, boxes,
users, tokens, audit, secrets, webhooks, org, templates, schedules) and the handles they return
(Job, Pipeline).
`boxrun.sdk.Client` is the
same code run from synchronous callers (boxrun.sdk.sync)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel
from pydantic import ValidationError as PydanticValidationError
from pydantic_core import to_json

from boxrun.client import BoxrunClient, DoneEvent, LogEvent
from boxrun.client.api import LOG_PAGE, MAX_TAIL
from boxrun.client.base import DEFAULT_TIMEOUT_S, error_from_answer, unreachable
from boxrun.constants import JobState, PipelineState
from boxrun.errors import BoxrunError, InvalidInput, NotFound
from boxrun.schemas import (
    ArtifactPublic,
    BoxCreate,
    BoxCreated,
    BoxPublic,
    BoxQueuePublic,
    FileRef,
    Health,
    JobCreate,
    JobEventPublic,
    JobPublic,
    LogLinePublic,
    MaintenancePublic,
)
from boxrun.schemas.audit import AuditEntryPublic, JobSpecPublic
from boxrun.schemas.org import OrgQuota, OrgQuotaPublic, OrgRetention, OrgRetentionPublic, OrgUsage
from boxrun.schemas.people import (
    MePublic,
    TokenCreate,
    TokenCreated,
    TokenPublic,
    UserCreate,
    UserCreated,
    UserPublic,
    UserUpdate,
)
from boxrun.schemas.pipelines import PipelineEventPublic, PipelinePublic, PipelineSummary, StepPublic
from boxrun.schemas.schedules import ScheduleCreate, SchedulePublic
from boxrun.schemas.secrets import SecretPublic, SecretPut
from boxrun.schemas.templates import TemplatePublic, TemplatePut, TemplateRun, TemplateRunPublic
from boxrun.schemas.webhooks import WebhookCreate, WebhookCreated, WebhookDeliveryPublic, WebhookPublic
from boxrun.sdk.config import Connection, resolve

CHUNK = 1024 * 1024  # bytes read or written at a time for uploads and downloads
PAGE = 100  # items asked per page by the lazy lists
LogStream = str  # "stdout", "stderr", "output" or "system"
Progress = Callable[[int, int], object]  # (bytes done, bytes in all)


class IntegrityError(BoxrunError):
    """A downloaded artifact does not hash to the SHA-256 the API recorded (the file is removed)."""

    code = "integrity"


M = TypeVar("M", bound=BaseModel)


def _build(model: type[M], fields: Mapping[str, Any]) -> M:
    """`model` from `fields` read as the API reads its body (JSON: "viewer" is a Role), or
    InvalidInput naming the field."""
    try:
        return model.model_validate_json(to_json(dict(fields)))
    except PydanticValidationError as exc:
        raise _refused(exc) from None


def _refused(exc: PydanticValidationError) -> InvalidInput:
    first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid"}
    field = ".".join(str(p) for p in first.get("loc", ())) or "body"
    return InvalidInput(f"{field}: {first.get('msg', 'invalid')}", field=field)


async def _hash_file(path: Path) -> tuple[str, int]:
    def work() -> tuple[str, int]:
        digest, size = hashlib.sha256(), 0
        with path.open("rb") as f:
            while chunk := f.read(CHUNK):
                digest.update(chunk)
                size += len(chunk)
        return digest.hexdigest(), size

    return await asyncio.to_thread(work)


async def _read_chunks(path: Path) -> AsyncIterator[bytes]:
    with path.open("rb") as f:
        while chunk := await asyncio.to_thread(f.read, CHUNK):
            yield chunk


class _Handle:
    """Marks what the sync facade wraps (resources and handles); the rest it returns as is."""

    _sync_wrap = True


# ---------------------------------------------------------------------------------- jobs


class Job(_Handle):
    """A job: its last known state in `model` (the API's JobPublic; its fields read as attributes:
    `job.state`, `job.exit_code`), and what can be done with it."""

    def __init__(self, client: AsyncClient, model: JobPublic) -> None:
        self._client = client
        self.model = model

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_") or name == "model":
            raise AttributeError(name)
        return getattr(self.model, name)

    def __repr__(self) -> str:
        return f"<Job {self.model.id} {self.model.state}>"

    @property
    def id(self) -> str:
        return self.model.id

    @property
    def state(self) -> JobState:
        return self.model.state

    @property
    def done(self) -> bool:
        """The job has ended (completed, failed, cancelled, timed out or unschedulable)."""
        return self.model.state.terminal

    @property
    def ok(self) -> bool:
        """The job completed (its script exited 0)."""
        return self.model.state is JobState.COMPLETED

    async def refresh(self) -> Job:
        """Read the job again; returns this handle, updated."""
        self.model = await self._client.api.get(self.id)
        return self

    async def wait(self, timeout: float | None = None, *, poll_s: float = 0.25, max_poll_s: float = 2.0) -> Job:
        """Until the job has ended; returns this handle, updated. TimeoutError after `timeout`
        seconds (the job goes on: cancel it if that is what you want)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not (await self.refresh()).done:
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"job {self.id} still {self.state} after {timeout:g}s")
            pause = poll_s if deadline is None else min(poll_s, max(0.0, deadline - time.monotonic()))
            await asyncio.sleep(pause)
            poll_s = min(poll_s * 1.5, max_poll_s)
        return self

    async def logs(self, stream: LogStream | None = None, tail: int | None = None) -> list[LogLinePublic]:
        """The stored lines, oldest first: of one stream only (`stdout`, `stderr`, `output`,
        `system`), and only the last `tail` of them when given."""
        if tail == 0:
            return []
        if tail is not None and tail <= MAX_TAIL:  # one request: the API picks the last lines
            page = (await self._client.api.log_page(self.id, stream=stream, tail=tail)).data
            return [line for line in page if stream is None or line.stream == stream][-tail:]
        keep: deque[LogLinePublic] = deque(maxlen=tail)
        after = 0
        while True:
            page = (await self._client.api.log_page(self.id, after=after, stream=stream)).data
            keep.extend(line for line in page if stream is None or line.stream == stream)
            if len(page) < LOG_PAGE:
                return list(keep)
            after = page[-1].seq

    async def follow(self, stream: LogStream | None = None, *, after: int = 0) -> AsyncIterator[LogLinePublic]:
        """The job's lines as they come (those stored first), until the job ends; after a
        dropped connection it reconnects and goes on exactly after the last line it gave.
        Then the handle holds the final state."""
        async for ev in self._client.api.follow(self.id, after=after):
            if isinstance(ev, LogEvent):
                if stream is None or ev.line.stream == stream:
                    yield ev.line
            elif isinstance(ev, DoneEvent):
                break
        await self.refresh()

    async def cancel(self) -> Job:
        """Ask the job to stop (Conflict if it already ended); `wait()` to see it end."""
        self.model = await self._client.api.cancel(self.id)
        return self

    async def rerun(self) -> Job:
        """A new job from this one's frozen spec."""
        return Job(self._client, await self._client.api.rerun(self.id))

    async def delete_outputs(self) -> Job:
        """Delete the transcript and the artifacts of this ended job (its owner or an org admin);
        the job itself stays. Reading them afterwards raises Gone, whose reason says who deleted
        them and when. Conflict while the job still runs; again is harmless. Returns this handle,
        updated (`outputs_deleted_at` set)."""
        await self._client.api.delete_outputs(self.id)
        return await self.refresh()

    async def events(self) -> list[JobEventPublic]:
        """The state transitions, oldest first."""
        return (await self._client.api.events(self.id)).data

    async def spec(self) -> JobSpecPublic:
        """The frozen spec the job ran with."""
        return await self._client.api.spec(self.id)

    async def artifacts(self) -> list[ArtifactPublic]:
        """Every artifact (path, size, SHA-256), by path."""
        found: list[ArtifactPublic] = []
        while True:
            page = await self._client.api.artifacts(self.id, limit=PAGE, offset=len(found))
            found.extend(page.data)
            if not page.data or len(found) >= page.count:
                return found

    async def download(self, path: str, to: str | Path | None = None, progress: Progress | None = None) -> Path:
        """Download an artifact to `to` (a file, or a folder to put it in by its base name; the
        current folder by default), calling `progress(done, total)` as bytes arrive. The bytes
        are checked against the SHA-256 the API recorded before the file takes its name;
        IntegrityError (and no file) if they differ. Returns the file's path."""
        entry = next((a for a in await self.artifacts() if a.path == path), None)
        if entry is None:
            raise NotFound(f"job {self.id} has no artifact {path!r}")
        target = Path(to) if to is not None else Path.cwd()
        if target.is_dir() or (to is not None and str(to).endswith(("/", "\\"))):
            target = target / Path(path).name
        target.parent.mkdir(parents=True, exist_ok=True)
        url = await self._client.api.download_url(self.id, path)
        partial = target.with_name(f".{target.name}.part")
        digest, done = hashlib.sha256(), 0
        try:
            # storage's presigned URL: no API token sent there
            timeout = httpx.Timeout(DEFAULT_TIMEOUT_S, read=None)
            async with httpx.AsyncClient(timeout=timeout, transport=self._client.transport) as raw:
                try:
                    async with raw.stream("GET", url) as resp:
                        if resp.status_code >= 400:
                            await resp.aread()
                            raise error_from_answer(resp)
                        with partial.open("wb") as out:
                            async for chunk in resp.aiter_bytes(CHUNK):
                                digest.update(chunk)
                                await asyncio.to_thread(out.write, chunk)
                                done += len(chunk)
                                if progress is not None:
                                    progress(done, entry.size)
                except httpx.HTTPError as exc:
                    raise unreachable(url.split("?", 1)[0], exc) from exc
            if digest.hexdigest() != entry.sha256 or done != entry.size:
                raise IntegrityError(
                    f"{path} of job {self.id}: got {done} bytes hashing to {digest.hexdigest()}, "
                    f"expected {entry.size} bytes hashing to {entry.sha256}"
                )
            partial.replace(target)
        finally:
            partial.unlink(missing_ok=True)
        return target


class Jobs(_Handle):
    """`client.jobs`: submit, get, list."""

    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def _file(self, dest: str, content: bytes | str | Path) -> str | dict[str, Any]:
        if isinstance(content, str):
            return content
        if isinstance(content, bytes | bytearray | memoryview):
            data = bytes(content)
            got = await self._client.api.upload(data, sha256=hashlib.sha256(data).hexdigest())
        elif isinstance(content, Path):
            sha, _ = await _hash_file(content)
            got = await self._client.api.upload(_read_chunks(content), sha256=sha)
        else:
            raise InvalidInput(
                f"files[{dest!r}]: give its text (str), its bytes or a Path, not {type(content).__name__}",
                field=f"files.{dest}",
            )
        return FileRef(sha256=got.sha256, size=got.size).model_dump()

    async def submit(
        self,
        script: str,
        *,
        box: str | None = None,
        box_group: str | None = None,
        requires: list[str] | None = None,
        files: Mapping[str, bytes | str | Path] | None = None,
        env: Mapping[str, str] | None = None,
        timeout_s: int | None = None,
        lock: bool | None = None,
        labels: Mapping[str, str] | None = None,
        priority: int | None = None,
        cancel_grace_s: int | None = None,
        queue_timeout_s: int | None = None,
        idempotency_key: str | None = None,
    ) -> Job:
        """Submit a job to a box (`box=`) or to any box of a group with the capabilities it
        `requires` (`box_group=`). `files` maps a workspace path to its text (sent inline), its
        bytes or a Path (both uploaded first, streamed, through POST /api/files). Returns its
        Job handle; the API's refusals raise InvalidInput (with `field`), NotFound, Forbidden."""
        fields: dict[str, Any] = {"script": script}
        for key, value in (
            ("box", box),
            ("box_group", box_group),
            ("requires", requires),
            ("env", dict(env) if env is not None else None),
            ("timeout_s", timeout_s),
            ("lock", lock),
            ("priority", priority),
            ("cancel_grace_s", cancel_grace_s),
            ("queue_timeout_s", queue_timeout_s),
            ("idempotency_key", idempotency_key),
        ):
            if value is not None:
                fields[key] = value
        inline = {dest: c for dest, c in (files or {}).items() if isinstance(c, str)}
        _build(JobCreate, {**fields, "files": inline})  # the API's own rules, checked before any upload
        if files:
            fields["files"] = {dest: await self._file(dest, content) for dest, content in files.items()}
        body = _build(JobCreate, fields).model_dump(mode="json", exclude_unset=True)
        if labels:  # sent as given: the API checks them (older APIs without labels refuse the field)
            body["labels"] = dict(labels)
        job = await self._client.api.call(JobPublic, "POST", "/api/jobs", json=body)
        return Job(self._client, job)

    async def get(self, job_id: str) -> Job:
        """The job; NotFound if there is none with that id (in your org)."""
        return Job(self._client, await self._client.api.get(job_id))

    async def delete_outputs(self, job_id: str) -> None:
        """Delete an ended job's transcript and artifacts (as `Job.delete_outputs`)."""
        await self._client.api.delete_outputs(job_id)

    async def list(
        self,
        *,
        state: JobState | str | None = None,
        box: str | None = None,
        owner: str | None = None,
        mine: bool = False,
        pipeline_id: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        labels: Mapping[str, str] | None = None,
        limit: int | None = None,
        page_size: int = PAGE,
    ) -> AsyncIterator[Job]:
        """The jobs that match, newest first, read page by page as you iterate (at most `limit`).
        `mine` is `owner="me"`; `labels` must all match. Pages follow the API's `next_cursor`
        where it gives one, else offsets (a job seen on an earlier page is not given twice).
        `since`/`until` (created_at) and `labels` are also checked here, so an API that does not
        know them yet cannot widen the answer."""
        if mine:
            owner = "me"
        seen: set[str] = set()
        cursor: str | None = None
        offset = given = 0
        while True:
            answer = await self._client.api.list_jobs_raw(
                state=state,
                box=box,
                owner=owner,
                pipeline_id=pipeline_id,
                since=since,
                until=until,
                labels=dict(labels) if labels else None,
                limit=page_size,
                offset=offset,
                cursor=cursor,
            )
            rows = answer.get("data", [])
            for row in rows:
                model = JobPublic.model_validate(row)
                if model.id in seen or not _matches(row, model, since, until, labels):
                    continue
                seen.add(model.id)
                yield Job(self._client, model)
                given += 1
                if limit is not None and given >= limit:
                    return
            cursor = answer.get("next_cursor")
            if cursor is None:
                offset += len(rows)
                if len(rows) < page_size or offset >= int(answer.get("count", 0)):
                    return


def _matches(
    row: dict[str, Any],
    model: JobPublic,
    since: datetime | None,
    until: datetime | None,
    labels: Mapping[str, str] | None,
) -> bool:
    if since is not None and model.created_at < since:
        return False
    if until is not None and model.created_at >= until:
        return False
    if labels:
        have = row.get("labels") or {}
        return all(have.get(k) == v for k, v in labels.items())
    return True


# ---------------------------------------------------------------------------------- pipelines


def _definition(definition: Mapping[str, Any] | str | Path) -> tuple[bytes, str]:
    """(body, media type) of a definition given as a dict, YAML (or JSON) text, or a file."""
    if isinstance(definition, Mapping):
        return json.dumps(definition).encode(), "application/json"
    if isinstance(definition, Path):
        media = "application/json" if definition.suffix.lower() == ".json" else "application/yaml"
        return definition.read_bytes(), media
    if isinstance(definition, str):
        if "\n" not in definition and definition.endswith((".yaml", ".yml", ".json")):
            return _definition(Path(definition))  # a file name
        return definition.encode(), "application/yaml"  # YAML text (JSON is YAML too)
    raise InvalidInput(
        f"a pipeline definition is a dict, YAML text or a file path, not {type(definition).__name__}",
        field="definition",
    )


class Pipeline(_Handle):
    """A pipeline: its last known state in `model` (the API's PipelinePublic, with its steps)."""

    def __init__(self, client: AsyncClient, model: PipelinePublic) -> None:
        self._client = client
        self.model = model

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_") or name == "model":
            raise AttributeError(name)
        return getattr(self.model, name)

    def __repr__(self) -> str:
        return f"<Pipeline {self.model.id} {self.model.state}>"

    @property
    def id(self) -> str:
        return self.model.id

    @property
    def state(self) -> PipelineState:
        return self.model.state

    @property
    def done(self) -> bool:
        return self.model.state.terminal

    @property
    def ok(self) -> bool:
        return self.model.state is PipelineState.COMPLETED

    def step(self, name: str) -> StepPublic:
        """One step as last read (KeyError if the pipeline has no such step)."""
        for step in self.model.steps:
            if step.name == name:
                return step
        raise KeyError(name)

    async def job(self, step: str) -> Job:
        """The job of the step's latest attempt (LookupError while it has none)."""
        job_id = self.step(step).job_id
        if job_id is None:
            raise LookupError(f"step {step!r} of pipeline {self.id} has no job (yet)")
        return await self._client.jobs.get(job_id)

    async def refresh(self) -> Pipeline:
        self.model = await self._client.api.get_pipeline(self.id)
        return self

    async def wait(self, timeout: float | None = None) -> Pipeline:
        """Until the pipeline has ended (following its events, not polling); returns this handle,
        updated. TimeoutError after `timeout` seconds."""

        async def drain() -> None:
            async for _ in self.follow():
                pass

        if not self.done:
            try:
                await asyncio.wait_for(drain(), timeout)
            except TimeoutError:
                await self.refresh()
                raise TimeoutError(f"pipeline {self.id} still {self.state} after {timeout:g}s") from None
        return await self.refresh()

    async def follow(self, *, after: int = 0) -> AsyncIterator[PipelineEventPublic]:
        """Its step and pipeline state changes as they happen (those already recorded first),
        until it ends; resumes after a dropped connection. Then the handle holds the final
        state."""
        async for ev in self._client.api.pipeline_events(self.id, after=after):
            if ev.event in ("step", "pipeline"):
                yield PipelineEventPublic.model_validate(ev.data)
        await self.refresh()

    async def cancel(self) -> Pipeline:
        self.model = await self._client.api.cancel_pipeline(self.id)
        return self

    async def rerun(self, *, only_failed: bool = False) -> Pipeline:
        """A new pipeline from this one's definition (with only_failed: completed steps reused)."""
        return Pipeline(self._client, await self._client.api.rerun_pipeline(self.id, only_failed=only_failed))

    async def jobs(self) -> list[Job]:
        """Every attempt's job, newest first."""
        return [job async for job in self._client.jobs.list(pipeline_id=self.id)]


class Pipelines(_Handle):
    """`client.pipelines`: submit, get, list."""

    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def submit(self, definition: Mapping[str, Any] | str | Path) -> Pipeline:
        """Submit a definition (docs/pipelines.md): a dict, YAML text, or a file (a Path, or a
        str ending in .yaml/.yml/.json)."""
        body, media = _definition(definition)
        return Pipeline(self._client, await self._client.api.submit_pipeline(body, media_type=media))

    async def get(self, pipeline_id: str) -> Pipeline:
        return Pipeline(self._client, await self._client.api.get_pipeline(pipeline_id))

    async def list(
        self, *, state: PipelineState | str | None = None, limit: int | None = None, page_size: int = PAGE
    ) -> AsyncIterator[PipelineSummary]:
        """The pipelines, newest first, page by page (get one for its steps)."""
        offset = 0
        while True:
            page = await self._client.api.list_pipelines(state=state, limit=page_size, offset=offset)
            for summary in page.data:
                yield summary
                offset += 1
                if limit is not None and offset >= limit:
                    return
            if len(page.data) < page_size or offset >= page.count:
                return


# ---------------------------------------------------------------------------------- boxes, people


class Boxes(_Handle):
    """`client.boxes`: list, get, queue, maintenance, register (admin), rotate_token (admin)."""

    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def list(self) -> list[BoxPublic]:
        return (await self._client.api.list_boxes()).data

    async def get(self, name: str) -> BoxPublic:
        return await self._client.api.get_box(name)

    async def queue(self, name: str) -> BoxQueuePublic:
        return await self._client.api.box_queue(name)

    async def maintenance(self, name: str, on: bool | None = None, *, reason: str = "manual") -> MaintenancePublic:
        """The box's maintenance; with `on`, switch it first (admin)."""
        if on is None:
            return await self._client.api.maintenance(name)
        return await self._client.api.set_maintenance(name, on, reason=reason)

    async def register(self, name: str, **fields: Any) -> BoxCreated:
        """Register a box (admin); the answer holds its node token, shown this once."""
        spec = _build(BoxCreate, {"name": name, **fields})
        return await self._client.api.register_box(spec)

    async def rotate_token(self, name: str) -> BoxCreated:
        return await self._client.api.rotate_token(name)


class Users(_Handle):
    """`client.users`: me, list, create, update, disable (user admins)."""

    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def me(self) -> MePublic:
        return await self._client.api.me()

    async def list(self, *, org: str | None = None) -> list[UserPublic]:
        return (await self._client.api.list_users(org=org)).data

    async def create(self, name: str, role: str, *, org: str | None = None) -> UserCreated:
        spec = _build(UserCreate, {"name": name, "role": role, **({"org": org} if org else {})})
        return await self._client.api.create_user(spec)

    async def update(self, name: str, *, role: str | None = None, disabled: bool | None = None) -> UserPublic:
        fields = {k: v for k, v in (("role", role), ("disabled", disabled)) if v is not None}
        spec = _build(UserUpdate, fields)
        return await self._client.api.update_user(name, spec)

    async def disable(self, name: str) -> UserPublic:
        """Disable the user: their tokens stop working and their streams end."""
        return await self.update(name, disabled=True)


class Tokens(_Handle):
    """`client.tokens`: list, create, revoke."""

    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def list(self, *, org: str | None = None) -> list[TokenPublic]:
        return (await self._client.api.list_tokens(org=org)).data

    async def create(
        self, user: str | None = None, *, label: str = "", expires_in_s: int | None = None
    ) -> TokenCreated:
        """A new token for `user` (yourself by default); its secret is in the answer, this once."""
        name = user or (await self._client.api.me()).name
        spec = _build(TokenCreate, {"label": label, **({"expires_in_s": expires_in_s} if expires_in_s else {})})
        return await self._client.api.create_token(name, spec)

    async def revoke(self, token_id: str) -> None:
        await self._client.api.revoke_token(token_id)


class Audit(_Handle):
    """`client.audit`: the audit log (admins)."""

    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def list(
        self,
        *,
        job_id: str | None = None,
        actor: str | None = None,
        action: str | None = None,
        box: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int | None = None,
        page_size: int = PAGE,
    ) -> AsyncIterator[AuditEntryPublic]:
        """Entries, newest first, page by page."""
        cursor: str | None = None
        given = 0
        while True:
            page = await self._client.api.audit(
                job_id=job_id,
                actor=actor,
                action=action,
                box=box,
                since=since,
                until=until,
                limit=page_size,
                cursor=cursor,
            )
            for entry in page.data:
                yield entry
                given += 1
                if limit is not None and given >= limit:
                    return
            cursor = page.next_cursor
            if cursor is None:
                return


# ---------------------------------------------------------------------------------- secrets


class Secrets(_Handle):
    """`client.secrets`: list names (operators and admins), put and delete (admins). A job's env
    refers to a secret as `${{ secrets.NAME }}`; its value never comes back from the API."""

    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def list(self) -> list[SecretPublic]:
        return (await self._client.api.list_secrets()).data

    async def put(self, name: str, value: str) -> None:
        """Create or replace secret `name` of your org with `value` (at most 64 KiB, no NUL)."""
        await self._client.api.put_secret(name, _build(SecretPut, {"value": value}))

    async def delete(self, name: str) -> None:
        await self._client.api.delete_secret(name)


# ---------------------------------------------------------------------------------- webhooks


class Webhooks(_Handle):
    """`client.webhooks` (admins): create, list, get, delete, deliveries, redeliver (docs/webhooks.md)."""

    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def create(self, url: str, events: list[str]) -> WebhookCreated:
        """A webhook of your org; the answer's `secret` (the signing key) is shown this once."""
        spec = _build(WebhookCreate, {"url": url, "events": events})
        return await self._client.api.create_webhook(spec)

    async def list(self) -> list[WebhookPublic]:
        return (await self._client.api.list_webhooks()).data

    async def get(self, webhook_id: str) -> WebhookPublic:
        return await self._client.api.get_webhook(webhook_id)

    async def delete(self, webhook_id: str) -> None:
        await self._client.api.delete_webhook(webhook_id)

    async def deliveries(
        self, webhook_id: str, *, limit: int | None = None, page_size: int = PAGE
    ) -> AsyncIterator[WebhookDeliveryPublic]:
        """The webhook's deliveries, newest first, each with every attempt, page by page."""
        cursor: str | None = None
        given = 0
        while True:
            page = await self._client.api.webhook_deliveries(webhook_id, limit=page_size, cursor=cursor)
            for delivery in page.data:
                yield delivery
                given += 1
                if limit is not None and given >= limit:
                    return
            cursor = page.next_cursor
            if cursor is None:
                return

    async def redeliver(self, webhook_id: str, delivery_id: str) -> WebhookDeliveryPublic:
        """Send a delivery again: the same delivery id and body, a fresh signature."""
        return await self._client.api.redeliver(webhook_id, delivery_id)


# ---------------------------------------------------------------------------------- org policy


class Org(_Handle):
    """`client.org`: your org's keeping policy (docs/retention.md): retention and quota (any member
    reads them, admins set them) and usage."""

    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def retention(self) -> OrgRetentionPublic:
        """Days after a job ended that its transcript, its artifacts and the job itself are kept
        (None: forever), and the Temporal Schedule that enforces them."""
        return await self._client.api.org_retention()

    async def set_retention(
        self, *, logs_days: int | None = None, artifacts_days: int | None = None, jobs_days: int | None = None
    ) -> OrgRetentionPublic:
        """Replace the whole retention policy (admins), as PUT /api/org/retention does: a day count
        left out (None) keeps that kind forever. To change one, pass the others from `retention()`."""
        spec = _build(OrgRetention, {"logs_days": logs_days, "artifacts_days": artifacts_days, "jobs_days": jobs_days})
        return await self._client.api.set_org_retention(spec)

    async def quota(self) -> OrgQuotaPublic:
        """The storage quota (bytes; None: none) and the per-job transcript cap (None: the
        deployment's default, `default_transcript_cap_bytes`)."""
        return await self._client.api.org_quota()

    async def set_quota(
        self, *, storage_bytes: int | None = None, transcript_cap_bytes: int | None = None
    ) -> OrgQuotaPublic:
        """Replace the quota (admins): None storage_bytes is no quota, None transcript_cap_bytes
        the deployment's default cap (at least 64 KiB when given)."""
        spec = _build(OrgQuota, {"storage_bytes": storage_bytes, "transcript_cap_bytes": transcript_cap_bytes})
        return await self._client.api.set_org_quota(spec)

    async def usage(self) -> OrgUsage:
        """What the org keeps now: `storage_bytes` (artifacts and log archives: what the quota
        counts) and `transcript_bytes` (lines in Postgres)."""
        return await self._client.api.org_usage()


# ---------------------------------------------------------------------------------- templates, schedules


class Templates(_Handle):
    """`client.templates` (docs/templates.md): presets with params. Every role reads them;
    operators and admins put and run them; the trigger secret is for org admins."""

    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def put(
        self,
        name: str,
        *,
        job: Mapping[str, Any] | None = None,
        pipeline: Mapping[str, Any] | str | Path | None = None,
        params: Mapping[str, Mapping[str, Any]] | None = None,
        description: str | None = None,
    ) -> TemplatePublic:
        """Create template `name` (version 1; admins then find its `trigger_secret` in `get`) or
        add a version to it. Exactly one of `job` (as `jobs.submit` would send it: a dict of
        POST /api/jobs fields) or `pipeline` (a definition: a dict, YAML text or a file, as
        `pipelines.submit` takes it; YAML needs PyYAML). `params`: name -> {"type": "string" |
        "int" | "bool" | "choice", "default"?, "required"?, "choices"?, "description"?}."""
        fields: dict[str, Any] = {}
        if job is not None:
            fields["job"] = dict(job)
        if pipeline is not None:
            fields["pipeline"] = _pipeline_dict(pipeline)
        if params is not None:
            fields["params"] = {k: dict(v) for k, v in params.items()}
        if description is not None:
            fields["description"] = description
        return await self._client.api.put_template(name, _build(TemplatePut, fields))

    async def list(self) -> list[TemplatePublic]:
        """Your org's templates at their latest version, by name."""
        return (await self._client.api.list_templates()).data

    async def get(self, name: str, version: int | None = None) -> TemplatePublic:
        """The template at its latest version (or `version`)."""
        return await self._client.api.get_template(name, version=version)

    async def delete(self, name: str) -> None:
        """Delete it with every version (Conflict while a schedule uses it)."""
        await self._client.api.delete_template(name)

    async def rotate_trigger_secret(self, name: str) -> str:
        """A new trigger secret (org admins), returned; the old one is refused from now on."""
        return (await self._client.api.rotate_trigger_secret(name)).trigger_secret

    async def run(
        self, name: str, params: Mapping[str, Any] | None = None, version: int | None = None
    ) -> Job | Pipeline:
        """Run the template (its latest version, or `version`) with `params` (JSON values of the
        declared types: "b1", 5, True). Returns the Job or the Pipeline it made (the answer's
        `kind` decides); a bad param raises InvalidInput whose `field` is body.params.NAME."""
        fields: dict[str, Any] = {"params": dict(params or {})}
        if version is not None:
            fields["version"] = version
        made = await self._client.api.run_template(name, _build(TemplateRun, fields))
        return _made(self._client, made)


def _made(client: AsyncClient, made: TemplateRunPublic) -> Job | Pipeline:
    if made.kind == "job" and made.job is not None:
        return Job(client, made.job)
    if made.kind == "pipeline" and made.pipeline is not None:
        return Pipeline(client, made.pipeline)
    raise BoxrunError(f"a template run answered kind {made.kind!r} without its {made.kind}")


def _pipeline_dict(definition: Mapping[str, Any] | str | Path) -> dict[str, Any]:
    """A pipeline definition as the JSON object a template holds."""
    if isinstance(definition, Mapping):
        return dict(definition)
    body, media = _definition(definition)
    if media == "application/json":
        try:
            loaded = json.loads(body)
        except ValueError as exc:
            raise InvalidInput(f"pipeline: not JSON ({exc})", field="pipeline") from None
    else:
        try:
            from boxrun.pipelines.yamlload import load_yaml
        except ImportError:  # the base install has no YAML parser
            raise InvalidInput(
                "a YAML definition needs PyYAML (pip install pyyaml); or give a dict", field="pipeline"
            ) from None
        try:
            loaded = load_yaml(body.decode())
        except ValueError as exc:  # YamlError, with the line and column; or not UTF-8
            raise InvalidInput(f"pipeline: {exc}", field="pipeline") from None
    if not isinstance(loaded, dict):
        raise InvalidInput("a pipeline definition is a mapping", field="pipeline")
    return loaded


class Schedules(_Handle):
    """`client.schedules` (docs/templates.md, "Schedules"): a template run on a cron (UTC) by a
    Temporal Schedule. Every role reads them; operators and admins create them; pause, unpause
    and delete: their creator or an org admin."""

    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def create(
        self,
        *,
        template: str,
        cron: str,
        params: Mapping[str, Any] | None = None,
        version: int | None = None,
    ) -> SchedulePublic:
        """Run `template` with `params` on `cron` ("0 3 * * *", "@daily"); `version` pins one
        (else each run takes the latest). Refused params, crons and templates raise InvalidInput."""
        fields: dict[str, Any] = {"template": template, "cron": cron, "params": dict(params or {})}
        if version is not None:
            fields["version"] = version
        return await self._client.api.create_schedule(_build(ScheduleCreate, fields))

    async def list(self) -> list[SchedulePublic]:
        """Your org's schedules, oldest first."""
        return (await self._client.api.list_schedules()).data

    async def get(self, schedule_id: str) -> SchedulePublic:
        """One schedule (with its next run times where the API gives them)."""
        return await self._client.api.get_schedule(schedule_id)

    async def pause(self, schedule_id: str) -> SchedulePublic:
        """No runs until unpaused (pausing a paused schedule is no error)."""
        return await self._client.api.pause_schedule(schedule_id, paused=True)

    async def unpause(self, schedule_id: str) -> SchedulePublic:
        return await self._client.api.pause_schedule(schedule_id, paused=False)

    async def delete(self, schedule_id: str) -> None:
        """Delete it and its Temporal Schedule; the runs it made stay."""
        await self._client.api.delete_schedule(schedule_id)


# ---------------------------------------------------------------------------------- the client


class AsyncClient(_Handle):
    """The boxrun API from asyncio code:

        async with AsyncClient() as client:
            job = await client.jobs.submit("echo hi", box="local-1")
            async for line in job.follow():
                print(line.text)

    url and token: the arguments, else BOXRUN_URL/BOXRUN_TOKEN, else the saved profile, else a
    running `boxrun dev` stack (boxrun.sdk.config). `api` is the typed HTTP client underneath."""

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT_S,
        http: httpx.AsyncClient | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        """`http`: an httpx client made elsewhere (its base URL and headers are used; it is not
        closed here); `transport`: an httpx transport for every request (a test's mock)."""
        self.transport = transport
        if http is not None:  # a client made elsewhere (an in-process app in a test)
            self.connection = Connection(str(http.base_url).rstrip("/"), "", "http", "http")
            self.api = BoxrunClient.over(http)
        else:
            self.connection = resolve(url, token)
            self.api = BoxrunClient(self.connection.url, self.connection.token, timeout=timeout, transport=transport)
        self.jobs = Jobs(self)
        self.pipelines = Pipelines(self)
        self.boxes = Boxes(self)
        self.users = Users(self)
        self.tokens = Tokens(self)
        self.audit = Audit(self)
        self.secrets = Secrets(self)
        self.webhooks = Webhooks(self)
        self.org = Org(self)
        self.templates = Templates(self)
        self.schedules = Schedules(self)

    def __repr__(self) -> str:
        return f"<AsyncClient {self.url}>"

    @property
    def url(self) -> str:
        return self.connection.url

    async def health(self) -> Health:
        return await self.api.health()

    async def me(self) -> MePublic:
        return await self.api.me()

    async def aclose(self) -> None:
        await self.api.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
