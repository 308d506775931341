"""The one sentence of an undecodable record batch says what is known, and never guesses."""

from __future__ import annotations

from kafka.errors import CorruptRecordError, UnsupportedCodecError

from aggregator.kafka_reader.undecodable import UndecodableBatch

WHAT_TO_DO = (
    "; nothing was skipped: install the codec libraries of consumer/requirements.txt (or "
    'upgrade kafka-python) and start again, or decide to skip the batch as "An undecodable '
    'record batch" in docs/operations.md says'
)


def test_the_sentence_names_topic_partition_offset_the_batch_end_and_the_cause() -> None:
    cause = UnsupportedCodecError("Libraries for zstd compression codec not found")
    assert str(UndecodableBatch("btc_price", 1, 40, 43, cause)) == (
        "cannot decode the record batch of topic btc_price partition 1 at offset 40 (the batch "
        "ends at offset 42): UnsupportedCodecError: Libraries for zstd compression codec not "
        "found" + WHAT_TO_DO
    )


def test_what_is_unknown_is_left_out() -> None:
    cause = CorruptRecordError("bad")
    assert str(UndecodableBatch("t", 0, 7, None, cause)).startswith(
        "cannot decode the record batch of topic t partition 0 at offset 7: CorruptRecordError"
    )
    assert str(UndecodableBatch("t", None, None, None, cause)).startswith(
        "cannot decode the record batch of topic t (in a partition the client does not name): "
        "CorruptRecordError"
    )
