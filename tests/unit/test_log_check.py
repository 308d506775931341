"""core/log_check.py: what a stored or reached position means against a partition's log."""

from __future__ import annotations

from aggregator.core.log_check import (
    LogRange,
    Verdict,
    check_position,
    vanished_partitions,
)

OLD_ID = "8f0c2a52-6d1e-4a51-9d2c-0b9d3e5c1a10"
NEW_ID = "1b7e9d44-27a3-4c9b-8e6f-5d2a0c4b3e21"


def test_a_position_inside_the_log_or_at_its_end_is_kept() -> None:
    for position in (10, 15, 20):
        decision = check_position(0, position, LogRange(10, 20), OLD_ID, OLD_ID)
        assert (decision.verdict, decision.start_at, decision.skipped) == (
            Verdict.KEEP,
            position,
            0,
        )


def test_a_position_past_the_end_means_a_replaced_log_read_from_its_start() -> None:
    decision = check_position(2, 66, LogRange(0, 16))
    assert (decision.verdict, decision.start_at, decision.skipped) == (Verdict.REPLACED, 0, 0)
    text = decision.describe("btc_price")
    assert "partition 2 of btc_price was replaced" in text
    assert "offset 66 lies past the log's end" in text
    assert "[0, 16)" in text and "from offset 0" in text


def test_a_new_topic_id_means_a_replaced_log_even_where_the_offset_fits() -> None:
    decision = check_position(1, 5, LogRange(0, 400), OLD_ID, NEW_ID)
    assert (decision.verdict, decision.start_at, decision.topic_changed) == (
        Verdict.REPLACED,
        0,
        True,
    )
    assert "recreated (its id changed)" in decision.describe("btc_price")


def test_an_unknown_topic_id_on_either_side_decides_nothing() -> None:
    for then, now in ((None, NEW_ID), (OLD_ID, None), (None, None)):
        assert check_position(0, 5, LogRange(0, 9), then, now).verdict is Verdict.KEEP


def test_a_position_before_the_start_skips_what_was_removed_and_counts_it() -> None:
    decision = check_position(0, 3_385, LogRange(3_500, 3_600))
    assert (decision.verdict, decision.start_at, decision.skipped) == (
        Verdict.REMOVED,
        3_500,
        115,
    )
    text = decision.describe("btc_price")
    assert "removed unread" in text and "115 offsets skipped" in text
    assert "[3500, 3600)" in text


def test_an_emptied_log_whose_start_moved_past_the_position_is_removed_not_replaced() -> None:
    decision = check_position(0, 7, LogRange(12, 12))
    assert (decision.verdict, decision.skipped, decision.start_at) == (Verdict.REMOVED, 5, 12)


def test_offsets_of_partitions_the_topic_no_longer_has_are_named() -> None:
    assert vanished_partitions([3, 0, 1, 2], {0, 1, 2}) == [3]
    assert vanished_partitions([0, 1], {0, 1, 2}) == []


def test_with_no_end_known_a_position_is_never_past_it() -> None:
    decision = check_position(0, 1_000_000, LogRange(0, None))
    assert decision.verdict is Verdict.KEEP
    assert check_position(0, 3, LogRange(5, None)).verdict is Verdict.REMOVED
    assert str(LogRange(5, None)) == "[5, ?)"
