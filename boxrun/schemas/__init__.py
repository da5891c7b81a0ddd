"""REST schemas, named by role: JobCreate (in), JobPublic / JobsPublic (out), and friends."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    GetJsonSchemaHandler,
    StringConstraints,
    Tag,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

from boxrun.constants import JobState
from boxrun.schemas.org import MAX_BYTES
from boxrun.workspace_paths import MAX_PATH_LEN, NORMAL_PATH_PATTERN, clean_relative_path, refuse_unstorable

# ---------------------------------------------------------------- reusable field types
# Every rule is checked in Python AND stated in the JSON schema, so the OpenAPI document says
# exactly what is accepted (schemathesis holds the two to each other in tests/api).

MAX_BIGINT = 2**63 - 1  # Postgres bigint: seqs, offsets, ids
# Characters no Postgres text column can hold (NUL) or that are not Unicode text (lone UTF-16
# surrogates, which JSON's \ud800 escapes can produce): refused in every string field.
UNSTORABLE = r"\x00\ud800-\udfff"
CLEAN_PATTERN = rf"^[^{UNSTORABLE}]*$"


@dataclass(frozen=True)
class SchemaRule:
    """Adds keywords to a field's JSON schema (a rule checked by a validator, stated for clients)."""

    keywords: tuple[tuple[str, Any], ...]

    def __get_pydantic_json_schema__(self, core_schema: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        schema = handler(core_schema)
        schema.update(dict(self.keywords))
        return schema


def rule(**keywords: Any) -> SchemaRule:
    return SchemaRule(tuple(keywords.items()))


def _clean(value: str) -> str:
    refuse_unstorable(value)
    return value


# A string without NUL or lone surrogates: the base of every free-text field.
CleanStr = Annotated[str, AfterValidator(_clean), rule(pattern=CLEAN_PATTERN)]

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"
Name = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]
Capability = Annotated[
    str,
    StringConstraints(min_length=1, max_length=128, pattern=r"^[^\s,]+$"),
    AfterValidator(_clean),
    rule(pattern=rf"^[^\s,{UNSTORABLE}]+$"),
]
ENV_NAME_PATTERN = r"^(?!BOXRUN_)[A-Za-z_][A-Za-z0-9_]*$"
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
LABEL_KEY_PATTERN = r"^[a-z][a-z0-9_.-]{0,62}$"
_LABEL_KEY = re.compile(LABEL_KEY_PATTERN)
MAX_LABELS = 32
MAX_LABEL_VALUE = 200
BigInt = Annotated[int, Field(ge=0, le=MAX_BIGINT)]
BigId = Annotated[int, Field(ge=1, le=MAX_BIGINT)]

# Instants: RFC 3339 with an explicit offset, years 1970..8999 (every such instant fits Postgres'
# timestamptz and Python's datetime in every timezone). Only strings: a bare number is no date.
TIMESTAMP_PATTERN = (
    r"^(19[7-9][0-9]|[2-8][0-9]{3})-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])"
    r"[Tt]([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]{1,6})?([Zz]|[+-]([01][0-9]|2[0-3]):[0-5][0-9])$"
)
_TIMESTAMP = re.compile(TIMESTAMP_PATTERN)


def _timestamp_text(value: Any) -> Any:
    if isinstance(value, datetime):  # from Python callers, not from the wire
        return value
    if not isinstance(value, str) or not _TIMESTAMP.match(value):
        raise ValueError("must be an RFC 3339 date-time with a timezone, years 1970..8999 (e.g. 2026-11-22T10:00:00Z)")
    return datetime.fromisoformat(value.upper())  # the pattern admits nothing fromisoformat refuses


def _aware(value: datetime) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("needs a timezone (e.g. 2026-11-22T10:00:00Z)")
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise ValueError("is out of range") from None


Timestamp = Annotated[
    datetime,
    BeforeValidator(_timestamp_text),
    AfterValidator(_aware),
    rule(pattern=TIMESTAMP_PATTERN),
]


def _normal_path(raw: str) -> str:
    cleaned = clean_relative_path(raw)
    if cleaned != raw:
        raise ValueError(f"path {raw[:80]!r} is not in normal form: write {cleaned[:80]!r}")
    return raw


# A file in the job's workspace: relative, normalised ('a/b.txt', not './a//b.txt'), no '..'.
WorkspacePath = Annotated[
    str, AfterValidator(_normal_path), rule(pattern=NORMAL_PATH_PATTERN, minLength=1, maxLength=MAX_PATH_LEN)
]
# Dict keys: the rules go to the object's propertyNames (pydantic would state a key's pattern as
# patternProperties, which lets any other key through).
_FileKey = Annotated[str, AfterValidator(_normal_path)]
_FILE_KEYS = rule(propertyNames={"pattern": NORMAL_PATH_PATTERN, "minLength": 1, "maxLength": MAX_PATH_LEN})
_ENV_KEYS = rule(propertyNames={"pattern": ENV_NAME_PATTERN})
_LABEL_KEYS = rule(propertyNames={"pattern": LABEL_KEY_PATTERN})


def checked_labels(labels: dict[str, str]) -> dict[str, str]:
    """`labels` sorted by key, each key checked against LABEL_KEY_PATTERN (ValueError if not)."""
    for key in labels:
        if not _LABEL_KEY.fullmatch(key):
            raise ValueError(f"label key {key[:80]!r} does not match {LABEL_KEY_PATTERN}")
    return dict(sorted(labels.items()))


MAX_SCRIPT_BYTES = 256 * 1024
MAX_SPEC_BYTES = 512 * 1024  # script + env (files have their own total: max_job_files_bytes)
MAX_TIMEOUT_S = 7 * 24 * 3600


SHA256_PATTERN = r"^[0-9a-f]{64}$"
Sha256 = Annotated[str, StringConstraints(pattern=SHA256_PATTERN)]


class FileRef(BaseModel):
    """A job file whose bytes were uploaded with POST /api/files: named by its SHA-256 and size."""

    model_config = ConfigDict(extra="forbid", strict=True)

    sha256: Sha256 = Field(description="lower-case hex SHA-256 of the bytes, as POST /api/files answered it")
    size: int = Field(ge=0, le=MAX_BIGINT, description="bytes")


class FrozenFileRef(BaseModel):
    """An uploaded file as the frozen spec keeps it (`file_refs`): its object key in storage."""

    key: str
    size: int
    sha256: str


def _file_kind(value: Any) -> str | None:
    if isinstance(value, str):
        return "text"
    if isinstance(value, dict | FileRef):
        return "upload"
    return None


# A job file: its text inline (a string), or a reference to an upload (an object). Errors name
# the kind: body.files.<path>.text, body.files.<path>.upload.sha256.
JobFile = Annotated[
    Annotated[CleanStr, Tag("text")] | Annotated[FileRef, Tag("upload")],
    Discriminator(
        _file_kind,
        custom_error_type="file_kind",
        custom_error_message="a file is its text (a string) or an upload reference ({sha256, size})",
    ),
]


class UploadPublic(BaseModel):
    """POST /api/files answer: reference the bytes in a job's `files` with exactly this object."""

    sha256: str
    size: int


class JobCreate(BaseModel):
    """POST /api/jobs body. Exactly one of `box` or `box_group` (the other absent or null). The
    script is at most 256 KiB and script + files + env at most 512 KiB, counted in UTF-8 bytes."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,  # JSON types as the schema states them: no "5" for 5, no 0 for false
        json_schema_extra={
            "oneOf": [
                {"required": ["box"], "properties": {"box": {"type": "string"}}},
                {"required": ["box_group"], "properties": {"box_group": {"type": "string"}}},
            ]
        },
    )

    box: Name | None = None
    box_group: Name | None = None
    requires: list[Capability] = Field(default_factory=list, max_length=64)
    script: CleanStr = Field(min_length=1, description=f"at most {MAX_SCRIPT_BYTES} bytes as UTF-8")
    files: Annotated[dict[_FileKey, JobFile], _FILE_KEYS] = Field(
        default_factory=dict,
        max_length=1000,
        description=(
            "workspace path (normalised, relative) -> its UTF-8 text, or a reference to bytes uploaded "
            "with POST /api/files ({sha256, size}); all files together at most max_job_files_bytes "
            "(1 GiB by default)"
        ),
    )
    env: Annotated[dict[str, CleanStr], _ENV_KEYS] = Field(
        default_factory=dict, max_length=500, description="variable name -> value; the BOXRUN_ prefix is reserved"
    )
    timeout_s: int = Field(default=3600, ge=1, le=MAX_TIMEOUT_S)
    lock: bool = False
    priority: int = Field(default=0, ge=-1000, le=1000)
    cancel_grace_s: int = Field(default=10, ge=0, le=3600, description="SIGTERM to SIGKILL grace on cancel")
    queue_timeout_s: int = Field(
        default=86400, ge=1, le=MAX_TIMEOUT_S, description="the job ends unschedulable if no box takes it within this"
    )
    idempotency_key: CleanStr | None = Field(default=None, min_length=1, max_length=200)
    labels: Annotated[dict[str, Annotated[CleanStr, Field(max_length=MAX_LABEL_VALUE)]], _LABEL_KEYS] = Field(
        default_factory=dict,
        max_length=MAX_LABELS,
        description=f"up to {MAX_LABELS} `key: value` strings (key `{LABEL_KEY_PATTERN}`, value at most "
        f"{MAX_LABEL_VALUE} characters); list jobs by them with `GET /api/jobs?label=key:value`",
    )

    @field_validator("labels")
    @classmethod
    def _label_keys(cls, v: dict[str, str]) -> dict[str, str]:
        return checked_labels(v)

    @field_validator("script")
    @classmethod
    def _script_size(cls, v: str) -> str:
        if len(v.encode()) > MAX_SCRIPT_BYTES:
            raise ValueError(f"script is larger than {MAX_SCRIPT_BYTES} bytes")
        return v

    @field_validator("env")
    @classmethod
    def _env_names(cls, v: dict[str, str]) -> dict[str, str]:
        for name in v:
            if not _ENV_NAME.fullmatch(name):
                raise ValueError(f"env name {name[:80]!r} is not a valid variable name")
            if name.startswith("BOXRUN_"):
                raise ValueError(f"env name {name[:80]!r}: the BOXRUN_ prefix is reserved")
        return v

    @field_validator("requires")
    @classmethod
    def _dedupe(cls, v: list[str]) -> list[str]:
        return sorted(set(v))

    @model_validator(mode="after")
    def _target_and_size(self) -> JobCreate:
        if (self.box is None) == (self.box_group is None):
            raise ValueError("give exactly one of 'box' or 'box_group'")
        size = len(self.script.encode())
        size += sum(len(k.encode()) + len(c.encode()) for k, c in self.env.items())
        if size > MAX_SPEC_BYTES:
            raise ValueError(f"script + env is {size} bytes, over the {MAX_SPEC_BYTES} byte limit")
        return self

    def inline_files(self) -> dict[str, str]:
        return {path: f for path, f in self.files.items() if isinstance(f, str)}

    def file_references(self) -> dict[str, FileRef]:
        return {path: f for path, f in self.files.items() if isinstance(f, FileRef)}

    def files_bytes(self) -> int:
        """What the job's files weigh: inline texts in UTF-8 plus the referenced uploads."""
        return sum(len(c.encode()) for c in self.inline_files().values()) + sum(
            r.size for r in self.file_references().values()
        )

    def frozen_spec(self, file_refs: dict[str, FrozenFileRef] | None = None) -> dict[str, Any]:
        """What the job row keeps as its immutable spec (re-runs start from it): `files` holds the
        inline texts, `file_refs` (if any) the uploads (their storage keys, resolved at submission)."""
        spec = self.model_dump(exclude={"idempotency_key", "files"})
        if not spec["labels"]:  # absent when there are none: such a spec hashes as it did before labels
            del spec["labels"]
        spec["files"] = self.inline_files()
        if file_refs:  # absent when there are none: such a spec hashes as it did before uploads existed
            spec["file_refs"] = {path: ref.model_dump() for path, ref in sorted(file_refs.items())}
        return spec

    @classmethod
    def from_frozen(cls, spec: dict[str, Any]) -> JobCreate:
        """The submission a frozen spec came from (for a re-run): its file_refs back as references.
        A pipeline step job's resolved `inputs` are not a submission field (the re-run carries them
        over as they are: services.jobs.rerun_job); a template run's `template` mark is not one either."""
        body = {k: v for k, v in spec.items() if k not in ("file_refs", "inputs", "template")}
        refs = {path: {"sha256": r["sha256"], "size": r["size"]} for path, r in (spec.get("file_refs") or {}).items()}
        body["files"] = {**body.get("files", {}), **refs}
        return cls.model_validate(body)


class ArchivePublic(BaseModel):
    size: int
    sha256: str


class TemplateMark(BaseModel):
    """The template (and its version) a run was made from (docs/templates.md)."""

    name: str
    version: int


class JobPublic(BaseModel):
    id: str
    state: JobState
    owner: str
    box: str | None = Field(description="the box the job runs on, or the box it names while unplaced")
    box_group: str | None
    requires: list[str]
    lock: bool
    priority: int
    timeout_s: int
    cancel_grace_s: int
    queue_timeout_s: int = 86400
    rerun_of: str | None = None
    labels: dict[str, str] = Field(default_factory=dict, description="the `key: value` labels given at submission")
    log_lines: int = Field(
        description="the last seq received: the lines printed so far (a transcript past its cap keeps fewer)"
    )
    log_archive: ArchivePublic | None = Field(description="the gzip transcript in storage, once the job ended")
    exit_code: int | None
    error: str | None
    waiting_reason: str | None = None
    idempotency_key: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    temporal_ui_url: str
    pipeline_id: str | None = Field(default=None, description="a pipeline step's attempt: its pipeline")
    step: str | None = Field(default=None, description="a pipeline step's attempt: the step")
    attempt: int | None = Field(default=None, description="a pipeline step's attempt: its number (1, 2, ...)")
    error_kind: str | None = Field(
        default=None,
        description="the structured cause beside `error`: exit_code, heartbeat_lost, timed_out, cancelled, "
        "unschedulable, claim_timeout, artifacts, input_missing, internal",
    )
    logs_deleted_at: datetime | None = Field(
        default=None, description="when the transcript was deleted (DELETE .../outputs or retention); reads: 410"
    )
    artifacts_deleted_at: datetime | None = Field(
        default=None, description="when the artifacts were deleted (DELETE .../outputs or retention); reads: 410"
    )
    outputs_deleted_at: datetime | None = Field(
        default=None, description="set once both the transcript and the artifacts are gone: the later time"
    )
    template: TemplateMark | None = Field(
        default=None, description="made from a template (a run, a trigger or a schedule): which, at which version"
    )


class JobsPublic(BaseModel):
    data: list[JobPublic]
    count: int = Field(description="jobs matching the filters in all (data is one page of them)")
    next_cursor: str | None = Field(
        default=None,
        description="opaque: pass it as `?cursor=` for the page after this one (newest first, stable "
        "while jobs are added); null on the last page",
    )


class JobEventPublic(BaseModel):
    from_state: JobState | None
    to_state: JobState
    at: datetime
    detail: dict[str, Any] = Field(default_factory=dict)


class JobEventsPublic(BaseModel):
    data: list[JobEventPublic]


class LogLinePublic(BaseModel):
    seq: int
    ts: datetime
    stream: Literal["stdout", "stderr", "output", "system"]
    text: str


class LogsPublic(BaseModel):
    data: list[LogLinePublic]


class ArtifactPublic(BaseModel):
    path: str
    size: int
    sha256: str


class ArtifactsPublic(BaseModel):
    data: list[ArtifactPublic]
    count: int = Field(description="artifacts of the job in all (data is one page of them, by path)")


def _whole_number(value: Any) -> Any:
    """JSON Schema's "integer" admits 2.0; strict pydantic would not. Whole floats become ints."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


Capacity = Annotated[int, Field(ge=1, le=1000), BeforeValidator(_whole_number)]


class BoxCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    name: Name
    groups: list[Name] = Field(default_factory=list, max_length=64)
    capabilities: list[Capability] = Field(default_factory=list, max_length=256)
    capacity: Capacity = 1


# User names (a job's owner, a box's allowed_users): lower case, unique across the platform.
USER_NAME_PATTERN = r"^[a-z][a-z0-9_.-]{0,62}$"
# What owns a run: a user, or the recorded actor of a template's trigger or schedule (templates.md).
OWNER_PATTERN = r"^([a-z][a-z0-9_.-]{0,62}|trigger:[A-Za-z0-9][A-Za-z0-9._-]{0,62}|schedule:[0-9a-f-]{36})$"
UserName = Annotated[str, StringConstraints(pattern=USER_NAME_PATTERN)]


class BoxUpdate(BaseModel):
    """PATCH /api/boxes/{name}: each field given replaces the box's; absent or null keeps it,
    except `allowed_users`, where null opens the box to the whole org again.
    Running jobs are never stopped (a smaller capacity only holds back new grants)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    groups: list[Name] | None = Field(default=None, max_length=64)
    capabilities: list[Capability] | None = Field(default=None, max_length=256)
    capacity: Capacity | None = None
    allowed_users: list[UserName] | None = Field(
        default=None,
        max_length=1000,
        description="only these users of the org (and its admins) see and use the box; null: everyone "
        "in the org; absent: unchanged. Each must be a user of the box's org.",
    )


class BoxPublic(BaseModel):
    name: str
    status: Literal["online", "offline"]
    draining: bool = Field(description="the agent is stopping: it finishes its job and takes no new one")
    maintenance: bool = Field(description="a maintenance window covers now: no job is dispatched to it")
    groups: list[str]
    capabilities: list[str]
    capacity: int
    last_seen_at: datetime | None
    agent_version: str | None
    created_at: datetime
    allowed_users: list[str] | None = Field(
        default=None, description="who of the org (besides its admins) may see and use the box; null: everyone"
    )


class BoxesPublic(BaseModel):
    data: list[BoxPublic]
    count: int


class BoxCreated(BaseModel):
    box: BoxPublic
    node_token: str = Field(description="shown once; the agent of this box authenticates with it")


class AgentHeartbeat(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    agent_version: CleanStr = Field(max_length=64)
    draining: bool = False


class MaintenanceSet(BaseModel):
    """Manual maintenance: on opens a window without an end, off ends every open window now."""

    model_config = ConfigDict(extra="forbid", strict=True)

    on: bool
    reason: CleanStr = Field(default="manual", min_length=1, max_length=500)


class WindowCreate(BaseModel):
    """A maintenance window: `ends_at` after `starts_at`, and not in the past."""

    model_config = ConfigDict(extra="forbid", strict=True)

    starts_at: Timestamp
    ends_at: Timestamp = Field(description="after starts_at, and not in the past")
    reason: CleanStr = Field(min_length=1, max_length=500)

    @field_validator("ends_at")
    @classmethod
    def _after_start(cls, v: datetime, info: ValidationInfo) -> datetime:
        starts_at = info.data.get("starts_at")
        if starts_at is not None and v <= starts_at:
            raise ValueError("must be after starts_at")
        return v


class WindowPublic(BaseModel):
    id: int
    starts_at: datetime
    ends_at: datetime | None
    reason: str
    created_by: str


class RejectionPublic(BaseModel):
    job_id: str
    window_id: int
    at: datetime


class MaintenancePublic(BaseModel):
    maintenance: bool
    windows: list[WindowPublic]
    rejections: list[RejectionPublic] = Field(description="latest jobs passed over because of a window")


class LeasePublic(BaseModel):
    job_id: str
    exclusive: bool
    acquired_at: datetime


class WaiterPublic(BaseModel):
    job_id: str
    priority: int
    created_at: datetime
    waiting_reason: str | None


class HoldPublic(BaseModel):
    """A pipeline's hold on the box (a `keep_box` step's): only the listed steps of that pipeline
    are placed on the box until it is released."""

    pipeline_id: str
    step: str = Field(description="the keep_box step whose box this is")
    steps: list[str] = Field(description="the pipeline's steps admitted on the box: the step and those pinned to it")
    job_id: str | None = Field(description="the step's job whose end took the hold")
    since: datetime


class BoxQueuePublic(BaseModel):
    leases: list[LeasePublic]
    waiting: list[WaiterPublic] = Field(description="jobs that could take this box, in grant order")
    holds: list[HoldPublic] = Field(
        default_factory=list, description="pipelines holding the box between steps (keep_box); other jobs wait"
    )


MAX_SEQ = MAX_BIGINT  # seqs are Postgres bigints
# when a line was read, unix seconds: finite and before year 10000 (every line must render as a date)
LogTime = Annotated[float, Field(ge=0, lt=253402300800, allow_inf_nan=False)]
LogRun = tuple[Annotated[int, Field(ge=1)], Literal["stdout", "stderr", "output", "system"], LogTime]


class LogBatchHeader(BaseModel):
    """Agent -> API: the first line of a log batch (see boxrun/logbatch.py). The lines' UTF-8 bytes
    follow it, each ended by a newline; idempotent by seq."""

    model_config = ConfigDict(extra="forbid")

    first_seq: int = Field(ge=1, le=MAX_SEQ, description="seq of the batch's first line")
    runs: list[LogRun] = Field(
        max_length=100_000,
        description=("[lines, stream, unix ts]: how many consecutive lines share a stream and a read time, in order"),
    )


class AgentMe(BaseModel):
    """API -> agent at start: the box its node token names, and the liveness timings."""

    box: str
    capacity: int
    heartbeat_interval_s: float
    heartbeat_timeout_s: float
    # A held GET /api/agent/events renews the box's liveness (an API before this answers nothing
    # here: such an agent heartbeats every heartbeat_interval_s whatever it does).
    poll_renews_liveness: bool = False


class AgentSessionCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    agent_version: CleanStr = Field(max_length=64)
    slots: int = Field(ge=1, le=1000)
    # The session this agent installation held before (kept in its work dir): lets a restarted
    # agent take over at once instead of waiting until its predecessor counts as offline.
    previous_session: str | None = Field(default=None, max_length=64)


class AgentSession(BaseModel):
    session: str


class AgentEvent(BaseModel):
    kind: Literal["offer", "cancel"]
    job_id: str


class AgentEvents(BaseModel):
    events: list[AgentEvent]


class BundleFile(BaseModel):
    path: str
    content: str | None = None
    url: str | None = Field(default=None, description="presigned GET (binary files)")
    size: int | None = None
    sha256: str | None = None


class JobBundle(BaseModel):
    """What the box needs to run the job; only ever sent to the box the job is claimed by."""

    script: str
    env: dict[str, str]
    files: list[BundleFile]
    timeout_s: int
    cancel_grace_s: float
    mask: list[str] = Field(
        default_factory=list,
        description="the values of the secrets in `env`: the box replaces each in the job's output with ***",
    )
    request_id: str | None = Field(
        default=None,
        description="the X-Request-ID of the submission that started the job: the agent logs it on "
        "every line about the job and sends it with every call about the job",
    )

    def __repr_args__(self) -> Any:  # a repr in a log line or a traceback shows no env value
        for key, value in super().__repr_args__():
            yield key, ("***" if key in ("env", "mask") and value else value)


class JobClaimed(BaseModel):
    job_id: str
    bundle: JobBundle


class JobProgress(BaseModel):
    model_config = ConfigDict(extra="forbid")

    pid: int | None = None
    log_seq: int = Field(default=0, ge=0)


class ProgressAck(BaseModel):
    cancel: bool = Field(description="the job is being cancelled: kill it and report")


class ManifestEntry(BaseModel):
    path: str = Field(max_length=8192)
    size: int = Field(ge=0)
    sha256: str = Field(pattern="^[0-9a-f]{64}$")


class ManifestPage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    entries: list[ManifestEntry] = Field(max_length=1000)
    done: bool = False
    total_bytes: int | None = Field(
        default=None,
        strict=True,
        ge=0,
        le=MAX_BYTES,
        description="the first page: the size of every artifact the job will send, so the org's storage quota "
        "refuses the job before anything is uploaded",
    )


class UploadTargetPublic(BaseModel):
    path: str
    url: str
    headers: dict[str, str]


class RefusedArtifact(BaseModel):
    path: str
    reason: str


class ManifestAnswer(BaseModel):
    targets: list[UploadTargetPublic]
    refused: list[RefusedArtifact]


class JobResultReport(BaseModel):
    """Agent -> API at the end of a job, once every log line is stored and uploads are done."""

    model_config = ConfigDict(extra="forbid")

    exit_code: int | None = None
    timed_out: bool = False
    cancelled: bool = False
    error: str | None = Field(default=None, max_length=4000)
    pid: int | None = None
    log_seq: int = Field(default=0, ge=0)
    uploaded_count: int = Field(default=0, ge=0)
    # Uploads that failed (at most the first 20 are kept); verification finds every missing one.
    upload_failures: list[RefusedArtifact] = Field(default_factory=list, max_length=20)


class LogBatchAck(BaseModel):
    stored_through: int = Field(description="every line up to this seq is stored")


class Health(BaseModel):
    """GET /api/health: the process is up (liveness); it checks nothing else."""

    status: Literal["ok"]
    version: str


class Ready(BaseModel):
    """GET /api/ready: every dependency answered (readiness). A dependency down is a 503 instead,
    its `detail` naming each one that is down and why."""

    status: Literal["ok"]
    database: Literal["ok"]
    temporal: Literal["ok"]
    storage: Literal["ok"]
    version: str


class FieldError(BaseModel):
    field: str = Field(description="where in the request: body.script, query.offset, path.job_id, ...")
    message: str = Field(description="what is wrong with it (never the submitted value itself)")


class ErrorBody(BaseModel):
    """Every 4xx/5xx answer of the API has this body."""

    detail: str = Field(description="a sentence saying what went wrong")
    code: str = Field(
        description="machine-readable kind: not_found, conflict, invalid_transition, unauthorized, "
        "forbidden, invalid_input, too_large, unavailable"
    )
    errors: list[FieldError] = Field(default_factory=list, description="for invalid_input: each field at fault")
