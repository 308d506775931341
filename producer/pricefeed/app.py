"""The producer's main: settings, the source `--source` names, the Kafka sink, and the exit
code that says how it ended."""

from __future__ import annotations

import logging
import random
import sys
import threading
from collections.abc import Sequence

from kafka.errors import KafkaConfigurationError

from btcpipe.backoff import Backoff
from btcpipe.process import configure_logging, stop_on_signals
from pricefeed.kafka_sink import KafkaSink
from pricefeed.settings import ConfigError, load_settings, unused_variables
from pricefeed.sources.base import SourceError
from pricefeed.sources.registry import SOURCES, open_source

log = logging.getLogger("producer")

EXIT_UNDELIVERED = 1  # stopped with events Kafka never acknowledged: a supervisor should know


def main(argv: Sequence[str] | None = None) -> int:
    try:
        settings = load_settings(sys.argv[1:] if argv is None else argv, SOURCES)
    except ConfigError as exc:
        print(f"producer.py: error: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    for variable in unused_variables(settings, SOURCES):
        log.info("%s is set but --source %s does not use it", variable, settings.source)
    try:
        source = open_source(settings)
    except SourceError as exc:
        print(f"producer.py: error: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()
    stop_on_signals(stop, log, "stopping after pending messages are flushed")
    sink = KafkaSink(
        settings.bootstrap_servers,
        settings.topic,
        settings.topic_partitions,
        stop,
        Backoff(settings.backoff_base, settings.backoff_max, random.Random()),
        stall_warning=source.stall_warning_after,
        echo=source.echoes_each_event,
        delivery_timeout_ms=settings.delivery_timeout_ms,
        compression=settings.compression,
    )
    try:
        if not sink.connect():
            return 0  # stopped before Kafka was reachable: nothing to flush
    except KafkaConfigurationError as exc:
        print(f"producer.py: error: Kafka refuses the client settings: {exc}", file=sys.stderr)
        return 2
    try:
        source.run(sink, stop)
    except SourceError as exc:
        log.error("%s", exc)
        return 2
    finally:
        lost = sink.close()
        log.info("Producer stopped: %d messages delivered", sink.delivered)
    return EXIT_UNDELIVERED if lost else 0
