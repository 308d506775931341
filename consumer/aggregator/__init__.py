"""The consumer: Kafka price events into exact 5-minute windows in PostgreSQL."""
