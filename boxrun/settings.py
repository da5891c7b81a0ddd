"""The one Settings class: every address, secret and tunable, read from BOXRUN_* env vars."""

from __future__ import annotations

import ipaddress
import stat
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

if TYPE_CHECKING:
    from boxrun.secretbox import SecretBox

_PLACEHOLDER = "changethis"

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(value: str) -> list[IPNetwork]:
    """A comma-separated CIDR list (webhook_allow_networks); ValueError naming a bad entry."""
    nets: list[IPNetwork] = []
    for part in value.split(","):
        if part := part.strip():
            try:
                nets.append(ipaddress.ip_network(part, strict=False))
            except ValueError:
                raise ValueError(f"not a network (CIDR): {part!r}") from None
    return nets


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="BOXRUN_", env_ignore_empty=True, extra="ignore")

    environment: Literal["dev", "production"] = "dev"
    log_level: str = "INFO"
    # Operations (docs/operations.md). Log lines: "json" (one object a line, with job_id, box, org
    # and request_id where known), "text" (for people), "auto" (text on a terminal, else JSON).
    log_format: Literal["auto", "json", "text"] = "auto"
    # Prometheus metrics, each process on a port of its own (never the API's port, which boxes and
    # the reverse proxy reach): `boxrun api` serves GET /metrics on api_metrics_port, the control
    # worker its Temporal SDK runtime's exporter on worker_metrics_port, an agent on
    # agent_metrics_port. None: not served. metrics_host is the address they bind.
    metrics_host: str = "127.0.0.1"
    api_metrics_port: int | None = Field(default=None, ge=1, le=65535)
    worker_metrics_port: int | None = Field(default=9464, ge=1, le=65535)
    agent_metrics_port: int | None = Field(default=None, ge=1, le=65535)
    # A scrape counts the jobs waiting per box and per group (GET /metrics); at most this many of
    # each are named, the rest summed under "(other)".
    metrics_waiting_max_series: int = Field(default=200, ge=1, le=10_000)

    # Postgres (the app database; Temporal keeps its own).
    # The API and the worker connect as database_url's role (a runtime role: data rights only,
    # never UPDATE or DELETE on the audit log). database_owner_url names the role that owns the
    # schema; whoever has it runs the migrations (`boxrun migrate`, the dev stack) and grants the
    # runtime role its rights. Unset, the runtime role migrates (and owns) the schema itself.
    database_url: str = "postgresql://postgres@127.0.0.1:5432/boxrun"
    database_owner_url: str | None = None
    db_pool_min: int = 1
    db_pool_max: int = 10

    # Temporal.
    temporal_address: str = "127.0.0.1:7233"
    temporal_namespace: str = "default"
    temporal_ui_url: str = "http://127.0.0.1:8233"
    # A secured cluster or Temporal Cloud (docs/deploy.md). TLS: unset means on as soon as any of
    # the settings below is set (an API key never travels in clear text), off otherwise; true
    # with nothing else set trusts the system's CA roots. The files are PEM, read once at start
    # (boxrun.temporal.tls_config: an unreadable one stops the process, naming the setting).
    temporal_tls: bool | None = None
    # the CA that signed the server's certificate (else the system's roots)
    temporal_tls_ca_file: Path | None = None
    # mTLS: this process's client certificate (chain) and its private key, both or neither
    temporal_tls_cert_file: Path | None = None
    temporal_tls_key_file: Path | None = None
    # the name the server's certificate is checked against, if not the address's host
    temporal_tls_server_name: str | None = None
    # Temporal Cloud (or a server with an authorizer): sent as "Authorization: Bearer <key>"
    temporal_api_key: str | None = None

    # Object storage (S3 API). endpoint None means AWS itself.
    s3_endpoint_url: str | None = None
    # Where boxes and browsers reach storage, if not at s3_endpoint_url (e.g. the control plane
    # talks to http://minio:9000 inside a private network, boxes to https://s3.example.com).
    # Presigned URLs are signed for this host.
    s3_public_endpoint_url: str | None = None
    s3_bucket: str = "boxrun"
    s3_region: str = "us-east-1"
    s3_access_key_id: str = "boxrun"
    s3_secret_access_key: str = _PLACEHOLDER
    # How an uploaded artifact is verified (Storage.verify): "checksum" is one HEAD, trusting the
    # store's check of the signed x-amz-checksum-sha256 at PUT (AWS S3, SeaweedFS, MinIO);
    # "readback" re-reads every artifact and hashes it (for stores that do not check checksums).
    s3_verify: Literal["checksum", "readback"] = "checksum"
    presign_expiry_s: int = Field(default=900, ge=30, le=7 * 24 * 3600)
    # Download redirects (artifacts, transcripts) handed to people are minted per request and
    # live this long, so a revoked token's past links soon stop working too.
    download_url_ttl_s: int = Field(default=60, ge=1, le=3600)

    # API.
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    api_url: str = "http://127.0.0.1:8000"
    # The bootstrap token: the API makes sure user api_token_owner exists (platform admin, admin
    # of org `default`) and that this token is one of theirs. Every other token is minted by the API.
    api_token: str = _PLACEHOLDER
    api_token_owner: str = "admin"
    # Encrypts what boxrun stores and must read back (org secrets, webhook signing secrets): a
    # Fernet key, or several comma-separated to rotate (the first encrypts). boxrun.secretbox.
    secrets_key: str = _PLACEHOLDER
    # Open SSE/WebSocket streams re-check their token this often (one query per API process for
    # all of them): a revoked token or disabled user loses its streams within this bound.
    auth_recheck_s: float = Field(default=2.0, gt=0, le=60)
    # Request bodies over this are refused with 413 before they are read (and before auth);
    # the agents' log ingest has its own, larger bound.
    max_body_bytes: int = Field(default=1 << 20, ge=1024)
    max_log_batch_bytes: int = Field(default=16 << 20, ge=1024)
    # A job's files (inline texts and uploads together) weigh at most this; it also bounds one
    # upload's body (POST /api/files), the one route allowed more than max_body_bytes.
    max_job_files_bytes: int = Field(default=1 << 30, ge=1024)
    box_offline_after_s: float = Field(default=15.0, gt=0)
    # Idle SSE/WebSocket followers re-check the job this often (FastAPI also sends keepalive comments).
    sse_keepalive_s: float = Field(default=20.0, gt=0)
    # A follower that has not taken an event for this long is dropped with its resume position.
    follower_stall_s: float = Field(default=30.0, gt=0)

    # Control worker / job workflow.
    activity_heartbeat_timeout_s: float = Field(default=15.0, gt=0, le=600)
    # The claim deadline: how long an offered job waits for its box's agent to claim it before
    # it fails "the box did not claim the job within N s (agent gone?)".
    dispatch_timeout_s: float = Field(default=60.0, gt=0)
    # Artifacts one job may keep (the manifest lives in Postgres); past it the job fails, saying so.
    max_artifacts_per_job: int = Field(default=10_000, ge=1)
    # After a job ended, its box may still deliver the contiguous tail of its log this long.
    log_tail_grace_s: float = Field(default=60.0, ge=0)
    # When a box is free as a job is submitted, the API leases it and offers the job to it in the
    # submission itself, before the workflow exists; run_job adopts the offer (docs/architecture.md,
    # "The offer at submission"). Off: every job is placed and offered by its workflow.
    offer_at_submission: bool = True
    # The longest an agent's long-poll for offers and cancels is held open.
    agent_poll_max_s: float = Field(default=25.0, gt=0, le=300)
    # Run the short Postgres-only control steps (acquire, transition, finish) as local activities
    # inside the workflow worker, saving a server round trip each (docs/benchmarks.md, "Dispatch
    # latency"). Durable either way: a local activity's result is a marker in the history.
    local_control_activities: bool = True
    reaper_interval_s: float = Field(default=15.0, gt=0)
    # A waiting job has no periodic re-check: wake-ups (releases, grants, agents back, maintenance
    # ending) start it, and the reaper's waiter sweep, at most this often, wakes the waiters of
    # any box that could take a job now (a lost wake-up). Swept with the reaper's sweeps, so it is
    # never more often than reaper_interval_s. (BOXRUN_WAIT_POLL_INTERVAL_S, the re-check period
    # before, is gone and ignored.)
    waiter_sweep_interval_s: float = Field(default=15.0, gt=0)

    # Retention and quotas (docs/retention.md).
    # A job's stored transcript keeps its head and its tail within this many bytes unless its org
    # sets its own cap (PUT /api/org/quota); the job keeps running past it.
    transcript_cap_bytes: int = Field(default=1 << 30, ge=64 << 10)
    # How often the retention schedule (a Temporal Schedule, `boxrun-retention`) runs.
    retention_interval_s: float = Field(default=3600.0, ge=1)

    # Webhooks.
    # Networks webhook URLs may reach although they are private, loopback, link-local, multicast,
    # reserved or unspecified (refused otherwise, at creation and at every delivery): CIDRs,
    # comma-separated. Empty by default; the dev stack allows loopback (127.0.0.0/8,::1/128).
    webhook_allow_networks: str = ""
    # One delivery attempt (connect, send, answer) may take this long before it counts as failed.
    webhook_timeout_s: float = Field(default=10.0, gt=0, le=60)
    # A delivery written but without a workflow this long (a crash between commit and start) is
    # started by the reaper's sweep.
    webhook_start_grace_s: float = Field(default=5.0, ge=0)
    # Delivery attempts one control worker runs at once, on their own task queue (boxrun-webhooks).
    webhook_max_concurrent: int = Field(default=50, ge=1, le=1000)

    # Agent (one box).
    box_name: str | None = None
    # The box's node token: in a file only the agent's user can read (node_token_file, preferred:
    # a value in the environment shows in /proc/<pid>/environ to the same user), or the value.
    node_token: str | None = None
    node_token_file: Path | None = None
    agent_workdir: Path = Path("boxrun-agent")
    agent_python: str = "python3"
    # A pre-started interpreter per slot, already running as the slot's user, takes the slot's
    # next job (docs/architecture.md, "A warm interpreter per slot"); false: every job starts cold.
    agent_warm_interpreter: bool = True
    # The agent's liveness report; left out in an interval in which its long-poll is held (the API
    # renews a held poll's box itself, api/live/liveness.py).
    agent_heartbeat_interval_s: float = Field(default=5.0, gt=0)
    # The agent reports each running job's progress this often (the API relays a Temporal
    # heartbeat at most every heartbeat_timeout/3; cancels are pushed, not polled).
    agent_activity_heartbeat_s: float = Field(default=1.0, gt=0)
    # On SIGTERM the agent takes no new job and lets the running one finish for this long.
    agent_drain_s: float = Field(default=60.0, ge=0)
    # Bounds of one log batch (agent -> API); the API refuses bodies over 16 MiB.
    log_batch_max_lines: int = Field(default=50_000, ge=1, le=100_000)
    log_batch_max_bytes: int = Field(default=4 << 20, ge=1024, le=8 << 20)
    # Unsent lines kept in memory per job; past this they spill to a file in the job's workspace.
    log_memory_limit_bytes: int = Field(default=64 << 20, ge=0)

    def require_secrets(self, *names: str) -> None:
        """Fail fast outside dev if a secret this process uses is still the placeholder. Each
        process names its own (the API its token and storage key, an agent neither)."""
        if self.environment == "dev":
            return
        missing = [f"BOXRUN_{n.upper()}" for n in names if getattr(self, n) == _PLACEHOLDER]
        if missing:
            raise ValueError(f"{', '.join(missing)} must be set outside dev (still {_PLACEHOLDER!r})")

    def resolved_node_token(self) -> str | None:
        """The node token: read from node_token_file if set (refused if group or others may
        access the file), else node_token."""
        if self.node_token_file is None:
            return self.node_token
        mode = self.node_token_file.stat().st_mode
        if mode & 0o077:
            raise ValueError(
                f"{self.node_token_file} is open to group or others (mode {stat.S_IMODE(mode):04o}): chmod 600 it"
            )
        return self.node_token_file.read_text().strip() or None

    @field_validator("webhook_allow_networks")
    @classmethod
    def _check_networks(cls, value: str) -> str:
        parse_networks(value)
        return value

    def webhook_networks(self) -> list[IPNetwork]:
        """webhook_allow_networks, parsed."""
        return parse_networks(self.webhook_allow_networks)

    def secret_box(self) -> SecretBox:
        """The encryption of stored secrets, keyed by secrets_key."""
        from boxrun.secretbox import SecretBox  # cryptography is a server dependency

        return SecretBox(self.secrets_key)

    def temporal_workflow_url(self, workflow_id: str) -> str:
        base = self.temporal_ui_url.rstrip("/")
        return f"{base}/namespaces/{self.temporal_namespace}/workflows/{workflow_id}"


@lru_cache
def get_settings() -> Settings:
    return Settings()
