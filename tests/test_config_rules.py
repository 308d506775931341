"""The settings both scripts read follow one rule: the same text is accepted by both, or
refused by both with the same sentence. (Each script ships alone in its image, so each has
its own config.py; this keeps the two from drifting apart.)"""

from __future__ import annotations

import pytest

from aggregator import config as consumer_config
from pricefeed import config as producer_config

SHARED = ["KAFKA_BOOTSTRAP_SERVERS", "KAFKA_TOPIC", "LOG_LEVEL"]
VALUES = {
    "KAFKA_BOOTSTRAP_SERVERS": [
        "localhost:9092",
        "a:1, b:65535",
        "[::1]:9092",
        "127.0.0.1:99999",
        "127.0.0.1:0",
        "localhost",
        "a:1,",
        "kafka://a:1",
        "::1:9092",
        "a:²",
        "a:١٢",
        "a:099999",
    ],
    "KAFKA_TOPIC": ["btc_price", "a.b-c", "...", ".", "..", "bad topic!", "t" * 249, "t" * 250],
    "LOG_LEVEL": ["info", "WARNING", "LOUD", "TRACE"],
}
CASES = [(var, value) for var in SHARED for value in VALUES[var]]


def outcome(load, env: dict[str, str]) -> tuple[str, object]:
    try:
        settings = load(env)
    except (producer_config.ConfigError, consumer_config.ConfigError) as error:
        return "refused", str(error)
    return "accepted", settings


def test_the_shared_variables_are_the_same_options_in_both_scripts() -> None:
    producer = {var: flag for flag, var, _, _ in producer_config._OPTIONS}
    consumer = {var: flag for flag, var, _, _ in consumer_config._OPTIONS}
    assert set(SHARED) <= set(producer) & set(consumer)
    assert {var: producer[var] for var in SHARED} == {var: consumer[var] for var in SHARED}


@pytest.mark.parametrize(("var", "value"), CASES, ids=[f"{v}={x[:20]}" for v, x in CASES])
def test_both_scripts_accept_or_refuse_a_shared_setting_alike(var: str, value: str) -> None:
    env = {var: value}
    produced = outcome(lambda e: producer_config.load_settings(["--no-check-hosts"], e), env)
    consumed = outcome(lambda e: consumer_config.load_settings(["--no-check-hosts"], e), env)
    assert produced[0] == consumed[0], (produced, consumed)
    if produced[0] == "refused":
        assert produced[1] == consumed[1]
    else:
        field = next(f for _, v, f, _ in producer_config._OPTIONS if v == var)
        assert getattr(produced[1], field) == getattr(consumed[1], field)


def test_every_option_of_either_script_has_its_own_parser() -> None:
    for module in (producer_config, consumer_config):
        assert {field for _, _, field, _ in module._OPTIONS} == set(module._PARSERS)
