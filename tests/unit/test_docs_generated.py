"""The generated parts of the docs equal what the declarations say now (the scripts' options,
.env.example, docker-compose.yml, the fake Binance's fault kinds), and the hand-written part of
the configuration page names only variables that exist."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests import docs
from tests.docs import CONFIGURATION, ROOT, doc_files

WRITE = ".venv/bin/python -m tests.docs --write"


@pytest.mark.parametrize("document", doc_files(), ids=lambda path: path.name)
def test_every_generated_part_is_up_to_date(document: Path) -> None:
    assert docs.stale_regions(document) == [], f"run {WRITE}"


def test_the_configuration_page_and_the_development_page_have_their_generated_parts() -> None:
    regions = docs.generated_regions(CONFIGURATION.read_text())
    assert set(regions) == {"producer", "consumer", "env", "compose-fixed"}
    development = docs.generated_regions((ROOT / "docs" / "development.md").read_text())
    assert set(development) == {"fault-control"}
    assert all(body.strip() for body in [*regions.values(), *development.values()])


def test_a_changed_declaration_makes_its_part_stale(tmp_path: Path) -> None:
    page = tmp_path / "configuration.md"
    text = CONFIGURATION.read_text()
    page.write_text(
        text.replace(
            "| `KAFKA_TOPIC` | `--topic` | `btc_price` |",
            "| `KAFKA_TOPIC` | `--topic` | `prices` |",
            1,
        )
    )
    assert docs.stale_regions(page) == ["producer"]
    page.write_text(docs.regenerate(page.read_text()))
    assert page.read_text() == text


@pytest.mark.parametrize("script", docs.SCRIPTS)
def test_each_setting_of_a_script_is_a_row_with_its_variable_flag_default_and_help(
    script: str,
) -> None:
    declared = docs.options_of(script)
    table = docs.generated_regions(CONFIGURATION.read_text())[script]
    for option in declared.options:
        row = f"| `{option.env}` | `{option.flag}` | `{docs.default_text(declared, option)}` |"
        assert row in table, row
        assert option.help.replace("|", "\\|") in table
    for flag in ("--check-hosts / --no-check-hosts", "--help"):
        assert (f"`{flag}`" in table) == (flag != "--help"), flag


def test_the_flags_without_a_variable_are_rows_too() -> None:
    producer, consumer = (docs.settings_of(script) for script in docs.SCRIPTS)
    assert {row.flag: row.default for row in producer if not row.variable} == {
        "--check-hosts / --no-check-hosts": "on",
        "files ...": "none",
        "--resume": "off",
    }
    assert {row.flag: row.default for row in consumer if not row.variable} == {
        "--check-hosts / --no-check-hosts": "on",
        "--take-over": "off",
    }


def test_every_env_example_variable_is_a_row_of_the_env_table() -> None:
    table = docs.generated_regions(CONFIGURATION.read_text())["env"]
    for name, entry in docs.env_example().items():
        assert re.search(rf"^\| `{name}` \| {re.escape(docs.code(entry.value))} \|", table, re.M), (
            name
        )


def test_a_compose_default_other_than_the_scripts_is_said() -> None:
    assert docs.differs_from_script_default("REPLAY_STATE_DIR", "/tmp/btc-pipeline/replay")
    assert not docs.differs_from_script_default("POLL_INTERVAL_SECONDS", "10")
    assert not docs.differs_from_script_default("SIMULATION_SEED", "")
    assert not docs.differs_from_script_default("GRAFANA_HOST_PORT", "3000")  # not a script's


def known_variables() -> set[str]:
    """Every variable a reader can set: the scripts' options, .env's, and what
    docker-compose.yml gives the scripts."""
    scripts = {setting.variable for s in docs.SCRIPTS for setting in docs.settings_of(s)}
    compose = {
        variable
        for service in docs.SCRIPTS
        for variable in docs.compose_services()[service]["environment"]
    }
    return (scripts | set(docs.env_example()) | compose) - {""}


VARIABLE = re.compile(r"^[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+$")


def test_the_hand_written_configuration_names_only_variables_that_exist() -> None:
    hand_written = docs.outside_generated(CONFIGURATION.read_text())
    named = {
        token.partition("=")[0]
        for span in docs.inline_code(hand_written)
        for token in span.split()
        if VARIABLE.match(token.partition("=")[0])
    }
    assert len(named) > 20, named
    assert named - known_variables() == set()


def test_the_variable_check_would_find_a_name_that_does_not_exist() -> None:
    assert {"POLL_INTERVAL_SECONDS", "CONSUMER_DB_PASSWORD", "MIGRATIONS_DIR"} <= known_variables()
    assert "POLL_INTERVAL_SECOND" not in known_variables()


def test_every_fault_kind_of_the_fake_binance_is_documented() -> None:
    table = docs.generated_regions((ROOT / "docs" / "development.md").read_text())["fault-control"]
    for kind in docs.fault_control()["kinds"]:
        assert f"| `{kind}` |" in table, kind


def test_the_producer_table_says_which_source_uses_each_setting() -> None:
    """The registry says per --source which option fields it uses; the table shows it."""
    table = docs.table_of(docs.options_of("producer"))
    assert "| variable | flag | default | used by --source | meaning |" in table
    assert "| `KAFKA_TOPIC` | `--topic` | `btc_price` | all |" in table
    assert "| `SIMULATION_SEED` | `--seed` | `random` | simulated |" in table
    assert "| `REPLAY_SPEED` | `--speed` | `max` | replay |" in table
    assert "|  | `--resume` | `off` | replay |" in table
    assert "| `SYMBOLS` | `--symbols` | `BTCUSDT` | binance, binance-trades, simulated |" in table
