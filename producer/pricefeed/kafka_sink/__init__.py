"""The Kafka edge: KafkaSink (sink.py), the producer's sources.base.Sink; its in-order delivery
bookkeeping (outstanding.py); its kafka-python clients (clients.py)."""

from pricefeed.kafka_sink.sink import KafkaSink

__all__ = ["KafkaSink"]
