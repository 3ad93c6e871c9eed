"""docker-compose.yml and .env.example, checked against the code they drive: the compose schema,
the real argument parser, the settings registry, and the ports and paths the roles serve."""

from __future__ import annotations

import base64
import re
import subprocess
import sys
from urllib.parse import urlsplit

import pytest

from app.asgi import create_app
from cli.main import MODES, build_parser
from core.settings import ENV_NAMES, Settings
from tests.deploy.manifests import (
    COMPOSE_FILE,
    ENV_EXAMPLE,
    POSTGRES_IMAGE_ENV,
    ROLES,
    env_files,
    healthcheck_url,
    load_compose,
    read_env_file,
    role_services,
    service_env,
)
from workers.daemon import DEFAULT_PORTS, Health, side_app


@pytest.fixture(scope="module")
def compose() -> dict:
    return load_compose()


def served_port(role: str, settings: Settings) -> int:
    """The port a role listens on with these settings (app/serve.py, workers/daemon.py)."""
    if role == "server":
        return settings.port
    return settings.metrics_port or DEFAULT_PORTS[role]


def test_compose_file_loads_and_follows_the_compose_schema(compose: dict) -> None:
    assert set(compose["services"]) == {"postgres", "nats", "migrate", *ROLES}
    # the compose specification's JSON schema, bundled in check-jsonschema (no network)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "check_jsonschema",
            "--builtin-schema",
            "vendor.compose-spec",
            str(COMPOSE_FILE),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_command_is_a_valid_noetl_server_invocation(compose: dict) -> None:
    parser = build_parser()
    seen = {}
    for name, service in role_services(compose).items():
        args = parser.parse_args(service["command"])  # SystemExit(2) on anything it rejects
        seen[name] = args.mode or args.command
        with pytest.raises(SystemExit) as help_exit:  # and --help appended still parses
            parser.parse_args([*service["command"], "--help"])
        assert help_exit.value.code == 0
    assert seen == {"migrate": "migrate", **{role: role for role in ROLES}}
    assert set(MODES) == set(ROLES)


def test_env_example_names_every_setting_once() -> None:
    _, named = read_env_file(ENV_EXAMPLE)
    duplicates = sorted({n for n in named if named.count(n) > 1})
    assert not duplicates, f"named more than once in .env.example: {duplicates}"
    assert set(named) - ENV_NAMES == set(), "unknown settings in .env.example"
    assert ENV_NAMES - set(named) == set(), "settings missing from .env.example"


def test_every_variable_compose_sets_is_a_setting(compose: dict) -> None:
    for name, service in compose["services"].items():
        environment = set((service.get("environment") or {}).keys())
        for path, _ in env_files(service):
            if path.exists():
                environment |= set(read_env_file(path)[0])
        allowed = ENV_NAMES | (POSTGRES_IMAGE_ENV if name == "postgres" else set())
        assert environment <= allowed, f"{name}: unknown variables {environment - allowed}"
    # and no ${VAR} interpolation of anything else
    interpolated = set(
        re.findall(r"(?<!\$)\$\{?([A-Za-z_][A-Za-z0-9_]*)", COMPOSE_FILE.read_text())
    )
    assert interpolated <= ENV_NAMES, interpolated


def test_every_role_gets_valid_settings_and_the_example_env(compose: dict) -> None:
    for name, service in role_services(compose).items():
        paths = [path.name for path, _ in env_files(service)]
        assert paths[0] == ".env.example", f"{name} must read .env.example"
        assert all(not required for path, required in env_files(service)[1:])
        Settings.from_env(service_env(service))  # every value parses


def test_urls_point_at_the_compose_services(compose: dict) -> None:
    services = compose["services"]
    env = service_env(services["server"])
    pg_env = services["postgres"]["environment"]
    db = urlsplit(env["NOETL_DATABASE_URL"])
    assert (db.hostname, db.port or 5432) == ("postgres", 5432)
    assert (db.username, db.password, db.path.lstrip("/")) == (
        pg_env["POSTGRES_USER"],
        pg_env["POSTGRES_PASSWORD"],
        pg_env["POSTGRES_DB"],
    )
    nats = urlsplit(env["NOETL_NATS_URL"])
    # the compose NATS command sets no client port, so it listens on the default 4222
    assert (nats.hostname, nats.port) == ("nats", 4222)
    assert "-p" not in services["nats"]["command"]
    server = urlsplit(env["NOETL_SERVER_URL"])
    server_settings = Settings.from_env(service_env(services["server"]))
    assert (server.hostname, server.port) == ("server", server_settings.port)
    assert f"{server_settings.port}:{server_settings.port}" in services["server"]["ports"]
    token = env["NOETL_INTERNAL_API_TOKEN"]
    assert len(token) >= 16, "api.md §3: shorter tokens stop the server"


def test_roles_wait_for_migrate_and_restart(compose: dict) -> None:
    services = compose["services"]
    migrate = services["migrate"]
    assert migrate["restart"] == "no"
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"
    for role in ROLES:
        service = services[role]
        depends = service["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully", role
        assert depends["postgres"]["condition"] == "service_healthy", role
        assert depends["nats"]["condition"] == "service_healthy", role
        assert service["restart"] in ("unless-stopped", "always", "on-failure"), role
        if role != "server":  # no host port, so `docker compose up --scale` works
            assert "ports" not in service, role
        grace = Settings.from_env(service_env(service)).shutdown_grace_seconds
        assert int(service["stop_grace_period"].rstrip("s")) > grace, role
    assert services["system"]["depends_on"]["server"]["condition"] == "service_healthy"


def test_healthchecks_hit_the_port_and_path_each_role_serves(compose: dict) -> None:
    services = compose["services"]
    for role in ROLES:
        service = services[role]
        settings = Settings.from_env(service_env(service))
        url = urlsplit(healthcheck_url(service))
        assert url.hostname == "127.0.0.1" and url.path == "/health", role
        assert url.port == served_port(role, settings), role
        # the test runs in the image's python: stdlib only, and it fails on a 503
        assert service["healthcheck"]["test"][:2] == ["CMD", "python"], role
    # the server refuses to build its app without a key; any valid one will do here
    key = base64.b64encode(bytes(32)).decode()
    server_routes = create_app(Settings.from_env({"NOETL_ENCRYPTION_KEY": key}))
    for path in ("/health", "/livez", "/metrics", "/api/health"):
        assert server_routes._router.find(path) is not None, path
    daemon_routes = side_app(Health("publisher"))
    for path in ("/health", "/livez", "/metrics"):
        assert daemon_routes._router.find(path) is not None, path
    # each daemon on its own port of envelope.md §8
    ports = {
        role: served_port(role, Settings.from_env(service_env(services[role]))) for role in ROLES
    }
    assert ports == {"server": 8082, "publisher": 9091, "projector": 9092, "system": 9093}


def test_projector_and_system_pool_follow_the_spec(compose: dict) -> None:
    services = compose["services"]
    projector = Settings.from_env(service_env(services["projector"]))
    assert projector.consumer_name == "noetl-projector-0"  # envelope.md §7.1
    assert projector.projector_replicas == 1
    system = Settings.from_env(service_env(services["system"]))
    assert system.system_pools == ["system", "default"]  # envelope.md §9


def test_postgres_and_nats_have_health_checks_and_volumes(compose: dict) -> None:
    services = compose["services"]
    volumes = set(compose["volumes"])
    postgres = services["postgres"]
    assert int(postgres["image"].split(":")[1]) >= 16
    assert postgres["healthcheck"]["test"][:2] == ["CMD", "pg_isready"]
    assert postgres["volumes"][0].split(":")[0] in volumes
    nats = services["nats"]
    major, minor = (int(p) for p in nats["image"].split(":")[1].split("-")[0].split(".")[:2])
    assert (major, minor) >= (2, 10)
    command = nats["command"]
    assert "-js" in command
    store = command[command.index("-sd") + 1]
    assert any(v.split(":")[0] in volumes and v.split(":")[1] == store for v in nats["volumes"])
    url = urlsplit(healthcheck_url(nats))
    assert url.path == "/healthz" and url.query == "js-enabled-only=true"
    assert str(url.port) == command[command.index("-m") + 1]
    server_volume = services["server"]["volumes"][0]
    data_dir = Settings.from_env(service_env(services["server"])).data_dir
    assert server_volume.split(":")[0] in volumes and server_volume.split(":")[1] == data_dir
