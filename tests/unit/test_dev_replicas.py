"""`boxrun dev` with several API replicas and control workers: names, ports, and the proxy's
configuration (the production Caddyfile adapted by the real Caddy, listening on loopback only).
The whole stack runs in tests/integration/test_replicas.py."""

from __future__ import annotations

from pathlib import Path

from boxrun.dev.proxy import loopback_config, proxy_env
from boxrun.dev.stack import DevStack, StackOptions, resolve_ports, server_names


def stack(tmp_path: Path, **options) -> DevStack:
    return DevStack(StackOptions(data_dir=tmp_path, **options), resolve_ports(None, auto=True))


def test_one_of_each_keeps_the_names_and_ports_of_before(tmp_path: Path) -> None:
    s = stack(tmp_path)
    assert (s.api_names, s.worker_names) == (["api"], ["worker"])
    assert s._server_ports["api"] == {"api": s.ports["api"], "metrics": s.ports["api_metrics"]}
    assert s._server_ports["worker"] == {"metrics": s.ports["worker_metrics"]}
    assert "proxy" not in s._server_ports


def test_replicas_get_names_and_distinct_ports(tmp_path: Path) -> None:
    s = stack(tmp_path, api_replicas=3, workers=2)
    assert s.api_names == server_names("api", 3) == ["api-1", "api-2", "api-3"]
    assert s.worker_names == ["worker-1", "worker-2"]
    assert s._server_ports["api-1"]["api"] == s.ports["api"], "the first replica keeps the API port"
    used = [port for ports in s._server_ports.values() for port in ports.values()]
    assert len(used) == len(set(used)) == 3 * 2 + 2
    kept = {s.ports["api"], s.ports["api_metrics"], s.ports["worker_metrics"]}
    assert not {p for p in used if p not in kept} & set(s.ports.values()), "new ports clash with none of the stack's"


def test_with_the_proxy_it_takes_the_api_port_and_the_replicas_get_their_own(tmp_path: Path) -> None:
    s = stack(tmp_path, api_replicas=2, proxy=True)
    replica_ports = {s._server_ports[n]["api"] for n in s.api_names}
    assert s.ports["api"] not in replica_ports and len(replica_ports) == 2
    assert set(s._server_ports["proxy"]) == {"s3", "metrics", "admin"}


def test_the_proxy_runs_the_production_caddyfile_on_loopback_only(tmp_path: Path) -> None:
    env = proxy_env(tmp_path, port=18000, s3_port=19000, upstreams=[18001, 18002], spare=[19001, 19180, 12019])
    config = loopback_config(env)
    listens = sorted(a for server in config["apps"]["http"]["servers"].values() for a in server["listen"])
    assert listens == ["127.0.0.1:18000", "127.0.0.1:19001", "127.0.0.1:19180"]
    api = next(s for s in config["apps"]["http"]["servers"].values() if s["listen"] == ["127.0.0.1:18000"])
    text = str(api["routes"])
    assert "127.0.0.1:18001" in text and "127.0.0.1:18002" in text and "/api/ready" in text
