"""core/coverage.py: the ranges of seqs counted, against a plain set as the truth."""

from __future__ import annotations

import itertools
import random

from aggregator.core.coverage import Coverage


def as_set(coverage: Coverage) -> set[int]:
    return {seq for first, last in coverage for seq in range(first, last + 1)}


def assert_well_formed(coverage: Coverage) -> None:
    ranges = list(coverage)
    assert all(first <= last for first, last in ranges)
    assert all(a[1] + 1 < b[0] for a, b in itertools.pairwise(ranges)), ranges  # not even touching


def test_random_adds_in_any_order_cover_exactly_what_was_added() -> None:
    for seed in range(200):
        rng = random.Random(seed)
        coverage, truth = Coverage(), set[int]()
        for _ in range(rng.randint(1, 60)):
            first = rng.randint(1, 80)
            last = first + rng.choice((0, 0, 1, 3, 10))
            coverage.add_range(first, last)
            truth.update(range(first, last + 1))
            assert_well_formed(coverage)
        assert as_set(coverage) == truth, seed
        for seq in range(0, 100):
            assert coverage.covers(seq) == (seq in truth), (seed, seq)


def test_a_stream_in_order_is_one_range_and_gaps_split_it() -> None:
    coverage = Coverage.of(5)
    for seq in (6, 7, 8, 10, 11, 20):
        coverage.append_above(seq)
    assert list(coverage) == [(5, 8), (10, 11), (20, 20)]
    assert coverage.top == 20
    coverage.add(9)  # history filled in behind: the gap closes
    assert list(coverage) == [(5, 11), (20, 20)]


def test_merging_coverages_is_their_union() -> None:
    a, b = Coverage([(1, 10), (30, 40)]), Coverage([(11, 12), (20, 25), (38, 50)])
    a.merge(b)
    assert list(a) == [(1, 12), (20, 25), (30, 50)]
    assert Coverage([(3, 4), (1, 2)]) == Coverage([(1, 4)])
