"""Which seqs of a stream the tables have counted: sorted, disjoint ranges. Pure, no I/O.

A single high-water mark says "everything up to N": enough while a stream arrives in order,
but not once history is filled in behind it (a public-data file of the trades before a live
stream's start, or two overlapping files). Ranges say exactly what was counted, so an event
is a repeat when its seq lies in one of them, whatever order its stream arrived in.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable, Iterator


class Coverage:
    """Inclusive ranges [first, last] of seqs, sorted and disjoint, never adjacent (adjacent
    ones are one range)."""

    __slots__ = ("_firsts", "_lasts")

    def __init__(self, ranges: Iterable[tuple[int, int]] = ()) -> None:
        self._firsts: list[int] = []
        self._lasts: list[int] = []
        for first, last in sorted(ranges):
            self.add_range(first, last)

    @classmethod
    def of(cls, seq: int) -> Coverage:
        coverage = cls()
        coverage._firsts.append(seq)
        coverage._lasts.append(seq)
        return coverage

    @property
    def top(self) -> int:
        """The highest seq covered."""
        return self._lasts[-1]

    def covers(self, seq: int) -> bool:
        i = bisect_right(self._firsts, seq) - 1
        return i >= 0 and seq <= self._lasts[i]

    def append_above(self, seq: int) -> None:
        """Add a seq above every covered one (the hot path: a stream in order)."""
        if seq == self._lasts[-1] + 1:
            self._lasts[-1] = seq
        else:
            self._firsts.append(seq)
            self._lasts.append(seq)

    def add(self, seq: int) -> None:
        self.add_range(seq, seq)

    def add_range(self, first: int, last: int) -> None:
        """Cover [first, last], joining every range it overlaps or touches."""
        firsts, lasts = self._firsts, self._lasts
        # The ranges from lo to hi - 1 overlap or touch [first, last].
        lo = bisect_right(lasts, first - 2)  # the first range ending at first - 1 or later
        hi = bisect_right(firsts, last + 1)  # past the last range starting at last + 1 or before
        if lo < hi:
            first, last = min(first, firsts[lo]), max(last, lasts[hi - 1])
        firsts[lo:hi] = [first]
        lasts[lo:hi] = [last]

    def merge(self, other: Coverage) -> None:
        for first, last in other:
            self.add_range(first, last)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return zip(self._firsts, self._lasts, strict=True)

    def __len__(self) -> int:
        return len(self._firsts)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Coverage) and list(self) == list(other)

    def __repr__(self) -> str:
        return f"Coverage({list(self)})"
