"""The message contract of the `btc_price` topic, for both sides: pure, no I/O.

One JSON object per price, keyed by symbol, with the Kafka record timestamp equal to
`event_time`:

    {"symbol": "BTCUSDT", "price": "43250.75000000", "event_time": 1767225600039,
     "source": "binance", "stream": "binance/BTCUSDT/20260101T000000Z-1a2b3c4d", "seq": 42}

- `symbol`: a Binance pair, as Binance spells it.
- `price`: the exact decimal string the source gave; never a float.
- `event_time`: UTC epoch milliseconds when the price was observed.
- `source`: where it came from (`SOURCES`). Replayed history is marked so the consumer can
  keep it out of processing lag.
- `stream`, `seq`: the event's identity. A stream is one ordered run of events of one symbol
  (so it travels in one partition): one producer run's polls of a symbol, or one replayed
  file. `seq` grows along the stream. The same event always carries the same (stream, seq),
  however often it is sent, so the consumer counts each once. Messages of the previous
  release carry neither and are counted once per Kafka offset.

The rules are written once (`rules`); the producer builds with them (`events.make_event`),
the consumer decodes with them (`decoding.decode_message`), so what the producer publishes
the consumer takes, and what it refuses the consumer would dead-letter (docs/contract.md).
"""

from btcpipe.contract.decoding import DecodedEvent, DecodedKline, decode_message
from btcpipe.contract.events import (
    PriceEvent,
    agg_trade_stream,
    kline_stream,
    live_stream,
    make_event,
    make_trade,
    replay_stream,
    trade_stream,
)
from btcpipe.contract.rules import (
    EARLIEST_EVENT_MS,
    FEEDS,
    KLINE_INTERVALS_MS,
    MAX_FUTURE_MS,
    MAX_MESSAGE_BYTES,
    MAX_SEQ,
    REPLAY_SOURCE,
    SOURCES,
    ContractError,
    KlineText,
    check_event_time,
    check_identity,
    check_price,
    check_seq,
    check_source,
    check_stream,
    check_symbol,
)

__all__ = [
    "EARLIEST_EVENT_MS",
    "FEEDS",
    "KLINE_INTERVALS_MS",
    "MAX_FUTURE_MS",
    "MAX_MESSAGE_BYTES",
    "MAX_SEQ",
    "REPLAY_SOURCE",
    "SOURCES",
    "ContractError",
    "DecodedEvent",
    "DecodedKline",
    "KlineText",
    "PriceEvent",
    "agg_trade_stream",
    "check_event_time",
    "check_identity",
    "check_price",
    "check_seq",
    "check_source",
    "check_stream",
    "check_symbol",
    "decode_message",
    "kline_stream",
    "live_stream",
    "make_event",
    "make_trade",
    "replay_stream",
    "trade_stream",
]
