"""Which leaf ids snapshots have asserted the state of: a union of closed id ranges."""

from __future__ import annotations

from sortedcontainers import SortedDict

from . import wire

__all__ = ["Coverage"]


class Coverage:
    """Union of leaf-id ranges asserted by snapshots: disjoint, non-adjacent [lo, hi] pairs."""

    __slots__ = ("ranges",)

    def __init__(self) -> None:
        self.ranges: SortedDict[int, int] = SortedDict()

    def add(self, lo: int, hi: int) -> None:
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

    def merge(self, other: Coverage) -> None:
        for lo, hi in other.ranges.items():
            self.add(lo, hi)

    @property
    def complete(self) -> bool:
        return self.ranges.get(0) == wire.MAX_LEAF_ID

    def _check(self) -> None:
        previous_end = -2
        for lo, hi in self.ranges.items():
            assert lo <= hi, (lo, hi)
            assert lo > previous_end + 1, "ranges overlap or touch"
            previous_end = hi
