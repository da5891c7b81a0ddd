"""docker-compose.temporal.yml and the Dockerfile, checked by parsing (no Docker engine on the build
machines): services, wiring, BOXRUN_* names against Settings, pinned images, volumes, secrets,
search attributes and commands against the real code."""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

import boxrun.cli
from boxrun.constants import SEARCH_ATTRIBUTES
from boxrun.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.temporal.yml"
DOCKERFILE = ROOT / "Dockerfile"

# service -> `boxrun` subcommand
BOXRUN_SERVICES = {"api": "api", "worker": "worker", "agent": "agent", "migrate": "migrate"}
INFRA_SERVICES = (
    "temporal",
    "temporal-db",
    "temporal-ui",
    "temporal-admin-tools",
    "app-db",
    "app-db-init",
    "minio",
    "minio-init",
)
ONE_SHOTS = ("temporal-admin-tools", "minio-init", "app-db-init", "migrate")
# Stateful services and where their data lives.
DATA_DIRS = {"temporal-db": "/var/lib/postgresql/data", "app-db": "/var/lib/postgresql/data", "minio": "/data"}

SETTINGS_ENV = {"BOXRUN_" + name.upper() for name in Settings.model_fields}
SECRET_NAME = re.compile(r"TOKEN|PASSWORD|SECRET|PWD")
# Compose interpolation: ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?err}, ${VAR?err}; $$ is a literal $.
INTERPOLATION = re.compile(r"\$\{(?P<var>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")


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


def test_file_parses_with_all_services(compose: dict, services: dict) -> None:
    assert isinstance(compose, dict) and isinstance(services, dict)
    missing = set(INFRA_SERVICES) | set(BOXRUN_SERVICES)
    assert not missing - services.keys(), f"missing services: {sorted(missing - services.keys())}"


def test_temporal_runs_on_its_own_postgres(services: dict) -> None:
    temporal = services["temporal"]
    assert temporal["image"].startswith("temporalio/auto-setup:")
    env = env_of(temporal)
    assert env["POSTGRES_SEEDS"] == "temporal-db"
    assert env["DB"].startswith("postgres")
    assert "temporal-db" in temporal["depends_on"]
    assert services["temporal-ui"]["image"].startswith("temporalio/ui:")
    assert env_of(services["temporal-ui"])["TEMPORAL_ADDRESS"] == "temporal:7233"
    # The app database is a different server from Temporal's.
    for name in ("api", "worker"):
        url = urlsplit(interpolate(env_of(services[name])["BOXRUN_DATABASE_URL"]))
        assert url.hostname == "app-db", f"{name} must use the app database, not {url.hostname}"


def test_boxrun_services_are_built_from_the_dockerfile(services: dict) -> None:
    for name in BOXRUN_SERVICES:
        assert services[name].get("build") == ".", f"{name} must be built from ./Dockerfile"
        assert "image" not in services[name] or ":" in services[name]["image"]


@pytest.mark.parametrize("name", sorted(BOXRUN_SERVICES))
def test_boxrun_env_names_are_real_settings(services: dict, name: str) -> None:
    env = env_of(services[name])
    assert env, f"{name} has no environment"
    unknown = sorted(k for k in env if k not in SETTINGS_ENV)
    assert not unknown, f"{name} sets variables Settings does not read: {unknown}"


@pytest.mark.parametrize("name", sorted(BOXRUN_SERVICES))
def test_boxrun_env_builds_valid_settings(services: dict, name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every boxrun process must start with exactly what the file gives it (production checks included)."""
    import os

    for key in list(os.environ):
        if key.startswith("BOXRUN_"):
            monkeypatch.delenv(key)
    for key, value in env_of(services[name]).items():
        monkeypatch.setenv(key, interpolate(value or ""))
    settings = Settings()
    assert urlsplit(f"//{settings.temporal_address}").hostname == "temporal"
    if name == "agent":
        assert settings.box_name == "bench-1"
        assert urlsplit(settings.api_url).hostname == "api"
    else:
        assert settings.environment == "production"
        assert settings.s3_verify == "checksum"
        assert urlsplit(settings.s3_endpoint_url).hostname == "minio"
        assert urlsplit(settings.database_url).hostname == "app-db"


def test_api_listens_where_it_is_published_and_checked(services: dict) -> None:
    api = services["api"]
    env = env_of(api)
    assert env["BOXRUN_API_HOST"] == "0.0.0.0"
    port = env["BOXRUN_API_PORT"]
    assert any(str(p).split(":")[-1] == port for p in api["ports"]), "API port is not published"
    health = " ".join(api["healthcheck"]["test"])
    assert f":{port}/api/health" in health
    from boxrun.api.app import create_app

    paths = create_app(Settings()).openapi()["paths"]
    assert "get" in paths.get("/api/health", {}), "the healthcheck URL is not a route of the API"
    agent_api = urlsplit(env_of(services["agent"])["BOXRUN_API_URL"])
    assert (agent_api.hostname, str(agent_api.port)) == ("api", port)


def test_depends_on_targets_exist_with_sensible_conditions(services: dict) -> None:
    seen = 0
    for name, svc in services.items():
        deps = svc.get("depends_on") or {}
        if isinstance(deps, list):
            deps = {d: {"condition": "service_started"} for d in deps}
        for target, spec in deps.items():
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
    for name in ("api", "worker"):
        deps = services[name]["depends_on"]
        assert deps["migrate"]["condition"] == "service_completed_successfully"
        assert deps["temporal"]["condition"] == "service_healthy"
        assert deps["temporal-admin-tools"]["condition"] == "service_completed_successfully"


def test_images_are_pinned(services: dict) -> None:
    for name, svc in services.items():
        image = svc.get("image")
        if image is None:
            assert svc.get("build"), f"{name} has neither image nor build"
            continue
        repo, _, tag = image.rpartition(":")
        assert repo and "/" not in tag, f"{name}: image {image} has no tag"
        assert tag and tag != "latest" and "$" not in tag, f"{name}: image {image} is not pinned"


def test_named_volumes_are_declared_and_hold_the_data(compose: dict, services: dict) -> None:
    declared = set(compose.get("volumes") or {})
    used = set()
    for name, svc in services.items():
        for vol in svc.get("volumes") or []:
            source, target = vol.split(":")[:2] if isinstance(vol, str) else (vol.get("source"), vol.get("target"))
            if source and not source.startswith((".", "/", "~", "$")):
                assert source in declared, f"{name} uses undeclared volume {source}"
                used.add(source)
    for name, data_dir in DATA_DIRS.items():
        mounts = {v.split(":")[1]: v.split(":")[0] for v in services[name].get("volumes") or []}
        assert data_dir in mounts and mounts[data_dir] in declared, f"{name} keeps {data_dir} in no named volume"
    assert used == declared, f"declared but unused volumes: {sorted(declared - used)}"


def test_search_attributes_registered_as_keyword(services: dict) -> None:
    admin = services["temporal-admin-tools"]
    assert admin["image"].startswith("temporalio/admin-tools:")
    assert env_of(admin)["TEMPORAL_ADDRESS"] == "temporal:7233"
    script = interpolate(command_text(admin))
    for name in SEARCH_ATTRIBUTES:
        pattern = rf"temporal operator search-attribute create\b[^\n]*--name {name} --type Keyword\b"
        assert re.search(pattern, script), f"search attribute {name} is not registered as Keyword"


def test_bucket_is_created(services: dict) -> None:
    settings_bucket = env_of(services["api"]).get("BOXRUN_S3_BUCKET", Settings.model_fields["s3_bucket"].default)
    script = interpolate(command_text(services["minio-init"]))
    assert re.search(rf"mc mb\b[^\n]* \w+/{settings_bucket}\b", script)
    assert services["minio-init"]["depends_on"]["minio"]["condition"] == "service_healthy"


def test_boxrun_commands_are_real_subcommands(services: dict) -> None:
    commands = {c.name or c.callback.__name__ for c in boxrun.cli.app.registered_commands}
    for name, subcommand in BOXRUN_SERVICES.items():
        cmd = services[name]["command"]
        assert isinstance(cmd, list) and cmd[:2] == ["boxrun", subcommand], f"{name}: command {cmd}"
        assert cmd[1] in commands, f"`boxrun {cmd[1]}` does not exist (have {sorted(commands)})"


def test_secrets_are_interpolated_never_literal(services: dict) -> None:
    for name, svc in services.items():
        for key, value in env_of(svc).items():
            if SECRET_NAME.search(key) or key == "BOXRUN_DATABASE_URL":
                assert value is not None and INTERPOLATION.search(value), f"{name}.{key} is hard-coded"
    required = {"BOXRUN_API_TOKEN", "BOXRUN_S3_SECRET_ACCESS_KEY", "BOXRUN_DATABASE_URL"}
    for name in ("api", "worker"):
        env = env_of(services[name])
        for key in required:
            m = INTERPOLATION.search(env[key])
            assert m and m["op"] == ":?", f"{name}.{key} must fail fast when unset (${{VAR:?...}})"
    for name in ("minio", "app-db", "temporal-db"):
        assert any(":?" in (v or "") for k, v in env_of(services[name]).items() if SECRET_NAME.search(k)), name


def test_api_and_worker_connect_as_the_runtime_role_and_only_migrate_owns_the_schema(services: dict) -> None:
    """The audit log is append-only to the role the api and worker use (docs/audit.md): they get
    the runtime role's URL, and only the migrate one-shot gets the owner's."""
    owner = urlsplit(interpolate(env_of(services["migrate"])["BOXRUN_DATABASE_OWNER_URL"])).username
    assert owner == env_of(services["app-db"])["POSTGRES_USER"]
    for name in ("api", "worker"):
        env = env_of(services[name])
        assert "BOXRUN_DATABASE_OWNER_URL" not in env, name
        assert urlsplit(interpolate(env["BOXRUN_DATABASE_URL"])).username not in (owner, None), name
    assert [n for n, svc in services.items() if "BOXRUN_DATABASE_OWNER_URL" in env_of(svc)] == ["migrate"]


def test_agent_holds_no_control_plane_secrets(services: dict) -> None:
    env = env_of(services["agent"])
    token = INTERPOLATION.search(env["BOXRUN_NODE_TOKEN"])
    assert token and token["var"] == "BOXRUN_NODE_TOKEN"
    for key in ("BOXRUN_API_TOKEN", "BOXRUN_S3_SECRET_ACCESS_KEY", "BOXRUN_S3_ACCESS_KEY_ID", "BOXRUN_DATABASE_URL"):
        assert key not in env, f"the agent must not get {key}"
    for name in ("api", "worker"):
        assert "BOXRUN_NODE_TOKEN" not in env_of(services[name])


def test_no_stray_dollar_signs(services: dict) -> None:
    """Compose interpolates every $VAR, also inside shell scripts; a script's own $ must be $$."""
    for name, svc in services.items():
        for text in strings_in(svc):
            rest = INTERPOLATION.sub("", text.replace("$$", ""))
            assert "$" not in rest, f"{name}: unescaped $ in {text!r}"


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
