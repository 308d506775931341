"""The settings both scripts read follow one rule: the same text is accepted by both, or
refused by both with the same sentence. Their options live in btcpipe.settings, which both
scripts install; this holds each script to using them, and says which texts the rule takes."""

from __future__ import annotations

import pytest

from aggregator import settings as consumer_settings
from btcpipe import settings as shared
from btcpipe.settings import Option
from pricefeed import settings as producer_settings
from pricefeed.sources.registry import SOURCES

SHARED = ["KAFKA_BOOTSTRAP_SERVERS", "KAFKA_TOPIC", "LOG_LEVEL"]
OK, REFUSED = "accepted", "refused"
CASES = [
    ("KAFKA_BOOTSTRAP_SERVERS", "localhost:9092", OK),
    ("KAFKA_BOOTSTRAP_SERVERS", "a:1, b:65535", OK),
    ("KAFKA_BOOTSTRAP_SERVERS", "[::1]:9092", OK),
    ("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:99999", REFUSED),
    ("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:0", REFUSED),
    ("KAFKA_BOOTSTRAP_SERVERS", "localhost", REFUSED),
    ("KAFKA_BOOTSTRAP_SERVERS", "a:1,", REFUSED),
    ("KAFKA_BOOTSTRAP_SERVERS", "kafka://a:1", REFUSED),
    ("KAFKA_BOOTSTRAP_SERVERS", "::1:9092", REFUSED),  # IPv6 without brackets
    ("KAFKA_BOOTSTRAP_SERVERS", "a:²", REFUSED),
    ("KAFKA_BOOTSTRAP_SERVERS", "a:١٢", REFUSED),  # digits of another script
    ("KAFKA_BOOTSTRAP_SERVERS", "a:099999", REFUSED),
    ("KAFKA_TOPIC", "btc_price", OK),
    ("KAFKA_TOPIC", "a.b-c", OK),
    ("KAFKA_TOPIC", "...", OK),
    ("KAFKA_TOPIC", ".", REFUSED),
    ("KAFKA_TOPIC", "..", REFUSED),
    ("KAFKA_TOPIC", "bad topic!", REFUSED),
    ("KAFKA_TOPIC", "t" * 249, OK),
    ("KAFKA_TOPIC", "t" * 250, REFUSED),
    ("LOG_LEVEL", "info", OK),
    ("LOG_LEVEL", "WARNING", OK),
    ("LOG_LEVEL", "LOUD", REFUSED),
    ("LOG_LEVEL", "TRACE", REFUSED),
]


def load_producer_settings(argv: list[str], env: dict[str, str]) -> producer_settings.Settings:
    return producer_settings.load_settings(argv, SOURCES, env)


def outcome(load, env: dict[str, str]) -> tuple[str, object]:
    try:
        settings = load(["--no-check-hosts"], env)
    except (producer_settings.ConfigError, consumer_settings.ConfigError) as error:
        return REFUSED, str(error)
    return OK, settings


# Each script's option declarations.
PRODUCER_OPTIONS, CONSUMER_OPTIONS = producer_settings.OPTIONS, consumer_settings.OPTIONS


def the_option(options: list[Option], var: str) -> Option:
    return next(option for option in options if option.env == var)


@pytest.mark.parametrize(
    "options", [PRODUCER_OPTIONS, CONSUMER_OPTIONS], ids=["producer", "consumer"]
)
def test_each_script_takes_the_shared_variables_from_shared_settings(options) -> None:
    topic = the_option(options, "KAFKA_TOPIC")
    assert topic == shared.kafka_topic(topic.help)  # the help says what the script does with it
    assert the_option(options, "KAFKA_BOOTSTRAP_SERVERS") == shared.KAFKA_BROKERS
    assert the_option(options, "LOG_LEVEL") == shared.LOG_LEVEL


def test_the_cases_cover_every_shared_variable_both_ways() -> None:
    assert {(var, verdict) for var, _, verdict in CASES} == {
        (var, verdict) for var in SHARED for verdict in (OK, REFUSED)
    }


@pytest.mark.parametrize(
    ("var", "value", "verdict"), CASES, ids=[f"{v}={x[:20]}" for v, x, _ in CASES]
)
def test_both_scripts_accept_or_refuse_a_shared_setting_alike(var: str, value: str, verdict: str):
    env = {var: value}
    produced = outcome(load_producer_settings, env)
    consumed = outcome(consumer_settings.load_settings, env)
    assert (produced[0], consumed[0]) == (verdict, verdict), (produced, consumed)
    if verdict == REFUSED:
        assert produced[1] == consumed[1]
        assert str(produced[1]).startswith(f"{var} (")
    else:
        field = the_option(PRODUCER_OPTIONS, var).field
        assert getattr(produced[1], field) == getattr(consumed[1], field)
