"""Starting and stopping the whole dev stack; writes DIR/endpoints.json when everything is ready."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import stat
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from boxrun.client import BoxrunClient
from boxrun.db import migrate_for
from boxrun.dev.procs import Child, StartupError, free_ports, port_is_free, spawn, stop_together, wait_ready
from boxrun.dev.proxy import proxy_env, start_proxy
from boxrun.dev.services import (
    PG_RUNTIME_ROLE,
    S3_PORTS,
    PgPasswords,
    S3Credentials,
    pg_url,
    postgres_ready,
    private_dir,
    s3_api_url,
    s3_ready,
    start_postgres,
    start_s3,
    start_temporal,
    write_private,
)
from boxrun.errors import Conflict, NotFound
from boxrun.metrics import metrics_url
from boxrun.secretbox import SecretBox
from boxrun.settings import Settings
from boxrun.storage import Storage
from boxrun.temporal import connect

log = logging.getLogger(__name__)

# The ports people use; "s3" is the S3 API. SeaweedFS's internal ports (S3_PORTS) are picked free
# unless given.
DEFAULT_PORTS = {"api": 8000, "temporal": 7233, "temporal_ui": 8233, "postgres": 54329, "s3": 9100}
# The API's and the worker's Prometheus metrics (docs/operations.md) are picked free the same way.
METRICS_PORTS = ["api_metrics", "worker_metrics"]
INTERNAL_PORTS = [*(name for name in S3_PORTS if name not in DEFAULT_PORTS), *METRICS_PORTS]
# On stop, an agent finishes its running job for this long (BOXRUN_AGENT_DRAIN_S), then terminates
# it and the job is recorded failed ("agent stopped (drain limit reached)"). Short, so Ctrl-C is
# not slow; the stack waits this plus AGENT_STOP_MARGIN_S for the agents before anything else stops.
AGENT_DRAIN_S = 10.0
SYSTEM_PYTHON = "/usr/bin/python3"
AGENT_STOP_MARGIN_S = 15.0
# What an agent gets of the stack's settings: where the API is and its own tunables; never the
# admin token, the database URL, the S3 keys or the Temporal address (an agent speaks only to the
# API; its node token comes in a file, see _agent_env).
AGENT_SETTINGS = {"BOXRUN_ENVIRONMENT", "BOXRUN_API_URL", "PYTHONUNBUFFERED"}
AGENT_SETTING_PREFIXES = ("BOXRUN_AGENT_", "BOXRUN_LOG_")
# Temporal settings for a secured cluster: blanked for the api and worker, whose Temporal is the
# embedded plaintext one.
TEMPORAL_SECURE_SETTINGS = (
    "BOXRUN_TEMPORAL_TLS_CA_FILE",
    "BOXRUN_TEMPORAL_TLS_CERT_FILE",
    "BOXRUN_TEMPORAL_TLS_KEY_FILE",
    "BOXRUN_TEMPORAL_TLS_SERVER_NAME",
    "BOXRUN_TEMPORAL_API_KEY",
)
# What an agent (and so each of its jobs) inherits of the environment `boxrun dev` runs in: what
# finding programs, the locale and Python need, never the rest (a shell's tokens, keys, PGPASSWORD).
AGENT_INHERITS = {
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "SHELL",
    "LANG",
    "TZ",
    "TMPDIR",
    "TERM",
    "VIRTUAL_ENV",
    "PYTHONPATH",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
}
AGENT_INHERITS_PREFIXES = ("LC_", "PYENV_")


@dataclass
class StackOptions:
    data_dir: Path
    boxes: int = 2
    ports: dict[str, int | None] | None = None  # None or missing entry: default; 0: pick a free one
    agent_python: str | None = None
    # extra BOXRUN_* settings for api, worker and agents (tests shorten timeouts with it)
    env: dict[str, str] | None = None
    capacity: int = 1
    # Several API replicas and control workers against the one Temporal and Postgres (docs/deploy.md,
    # "Replicas"): one of each is named "api" and "worker"; more are api-1..N and worker-1..N.
    api_replicas: int = 1
    workers: int = 1
    # The production reverse proxy (Caddy, deploy/proxy/Caddyfile) on the API port in front of the
    # replicas: the agents and endpoints.json's api_url reach the API through it. Without it the
    # agents are spread over the replicas, local-i on replica ((i - 1) mod N) + 1.
    proxy: bool = False


def server_names(kind: str, count: int) -> list[str]:
    """The children of one kind: "api" alone, or "api-1".."api-N"."""
    return [kind] if count == 1 else [f"{kind}-{i}" for i in range(1, count + 1)]


def resolve_ports(requested: dict[str, int | None] | None, auto: bool) -> dict[str, int]:
    """Every port of the stack, each distinct: the ones asked for (checked free), else the default
    (checked free), else with `auto` (or 0, and always for internal ports) a free one."""
    ports: dict[str, int] = {}
    wanted = {**dict.fromkeys(INTERNAL_PORTS, 0), **DEFAULT_PORTS}
    for name, default in wanted.items():
        value = (requested or {}).get(name)
        if value == 0 or (value is None and (auto or default == 0)):
            ports[name] = free_ports([name], taken=ports.values())[name]
        else:
            port = value or default
            if port in ports.values() or not port_is_free(port):
                raise StartupError(f"port {port} ({name}) is in use; pick another or use --ports auto")
            ports[name] = port
    return ports


class DevStack:
    def __init__(self, options: StackOptions, ports: dict[str, int]) -> None:
        self.opts = options
        self.ports = ports
        self.dir = options.data_dir.resolve()
        self.log_dir = self.dir / "logs"
        self.children: list[Child] = []
        self.endpoints: dict[str, Any] = {}
        self.api_names = server_names("api", options.api_replicas)
        self.worker_names = server_names("worker", options.workers)
        self._server_ports = self._replica_ports()

    def _replica_ports(self) -> dict[str, dict[str, int]]:
        """Each replica's API and metrics port, each worker's metrics port, the proxy's spare ones:
        the first replica and worker keep the stack's ports (the API port is the proxy's when
        there is one), the others get free ones."""
        p = self.ports
        wanted = [f"{n}.api" for n in self.api_names] + [f"{n}.metrics" for n in self.api_names[1:]]
        wanted += [f"{n}.metrics" for n in self.worker_names[1:]]
        if self.opts.proxy:
            wanted += ["proxy.s3", "proxy.metrics", "proxy.admin"]
        else:
            wanted.remove(f"{self.api_names[0]}.api")
        free = free_ports(wanted, taken=p.values())
        first_api, first_worker = self.api_names[0], self.worker_names[0]
        free.setdefault(f"{first_api}.api", p["api"])
        free[f"{first_api}.metrics"] = p["api_metrics"]
        free[f"{first_worker}.metrics"] = p["worker_metrics"]
        ports: dict[str, dict[str, int]] = {}
        for key, port in free.items():
            name, what = key.split(".")
            ports.setdefault(name, {})[what] = port
        return ports

    @property
    def secrets_path(self) -> Path:
        return self.dir / "secrets.json"

    def _secrets(self) -> dict[str, Any]:
        """The stack's secrets, generated once and kept in secrets.json (mode 0600)."""
        data = json.loads(self.secrets_path.read_text()) if self.secrets_path.exists() else {}
        data.setdefault("api_token", f"bxa_{secrets.token_urlsafe(32)}")
        data.setdefault("node_tokens", {})
        data.setdefault("secrets_key", SecretBox.generate_key())  # also for a data dir from before it
        if "s3" not in data:  # also for a data dir from before the S3 store had an identity
            creds = S3Credentials.generate()
            data["s3"] = {"access_key": creds.access_key, "secret_key": creds.secret_key}
        if "postgres" not in data:  # also for a data dir from before Postgres had passwords
            pw = PgPasswords.generate()
            data["postgres"] = {"superuser_password": pw.superuser, "app_password": pw.app}
        # also for a data dir from before the API and the worker had a runtime role of their own
        data["postgres"].setdefault("runtime_password", secrets.token_urlsafe(24))
        return data

    def _save_secrets(self, data: dict[str, Any]) -> None:
        write_private(self.secrets_path, json.dumps(data, indent=2))

    def _close_data_dir(self) -> None:
        """Only the user running the stack reads anything in it: the dir 0700 (0710 as root, the
        PostgreSQL system user's group entering to reach its data dir), what an older run left
        at the top closed too (dirs 0700, files 0600, logs 0600)."""
        private_dir(self.dir, postgres_inside=True)
        for entry in self.dir.iterdir():
            if entry.name == "postgres" or entry.is_symlink():
                continue  # the PostgreSQL system user's own (start_postgres)
            entry.chmod(0o700 if entry.is_dir() else 0o600)
        if self.log_dir.is_dir():
            for log_file in self.log_dir.iterdir():
                if log_file.is_file() and not log_file.is_symlink():
                    log_file.chmod(0o600)

    def _open_agent_dirs(self, names: list[str]) -> None:
        """As root the agents run jobs as their slot users, who must pass through the stack's dir
        to their workspaces (DIR/boxes/<box>/jobs/<id>): enter-only (o+x) on DIR, DIR/boxes and
        each DIR/boxes/<box>, never list or read; everything else in DIR stays 0700/0600."""
        if os.geteuid() != 0:
            return
        self.dir.chmod(stat.S_IMODE(self.dir.stat().st_mode) | stat.S_IXOTH)
        for path in (self.dir / "boxes", *(self.dir / "boxes" / n for n in names)):
            path.mkdir(exist_ok=True)
            path.chmod(0o711)

    def _base_env(self, token: str, db_url: str, s3: S3Credentials, secrets_key: str) -> dict[str, str]:
        p = self.ports
        return {
            "BOXRUN_ENVIRONMENT": "dev",
            "BOXRUN_DATABASE_URL": db_url,
            "BOXRUN_TEMPORAL_ADDRESS": f"127.0.0.1:{p['temporal']}",
            "BOXRUN_TEMPORAL_UI_URL": f"http://127.0.0.1:{p['temporal_ui']}",
            # the embedded Temporal is plaintext: TLS or an API key set in the shell (for another
            # cluster) must not reach the api and worker here (an empty value counts as unset)
            "BOXRUN_TEMPORAL_TLS": "false",
            **dict.fromkeys(TEMPORAL_SECURE_SETTINGS, ""),
            "BOXRUN_S3_ENDPOINT_URL": f"http://127.0.0.1:{p['s3']}",
            "BOXRUN_S3_ACCESS_KEY_ID": s3.access_key,
            "BOXRUN_S3_SECRET_ACCESS_KEY": s3.secret_key,
            # SeaweedFS checks x-amz-checksum-sha256 on PUT and keeps it (see Storage.verify)
            "BOXRUN_S3_VERIFY": "checksum",
            "BOXRUN_AGENT_DRAIN_S": str(AGENT_DRAIN_S),
            "BOXRUN_API_HOST": "127.0.0.1",
            "BOXRUN_API_PORT": str(p["api"]),
            "BOXRUN_API_URL": f"http://127.0.0.1:{p['api']}",
            "BOXRUN_API_TOKEN": token,
            "BOXRUN_SECRETS_KEY": secrets_key,
            "BOXRUN_WEBHOOK_ALLOW_NETWORKS": "127.0.0.0/8,::1/128",  # webhooks to receivers on this machine
            "BOXRUN_METRICS_HOST": "127.0.0.1",
            "BOXRUN_API_METRICS_PORT": str(p["api_metrics"]),
            "BOXRUN_WORKER_METRICS_PORT": str(p["worker_metrics"]),
            "PYTHONUNBUFFERED": "1",
            **(self.opts.env or {}),
        }

    def token_file(self, box: str) -> Path:
        """The box's node token, in a file of its own (0600) in a dir of its own (0700)."""
        return self.dir / "agents" / box / "node-token"

    def _agent_env(self, env: dict[str, str], box: str, token: str) -> tuple[dict[str, str], dict[str, str]]:
        """(inherited, own) environment of one agent: the few variables it needs of the stack's
        environment (AGENT_INHERITS), and its own settings with its node token as a file, never as
        a value."""
        path = self.token_file(box)
        private_dir(path.parent.parent)
        private_dir(path.parent)
        write_private(path, token + "\n")
        own = {k: v for k, v in env.items() if k in AGENT_SETTINGS or k.startswith(AGENT_SETTING_PREFIXES)}
        own |= {
            "BOXRUN_BOX_NAME": box,
            "BOXRUN_NODE_TOKEN_FILE": str(path),
            "BOXRUN_AGENT_WORKDIR": str(self.dir / "boxes" / box),
        }
        python = self.opts.agent_python or own.get("BOXRUN_AGENT_PYTHON") or os.environ.get("BOXRUN_AGENT_PYTHON")
        if python is None and os.geteuid() == 0 and Path(SYSTEM_PYTHON).exists():
            # as root the agent runs jobs as its slot users, who cannot reach an interpreter under
            # /root (pyenv, a venv there): the system's python3 is reachable by every user
            python = SYSTEM_PYTHON
        if python:
            own["BOXRUN_AGENT_PYTHON"] = python
        inherited = {
            k: v for k, v in os.environ.items() if k in AGENT_INHERITS or k.startswith(AGENT_INHERITS_PREFIXES)
        }
        return inherited, own

    def _boxrun(self, name: str, args: list[str], env: dict[str, str], base_env: dict[str, str] | None = None) -> Child:
        child = spawn(name, [sys.executable, "-m", "boxrun.cli", *args], self.log_dir, env=env, base_env=base_env)
        self.children.append(child)
        return child

    async def start(self) -> dict[str, Any]:
        self._close_data_dir()
        p = self.ports
        keys = self._secrets()
        self._save_secrets(keys)  # before S3 and Postgres start with them, so they are never lost
        s3_creds = S3Credentials(keys["s3"]["access_key"], keys["s3"]["secret_key"])
        pg_keys = keys["postgres"]
        pg_passwords = PgPasswords(pg_keys["superuser_password"], pg_keys["app_password"], pg_keys["runtime_password"])
        pg = start_postgres(self.dir / "postgres", p["postgres"], self.log_dir, pg_passwords.superuser)
        temporal = start_temporal(self.dir / "temporal", p["temporal"], p["temporal_ui"], self.log_dir)
        s3 = start_s3(self.dir / "s3", p, s3_creds, self.log_dir)
        self.children += [pg, temporal, s3]
        s3_url = s3_api_url(p)
        db_url: dict[str, str] = {}

        async def pg_probe() -> bool:
            db_url["owner"] = await postgres_ready(p["postgres"], pg_passwords)
            db_url["url"] = pg_url(p["postgres"], PG_RUNTIME_ROLE, pg_passwords.runtime, "boxrun")
            return True

        async def temporal_probe() -> bool:
            client = await connect(f"127.0.0.1:{p['temporal']}")
            return await client.service_client.check_health()

        await asyncio.gather(
            wait_ready(pg, pg_probe),
            wait_ready(temporal, temporal_probe, timeout=120),
            wait_ready(s3, lambda: s3_ready(p, s3_creds)),
        )
        # the stack migrates as the owner and grants the runtime role its rights; the API and the
        # worker get the runtime role only (their own migration check then only reads)
        await migrate_for(db_url["url"], db_url["owner"])
        env = self._base_env(keys["api_token"], db_url["url"], s3_creds, keys["secrets_key"])
        # the bucket, as the API and the worker will see it (their settings come from this env)
        storage_settings = Settings(
            s3_endpoint_url=s3_url, s3_access_key_id=s3_creds.access_key, s3_secret_access_key=s3_creds.secret_key
        )
        await asyncio.to_thread(Storage(storage_settings).ensure_bucket)
        api_url = env["BOXRUN_API_URL"]  # the public one: the proxy's when there is one
        replica_urls = {n: f"http://127.0.0.1:{self._server_ports[n]['api']}" for n in self.api_names}
        apis = [
            self._boxrun(
                name,
                ["api"],
                {
                    **env,
                    "BOXRUN_API_PORT": str(self._server_ports[name]["api"]),
                    "BOXRUN_API_METRICS_PORT": str(self._server_ports[name]["metrics"]),
                },
            )
            for name in self.api_names
        ]

        def api_probe(url: str) -> Callable[[], Awaitable[bool]]:
            async def probe() -> bool:
                async with BoxrunClient(url, keys["api_token"], timeout=2) as client:
                    await client.health()  # raises while the API is not up yet
                    return True

            return probe

        workers = [
            self._boxrun(
                name, ["worker"], {**env, "BOXRUN_WORKER_METRICS_PORT": str(self._server_ports[name]["metrics"])}
            )
            for name in self.worker_names
        ]
        await asyncio.gather(*(wait_ready(api, api_probe(replica_urls[api.name])) for api in apis))
        if self.opts.proxy:
            proxy = self._start_proxy(replica_urls)
            await wait_ready(proxy, api_probe(api_url))
        names = [f"local-{i}" for i in range(1, self.opts.boxes + 1)]
        await self._register_boxes(api_url, keys, names)
        self._save_secrets(keys)
        agents = []
        self._open_agent_dirs(names)
        agent_ports = free_ports(names, taken=p.values())  # each agent's metrics (docs/operations.md)
        for i, name in enumerate(names):
            inherited, own = self._agent_env(env, name, keys["node_tokens"][name])
            own.setdefault("BOXRUN_AGENT_METRICS_PORT", str(agent_ports[name]))
            if not self.opts.proxy:  # spread over the replicas (one replica: its URL, as before)
                own["BOXRUN_API_URL"] = replica_urls[self.api_names[i % len(self.api_names)]]
            agents.append(self._boxrun(f"agent-{name}", ["agent", "--box", name], own, base_env=inherited))
        await self._wait_online(api_url, keys["api_token"], names, [*workers, *agents])

        self.endpoints = {
            "api_url": api_url,
            "dashboard_url": f"{api_url}/ui/",
            "health_url": f"{api_url}/api/health",
            "ready_url": f"{api_url}/api/ready",
            "api_metrics_url": metrics_url(env["BOXRUN_METRICS_HOST"], int(env["BOXRUN_API_METRICS_PORT"])),
            "worker_metrics_url": metrics_url(env["BOXRUN_METRICS_HOST"], int(env["BOXRUN_WORKER_METRICS_PORT"])),
            "temporal_address": env["BOXRUN_TEMPORAL_ADDRESS"],
            "temporal_ui_url": env["BOXRUN_TEMPORAL_UI_URL"],
            "s3_endpoint": s3_url,
            "token": keys["api_token"],
            "boxes": [
                {
                    "name": n,
                    "pid": a.pid,
                    "metrics_url": metrics_url("127.0.0.1", int(a.env["BOXRUN_AGENT_METRICS_PORT"])),
                }
                for n, a in zip(names, agents, strict=True)
            ],
            "data_dir": str(self.dir),
            "pids": {c.name: c.pid for c in self.children},
        }
        if len(apis) > 1 or len(workers) > 1 or self.opts.proxy:
            host = env["BOXRUN_METRICS_HOST"]
            self.endpoints["api_replicas"] = [
                {"name": n, "url": replica_urls[n], "metrics_url": metrics_url(host, self._server_ports[n]["metrics"])}
                for n in self.api_names
            ]
            self.endpoints["workers"] = [
                {"name": n, "metrics_url": metrics_url(host, self._server_ports[n]["metrics"])}
                for n in self.worker_names
            ]
        # what the user reads to reach the stack, the admin token included: 0600 like secrets.json
        write_private(self.dir / "endpoints.json", json.dumps(self.endpoints, indent=2))
        return self.endpoints

    def _start_proxy(self, replica_urls: dict[str, str]) -> Child:
        ports = self._server_ports["proxy"]
        env = proxy_env(
            self.dir / "proxy",
            port=self.ports["api"],
            s3_port=self.ports["s3"],
            upstreams=[self._server_ports[n]["api"] for n in replica_urls],
            spare=[ports["s3"], ports["metrics"], ports["admin"]],
        )
        proxy = start_proxy(self.dir / "proxy", env, self.log_dir)
        self.children.append(proxy)
        return proxy

    async def _register_boxes(self, api_url: str, keys: dict[str, Any], names: list[str]) -> None:
        async with BoxrunClient(api_url, keys["api_token"], timeout=10) as client:
            for name in names:
                if name in keys["node_tokens"]:
                    try:
                        await client.get_box(name)
                        continue
                    except NotFound:
                        pass  # a fresh database: register it again
                try:
                    created = await client.register_box(
                        name=name, groups=["local"], capabilities=["python3", "local"], capacity=self.opts.capacity
                    )
                except Conflict:  # known to the database, token lost: mint a new one
                    created = await client.rotate_token(name)
                keys["node_tokens"][name] = created.node_token

    async def _wait_online(self, api_url: str, token: str, names: list[str], watched: list[Child]) -> None:
        async def all_online() -> bool:
            for child in watched:
                if not child.alive():
                    raise StartupError(f"{child.name} exited:\n{child.log_tail()}")
            async with BoxrunClient(api_url, token, timeout=2) as client:
                boxes = (await client.list_boxes()).data
            return all(b.status == "online" for b in boxes if b.name in names)

        for _ in range(600):
            if await all_online():
                return
            await asyncio.sleep(0.05)
        raise StartupError("agents did not come online within 30 s")

    def child(self, name: str) -> Child:
        return next(c for c in self.children if c.name == name)

    def stop(self) -> None:
        """Stop in three waves, each in parallel. First the agents: each takes no new job and lets
        its running one finish for up to the drain time, else terminates it and reports the job
        failed ("agent stopped (drain limit reached)") while the worker, Temporal and Postgres are
        still up to record it. Then the API and the worker; then Temporal, S3 and Postgres."""
        agents = [c for c in self.children if c.name.startswith("agent-")]
        # the proxy with the servers: the agents reach the API through it while they drain
        servers = [c for c in self.children if c.name in (*self.api_names, *self.worker_names, "proxy")]
        stores = [c for c in self.children if c not in agents and c not in servers]
        drain = float((self.opts.env or {}).get("BOXRUN_AGENT_DRAIN_S", AGENT_DRAIN_S))
        stop_together(agents, timeout=drain + AGENT_STOP_MARGIN_S)
        stop_together(servers)
        stop_together(stores)
        self.children.clear()
