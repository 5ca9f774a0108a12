"""Which leaf ids snapshots have asserted the state of: a union of closed id ranges, and
whether the assertions come from more than one snapshot cycle."""

from __future__ import annotations

from sortedcontainers import SortedDict

from . import wire

__all__ = ["Coverage"]


class Coverage:
    """Union of leaf-id ranges asserted by snapshots: disjoint, non-adjacent [lo, hi] pairs.

    The ranges are *complete* when they cover every id; they are *corroborated* when the
    snapshots behind them came from at least two *sources*, a source being a snapshot's
    (datagram ``sequence``, ``cycle_id``, ``cycle_position``). A copy of one real snapshot
    re-flagged LAST with ``cycle_count`` = ``cycle_position`` + 1 is a complete, consistent
    claim that no other leaf exists; however often it is repeated or re-stamped it is one
    source, so it alone never makes a joiner believe a partial replica is whole (SPEC
    §12(g)). An honest cycle of two or more leaves corroborates itself (their positions
    differ), even in one datagram; a one-leaf stream needs its next cycle.
    """

    __slots__ = ("_first_source", "_sources_differ", "ranges")

    def __init__(self) -> None:
        self.ranges: SortedDict[int, int] = SortedDict()
        self._first_source: tuple[int, int, int] | None = None
        self._sources_differ = False

    def add(self, lo: int, hi: int, source: tuple[int, int, int]) -> None:
        """A snapshot from ``source`` (datagram sequence, cycle_id, cycle_position)
        asserted the state of ids ``lo``..``hi``."""
        self._note_source(source)
        self._add_range(lo, hi)

    def merge(self, other: Coverage) -> None:
        if other._first_source is not None:
            self._note_source(other._first_source)
        self._sources_differ |= other._sources_differ
        for lo, hi in other.ranges.items():
            self._add_range(lo, hi)

    def _note_source(self, source: tuple[int, int, int]) -> None:
        if self._first_source is None:
            self._first_source = source
        elif source != self._first_source:
            self._sources_differ = True

    def _add_range(self, lo: int, hi: int) -> None:
        ranges = self.ranges
        index = ranges.bisect_right(lo) - 1
        if index >= 0:
            start = ranges.keys()[index]
            end = ranges[start]
            if end + 1 >= lo:
                if end >= hi:
                    return
                lo = start
                del ranges[start]
        while True:
            index = ranges.bisect_left(lo)
            if index >= len(ranges):
                break
            start = ranges.keys()[index]
            if start > hi + 1:
                break
            hi = max(hi, ranges.pop(start))
        ranges[lo] = hi

    @property
    def complete(self) -> bool:
        """Every id from 0 to MAX_LEAF_ID is covered."""
        return self.ranges.get(0) == wire.MAX_LEAF_ID

    @property
    def known(self) -> bool:
        """Complete and corroborated."""
        return self._sources_differ and self.ranges.get(0) == wire.MAX_LEAF_ID

    def _check(self) -> None:
        previous_end = -2
        for lo, hi in self.ranges.items():
            assert lo <= hi, (lo, hi)
            assert lo > previous_end + 1, "ranges overlap or touch"
            previous_end = hi
        assert self._first_source is not None or not (self.ranges or self._sources_differ)
