"""The producer: Binance (or simulated, or replayed) prices into Kafka."""
