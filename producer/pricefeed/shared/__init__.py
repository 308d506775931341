"""What the producer and the consumer must do alike: the message contract (contract.py), the
settings rules both scripts share (settings.py) and the retry backoff (backoff.py).

The two scripts ship in separate images and cannot import each other, so this folder exists
twice, byte for byte: producer/pricefeed/shared/ and consumer/aggregator/shared/. Edit one,
copy it over the other (`cp producer/pricefeed/shared/*.py consumer/aggregator/shared/`);
tests/test_shared_copies.py fails while they differ. Imports inside it are relative, so the
same text works in either package.
"""
