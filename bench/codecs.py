"""The producer's compression codecs compared: bytes on the broker and throughput.

For each KAFKA_COMPRESSION value, on one Tansu broker: `producer.py --source replay` of the
same aggTrades file (the rate between its own log lines), the size of the record batches the
broker then holds (read back with Fetch requests written by hand: the sum of every batch's
bytes, as the log stores them), and a bare kafka-python consumer reading them all (poll +
json.loads, consumer.py's fetch settings: the decompression cost). Prints one row per codec;
asserts nothing about time.

Run: .venv/bin/python bench/codecs.py [--events 200000] [--repeat 2]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from kafka import KafkaAdminClient
from kafka.admin import NewTopic

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "producer"), str(ROOT / "consumer")]

from bench.data import write_agg_trades  # noqa: E402
from bench.throughput import (  # noqa: E402
    SYMBOL,
    MeasuredScript,
    bare_consumer_seconds,
    require_crc32c_extension,
)
from pricefeed.settings import COMPRESSIONS  # noqa: E402
from tests.harness import TansuBroker  # noqa: E402
from tests.harness.kafka_wire import stored_batches  # noqa: E402

PARTITIONS = 3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=200_000, help="trades in the file")
    parser.add_argument("--repeat", type=int, default=2, help="runs of each codec")
    args = parser.parse_args()
    require_crc32c_extension()
    with tempfile.TemporaryDirectory() as folder, TansuBroker() as broker:
        file = Path(folder) / f"{SYMBOL}-aggTrades-2026-01-01.csv"
        write_agg_trades(file, args.events)
        produced: dict[str, list[float]] = {codec: [] for codec in COMPRESSIONS}
        consumed: dict[str, list[float]] = {codec: [] for codec in COMPRESSIONS}
        stored: dict[str, int] = {}
        # The codecs alternate within each run: the machine is shared, and its load drifts.
        for run in range(1, args.repeat + 1):
            for codec in COMPRESSIONS:
                topic = f"bench_codec_{codec}_{run}"
                create_topic(broker.bootstrap, topic)
                print(f"{codec}, run {run}...", flush=True)
                script = MeasuredScript(
                    "producer",
                    ["--source", "replay", "--compression", codec, str(file)],
                    {"KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap, "KAFKA_TOPIC": topic},
                    Path(folder),
                )
                script.finish(wait=True)
                script.expect_success()
                seconds = script.seconds_between("Connected to Kafka", "Producer stopped")
                produced[codec].append(seconds)
                stored[codec] = log_bytes(broker.bootstrap, topic, PARTITIONS)
                seconds, _ = bare_consumer_seconds(broker.bootstrap, topic, PARTITIONS, args.events)
                consumed[codec].append(seconds)
        rows = [
            f"| {codec} | {stored[codec]:,} | {stored[codec] / args.events:.1f} "
            f"| {args.events / min(produced[codec]):,.0f}/s "
            f"| {args.events / min(consumed[codec]):,.0f}/s |"
            for codec in COMPRESSIONS
        ]
    print(f"\n{args.events:,} events, best of {args.repeat} runs each:")
    print("| KAFKA_COMPRESSION | bytes on the broker | per event | producer.py | bare consumer |")
    print("| --- | --- | --- | --- | --- |")
    print("\n".join(rows))


def create_topic(bootstrap: str, topic: str) -> None:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics([NewTopic(topic, PARTITIONS, 1)])
    finally:
        admin.close()


def log_bytes(bootstrap: str, topic: str, partitions: int) -> int:
    """The bytes of every record batch of every partition, as the broker returns them."""
    return sum(
        batch.size for p in range(partitions) for batch in stored_batches(bootstrap, topic, p)
    )


if __name__ == "__main__":
    main()
