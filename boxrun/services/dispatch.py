"""The box boundary, control-plane side: offers, claims, progress relayed to Temporal, the artifact
manifest, results, cancels and agent sessions. A node token reaches only its own box's jobs:
every other job does not exist for it (NotFound)."""

from __future__ import annotations

import json
import logging
import time
import unicodedata
import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import asyncpg
from temporalio.client import AsyncActivityCancelledError, Client
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from boxrun import logstore
from boxrun.constants import JobState, artifact_key
from boxrun.db import Conn, Q
from boxrun.errors import Conflict, InvalidTransition, NotFound, TooLarge, Unavailable
from boxrun.logbatch import Batch
from boxrun.messages import ReleaseResult, RunJobResult
from boxrun.placement import finish
from boxrun.schemas import (
    AgentEvent,
    BundleFile,
    JobBundle,
    JobClaimed,
    JobProgress,
    JobResultReport,
    ManifestAnswer,
    ManifestPage,
    RefusedArtifact,
    UploadTargetPublic,
)
from boxrun.secretbox import SecretBox
from boxrun.services import secrets
from boxrun.services.identity import NodeBox
from boxrun.services.jobs import parse_job_id
from boxrun.services.secrets import SecretUnavailable
from boxrun.services.wakeups import wake_jobs
from boxrun.services.webhooks import start_deliveries_of
from boxrun.storage import Storage
from boxrun.transitions import transition
from boxrun.workspace_paths import clean_relative_path

log = logging.getLogger(__name__)

# NOTIFY channel; payload {"box_id": N, "job_id": "...", "kind": "offer"|"cancel"}.
CHANNEL_DISPATCH = "boxrun_dispatch"
MAX_ARTIFACT_NAME_BYTES = 1024
# A Temporal call on an agent's request gives up after this (the agent retries): an outage must
# not hold the agent's requests, and the API's connections, for the SDK's whole retry budget.
RPC_TIMEOUT = timedelta(seconds=3)
JOB_CANCELLED = "JobCancelled"
# run_job's failure when a secret the job refers to cannot be resolved at its claim.
SECRET_UNAVAILABLE = "SecretUnavailable"


async def notify(conn: Conn, box_id: int, job_id: str, kind: str) -> None:
    payload = json.dumps({"box_id": box_id, "job_id": str(job_id), "kind": kind})
    await conn.execute(Q.notify, CHANNEL_DISPATCH, payload)


# -- sessions ---------------------------------------------------------------------------------


async def open_session(
    conn: Conn, box: NodeBox, agent_version: str, previous: str | None, *, offline_after_s: float
) -> str:
    """One live agent per box. Conflict while another agent reported within offline_after_s
    (unless this agent names the session it held before)."""
    session = uuid.uuid4()
    prev: uuid.UUID | None = None
    if previous:
        try:
            prev = uuid.UUID(previous)
        except ValueError:
            prev = None
    got = await conn.fetchval(Q.open_agent_session, box.id, session, agent_version, prev, offline_after_s)
    if got is None:
        current = await conn.fetchval(Q.box_session, box.id)
        raise Conflict(f"box {box.name} already has a live agent (session {current})")
    return str(session)


async def check_session(conn: Conn, box: NodeBox, session: str | None) -> None:
    """Conflict unless `session` is the box's current agent session."""
    row = await conn.fetchrow(Q.box_session, box.id)
    current = None if row is None else row["agent_session"]
    if session is None or current is None or str(current) != session:
        raise Conflict(f"session {session} is not the live agent session of box {box.name}; another agent took over")


# -- events, claim, bundle --------------------------------------------------------------------


async def pending_events(conn: Conn, box: NodeBox) -> list[AgentEvent]:
    rows = await conn.fetch(Q.box_events, box.id)
    return [AgentEvent(kind=r["kind"], job_id=str(r["job_id"])) for r in rows]


async def _own_dispatch(conn: Conn, box: NodeBox, job_id: str) -> asyncpg.Record:
    """The job's dispatch if it is dispatched to `box`; NotFound otherwise (whoever owns it)."""
    row: asyncpg.Record | None = await conn.fetchrow(Q.box_dispatch, job_id, box.id)
    if row is None:
        raise NotFound(f"job {job_id} not found")
    return row


async def claim(
    conn: Conn,
    temporal: Client,
    storage: Storage,
    box: NodeBox,
    job_id: str,
    *,
    secret_box: SecretBox,
    defer: Callable[[Callable[[], Awaitable[None]]], None] | None = None,
) -> JobClaimed:
    """The box takes the job: in one transaction the open offer to this box becomes claimed, the
    job's secret references are resolved and the job becomes `running`. Conflict if it may not
    start (expired, cancelled, already claimed), or if a secret it refers to is gone: then the
    job fails with the reason ("secret NAME no longer exists") and never runs.

    `defer`: run the heartbeat that restarts run_job's clock after the answer (the route's
    background tasks), so the box starts the job one Temporal round trip sooner."""
    jid = parse_job_id(job_id)
    gone: SecretUnavailable | None = None
    async with conn.transaction():
        claimed = await conn.fetchrow(Q.claim_dispatch, jid, box.id)
        row = await _own_dispatch(conn, box, jid)
        if claimed is None:
            raise Conflict(f"job {jid} may not start on {box.name} now ({_why_not(row)})")
        try:
            resolved = await secrets.resolve(conn, secret_box, row["org_id"], row["spec"].get("env") or {})
        except SecretUnavailable as exc:
            await _end_unresolvable(conn, temporal, box, jid, claimed["task_token"], exc)
            gone = exc
        else:
            await transition(conn, jid, JobState.RUNNING, detail={"box": box.name})
    if gone is not None:
        raise Conflict(f"job {jid} may not start on {box.name}: {gone.reason}") from gone

    token: bytes | None = claimed["task_token"]

    async def restart_clock() -> None:  # the first progress report relays one anyway
        if token is None:  # offered at submission, not adopted by run_job yet: nothing to heartbeat
            return
        try:
            await _relay(temporal, token, jid)
        except (Conflict, Unavailable) as exc:
            log.warning("heartbeat at the claim of job %s not relayed: %s", jid, exc)

    if defer is None:
        await restart_clock()
    else:
        defer(restart_clock)
    return JobClaimed(job_id=jid, bundle=_bundle(storage, row, resolved))


def _why_not(row: asyncpg.Record) -> str:
    if row["claimed_at"] is not None:
        return "already claimed"
    if row["cancel_requested_at"] is not None:
        return "cancelled"
    return "the claim deadline passed"


async def _end_unresolvable(
    conn: Conn, temporal: Client, box: NodeBox, job_id: str, token: bytes | None, exc: SecretUnavailable
) -> None:
    """A claimed job whose secrets cannot be resolved: its run_job fails (non-retryable, the
    reason names the secret) and the dispatch is closed, in the caller's transaction. If Temporal
    does not take the failure, Unavailable rolls the claim back (the agent retries). An offer
    made at submission and not adopted yet keeps the failure for its run_job (store_early_result)."""
    if token is None:
        await conn.execute(Q.store_early_result, job_id, box.id, _early_failure(exc.reason, SECRET_UNAVAILABLE))
        log.warning("job %s on %s not started: %s", job_id, box.name, exc.reason)
        return
    handle = temporal.get_async_activity_handle(task_token=token)
    try:
        await handle.fail(
            ApplicationError(exc.reason, type=SECRET_UNAVAILABLE, non_retryable=True), rpc_timeout=RPC_TIMEOUT
        )
    except RPCError as rpc:
        if rpc.status != RPCStatusCode.NOT_FOUND:  # NOT_FOUND: the control plane ended the job already
            raise Unavailable(f"the workflow engine did not take the failure: {rpc.message}") from rpc
    await conn.execute(Q.dispatch_result, job_id, box.id)
    log.warning("job %s on %s not started: %s", job_id, box.name, exc.reason)


def _early_failure(message: str, kind: str) -> dict[str, Any]:
    """What run_job raises when it adopts an offer that ended this way before it (early_result)."""
    return {"failure": {"message": message, "type": kind}}


async def bundle(
    conn: Conn, temporal: Client, storage: Storage, box: NodeBox, job_id: str, *, secret_box: SecretBox
) -> JobBundle:
    """The bundle of a job claimed by `box` (and not finished): NotFound otherwise. A secret
    deleted since the claim fails the job as at the claim (Conflict)."""
    jid = parse_job_id(job_id)
    row = await _own_dispatch(conn, box, jid)
    if row["claimed_at"] is None or row["result_at"] is not None:
        raise NotFound(f"job {jid} not found")
    try:
        resolved = await secrets.resolve(conn, secret_box, row["org_id"], row["spec"].get("env") or {})
    except SecretUnavailable as exc:
        async with conn.transaction():
            await _end_unresolvable(conn, temporal, box, jid, row["task_token"], exc)
        raise Conflict(f"job {jid} may not run on {box.name}: {exc.reason}") from exc
    return _bundle(storage, row, resolved)


def _bundle(storage: Storage, row: asyncpg.Record, resolved: secrets.Resolved) -> JobBundle:
    """Script, env (secrets resolved) and files of a claimed job, and the values to mask. Files
    are inline text, uploaded files and, for a pipeline step, its inputs (presigned GETs)."""
    spec: dict[str, Any] = row["spec"]
    files = [BundleFile(path=p, content=c) for p, c in sorted((spec.get("files") or {}).items())]
    for path, ref in sorted((spec.get("file_refs") or {}).items()):
        url = storage.presign_get(ref["key"], expires_s=600)
        files.append(BundleFile(path=path, url=url, size=ref["size"], sha256=ref["sha256"]))
    # a pipeline step's inputs: upstream artifacts, downloaded and SHA-256-checked by the box at
    # `dest` before the script starts, like uploaded files
    for inp in spec.get("inputs") or []:
        url = storage.presign_get(artifact_key(inp["job_id"], inp["path"]), expires_s=600)
        files.append(BundleFile(path=inp["dest"], url=url, size=inp["size"], sha256=inp["sha256"]))
    return JobBundle(
        script=spec["script"],
        env=resolved.env,
        files=files,
        timeout_s=row["timeout_s"],
        cancel_grace_s=float(row["cancel_grace_s"]),
        mask=resolved.mask,
        request_id=row["request_id"],
    )


# -- progress ---------------------------------------------------------------------------------

# What keeps a running job's heartbeat alive while Postgres is unreachable: this API process
# remembers, per job it relayed for, the box and the task token (and each box's token hash).
DB_DOWN = (OSError, asyncpg.PostgresConnectionError, asyncpg.OperatorInterventionError, asyncpg.InterfaceError)


class RelayCache:
    """Per API process: job -> (box id, task token, last relay time); token hash -> box."""

    def __init__(self, max_jobs: int = 100_000) -> None:
        self.jobs: dict[str, tuple[int, bytes, float]] = {}
        self.boxes: dict[str, NodeBox] = {}
        self.max_jobs = max_jobs

    def remember(self, job_id: str, box_id: int, token: bytes, relayed: bool) -> None:
        if len(self.jobs) >= self.max_jobs:
            self.jobs.pop(next(iter(self.jobs)))
        last = time.monotonic() if relayed else self.jobs.get(job_id, (0, b"", 0.0))[2]
        self.jobs[job_id] = (box_id, token, last)

    def forget(self, job_id: str) -> None:
        self.jobs.pop(job_id, None)


async def progress_without_db(
    cache: RelayCache, temporal: Client, box: NodeBox, job_id: str, body: JobProgress, *, relay_every_s: float
) -> bool:
    """Postgres is down: relay the heartbeat from what this process remembers (Unavailable if it
    remembers nothing of this job), so a database restart does not fail running jobs."""
    jid = parse_job_id(job_id)
    known = cache.jobs.get(jid)
    if known is None or known[0] != box.id:
        raise Unavailable("database unavailable, retry shortly")
    box_id, token, last = known
    if time.monotonic() - last < relay_every_s:
        return False
    cache.remember(jid, box_id, token, relayed=True)
    return await _relay(temporal, token, jid, {"log_seq": body.log_seq})


async def _relay(temporal: Client, token: bytes, job_id: str, details: Any = None) -> bool:
    """One activity heartbeat through the async handle; True if Temporal says it is cancelled."""
    handle = temporal.get_async_activity_handle(task_token=token)
    try:
        if details is None:
            await handle.heartbeat(rpc_timeout=RPC_TIMEOUT)
        else:
            await handle.heartbeat(details, rpc_timeout=RPC_TIMEOUT)
    except AsyncActivityCancelledError:
        return True
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            raise Conflict(f"job {job_id} already ended on the control plane") from exc
        raise Unavailable(f"the workflow engine did not take the heartbeat: {exc.message}") from exc
    return False


async def progress(
    conn: Conn,
    temporal: Client,
    box: NodeBox,
    job_id: str,
    body: JobProgress,
    *,
    relay_every_s: float,
    cache: RelayCache | None = None,
) -> bool:
    """Record a progress report; relay a heartbeat to Temporal at most every relay_every_s.
    Returns whether the job is being cancelled."""
    jid = parse_job_id(job_id)
    row = await conn.fetchrow(Q.dispatch_progress, jid, box.id, relay_every_s)
    if row is None:
        if cache is not None:
            cache.forget(jid)
        own = await _own_dispatch(conn, box, jid)
        raise Conflict(f"job {jid} is not running on {box.name} ({own['state']})")
    if cache is not None and row["task_token"] is not None:
        cache.remember(jid, box.id, row["task_token"], relayed=bool(row["relay"]))
    cancel = bool(row["cancel"])
    if body.pid is not None:
        await _record_pid(conn, jid, body.pid)
    if row["relay"]:  # never for an offer made at submission that run_job has not adopted yet
        cancel = await _relay(temporal, row["task_token"], jid, {"log_seq": body.log_seq}) or cancel
    return cancel


async def _record_pid(conn: Conn, job_id: str, pid: int) -> None:
    await conn.execute(Q.record_pid_event, job_id, {"pid": pid})


# -- artifacts --------------------------------------------------------------------------------


def artifact_name_problem(path: str) -> str | None:
    """Why the store cannot take this artifact name, or None."""
    if any(unicodedata.category(ch) == "Cc" for ch in path):
        return "control characters"
    try:
        size = len(path.encode("utf-8"))
    except UnicodeEncodeError:
        return "not valid Unicode"
    if size > MAX_ARTIFACT_NAME_BYTES:
        return f"over {MAX_ARTIFACT_NAME_BYTES} bytes"
    try:
        if clean_relative_path(path) != path:
            return "not a normal relative path"
    except ValueError as exc:
        return str(exc)
    return None


async def record_manifest(
    conn: Conn, storage: Storage, box: NodeBox, job_id: str, page: ManifestPage, *, max_artifacts: int
) -> ManifestAnswer:
    """Store a page of the manifest; presign a PUT for each valid name. TooLarge past the cap."""
    jid = parse_job_id(job_id)
    async with conn.transaction():
        row = await _own_dispatch(conn, box, jid)
        if row["claimed_at"] is None or row["result_at"] is not None:
            raise Conflict(f"job {jid} is not running on {box.name}")
        await conn.execute(Q.lock_dispatch, jid)
        have: int = await conn.fetchval(Q.manifest_count, jid)
        if have + len(page.entries) > max_artifacts:
            raise TooLarge(f"too many artifacts: a job may keep at most {max_artifacts} (max_artifacts_per_job)")
        await _check_quota(conn, row["org_id"], jid, page, first=have == 0)
        if JobState(row["state"]) is JobState.RUNNING:
            await transition(conn, jid, JobState.UPLOADING_ARTIFACTS, detail={"box": box.name})
        targets: list[UploadTargetPublic] = []
        refused: list[RefusedArtifact] = []
        cols: tuple[list[Any], ...] = ([], [], [], [], [])
        for entry in page.entries:
            problem = artifact_name_problem(entry.path)
            path = entry.path
            if problem is not None:
                # store a printable form of the name: Postgres takes no NUL, the error must be readable
                path = entry.path.encode("unicode_escape").decode("ascii")[:2000]
                refused.append(RefusedArtifact(path=entry.path, reason=problem))
            else:
                url, headers = storage.presign_put(artifact_key(jid, entry.path), entry.size, entry.sha256)
                targets.append(UploadTargetPublic(path=entry.path, url=url, headers=headers))
            for col, value in zip(
                cols,
                (path, entry.size, entry.sha256, "refused" if problem else "pending", problem),
                strict=True,
            ):
                col.append(value)
        await conn.execute(Q.insert_manifest, jid, *cols)
    return ManifestAnswer(targets=targets, refused=refused)


async def _check_quota(conn: Conn, org_id: str, job_id: str, page: ManifestPage, *, first: bool) -> None:
    """The org's storage quota, in the manifest's transaction (the org's row locked, so two jobs
    of the org cannot both take the last bytes). The first page is refused if the job's announced
    `total_bytes` would not fit (nothing is uploaded then); every page if the bytes announced so
    far would not (a box may announce less than it sends). TooLarge reaches the box, which fails
    the job with the reason."""
    quota = await conn.fetchval(Q.lock_org_quota, org_id)
    if quota is None:
        return
    used: int = await conn.fetchval(Q.org_storage_in_use, org_id, job_id)
    mine: int = await conn.fetchval(Q.manifest_pending_bytes, job_id)
    needed = mine + sum(e.size for e in page.entries if artifact_name_problem(e.path) is None)
    if first and page.total_bytes is not None:
        needed = max(needed, page.total_bytes)
    if used + needed > quota:
        raise TooLarge(
            f"storage quota exceeded: the org keeps {used} bytes, this job's artifacts need {needed} more, "
            f"the quota is {quota} bytes (PUT /api/org/quota; GET /api/org/usage)"
        )


# -- result -----------------------------------------------------------------------------------


async def report_result(
    conn: Conn,
    temporal: Client,
    box: NodeBox,
    job_id: str,
    report: JobResultReport,
    *,
    transcript_cap_bytes: int = logstore.DEFAULT_CAP_BYTES,
) -> ReleaseResult | None:
    """Complete the job's run_job activity with the box's report (idempotent: a repeat after
    success is a no-op). Conflict if the control plane already ended the job.
    `transcript_cap_bytes`: the deployment's cap, for the system lines that explain the end.

    A clean end (ends_here) is also recorded here: `completed` and the lease freed, once
    Temporal took the result (end_clean_exit). Returns what that release freed, for the caller
    to wake the waiters after answering; None otherwise."""
    jid = parse_job_id(job_id)
    row = await _own_dispatch(conn, box, jid)
    if row["claimed_at"] is None:
        raise Conflict(f"job {jid} was never claimed by {box.name}")
    if row["result_at"] is not None:
        return None
    await _system_lines(conn, jid, report, transcript_cap_bytes)
    if report.upload_failures:
        # what the box refused itself (links, hard links, foreign files, unstorable names): listed
        # with the API's own refusals; an entry already in the manifest keeps its row (a failed
        # upload shows as missing when it is verified)
        paths = [f.path.encode("unicode_escape").decode("ascii")[:2000] for f in report.upload_failures]
        await conn.execute(
            Q.insert_manifest,
            jid,
            paths,
            [0] * len(paths),
            [""] * len(paths),
            ["refused"] * len(paths),
            [f.reason for f in report.upload_failures],
        )
    totals: asyncpg.Record | None = await conn.fetchrow(Q.manifest_totals, jid)
    assert totals is not None  # an aggregate always answers one row
    result = RunJobResult(
        exit_code=report.exit_code,
        timed_out=report.timed_out,
        error=report.error,
        pid=report.pid,
        log_lines=report.log_seq,
        artifacts=totals["pending"],
        artifact_bytes=totals["pending_bytes"],
        refused=totals["refused"],
    )
    # An offer made at submission that run_job has not adopted yet: the result waits in the
    # dispatch row for run_job to return it (the row lock orders this against the adoption).
    async with conn.transaction():
        token: bytes | None = await conn.fetchval(Q.lock_dispatch_token, jid, box.id)
        if token is None:
            early = (
                _early_failure("cancelled", JOB_CANCELLED)
                if report.cancelled
                else {"result": result.model_dump(mode="json")}
            )
            await conn.execute(Q.store_early_result, jid, box.id, early)
            return None  # the workflow ends it once run_job adopts the offer
    handle = temporal.get_async_activity_handle(task_token=token)
    try:
        if report.cancelled:
            try:
                await handle.report_cancellation(rpc_timeout=RPC_TIMEOUT)
            except RPCError as exc:
                if exc.status == RPCStatusCode.NOT_FOUND:
                    raise
                await handle.fail(
                    ApplicationError("cancelled", type=JOB_CANCELLED, non_retryable=True), rpc_timeout=RPC_TIMEOUT
                )
        else:
            await handle.complete(result, rpc_timeout=RPC_TIMEOUT)
    except RPCError as exc:
        if exc.status != RPCStatusCode.NOT_FOUND:
            raise Unavailable(f"the workflow engine did not take the result: {exc.message}") from exc
        await conn.execute(Q.dispatch_result, jid, box.id)
        raise Conflict(f"job {jid} already ended on the control plane") from exc
    cancel_requested = await conn.fetchval(Q.dispatch_result, jid, box.id)  # None: a repeat recorded it
    if not ends_here(report, result, cancel_requested=cancel_requested is not False):
        return None  # the workflow decides
    return await end_clean_exit(conn, jid, box)


def ends_here(report: JobResultReport, result: RunJobResult, *, cancel_requested: bool) -> bool:
    """A clean end the API records itself: the workflow would decide `completed` from this
    result with no further step of its own (JobWorkflow._outcome_of: no artifact to verify, no
    timeout, no error, exit 0), and no cancel was requested before it (that one ends cancelled)."""
    return (
        not report.cancelled
        and not cancel_requested
        and result.exit_code == 0
        and not result.timed_out
        and result.error is None
        and result.artifacts == 0
        and result.refused == 0
    )


async def end_clean_exit(conn: Conn, job_id: str, box: NodeBox) -> ReleaseResult | None:
    """Record a clean end at once: `completed` and the lease freed, the transaction the
    workflow's finish_job runs (placement.finish), so the job is done for its owner, its
    followers and the next job on the box without waiting for the workflow's next task. Called
    only after Temporal took the result, so the workflow reaches the same end: its own
    finish_job then finds the job terminal and absorbs (it frees nothing, wakes no one: the
    caller wakes the waiters named here). Best effort: if this fails, the workflow's finish_job
    records the end as it always has. The job event says so: `via: result`."""
    try:
        return await finish(conn, job_id, JobState.COMPLETED, exit_code=0, detail={"box": box.name, "via": "result"})
    except (InvalidTransition, asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
        log.warning("job %s: its clean end is left to the workflow: %s", job_id, exc)
        return None


async def after_clean_exit(pool: asyncpg.Pool, temporal: Client, job_id: str, ended: ReleaseResult) -> None:
    """After answering the box: wake the jobs the freed lease admits and start the job's webhook
    deliveries, as the workflow's finish_job does after its commit. Whatever fails here the
    reaper makes up (its waiter sweep, its delivery sweep)."""
    try:
        await wake_jobs(temporal, ended.wake_job_ids)
        await start_deliveries_of(pool, temporal, parse_job_id(job_id))
    except (RPCError, asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
        log.warning("after the clean end of %s: %s (the reaper's sweeps make it up)", job_id, exc)


async def _system_lines(conn: Conn, job_id: str, report: JobResultReport, transcript_cap_bytes: int) -> None:
    """The control plane's own lines that explain how the process ended (the box cannot write
    the system stream). Written once: only while the box's last line is the last stored."""
    text = None
    if report.timed_out:
        text = "boxrun: timed out; process group killed"
    elif report.cancelled:
        text = "boxrun: job cancelled; process group terminated"
    elif report.error and report.error.startswith("agent stopped"):
        text = f"boxrun: {report.error}; process group terminated"
    if text is None:
        return
    async with conn.transaction():
        head = await conn.fetchval(Q.job_log_seq, job_id)
        if head != report.log_seq:
            return
        batch = Batch(first_seq=head + 1, runs=[(1, "system", time.time())], data=text.encode() + b"\n")
        await logstore.append(conn, job_id, batch, cap_bytes=transcript_cap_bytes)


# -- cancel -----------------------------------------------------------------------------------


async def request_cancel(conn: Conn, job_id: str) -> bool:
    """Record a cancel for the job's dispatch and push it to its box. True if a box holds it."""
    async with conn.transaction():
        row = await conn.fetchrow(Q.request_dispatch_cancel, job_id)
        if row is None:
            return False
        await notify(conn, row["box_id"], job_id, "cancel")
    return bool(row["claimed"])


async def hold_for_the_box(conn: Conn, job_id: str, offline_after_s: float) -> bool:
    """In the caller's transaction, before a job is ended by the control plane: its offer made at
    submission and not adopted by a run_job is closed if unclaimed; if its box claimed it and
    still reports progress for it, the cancel is requested and pushed (NOTIFY at commit) and True
    says the end must wait for the box."""
    row = await conn.fetchrow(Q.lock_unadopted_dispatch, job_id, offline_after_s)
    if row is None:
        return False
    if not row["claimed"]:
        await conn.execute(Q.close_pre_offer, job_id)
        return False
    if row["running"]:
        await request_cancel(conn, job_id)
        return True
    return False
