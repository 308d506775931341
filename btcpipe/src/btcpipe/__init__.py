"""What the producer and the consumer share, installed into both images: the message contract
(`contract`), the settings machinery and the options both scripts have (`settings`), the retry
backoff (`backoff`), the wall clock (`clock`) and their behaviour as processes (`process`).

One text, one type at runtime: both scripts import it as a package (docs/architecture.md).
"""
