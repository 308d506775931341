"""The Quix Streams peer of the benchmark: the consumer's 5-minute windows (count, sum, min,
max, open, close per symbol, exact Decimal prices) on the same topic, with no sink at all.

Run by bench/throughput.py in its own process (Quix Streams is an optional, bench-only
dependency: pip install -r bench/requirements-peers.txt). Prints one JSON line:
{"events": N, "seconds": S} timed from the first message to the N-th.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from decimal import Context, Decimal

from quixstreams import Application

EXACT = Context(prec=100)  # as the consumer: sums of up to 40-digit prices stay exact
WINDOW_MS = 5 * 60 * 1000


def initial(event: dict) -> list:
    price = event["price"]
    # [count, sum, min, max, open, close]; strings, because Quix stores window state as JSON.
    return [1, price, price, price, price, price]


def reduce(acc: list, event: dict) -> list:
    """Events arrive in partition order, so the latest read closes the window."""
    price = Decimal(event["price"])
    acc[0] += 1
    acc[1] = str(EXACT.add(Decimal(acc[1]), price))
    if price < Decimal(acc[2]):
        acc[2] = event["price"]
    if price > Decimal(acc[3]):
        acc[3] = event["price"]
    acc[5] = event["price"]
    return acc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bootstrap-servers", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--events", type=int, required=True)
    args = parser.parse_args()

    seen = 0
    started = 0.0
    app: Application

    def on_processed(_topic: str, _partition: int, _offset: int) -> None:
        nonlocal seen, started
        if seen == 0:
            started = time.perf_counter()
        seen += 1
        if seen >= args.events:
            app.stop()

    with tempfile.TemporaryDirectory(prefix="quix-state-") as state_dir:
        app = Application(
            broker_address=args.bootstrap_servers,
            consumer_group=f"quix-peer-{time.time_ns()}",
            auto_offset_reset="earliest",
            state_dir=state_dir,
            on_message_processed=on_processed,
            loglevel=logging.WARNING,
            # No changelog topics: Tansu does not report the retention.ms Quix copies into them;
            # state stays in local RocksDB, which also spares Quix the extra produce.
            use_changelog_topics=False,
        )
        topic = app.topic(args.topic, value_deserializer="json")
        # Tansu describes topics without configs; Quix copies retention.ms into its window
        # store's settings, so give it Kafka's default (7 days) as a real broker would.
        topic.broker_config.extra_config.setdefault("retention.ms", str(7 * 24 * 3600 * 1000))
        frame = app.dataframe(topic)
        frame = frame.tumbling_window(WINDOW_MS).reduce(reduce, initial).current()
        app.run(frame)
    print(json.dumps({"events": seen, "seconds": time.perf_counter() - started}), flush=True)


if __name__ == "__main__":
    main()
