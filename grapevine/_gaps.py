"""The gap ledger and the chain of TOUCHED summaries (SPEC §12(d) and (k)).

Gaps are numbered 0, 1, 2, ... in a session, in stream order (each ends where the stream
resumed, so later gaps end later). Every leaf that is not stale records ``checked``: it is
known to be untouched by (or repaired after) every gap with an index below ``checked``. A
leaf is *suspect* while some unresolved gap has an index at or above its ``checked``, that
is while ``checked <= max_unresolved``. A histogram of ``checked`` over the non-stale leaves
keeps the number of suspects exact in O(1) per gap, however summaries resolve gaps.
"""

from __future__ import annotations

import bisect

from .codec import Touched

__all__ = ["GapLedger", "TouchedChain"]

_MAX_CHAIN = 1 << 20  # leaves a chain may hold before it restarts (falls back to step d)


class GapLedger:
    """Declared gaps, which of them no summary has resolved, and the suspect count."""

    def __init__(self) -> None:
        self.count = 0  # gaps declared in this session
        self._ends: list[int] = []  # end_seq of gap i, ascending
        self.last_end = 0
        self.unresolved: dict[int, tuple[int, int]] = {}  # index -> (first_seq, end_seq)
        self.max_unresolved = -1
        self._checked: dict[int, int] = {}  # non-stale leaves by `checked`
        self._tracked = 0
        self.suspects = 0
        self.counts_changed = False  # a leaf left its `checked` since the last look

    def declare(self, first: int, end: int) -> int:
        """A new gap [first, end): every tracked leaf becomes suspect."""
        index = self.count
        self.count += 1
        self._ends.append(end)
        self.last_end = end
        self.unresolved[index] = (first, end)
        self.max_unresolved = index
        self.suspects = self._tracked
        return index

    def proven_upto(self, seq: int) -> int:
        """How many gaps end at or before ``seq``: a leaf known current as of ``seq`` is
        verified against exactly those (never against a gap that ends after it)."""
        return bisect.bisect_right(self._ends, seq)

    def is_suspect(self, checked: int) -> bool:
        return checked <= self.max_unresolved

    def track(self, checked: int) -> None:
        counts = self._checked
        counts[checked] = counts.get(checked, 0) + 1
        self._tracked += 1
        if checked <= self.max_unresolved:
            self.suspects += 1

    def untrack(self, checked: int) -> None:
        self.counts_changed = True  # the lowest `checked` may have risen
        counts = self._checked
        left = counts[checked] - 1
        if left:
            counts[checked] = left
        else:
            del counts[checked]
        self._tracked -= 1
        if checked <= self.max_unresolved:
            self.suspects -= 1

    def resolve(self, indices: list[int]) -> None:
        for index in indices:
            del self.unresolved[index]
        self._set_max_unresolved()

    def give_up_irrelevant(self) -> bool:
        """Drop unresolved gaps no leaf is suspect for any more; True if any was dropped."""
        self.counts_changed = False
        lowest = min(self._checked, default=self.count)
        irrelevant = [index for index in self.unresolved if index < lowest]
        if not irrelevant:
            return False
        for index in irrelevant:
            del self.unresolved[index]
        self._set_max_unresolved()
        return True

    def _set_max_unresolved(self) -> None:
        value = max(self.unresolved, default=-1)
        if value != self.max_unresolved:
            self.max_unresolved = value
            self.suspects = sum(n for checked, n in self._checked.items() if checked <= value)

    def _check(self, checked_values: list[int]) -> None:
        counts: dict[int, int] = {}
        for checked in checked_values:
            assert 0 <= checked <= self.count, (checked, self.count)
            counts[checked] = counts.get(checked, 0) + 1
        assert counts == self._checked, (counts, self._checked)
        assert self._tracked == len(checked_values)
        suspects = sum(n for checked, n in counts.items() if checked <= self.max_unresolved)
        assert self.suspects == suspects, (self.suspects, suspects)
        assert self.max_unresolved == max(self.unresolved, default=-1)
        assert all(index < self.count for index in self.unresolved)
        assert self._ends == sorted(self._ends)
        assert len(self._ends) == self.count


class TouchedChain:
    """The union of consecutive TOUCHED summaries: [first, end) and leaf -> leaf_seq."""

    def __init__(self) -> None:
        self.entries: dict[int, int] = {}
        self.first = self.end = -1

    def add(self, touched: Touched, *, extend: bool) -> bool:
        """Add a summary; False if it adds nothing (a duplicate, or inside the chain)."""
        if self.first <= touched.first_seq and touched.end_seq <= self.end:
            return False
        if extend and touched.first_seq == self.end and len(self.entries) < _MAX_CHAIN:
            self.entries.update(touched.entries)
            self.end = touched.end_seq
        else:
            # A new chain; with no gap to resolve, the latest window is all it needs.
            self.entries = dict(touched.entries)
            self.first, self.end = touched.first_seq, touched.end_seq
        return True

    def covers(self, first: int, end: int) -> bool:
        return self.first <= first and end <= self.end
