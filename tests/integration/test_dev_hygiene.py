"""`boxrun dev` keeps its secrets to itself: a data dir from an older version (Postgres with
--auth=trust, files readable by all) is brought to passwords and private modes; no other user
(`nobody`, the PostgreSQL system user) reads a token, a password, a log or a workspace; agents,
and so their jobs, carry only their own node token, in a file."""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import shutil
import signal
import stat
import subprocess
import tempfile
from pathlib import Path

import asyncpg
import pytest

from boxrun.db import connect, migrate
from boxrun.dev import services
from boxrun.dev.procs import free_port, spawn
from boxrun.dev.services import PG_APP_ROLE, PG_RUNTIME_ROLE, PG_SUPERUSER, pg_url
from tests.conftest import wait_for
from tests.integration.faultstack import fault_stack
from tests.integration.jobs import replay, submit, wait_terminal

pytestmark = pytest.mark.e2e

# Reads the agent's environment (a job's parent, same user for now) and the job's own.
SNOOP = """
import os
pid = os.getpid()
for _ in range(3):  # its ancestors: the per-job supervisor, the agent, ...
    pid = int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[1])
    try:
        print(open(f"/proc/{pid}/environ", "rb").read().decode(errors="replace").replace("\\0", " "))
    except OSError as exc:
        print(f"cannot read /proc/{pid}/environ: {type(exc).__name__}")
print(" ".join(f"{k}={v}" for k, v in sorted(os.environ.items())))
"""
# Run as another user: prints the paths it could read (a file) or list (a directory).
PROBE = 'for p; do if [ -d "$p" ]; then ls "$p" >/dev/null 2>&1 && echo "$p"; else cat "$p" >/dev/null 2>&1 && echo "$p"; fi; done'
# In the test process's own environment: `boxrun dev` must not hand these down to agents.
INHERITED_SECRETS = {
    "AWS_SECRET_ACCESS_KEY": "leak-aws",
    "PGPASSWORD": "leak-pg",
    "BOXRUN_API_TOKEN": "leak-bxa",
    "GITHUB_TOKEN": "leak-gh",
}


def make_old_data_dir(stack_dir: Path) -> None:
    """What `boxrun dev` before issue 9 left: Postgres initialised with --auth=trust, the schema
    created (and owned) by the superuser, secrets.json without Postgres passwords, everything
    readable by all."""
    root, data, sock = stack_dir / "postgres", stack_dir / "postgres" / "data", stack_dir / "postgres" / "run"
    as_user = services._as_pg_user()
    for path in (stack_dir, root, data, sock):
        path.mkdir(parents=True, exist_ok=True)
        path.chmod(0o755)
    for path in (root, data, sock):
        services._open_for(path, as_user)
    bin_dir = services.postgres_bin()
    done = subprocess.run(
        [str(bin_dir / "initdb"), "-D", str(data), "--auth=trust", "-U", "postgres", "-E", "utf8"],
        capture_output=True,
        text=True,
        cwd=root,
        **as_user,
    )
    assert done.returncode == 0, done.stderr
    port = free_port()
    argv = [str(bin_dir / "postgres"), "-D", str(data), "-p", str(port), "-h", "127.0.0.1", "-k", str(sock)]
    old = spawn("postgres", argv, stack_dir / "logs", stop_signal=signal.SIGINT, cwd=root, **as_user)

    async def schema() -> None:
        admin = await wait_for(lambda: _try_connect(f"postgresql://postgres@127.0.0.1:{port}/postgres"), what="pg")
        await admin.execute("CREATE DATABASE boxrun")
        await admin.close()
        conn = await connect(f"postgresql://postgres@127.0.0.1:{port}/boxrun")
        await migrate(conn)
        await conn.close()

    try:
        asyncio.run(schema())
    finally:
        old.stop()
    secrets = {"api_token": "bxa_old", "node_tokens": {}, "s3": {"access_key": "BXROLD", "secret_key": "old-s3-key"}}
    (stack_dir / "secrets.json").write_text(json.dumps(secrets))
    for path in (stack_dir / "secrets.json", stack_dir / "logs" / "postgres.log"):
        path.chmod(0o644)
    (stack_dir / "logs").chmod(0o755)


async def _try_connect(url: str) -> asyncpg.Connection | None:
    try:
        return await asyncpg.connect(url, timeout=2)
    except (OSError, asyncpg.CannotConnectNowError):
        return None


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def readable_as(user: str, paths: list[Path]) -> list[str]:
    """The paths `user` can read or list (as root: really tried, as that user)."""
    entry = pwd.getpwnam(user)
    done = subprocess.run(
        ["/bin/sh", "-c", PROBE, "probe", *map(str, paths)],
        capture_output=True,
        text=True,
        user=entry.pw_uid,
        group=entry.pw_gid,
        extra_groups=[],
        cwd="/",
        env={"PATH": "/usr/bin:/bin"},
    )
    return done.stdout.split()


async def test_an_old_trust_data_dir_starts_with_passwords_and_nothing_leaks(tmp_path, monkeypatch):
    parent = Path(tempfile.mkdtemp(prefix="boxrun-test-"))
    stack_dir = parent / "dev"
    try:
        await asyncio.to_thread(make_old_data_dir, stack_dir)
        for name, value in INHERITED_SECRETS.items():
            monkeypatch.setenv(name, value)
        async with fault_stack(tmp_path, boxes=1, data_dir=stack_dir) as fs, fs.api() as api:
            secrets = json.loads((stack_dir / "secrets.json").read_text())
            pg = secrets["postgres"]
            port = fs.stack.ports["postgres"]
            agent = fs.child("agent-local-1")
            token_file = stack_dir / "agents" / "local-1" / "node-token"
            values = {
                "admin token": secrets["api_token"],
                "node token": secrets["node_tokens"]["local-1"],
                "superuser password": pg["superuser_password"],
                "app password": pg["app_password"],
                "runtime password": pg["runtime_password"],
                "S3 secret": secrets["s3"]["secret_key"],
                **INHERITED_SECRETS,
            }

            # the job still runs on the upgraded stack, and finds no secret around it
            job = await submit(api, SNOOP)
            assert (await wait_terminal(api, job["id"]))["state"] == "completed"
            seen = " ".join(line["text"] for line in await replay(api, job["id"]))
            if os.geteuid() == 0:  # the job runs as its slot's user: the agent's environment is closed to it
                assert "cannot read /proc/" in seen and "BOXRUN_NODE_TOKEN_FILE" not in seen, seen[:2000]
            else:  # the job runs as the agent's user: it reads that environment, and finds no secret
                assert "BOXRUN_NODE_TOKEN_FILE" in seen, "the job read its agent's environment"
            assert [what for what, value in values.items() if value in seen] == []
            environ = Path(f"/proc/{agent.pid}/environ").read_text(errors="replace")
            assert [what for what, value in values.items() if value in environ] == []
            names = {kv.split("=", 1)[0] for kv in environ.split("\0") if kv}
            assert not names & {"BOXRUN_API_TOKEN", "BOXRUN_DATABASE_URL", "BOXRUN_NODE_TOKEN", "PGPASSWORD"}
            assert not [n for n in names if n.startswith(("BOXRUN_S3_", "AWS_"))]
            assert token_file.read_text().strip() == values["node token"]
            assert (mode(token_file), mode(token_file.parent)) == (0o600, 0o700)

            # Postgres: a password for everyone, trust is gone (TCP and the Unix socket alike)
            for url in (
                f"postgresql://postgres@127.0.0.1:{port}/postgres",
                f"postgresql://boxrun@127.0.0.1:{port}/boxrun",
            ):
                with pytest.raises((asyncpg.InvalidAuthorizationSpecificationError, asyncpg.InterfaceError)):
                    await asyncpg.connect(url, timeout=5)
            with pytest.raises((asyncpg.InvalidAuthorizationSpecificationError, asyncpg.InterfaceError)):
                await asyncpg.connect(host=str(stack_dir / "postgres" / "run"), port=port, user="postgres", timeout=5)
            hba = (stack_dir / "postgres" / "data" / "pg_hba.conf").read_text().splitlines()
            assert {line.split()[-1] for line in hba if line and not line.startswith("#")} == {"scram-sha-256"}
            app_url = fs.child("api").env["BOXRUN_DATABASE_URL"]
            assert app_url == pg_url(port, PG_RUNTIME_ROLE, pg["runtime_password"], "boxrun")
            app = await asyncpg.connect(app_url)
            try:
                assert (
                    await app.fetchval(
                        "SELECT rolsuper OR rolcreaterole OR rolcreatedb FROM pg_roles WHERE rolname = current_user"
                    )
                    is False
                )
                # the schema the superuser made under trust now belongs to the application role
                owners = await app.fetch(
                    "SELECT DISTINCT tableowner FROM pg_tables WHERE schemaname = 'public'"
                    " UNION SELECT DISTINCT pg_get_userbyid(typowner) FROM pg_type WHERE typname = 'job_state'"
                    " UNION SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'boxrun'"
                )
                assert [r[0] for r in owners] == [PG_APP_ROLE]
            finally:
                await app.close()
            admin = await asyncpg.connect(pg_url(port, PG_SUPERUSER, pg["superuser_password"], "postgres"))
            await admin.close()

            # files: private to the user running the stack, including what the old run left open
            private = {
                stack_dir / "secrets.json": 0o600,
                stack_dir / "endpoints.json": 0o600,
                stack_dir / "s3" / "identities.json": 0o600,
                stack_dir / "logs": 0o700,
                stack_dir / "logs" / "postgres.log": 0o600,
                stack_dir / "logs" / "api.log": 0o600,
                stack_dir / "logs" / "agent-local-1.log": 0o600,
            }
            assert {p: mode(p) for p in private} == private
            assert json.loads((stack_dir / "endpoints.json").read_text())["token"] == values["admin token"]
            # others may not list or read the stack's dir; as root they may pass through it (o+x)
            # to the agents' workspaces, which the slot users the jobs run as must reach
            root = os.geteuid() == 0
            assert mode(stack_dir) & 0o007 == (0o001 if root else 0)
            assert mode(stack_dir / "postgres" / "data") == 0o700
            for path in (stack_dir / "boxes", stack_dir / "boxes" / "local-1"):
                assert mode(path) == (0o711 if root else 0o700), path
            for path in (stack_dir / "temporal", stack_dir / "s3"):
                assert mode(path) == 0o700, path
            if os.geteuid() != 0:
                return  # the rest tries the reads as other users, which needs root
            closed = [
                *private,
                token_file,
                token_file.parent,
                stack_dir,
                stack_dir / "postgres" / "data",
                stack_dir / "postgres" / "data" / "pg_hba.conf",
                stack_dir / "boxes" / "local-1",
                stack_dir / "temporal" / "temporal.db",
            ]
            assert all(p.exists() for p in closed)
            assert readable_as("nobody", closed) == []
            # the PostgreSQL system user reaches its data dir and nothing else of the stack
            pg_user = services.PG_SYSTEM_USER
            assert readable_as(pg_user, closed) == [
                str(stack_dir / "postgres" / "data"),
                str(stack_dir / "postgres" / "data" / "pg_hba.conf"),
            ]
    finally:
        shutil.rmtree(parent, ignore_errors=True)
