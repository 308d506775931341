"""The producer: Binance (or simulated, or replayed) prices into Kafka.

app.py runs it: settings.py (every option, a leaf) -> sources/registry.py (the source
`--source` names, built from the values it uses) -> kafka_sink/ (the Kafka edge) ->
`source.run(sink, stop)`. sources/ holds every source and the seam between sources and sink
(sources/base.py); binance/ is the Binance REST edge.
"""
