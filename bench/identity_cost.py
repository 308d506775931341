"""What identity tracking costs per message in the consumer's core. Prints figures; asserts
nothing about time.

Folds the same N messages through `Accumulator.process_batch` (decode, validate, dedupe,
window) three ways: without identity (as the previous release's messages), with identity (each
event new: the high-water-mark check on every message), and with identity where every message
is a repeat (skipped). Pure Python, no servers: the figure is the core's own cost.

End to end the cost is larger (messages grow, and the clients pay per byte):
docs/benchmark.md, "What identity tracking costs", has the dated measurements.

Run: .venv/bin/python bench/identity_cost.py [--messages 200000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "consumer")]

import orjson  # noqa: E402

from aggregator.core.accumulator import Accumulator  # noqa: E402
from aggregator.core.decoding import decode_event  # noqa: E402

SYMBOLS = ("BTCUSDT", "ETHUSDT", "SOLUSDT", "BNBUSDT", "XRPUSDT", "ADAUSDT", "DOGEUSDT", "TRXUSDT")


@dataclass(frozen=True)
class Record:
    offset: int
    key: bytes | None
    value: bytes | None


def messages(count: int, identity: bool) -> list[Record]:
    """Live messages as producer.py writes them, one run's streams (seq per symbol)."""
    now = time.time_ns() // 1_000_000
    run = "20260101T000000Z-1a2b3c4d"
    records = []
    for i in range(count):
        symbol = SYMBOLS[i % len(SYMBOLS)]
        body: dict[str, object] = {
            "symbol": symbol,
            "price": f"{40_000 + i % 997}.12345678",
            "event_time": now - count + i,
            "source": "binance",
        }
        if identity:
            body |= {"stream": f"binance/{symbol}/{run}", "seq": i // len(SYMBOLS) + 1}
        records.append(Record(i, symbol.encode(), orjson.dumps(body)))
    return records


def fold(records: list[Record], accumulator: Accumulator) -> float:
    """Seconds to fold the records in batches of 2000, as polls hand them over."""
    received = time.time_ns() // 1_000_000
    started = time.perf_counter()
    for start in range(0, len(records), 2000):
        accumulator.process_batch(0, records[start : start + 2000], received)
    return time.perf_counter() - started


def best_of(repeat: int, records: list[Record], primed: bool) -> float:
    best = float("inf")
    for _ in range(repeat):
        accumulator = Accumulator()
        if primed:  # every message a repeat of a counted identity
            fold(records, accumulator)
            accumulator.take()
        best = min(best, fold(records, accumulator))
    return best


def decode_only(repeat: int, records: list[Record]) -> float:
    """Seconds to decode and validate the messages, nothing else."""
    received = time.time_ns() // 1_000_000
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        for record in records:
            decode_event(record.value, received)
        best = min(best, time.perf_counter() - started)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    plain, numbered = messages(args.messages, False), messages(args.messages, True)
    without = best_of(args.repeat, plain, primed=False)
    new = best_of(args.repeat, numbered, primed=False)
    repeats = best_of(args.repeat, numbered, primed=True)
    per = 1e9 / args.messages
    print(f"messages                        {args.messages:>10,} (best of {args.repeat})")
    print(f"without identity                {without * per:>10.0f} ns/message")
    print(f"with identity, all new          {new * per:>10.0f} ns/message")
    print(f"with identity, all repeats      {repeats * per:>10.0f} ns/message")
    print(f"identity tracking costs         {(new - without) * per:>10.0f} ns/message")
    decoding = decode_only(args.repeat, numbered) - decode_only(args.repeat, plain)
    print(f"  of which decoding the fields  {decoding * per:>10.0f} ns/message")
    print(f"  of which the mark check       {(new - without - decoding) * per:>10.0f} ns/message")
    size = sum(len(r.value or b"") for r in numbered) / sum(len(r.value or b"") for r in plain)
    print(f"message size with identity      {size:>10.2f} x")


if __name__ == "__main__":
    main()
