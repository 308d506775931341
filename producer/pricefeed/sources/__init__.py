"""Where the prices come from: every source, its runner, and the seam between them and the sink.

The seam (base.py): a `Source` is run as `source.run(sink, stop)` and hands its events to a
`Sink`, whose docstring is the whole of the sink's contract; a source never sees Kafka or the
settings. Sources come in three kinds, each with its runner:

- a poll source (`polling.PollSource`: ticker.py, simulated.py) returns one tick's events at
  a time; `polling.FixedRatePoller` runs it on the fixed-rate clock and retries a PollFailed;
- a stream source (`streaming.StreamSource`) connects and reads what arrives;
  `streaming.StreamRunner` publishes it, and reconnects after a StreamInterrupted;
- a source that runs its own loop (replay/: files as fast as the sink takes them).

A new source goes in a module of its own here (a package if it has several parts; its network
edge, if new, beside binance/), runs as one of these kinds, and is registered in registry.py:
its --source name, the Settings fields it uses and the factory that builds it from them.
Options it adds go in ../settings.py. identity.py numbers live events.
"""
