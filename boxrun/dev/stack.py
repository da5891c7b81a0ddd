"""Starting and stopping the whole dev stack; writes DIR/endpoints.json when everything is ready."""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from boxrun.client import BoxrunClient
from boxrun.dev.procs import Child, StartupError, free_ports, port_is_free, spawn, stop_together, wait_ready
from boxrun.dev.services import (
    S3_PORTS,
    S3Credentials,
    postgres_ready,
    s3_api_url,
    s3_ready,
    start_postgres,
    start_s3,
    start_temporal,
)
from boxrun.errors import Conflict, NotFound
from boxrun.settings import Settings
from boxrun.storage import Storage
from boxrun.temporal import connect

log = logging.getLogger(__name__)

# The ports people use; "s3" is the S3 API. SeaweedFS's internal ports (S3_PORTS) are picked free
# unless given.
DEFAULT_PORTS = {"api": 8000, "temporal": 7233, "temporal_ui": 8233, "postgres": 54329, "s3": 9100}
INTERNAL_PORTS = [name for name in S3_PORTS if name not in DEFAULT_PORTS]
# On stop, an agent finishes its running job for this long (BOXRUN_AGENT_DRAIN_S), then terminates
# it and the job is recorded failed ("agent stopped (drain limit reached)"). Short, so Ctrl-C is
# not slow; the stack waits this plus AGENT_STOP_MARGIN_S for the agents before anything else stops.
AGENT_DRAIN_S = 10.0
AGENT_STOP_MARGIN_S = 15.0


# Settings an agent never gets (boxes use presigned URLs and the API, nothing else).
AGENT_WITHOUT = ("BOXRUN_S3_", "BOXRUN_DATABASE_", "BOXRUN_TEMPORAL_")


@dataclass
class StackOptions:
    data_dir: Path
    boxes: int = 2
    ports: dict[str, int | None] | None = None  # None or missing entry: default; 0: pick a free one
    agent_python: str | None = None
    # extra BOXRUN_* settings for api, worker and agents (tests shorten timeouts with it)
    env: dict[str, str] | None = None
    capacity: int = 1


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

    @property
    def secrets_path(self) -> Path:
        return self.dir / "secrets.json"

    def _secrets(self) -> dict[str, Any]:
        """The stack's secrets, generated once and kept in secrets.json (mode 0600)."""
        data = json.loads(self.secrets_path.read_text()) if self.secrets_path.exists() else {}
        data.setdefault("api_token", f"bxa_{secrets.token_urlsafe(32)}")
        data.setdefault("node_tokens", {})
        if "s3" not in data:  # also for a data dir from before the S3 store had an identity
            creds = S3Credentials.generate()
            data["s3"] = {"access_key": creds.access_key, "secret_key": creds.secret_key}
        return data

    def _save_secrets(self, data: dict[str, Any]) -> None:
        tmp = self.secrets_path.with_name("secrets.json.tmp")
        tmp.write_text(json.dumps(data, indent=2))
        tmp.chmod(0o600)
        tmp.replace(self.secrets_path)

    def _base_env(self, token: str, db_url: str, s3: S3Credentials) -> dict[str, str]:
        p = self.ports
        return {
            "BOXRUN_ENVIRONMENT": "dev",
            "BOXRUN_DATABASE_URL": db_url,
            "BOXRUN_TEMPORAL_ADDRESS": f"127.0.0.1:{p['temporal']}",
            "BOXRUN_TEMPORAL_UI_URL": f"http://127.0.0.1:{p['temporal_ui']}",
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
            "PYTHONUNBUFFERED": "1",
            **(self.opts.env or {}),
        }

    def _boxrun(self, name: str, args: list[str], env: dict[str, str]) -> Child:
        child = spawn(name, [sys.executable, "-m", "boxrun.cli", *args], self.log_dir, env=env)
        self.children.append(child)
        return child

    async def start(self) -> dict[str, Any]:
        self.dir.mkdir(parents=True, exist_ok=True)
        p = self.ports
        keys = self._secrets()
        self._save_secrets(keys)  # before S3 starts with the identity, so it is never lost
        s3_creds = S3Credentials(keys["s3"]["access_key"], keys["s3"]["secret_key"])
        pg = start_postgres(self.dir / "postgres", p["postgres"], self.log_dir)
        temporal = start_temporal(self.dir / "temporal", p["temporal"], p["temporal_ui"], self.log_dir)
        s3 = start_s3(self.dir / "s3", p, s3_creds, self.log_dir)
        self.children += [pg, temporal, s3]
        s3_url = s3_api_url(p)
        db_url: dict[str, str] = {}

        async def pg_probe() -> bool:
            db_url["url"] = await postgres_ready(p["postgres"])
            return True

        async def temporal_probe() -> bool:
            client = await connect(f"127.0.0.1:{p['temporal']}")
            return await client.service_client.check_health()

        await asyncio.gather(
            wait_ready(pg, pg_probe),
            wait_ready(temporal, temporal_probe, timeout=120),
            wait_ready(s3, lambda: s3_ready(p, s3_creds)),
        )
        env = self._base_env(keys["api_token"], db_url["url"], s3_creds)
        # the bucket, as the API and the worker will see it (their settings come from this env)
        storage_settings = Settings(
            s3_endpoint_url=s3_url, s3_access_key_id=s3_creds.access_key, s3_secret_access_key=s3_creds.secret_key
        )
        await asyncio.to_thread(Storage(storage_settings).ensure_bucket)
        api = self._boxrun("api", ["api"], env)
        api_url = env["BOXRUN_API_URL"]

        async def api_probe() -> bool:
            async with BoxrunClient(api_url, keys["api_token"], timeout=2) as client:
                await client.health()  # raises while the API is not up yet
                return True

        worker = self._boxrun("worker", ["worker"], env)
        await wait_ready(api, api_probe)
        names = [f"local-{i}" for i in range(1, self.opts.boxes + 1)]
        await self._register_boxes(api_url, keys, names)
        self._save_secrets(keys)
        agents = []
        for name in names:
            agent_env = {
                # an agent speaks only to the API: no storage, database or Temporal address, no admin token
                **{k: v for k, v in env.items() if not k.startswith(AGENT_WITHOUT) and k != "BOXRUN_API_TOKEN"},
                "BOXRUN_BOX_NAME": name,
                "BOXRUN_NODE_TOKEN": keys["node_tokens"][name],
                "BOXRUN_AGENT_WORKDIR": str(self.dir / "boxes" / name),
            }
            if self.opts.agent_python:
                agent_env["BOXRUN_AGENT_PYTHON"] = self.opts.agent_python
            agents.append(self._boxrun(f"agent-{name}", ["agent", "--box", name], agent_env))
        await self._wait_online(api_url, keys["api_token"], names, [worker, *agents])

        self.endpoints = {
            "api_url": api_url,
            "temporal_address": env["BOXRUN_TEMPORAL_ADDRESS"],
            "temporal_ui_url": env["BOXRUN_TEMPORAL_UI_URL"],
            "s3_endpoint": s3_url,
            "token": keys["api_token"],
            "boxes": [{"name": n, "pid": a.pid} for n, a in zip(names, agents, strict=True)],
            "data_dir": str(self.dir),
            "pids": {c.name: c.pid for c in self.children},
        }
        tmp = self.dir / "endpoints.json.tmp"
        tmp.write_text(json.dumps(self.endpoints, indent=2))
        tmp.replace(self.dir / "endpoints.json")  # readers never see a half-written file
        return self.endpoints

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
        servers = [c for c in self.children if c.name in ("api", "worker")]
        stores = [c for c in self.children if c not in agents and c not in servers]
        drain = float((self.opts.env or {}).get("BOXRUN_AGENT_DRAIN_S", AGENT_DRAIN_S))
        stop_together(agents, timeout=drain + AGENT_STOP_MARGIN_S)
        stop_together(servers)
        stop_together(stores)
        self.children.clear()
