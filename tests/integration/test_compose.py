"""docker-compose.yml: valid Compose, and consistent with the files and scripts it wires together.

Docker cannot run here, so these checks read the files: the Compose Specification schema, the
mounted paths, Grafana's provisioning folders, ports, healthchecks, start order, the `${VAR}`
settings documented in .env.example, and the environment variables the scripts read.
"""

from __future__ import annotations

import copy
import fnmatch
import io
import json
import os
import posixpath
import re
import shutil
import subprocess
import tarfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml
from jsonschema import Draft7Validator

from aggregator import settings as consumer_settings
from pricefeed import settings as producer_settings
from pricefeed.sources.registry import SOURCES
from tests.docs import all_strings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_SCHEMA = Path(__file__).parents[1] / "reference" / "compose-spec.json"  # see its README
COMPOSE_FILE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
GRAFANA_DIR = ROOT / "grafana"
PROVIDER_FILE = GRAFANA_DIR / "dashboards" / "dashboard.yml"

# The variables each script reads, from its own configuration table: a renamed setting
# that compose still sets under the old name fails here.
SCRIPT_ENV = {
    "producer": {option.env for option in producer_settings.OPTIONS},
    "consumer": {option.env for option in consumer_settings.OPTIONS},
}
# Where Grafana reads each provisioning kind, and the repository folder that holds it.
GRAFANA_PROVISIONING = {
    "/etc/grafana/provisioning/datasources": GRAFANA_DIR / "datasources",
    "/etc/grafana/provisioning/dashboards": GRAFANA_DIR / "dashboards",
    "/etc/grafana/provisioning/alerting": GRAFANA_DIR / "provisioning" / "alerting",
}
PINNED_IMAGES = {
    "kafka": r"apache/kafka:(3\.9\.\d+|4\.\d+\.\d+)",
    # The major version's moving tag (each 15.x minor release, with its security fixes) on a
    # fixed Debian release (glibc collations stay those the volume's indexes were built with).
    "postgres": r"postgres:15-bookworm",
    # tests/grafana/sql.py and tests/unit/test_grafana_upstream.py cite this exact version.
    "grafana": r"grafana/grafana:12\.0\.2",
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


def interpolations(node: Any) -> Iterator[re.Match[str]]:
    for text in all_strings(node):
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


# --- docker-compose 1.29 ---------------------------------------------------------------------
# Debian's and Ubuntu's `docker-compose` package (1.29.2; tests/setup.sh installs it) validates
# and interpolates the file without a Docker engine. Compose v2 follows the Compose
# Specification schema checked above.

# What .env.example allows in single quotes. Not allowed, because docker-compose 1.29's
# python-dotenv reads them differently from Compose v2: ' and \ (escapes), and ${ (it expands
# ${NAME} even in single quotes).
SPECIAL_PASSWORD = 's3cr$t $HOME #1 "x" $$'


def docker_compose_config(tmp_path: Path, dotenv: str | None) -> dict[str, Any]:
    """`docker-compose config` of this repository in a copy holding only `dotenv` as .env and
    nothing from this process's environment (compose reads both)."""
    binary = shutil.which("docker-compose")
    assert binary, "docker-compose is not installed: run tests/setup.sh"
    project = tmp_path / "project"
    project.mkdir(parents=True)
    shutil.copy(COMPOSE_FILE, project / COMPOSE_FILE.name)
    for folder in ("producer", "consumer", "infra", "grafana"):
        (project / folder).symlink_to(ROOT / folder)
    if dotenv is not None:
        (project / ".env").write_text(dotenv)
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path)}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [binary, *args], cwd=project, env=env, capture_output=True, text=True, timeout=120
        )

    assert run("version", "--short").stdout.startswith("1.29.")
    quiet = run("config", "-q")
    assert quiet.returncode == 0 and not quiet.stderr, quiet.stderr
    full = run("config")
    assert full.returncode == 0 and not full.stderr, full.stderr
    return yaml.safe_load(full.stdout.replace(str(project), "<project>"))


def resolved_env(config: Mapping[str, Any], service: str) -> dict[str, str]:
    """A service's environment as `docker-compose config` prints it (`$$` is a literal `$`)."""
    return {k: v.replace("$$", "$") for k, v in environment(config["services"][service]).items()}


def test_docker_compose_1_29_accepts_the_file_without_env(tmp_path: Path) -> None:
    config = docker_compose_config(tmp_path, None)
    assert config["services"]["kafka"]["ports"] == ["127.0.0.1:9092:9092/tcp"]
    assert resolved_env(config, "consumer")["POSTGRES_PASSWORD"] == "pipeline_writer"
    assert resolved_env(config, "producer")["SYMBOLS"] == "BTCUSDT"


def test_docker_compose_1_29_reads_env_example_and_special_characters(tmp_path: Path) -> None:
    """.env.example as it is gives the defaults; then other ports, and a password quoted the
    way .env.example says arrives exactly."""
    example = ENV_EXAMPLE.read_text()
    assert docker_compose_config(tmp_path / "a", example) == docker_compose_config(
        tmp_path / "b", None
    )
    dotenv = example.replace(
        "POSTGRES_PASSWORD=postgres", f"POSTGRES_PASSWORD='{SPECIAL_PASSWORD}'"
    )
    dotenv = dotenv.replace("KAFKA_HOST_PORT=9092", "KAFKA_HOST_PORT=19092")
    config = docker_compose_config(tmp_path / "c", dotenv)
    assert resolved_env(config, "postgres")["POSTGRES_PASSWORD"] == SPECIAL_PASSWORD
    assert config["services"]["kafka"]["ports"] == ["127.0.0.1:19092:9092/tcp"]
    advertised = resolved_env(config, "kafka")["KAFKA_ADVERTISED_LISTENERS"]
    assert advertised == "HOST://localhost:19092,INTERNAL://kafka:29092"


def test_env_example_explains_quoting() -> None:
    text = ENV_EXAMPLE.read_text()
    assert "single quotes" in text and "$NAME" in text


# --- line endings -----------------------------------------------------------------------------


def test_a_windows_checkout_keeps_lf_line_endings(tmp_path: Path) -> None:
    """What `git clone` with core.autocrlf=true (Git for Windows' default) writes, simulated by
    `git archive`, which applies the same conversion, with this tree's .gitattributes: no CRLF
    in any file, above all the init scripts, SQL, YAML and JSON the containers read."""
    archive = subprocess.run(
        ["git", "-c", "core.autocrlf=true", "archive", "--worktree-attributes", "HEAD"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout
    names = []
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        for member in tar.getmembers():
            if member.isfile():
                names.append(member.name)
                extracted = tar.extractfile(member)
                assert extracted is not None, member.name
                content = extracted.read()
                assert b"\r\n" not in content, f"{member.name} gets CRLF line endings"
    for required in (
        "infra/migrations/001_initial_schema.sql",
        "docker-compose.yml",
        ".env.example",
    ):
        assert required in names
    assert any(name.endswith(".sh") for name in names)
    assert any(name.endswith(".json") for name in names)


def test_without_gitattributes_windows_would_get_crlf(tmp_path: Path) -> None:
    """The check above can fail: the same archive without the attributes has CRLF."""
    repo = tmp_path / "repo"
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    (repo / "init.sh").write_text("#!/usr/bin/env bash\necho ok\n")
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "x"], check=True)
    archive = subprocess.run(
        [*git, "-c", "core.autocrlf=true", "archive", "HEAD"], capture_output=True, check=True
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        init = tar.extractfile("init.sh")
        assert init is not None and b"\r\n" in init.read()


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


# Script settings compose fixes instead of taking from .env: addresses and paths inside the
# compose network and the images, and the consumer's own database role.
CONTAINER_SETTINGS = {
    "producer": {"KAFKA_BOOTSTRAP_SERVERS": "kafka:29092"},
    "consumer": {
        "KAFKA_BOOTSTRAP_SERVERS": "kafka:29092",
        "POSTGRES_HOST": "postgres",
        "POSTGRES_PORT": "5432",
        "POSTGRES_USER": "pipeline_writer",
        "MIGRATIONS_DIR": "/app/infra/migrations",
    },
}
# .env names that differ from the script's variable.
RENAMED = {("consumer", "POSTGRES_PASSWORD"): "CONSUMER_DB_PASSWORD"}


def test_every_variable_the_scripts_read_is_set_from_env(services: dict[str, Any]) -> None:
    """Every variable of the scripts' own configuration tables is set: from .env (same name,
    `${NAME:-default}`), or fixed for the containers (CONTAINER_SETTINGS)."""
    for name, expected in SCRIPT_ENV.items():
        env = environment(services[name])
        assert set(env) == expected, (
            f"{name}: missing {expected - set(env)}, extra {set(env) - expected}"
        )
        for variable, value in env.items():
            if variable in CONTAINER_SETTINGS[name]:
                assert value == CONTAINER_SETTINGS[name][variable], (name, variable)
                continue
            source = RENAMED.get((name, variable), variable)
            assert re.fullmatch(rf"\$\{{{source}:-[^}}]*\}}", value), f"{name}: {variable}={value}"


# Stand-ins for names that only resolve inside the compose network or image, so that the
# scripts' own validation (which resolves host names) can read compose's settings here.
LOCAL_STAND_INS = {
    "KAFKA_BOOTSTRAP_SERVERS": "localhost:29092",
    "POSTGRES_HOST": "localhost",
    "BINANCE_BASE_URL": "http://localhost:1",
    "MIGRATIONS_DIR": str(ROOT / "infra" / "migrations"),
}


@pytest.mark.parametrize("dotenv", [{}, "example"], ids=["no-env", "env-example"])
def test_scripts_accept_the_settings_compose_gives_them(
    services: dict[str, Any], dotenv: dict[str, str] | str
) -> None:
    """Each script's own configuration loader takes what compose passes (empty values such as
    SIMULATION_SEED= mean "not set"), with the defaults and with .env.example."""
    values = read_env_example() if dotenv == "example" else {}
    loaders: dict[str, Callable[[list[str], dict[str, str]], object]] = {
        "producer": lambda argv, env: producer_settings.load_settings(argv, SOURCES, env),
        "consumer": consumer_settings.load_settings,
    }
    for name, load in loaders.items():
        env = {k: resolve(v, values) for k, v in environment(services[name]).items()}
        env.update({k: v for k, v in LOCAL_STAND_INS.items() if k in env})
        load([], env)


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
    assert advertised["HOST"] == "localhost:${KAFKA_HOST_PORT:-9092}"
    assert kafka["ports"] == ["127.0.0.1:${KAFKA_HOST_PORT:-9092}:9092"]
    # Containers reach each advertised address on a port the broker listens on.
    assert listeners["INTERNAL"].rsplit(":", 1)[1] == advertised["INTERNAL"].rsplit(":", 1)[1]


# apache/kafka's docker/resources/common-scripts/configureDefaults (3.9 image): `run` sources
# it and every one of these left unset gets a single-node default (listeners on localhost,
# voters 1@localhost:29093, logs in /tmp). Mixing those with our settings breaks the broker,
# so compose sets them all. `configure` exits unless CLUSTER_ID is set in KRaft mode.
KAFKA_IMAGE_DEFAULTS = {
    "CLUSTER_ID",
    "KAFKA_NODE_ID",
    "KAFKA_LISTENER_SECURITY_PROTOCOL_MAP",
    "KAFKA_LISTENERS",
    "KAFKA_ADVERTISED_LISTENERS",
    "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR",
    "KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS",
    "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR",
    "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR",
    "KAFKA_PROCESS_ROLES",
    "KAFKA_CONTROLLER_QUORUM_VOTERS",
    "KAFKA_INTER_BROKER_LISTENER_NAME",
    "KAFKA_CONTROLLER_LISTENER_NAMES",
    "KAFKA_LOG_DIRS",
}
# kafka-propertiesSpec.json: KAFKA_* variables that are not server properties.
KAFKA_NOT_PROPERTIES = {
    "KAFKA_VERSION",
    "KAFKA_HEAP_OPT",
    "KAFKA_LOG4J_OPTS",
    "KAFKA_OPTS",
    "KAFKA_JMX_OPTS",
    "KAFKA_JVM_PERFORMANCE_OPTS",
    "KAFKA_GC_LOG_OPTS",
    "KAFKA_LOG4J_ROOT_LOGLEVEL",
    "KAFKA_LOG4J_LOGGERS",
    "KAFKA_TOOLS_LOG4J_LOGLEVEL",
}


def test_kafka_sets_every_variable_the_image_would_default(services: dict[str, Any]) -> None:
    env = environment(services["kafka"])
    assert set(env) >= KAFKA_IMAGE_DEFAULTS, KAFKA_IMAGE_DEFAULTS - set(env)
    assert not set(env) & KAFKA_NOT_PROPERTIES
    # The image unpacks Kafka into /opt/kafka (docker/jvm/Dockerfile); tools are not on PATH.
    (command,) = services["kafka"]["healthcheck"]["test"][1:]
    assert command.startswith("/opt/kafka/bin/kafka-broker-api-versions.sh ")
    assert "--bootstrap-server kafka:29092" in command  # the listener the scripts use
    # /var/lib/kafka/data is created for the image's user and declared a VOLUME there.
    assert env["KAFKA_LOG_DIRS"] == "/var/lib/kafka/data"


HOST_PORTS = {
    "kafka": ("KAFKA_HOST_PORT", "9092"),
    "postgres": ("POSTGRES_HOST_PORT", "5432"),
    "grafana": ("GRAFANA_HOST_PORT", "3000"),
}


def test_host_ports_come_from_env(services: dict[str, Any]) -> None:
    """A port taken on the laptop (a local PostgreSQL on 5432) is changed in .env alone; Kafka
    then advertises the new port to host clients, and Grafana's links use its new port."""
    published = {name: s["ports"] for name, s in services.items() if s.get("ports")}
    assert set(published) == set(HOST_PORTS)
    custom = {
        "KAFKA_HOST_PORT": "19092",
        "POSTGRES_HOST_PORT": "15432",
        "GRAFANA_HOST_PORT": "13000",
    }
    for name, (variable, default) in HOST_PORTS.items():
        (port,) = published[name]
        assert resolve(port, {}) == f"127.0.0.1:{default}:{default}"
        assert resolve(port, custom) == f"127.0.0.1:{custom[variable]}:{default}"
    kafka = environment(services["kafka"])
    assert "HOST://localhost:19092" in resolve(kafka["KAFKA_ADVERTISED_LISTENERS"], custom)
    grafana = environment(services["grafana"])
    assert resolve(grafana["GF_SERVER_ROOT_URL"], custom) == "http://localhost:13000/"


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


# Settings of grafana/grafana's conf/defaults.ini ([section] key) that compose overrides;
# pkg/setting/setting.go (applyEnvVariableOverrides) reads GF_<SECTION>_<KEY>, upper case,
# with "." and "-" written "_". A misspelt variable would be silently ignored.
GRAFANA_SETTINGS = {
    ("server", "root_url"),
    ("security", "admin_user"),
    ("security", "admin_password"),
    ("users", "allow_sign_up"),
    ("analytics", "reporting_enabled"),
    ("dashboards", "min_refresh_interval"),
}


def grafana_env_name(section: str, key: str) -> str:
    return re.sub(r"[.-]", "_", f"GF_{section}_{key}".upper())


def test_grafana_variables_name_settings_grafana_has(services: dict[str, Any]) -> None:
    env = environment(services["grafana"])
    configured = {name for name in env if name.startswith("GF_")}
    assert configured == {grafana_env_name(s, k) for s, k in GRAFANA_SETTINGS}
    assert grafana_env_name("auth.basic", "enabled") == "GF_AUTH_BASIC_ENABLED"


def test_grafana_healthcheck_calls_a_tool_both_image_variants_have(
    services: dict[str, Any],
) -> None:
    """grafana/grafana's Dockerfile installs curl in the alpine and the ubuntu variant; wget is
    only busybox's, in alpine."""
    test = services["grafana"]["healthcheck"]["test"]
    assert test[:2] == ["CMD", "curl"] and "-f" in "".join(test[2:])
    assert test[-1] == "http://localhost:3000/api/health"  # the container port, not the host's


def test_postgres_runs_the_migrations_then_the_passwords(services: dict[str, Any]) -> None:
    """The entrypoint runs /docker-entrypoint-initdb.d/* in name order (docker-library/postgres
    15/bookworm/docker-entrypoint.sh, docker_process_init_files), the scripts with the
    container's environment: the migrations (tables, then the grants on them) before the
    passwords of the roles they create."""
    mounts = bind_mounts(services["postgres"])
    init = {t: s for t, s in mounts.items() if t.startswith("/docker-entrypoint-initdb.d/")}
    assert [(PurePosixPath(t).name, init[t].name) for t in sorted(init)] == [
        ("00-migrate.sh", "00-migrate.sh"),
        ("10-role-passwords.sh", "10-role-passwords.sh"),
    ]
    # The folder the consumer applies, where 00-migrate.sh reads it.
    assert mounts["/migrations"] == ROOT / "infra" / "migrations"
    script = (ROOT / "infra" / "10-role-passwords.sh").read_text()
    assert "set -euo pipefail" in script and ":'pw'" in script
    env = environment(services["postgres"])
    for variable in ("GRAFANA_DB_PASSWORD", "CONSUMER_DB_PASSWORD"):
        assert variable in script and variable in env


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


def test_images_build_from_the_repository_root(services: dict[str, Any]) -> None:
    for name in ("producer", "consumer"):
        build = services[name]["build"]
        assert (ROOT / build["context"]).resolve() == ROOT, name
        assert build["dockerfile"] == f"{name}/Dockerfile"
        assert (ROOT / build["dockerfile"]).is_file()


def copies_of(dockerfile: Path) -> dict[str, str]:
    """COPY instructions as {destination: source}."""
    pairs = (line.split() for line in dockerfile_instructions(dockerfile, "COPY"))
    return {destination: source for source, destination in pairs}


@pytest.mark.parametrize("script", ["producer", "consumer"])
def test_script_images_install_btcpipe_and_run_from_their_own_folder(script: str) -> None:
    """The requirements name ./btcpipe relative to where pip runs: the image runs pip from
    /app, where btcpipe/ lies as it does in the repository, and the script from its folder."""
    dockerfile = ROOT / script / "Dockerfile"
    copies = copies_of(dockerfile)
    assert copies["/app/btcpipe/"] == "btcpipe/"
    assert copies["/app/" + script + "/"] == script + "/"
    assert copies[f"/app/{script}/requirements.txt"] == f"{script}/requirements.txt"
    workdirs = dockerfile_instructions(dockerfile, "WORKDIR")
    assert workdirs == ["/app", f"/app/{script}"]
    assert f"pip install -r {script}/requirements.txt" in dockerfile_instructions(dockerfile, "RUN")
    assert "./btcpipe" in (ROOT / script / "requirements.txt").read_text().splitlines()
    patterns = read_dockerignore(ROOT / ".dockerignore")
    package = [p.relative_to(ROOT).as_posix() for p in (ROOT / "btcpipe" / "src").rglob("*.py")]
    shipped = ["btcpipe/pyproject.toml", *package]
    for sent in (f"{script}/requirements.txt", f"{script}/{script}.py", *shipped):
        assert not dockerignore_excludes(sent, patterns), f"{sent} is left out of the context"
    for secret in (".env", ".venv/bin/python", ".git/config", "tests/conftest.py"):
        assert dockerignore_excludes(secret, patterns), f"{secret} would be sent to the builder"


def test_consumer_image_holds_the_schema_next_to_its_folder() -> None:
    dockerfile = ROOT / "consumer" / "Dockerfile"
    assert copies_of(dockerfile)["/app/infra/migrations/"] == "infra/migrations/"
    # The consumer finds the migrations at ../infra/migrations, relative to its own folder.
    workdir = dockerfile_instructions(dockerfile, "WORKDIR")[-1]
    assert posixpath.normpath(f"{workdir}/../infra/migrations") == "/app/infra/migrations"
    patterns = read_dockerignore(ROOT / ".dockerignore")
    migrations = [f"infra/migrations/{p.name}" for p in (ROOT / "infra" / "migrations").iterdir()]
    for sent in migrations:
        assert not dockerignore_excludes(sent, patterns), f"{sent} is left out of the context"


def test_script_images_run_the_script_as_a_non_root_user() -> None:
    for name, script in (("producer", "producer.py"), ("consumer", "consumer.py")):
        dockerfile = ROOT / name / "Dockerfile"
        assert dockerfile_instructions(dockerfile, "FROM") == ["python:3.11-slim"]
        users = dockerfile_instructions(dockerfile, "USER")
        assert users and users[-1] not in {"root", "0"}, f"{name} runs as root"
        assert dockerfile_instructions(dockerfile, "CMD") == [f'["python", "{script}"]']


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
        "producer-trades": {"kafka"},
        "consumer": {"kafka", "postgres"},
    }
    for name, service in services.items():
        depends = service.get("depends_on", {})
        assert isinstance(depends, dict), f"{name}: use the long form with a condition"
        assert set(depends) == expected.get(name, set()), name
        for dependency, options in depends.items():
            assert options["condition"] == "service_healthy", f"{name} -> {dependency}"
            assert "healthcheck" in services[dependency]


def test_the_trade_producer_is_the_producer_with_the_trade_source_in_a_profile(
    services: dict[str, Any],
) -> None:
    """`docker compose --profile trades up` adds it beside the poller; a plain `up` does not."""
    producer, trades = services["producer"], services["producer-trades"]
    assert trades["profiles"] == ["trades"] and "profiles" not in producer
    assert trades["environment"] == {**producer["environment"], "PRODUCER_SOURCE": "binance-trades"}
    assert {k: v for k, v in trades.items() if k not in ("profiles", "environment")} == {
        k: v for k, v in producer.items() if k != "environment"
    }


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


@pytest.mark.parametrize("script", ["producer", "consumer"])
def test_script_images_install_kafka_pythons_crc32c_accelerator(script: str) -> None:
    """Without `crc32c` kafka-python silently checks every record batch in pure Python."""
    requirements = (ROOT / script / "requirements.txt").read_text().splitlines()
    assert any(re.fullmatch(r"crc32c==[0-9][\w.]*", line) for line in requirements)
    # The same pins are installed here: the client must actually have picked it up.
    import crc32c
    from kafka.record import util

    assert util.calc_crc32c.__defaults__[0] is crc32c.crc32c
