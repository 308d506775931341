"""The consumer's pure core: windows, the accumulator of one flush, the contract's hot path,
the catch-up watch and the migrations' listing. No I/O, no Kafka, no PostgreSQL: nothing here
imports an edge (kafka_reader, postgres) or anything outside core/ but btcpipe.

A new window statistic goes in windows.py (STATISTICS); a new per-flush counter in
accumulator.py (IntervalMetrics)."""
