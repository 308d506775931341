"""docker-compose.yml: valid Compose, and consistent with the files and scripts it wires together.

Docker cannot run here, so these checks read the files: the Compose Specification schema, the
mounted paths, Grafana's provisioning folders, ports, healthchecks, start order, the `${VAR}`
settings documented in .env.example, and the environment variables the scripts read.
"""

from __future__ import annotations

import copy
import fnmatch
import json
import posixpath
import re
from collections.abc import Iterator, Mapping
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml
from jsonschema import Draft7Validator

from aggregator import config as consumer_config
from pricefeed import config as producer_config

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(__file__).resolve().parents[2] / "shared"
COMPOSE_SCHEMA = SHARED / "schemas" / "compose-spec.json"
COMPOSE_FILE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
GRAFANA_DIR = ROOT / "grafana"
PROVIDER_FILE = GRAFANA_DIR / "dashboards" / "dashboard.yml"

# The variables each script reads, from its own configuration table: a renamed setting
# that compose still sets under the old name fails here.
SCRIPT_ENV = {
    "producer": {var for _, var, _, _ in producer_config._OPTIONS},
    "consumer": {var for _, var, _, _ in consumer_config._OPTIONS},
}
# Where Grafana reads each provisioning kind, and the repository folder that holds it.
GRAFANA_PROVISIONING = {
    "/etc/grafana/provisioning/datasources": GRAFANA_DIR / "datasources",
    "/etc/grafana/provisioning/dashboards": GRAFANA_DIR / "dashboards",
    "/etc/grafana/provisioning/alerting": GRAFANA_DIR / "provisioning" / "alerting",
}
PINNED_IMAGES = {
    "kafka": r"apache/kafka:(3\.9\.\d+|4\.\d+\.\d+)",
    "postgres": r"postgres:15(\.\d+)?",
    "grafana": r"grafana/grafana:(11|12)\.\d+\.\d+",
}
DATA_VOLUMES = {
    "kafka": "/var/lib/kafka/data",
    "postgres": "/var/lib/postgresql/data",
    "grafana": "/var/lib/grafana",
}
# Compose interpolation: `$$` is a literal `$`; otherwise `${NAME...}` or `$NAME`.
INTERPOLATION = re.compile(
    r"\$\$|\$\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?P<op>:?[-?+])?(?P<arg>[^}]*)\}"
    r"|\$(?P<bare>[A-Za-z_][A-Za-z0-9_]*)"
)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    return compose["services"]


def iter_strings(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, Mapping):
        for value in node.values():
            yield from iter_strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from iter_strings(item)


def interpolations(node: Any) -> Iterator[re.Match[str]]:
    for text in iter_strings(node):
        for match in INTERPOLATION.finditer(text):
            if match.group(0) != "$$":
                yield match


def read_env_example() -> dict[str, str]:
    """NAME=value lines of .env.example; each must follow a comment line describing it."""
    values: dict[str, str] = {}
    previous = ""
    for line in ENV_EXAMPLE.read_text().splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            name, sep, value = stripped.partition("=")
            assert sep and re.fullmatch(r"[A-Z][A-Z0-9_]*", name), f"bad line {line!r}"
            assert previous.startswith("#"), f"{name} has no comment line above it"
            values[name] = value
        previous = stripped
    return values


def resolve(text: str, env: Mapping[str, str]) -> str:
    """Compose interpolation with `:-` defaults (all this project uses)."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group("braced") or match.group("bare")
        return env.get(name) or match.group("arg") or ""

    return INTERPOLATION.sub(replace, text)


def environment(service: Mapping[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {name: "" if value is None else str(value) for name, value in env.items()}


def bind_mounts(service: Mapping[str, Any]) -> dict[str, Path]:
    """Container path -> host path of the service's bind mounts (short or long syntax)."""
    mounts: dict[str, Path] = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            source, target = volume.split(":")[:2]
        else:
            source, target = volume.get("source", ""), volume["target"]
        if source.startswith((".", "/")):
            mounts[target] = (ROOT / source).resolve()
    return mounts


def named_volumes(service: Mapping[str, Any]) -> dict[str, str]:
    """Container path -> volume name."""
    named: dict[str, str] = {}
    for volume in service.get("volumes", []):
        source, target = (
            volume.split(":")[:2]
            if isinstance(volume, str)
            else (volume["source"], volume["target"])
        )
        if not source.startswith((".", "/")):
            named[target] = source
    return named


# --- the schema --------------------------------------------------------------------------------


def compose_validator() -> Draft7Validator:
    if not COMPOSE_SCHEMA.exists():
        pytest.skip(f"Compose schema not found at {COMPOSE_SCHEMA} (shared/ is not checked out)")
    schema = json.loads(COMPOSE_SCHEMA.read_text())
    Draft7Validator.check_schema(schema)
    return Draft7Validator(schema)


def test_compose_file_matches_the_compose_specification(compose: dict[str, Any]) -> None:
    errors = sorted(compose_validator().iter_errors(compose), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors)


def test_the_schema_check_catches_mistakes(compose: dict[str, Any]) -> None:
    broken = copy.deepcopy(compose)
    broken["services"]["kafka"]["healthcheck"]["intervall"] = "10s"
    broken["services"]["grafana"]["depends_on"]["postgres"]["condition"] = "service_up"
    assert len(list(compose_validator().iter_errors(broken))) == 2


# --- settings ----------------------------------------------------------------------------------


def test_every_setting_has_a_default_documented_in_env_example(compose: dict[str, Any]) -> None:
    documented = read_env_example()
    used: set[str] = set()
    for match in interpolations(compose):
        name = match.group("braced") or match.group("bare")
        assert match.group("op") == ":-", f"{match.group(0)}: give it a ${{{name}:-default}}"
        assert name in documented, f"{name} is not documented in .env.example"
        assert match.group("arg") == documented[name], f"{name}: default differs from .env.example"
        used.add(name)
    assert set(documented) == used, f"documented but unused: {set(documented) - used}"


def test_script_environment_uses_the_names_the_scripts_read(services: dict[str, Any]) -> None:
    for name, expected in SCRIPT_ENV.items():
        unknown = set(environment(services[name])) - expected
        assert not unknown, f"{name} sets variables its script does not read: {unknown}"
        assert "KAFKA_BOOTSTRAP_SERVERS" in environment(services[name])


def test_scripts_reach_kafka_through_the_internal_listener(services: dict[str, Any]) -> None:
    kafka = environment(services["kafka"])
    advertised = dict(item.split("://") for item in kafka["KAFKA_ADVERTISED_LISTENERS"].split(","))
    internal = {addr for addr in advertised.values() if addr.startswith("kafka:")}
    assert len(internal) == 1
    for name in SCRIPT_ENV:
        assert environment(services[name])["KAFKA_BOOTSTRAP_SERVERS"] in internal


def test_kafka_is_single_node_kraft_with_host_and_internal_listeners(
    services: dict[str, Any],
) -> None:
    kafka = services["kafka"]
    env = environment(kafka)
    assert not any("ZOOKEEPER" in name for name in env)
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == f"{env['KAFKA_NODE_ID']}@kafka:9093"
    assert env["CLUSTER_ID"]
    listeners = dict(item.split("://") for item in env["KAFKA_LISTENERS"].split(","))
    advertised = dict(item.split("://") for item in env["KAFKA_ADVERTISED_LISTENERS"].split(","))
    protocols = dict(
        item.split(":") for item in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(",")
    )
    assert set(listeners) == set(protocols)
    controller = env["KAFKA_CONTROLLER_LISTENER_NAMES"]
    assert controller in listeners and controller not in advertised
    assert env["KAFKA_INTER_BROKER_LISTENER_NAME"] in advertised
    assert "localhost:9092" in advertised.values()
    assert "127.0.0.1:9092:9092" in kafka["ports"]
    # Each advertised port is one the broker listens on.
    for name, address in advertised.items():
        assert listeners[name].rsplit(":", 1)[1] == address.rsplit(":", 1)[1]


def test_images_are_pinned(services: dict[str, Any]) -> None:
    for name, pattern in PINNED_IMAGES.items():
        assert re.fullmatch(pattern, services[name]["image"]), services[name]["image"]


# --- files, mounts, builds ---------------------------------------------------------------------


def test_every_mounted_host_path_exists(services: dict[str, Any]) -> None:
    for name, service in services.items():
        for target, source in bind_mounts(service).items():
            assert source.exists(), f"{name}: {source} (mounted at {target}) does not exist"


def test_named_volumes_hold_the_data(compose: dict[str, Any], services: dict[str, Any]) -> None:
    declared = set(compose.get("volumes", {}))
    for name, path in DATA_VOLUMES.items():
        assert path in named_volumes(services[name]), f"{name}: {path} is not on a named volume"
    used = {volume for s in services.values() for volume in named_volumes(s).values()}
    assert used <= declared, f"undeclared volumes: {used - declared}"


def test_grafana_reads_every_provisioning_folder(services: dict[str, Any]) -> None:
    mounts = bind_mounts(services["grafana"])
    for target, folder in GRAFANA_PROVISIONING.items():
        assert mounts.get(target) == folder.resolve(), f"{folder} is not mounted at {target}"
    for folder in GRAFANA_PROVISIONING.values():
        assert any(folder.glob("*.yml")), f"{folder} has no provisioning file"


def test_dashboard_provider_path_is_where_the_dashboards_are_mounted(
    services: dict[str, Any],
) -> None:
    mounts = bind_mounts(services["grafana"])
    (provider,) = yaml.safe_load(PROVIDER_FILE.read_text())["providers"]
    path = PurePosixPath(provider["options"]["path"])
    hosts = [
        source / path.relative_to(target)
        for target, source in mounts.items()
        if path.is_relative_to(target)
    ]
    assert hosts, f"options.path {path} is not inside any mount"
    assert sorted(p.name for p in hosts[0].glob("*.json")) == [
        "bitcoin-dashboard.json",
        "pipeline-kpi-dashboard.json",
    ]


def substituted_values(document: Mapping[str, Any]) -> Any:
    """The parts of a provisioning file Grafana substitutes ${VAR} in: not comments, and in alert
    rules only the labels (query models and annotations keep their `$`)."""
    if "groups" in document:
        return [rule.get("labels", {}) for group in document["groups"] for rule in group["rules"]]
    return document


def test_grafana_gets_every_variable_its_provisioning_files_use(services: dict[str, Any]) -> None:
    env = environment(services["grafana"])
    used = set()
    for folder in GRAFANA_PROVISIONING.values():
        for path in folder.glob("*.yml"):
            for match in interpolations(substituted_values(yaml.safe_load(path.read_text()))):
                name = match.group("braced") or match.group("bare")
                assert name in env, f"{path.name} uses ${name}, unset in the grafana service"
                used.add(name)
    assert used == {"POSTGRES_DB", "GRAFANA_DB_PASSWORD"}


def test_postgres_runs_the_migrations_then_the_reader_password(services: dict[str, Any]) -> None:
    mounts = bind_mounts(services["postgres"])
    init = {t: s for t, s in mounts.items() if t.startswith("/docker-entrypoint-initdb.d/")}
    assert init == {
        "/docker-entrypoint-initdb.d/00-migrate.sh": (ROOT / "infra" / "00-migrate.sh"),
        "/docker-entrypoint-initdb.d/10-reader-password.sh": (
            ROOT / "infra" / "10-reader-password.sh"
        ),
    }
    # The folder the consumer applies, where 00-migrate.sh reads it.
    assert mounts["/migrations"] == ROOT / "infra" / "migrations"
    script = (ROOT / "infra" / "10-reader-password.sh").read_text()
    assert "set -euo pipefail" in script and ":'pw'" in script
    assert "GRAFANA_DB_PASSWORD" in environment(services["postgres"])


def dockerignore_excludes(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern decides; a matched folder covers its content."""
    excluded = False
    parts = PurePosixPath(path).parts
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        negated = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        if any(fnmatch.fnmatchcase(prefix, pattern) for prefix in prefixes):
            excluded = not negated
    return excluded


def read_dockerignore(path: Path) -> list[str]:
    lines = [line.strip() for line in path.read_text().splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def dockerfile_instructions(path: Path, keyword: str) -> list[str]:
    return [
        line.split(None, 1)[1]
        for line in path.read_text().splitlines()
        if line.strip().upper().startswith(keyword + " ")
    ]


def test_images_build_from_existing_files(services: dict[str, Any]) -> None:
    producer = services["producer"]["build"]
    assert producer == "./producer"
    assert (ROOT / "producer" / "Dockerfile").is_file()
    consumer = services["consumer"]["build"]
    assert (ROOT / consumer["context"]).resolve() == ROOT
    assert (ROOT / consumer["dockerfile"]).is_file()


def test_consumer_image_holds_the_schema_next_to_its_folder(services: dict[str, Any]) -> None:
    dockerfile = ROOT / services["consumer"]["build"]["dockerfile"]
    copies = dict(reversed(line.split()) for line in dockerfile_instructions(dockerfile, "COPY"))
    assert copies["/app/infra/migrations/"] == "infra/migrations/"
    assert copies["/app/consumer/"] == "consumer/"
    # The consumer finds the migrations at ../infra/migrations, relative to its own folder.
    (workdir,) = dockerfile_instructions(dockerfile, "WORKDIR")
    assert posixpath.normpath(f"{workdir}/../infra/migrations") == "/app/infra/migrations"
    patterns = read_dockerignore(ROOT / ".dockerignore")
    migrations = [f"infra/migrations/{p.name}" for p in (ROOT / "infra" / "migrations").iterdir()]
    for sent in ("consumer/requirements.txt", "consumer/consumer.py", *migrations):
        assert not dockerignore_excludes(sent, patterns), f"{sent} is left out of the context"
    for secret in (".env", ".venv/bin/python", ".git/config", "tests/conftest.py"):
        assert dockerignore_excludes(secret, patterns), f"{secret} would be sent to the builder"


def test_script_images_run_the_script_as_a_non_root_user(services: dict[str, Any]) -> None:
    for name, script in (("producer", "producer.py"), ("consumer", "consumer.py")):
        dockerfile = ROOT / name / "Dockerfile"
        assert dockerfile_instructions(dockerfile, "FROM") == ["python:3.11-slim"]
        users = dockerfile_instructions(dockerfile, "USER")
        assert users and users[-1] not in {"root", "0"}, f"{name} runs as root"
        assert dockerfile_instructions(dockerfile, "CMD") == [f'["python", "{script}"]']
    assert (ROOT / "producer" / ".dockerignore").is_file()


# --- ports, health, start order ----------------------------------------------------------------


def test_host_ports_are_bound_to_localhost_only(services: dict[str, Any]) -> None:
    for name, service in services.items():
        for port in service.get("ports", []):
            host_ip = port.get("host_ip") if isinstance(port, dict) else port.split(":")[0]
            assert host_ip == "127.0.0.1", f"{name} publishes {port} beyond localhost"


def test_every_service_has_a_healthcheck(services: dict[str, Any]) -> None:
    for name, service in services.items():
        check = service.get("healthcheck", {})
        assert check.get("test") and not check.get("disable"), f"{name} has no healthcheck"
        assert check["test"][0] in {"CMD", "CMD-SHELL"}


def test_services_wait_for_healthy_dependencies(services: dict[str, Any]) -> None:
    expected = {
        "grafana": {"postgres"},
        "producer": {"kafka"},
        "consumer": {"kafka", "postgres"},
    }
    for name, service in services.items():
        depends = service.get("depends_on", {})
        assert isinstance(depends, dict), f"{name}: use the long form with a condition"
        assert set(depends) == expected.get(name, set()), name
        for dependency, options in depends.items():
            assert options["condition"] == "service_healthy", f"{name} -> {dependency}"
            assert "healthcheck" in services[dependency]


def test_long_running_services_restart(services: dict[str, Any]) -> None:
    for name, service in services.items():
        assert service.get("restart") == "unless-stopped", name


def test_defaults_resolve_to_the_documented_configuration(services: dict[str, Any]) -> None:
    """With no .env at all, compose would run with these values."""
    defaults = {
        name: resolve(value, {}) for name, value in environment(services["producer"]).items()
    }
    assert defaults["KAFKA_TOPIC"] == "btc_price"
    assert defaults["KAFKA_TOPIC_PARTITIONS"] == "3"
    assert defaults["POLL_INTERVAL_SECONDS"] == "10"
    consumer = {
        name: resolve(value, {}) for name, value in environment(services["consumer"]).items()
    }
    assert consumer["POSTGRES_HOST"] == "postgres" and consumer["POSTGRES_DB"] == "eventsdb"
    assert consumer["KAFKA_CONSUMER_GROUP"] == "btc-aggregator"
    assert resolve("${X:-a}$$", {"X": "b"}) == "b$"
