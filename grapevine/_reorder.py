"""The reorder buffer: datagrams that arrived after a hole in the stream, waiting for it.

A datagram whose header ``sequence`` is beyond the next expected one proves that DELTAs are
missing before it, *if it is genuine*. A hole is declared a gap (SPEC §12(b)) only when

* the reorder window has passed: ``window_s`` since the hole opened (or since a buffered
  datagram was last drained), or ``window_datagrams`` datagrams are buffered; and
* the buffer is **confirmed**: it holds two distinct datagrams that follow each other in
  the stream (one at ``s`` carrying ``n`` DELTAs and another at ``s + n``). An honest
  publisher confirms a hole within one heartbeat interval at most, since every datagram it
  sends after the hole is at or beyond it; a single corrupted, forged or replayed datagram
  with a far-off sequence never confirms itself, so it cannot move the stream position (as
  Aeron drops data beyond its receiver window). Light reordering in quiet periods is
  therefore not loss: a lone early datagram waits for its company.

Unconfirmed datagrams older than ``max_age_s`` are dropped and counted. Everything a
datagram costs on arrival is O(1) (or O(log n) for the heap); the O(n) recounts happen only
after datagrams leave, at most once per departure.
"""

from __future__ import annotations

import heapq
import itertools
from typing import NamedTuple

from .codec import Decoded, Delta

__all__ = ["ReorderBuffer"]


class _Held(NamedTuple):
    sequence: int
    arrival: int  # tie-break: equal sequences leave in arrival order
    arrived_at: float
    deltas: int
    raw: bytes
    datagram: Decoded


class ReorderBuffer:
    """Datagrams held behind a hole, lowest sequence first."""

    def __init__(self, *, window_s: float, window_datagrams: int) -> None:
        self.window_s = window_s
        self.window_datagrams = window_datagrams
        self._heap: list[_Held] = []
        self._raw: set[bytes] = set()
        self._arrival = itertools.count()
        self.hole_since = 0.0
        self._by_sequence: dict[int, int] = {}  # held datagrams per header sequence
        self._successors: dict[int, int] = {}  # s + n of held datagrams with n > 0
        self._empty: dict[int, int] = {}  # held DELTA-less datagrams per sequence
        self._confirmed = False
        self._oldest = float("inf")  # earliest arrival among held datagrams
        self.evicted = 0  # held datagrams discarded to make room for nearer ones

    def __len__(self) -> int:
        return len(self._heap)

    def hold(self, raw: bytes, datagram: Decoded, now: float) -> bool | None:
        """Buffer a private copy: True if kept, None if an identical one is held, False if
        the buffer is full and this one is the farthest ahead."""
        if raw in self._raw:
            return None
        heap = self._heap
        if len(heap) >= self.window_datagrams:
            # Full and unconfirmed (else a gap would have been declared): the datagram
            # farthest ahead is the least plausible; it makes room.
            farthest = max(heap)
            if datagram.sequence >= farthest.sequence:
                return False
            heap.remove(farthest)
            heapq.heapify(heap)
            self._forget(farthest)
            self.evicted += 1
        if not heap:
            self.hole_since = now
        sequence = datagram.sequence
        # (A DELTA is a Delta, or a plain tuple of its fields: codec._decode_datagram_fast.)
        deltas = sum(1 for message in datagram.messages
                     if type(message) is Delta or type(message) is tuple)
        by_sequence, successors, empty = self._by_sequence, self._successors, self._empty
        if (by_sequence.get(sequence + deltas) or successors.get(sequence)
                or empty.get(sequence)):
            self._confirmed = True
        by_sequence[sequence] = by_sequence.get(sequence, 0) + 1
        if deltas:
            successors[sequence + deltas] = successors.get(sequence + deltas, 0) + 1
        else:
            empty[sequence] = empty.get(sequence, 0) + 1
        heapq.heappush(heap, _Held(sequence, next(self._arrival), now, deltas, raw, datagram))
        self._raw.add(raw)
        self._oldest = min(self._oldest, now)
        return True

    def pop_ready(self, expected: int) -> Decoded | None:
        """The lowest held datagram if the stream has reached it (sequence <= expected)."""
        heap = self._heap
        if heap and heap[0].sequence <= expected:
            held = heapq.heappop(heap)
            self._forget(held)
            return held.datagram
        return None

    def restart_timer(self, now: float) -> None:
        """Datagrams were drained and some remain: the window runs again from now."""
        if self._heap:
            self.hole_since = now

    def gap_end(self, now: float, window_s: float | None = None) -> int | None:
        """Where a gap ends if the hole should be declared one now, else None. ``window_s``
        overrides the reorder window (longer while a retransmission may fill the hole)."""
        heap = self._heap
        if not heap or not self._confirmed:
            return None
        window = self.window_s if window_s is None else window_s
        if now - self.hole_since < window and len(heap) < self.window_datagrams:
            return None
        return heap[0].sequence

    def missing(self, expected: int) -> list[tuple[int, int]]:
        """The ranges of DELTA sequences, ``(first, end)``, that the held datagrams show
        missing from ``expected`` on: what a retransmission could fill. O(n log n)."""
        ranges: list[tuple[int, int]] = []
        cursor = expected
        for held in sorted(self._heap):
            if held.sequence > cursor:
                ranges.append((cursor, held.sequence))
            cursor = max(cursor, held.sequence + held.deltas)
        return ranges

    def drop_unconfirmed(self, now: float, max_age_s: float) -> int:
        """Drop datagrams held longer than ``max_age_s`` that nothing confirmed."""
        heap = self._heap
        # Compared as arrival + age, the same sum next_deadline() returns: a poll at that
        # deadline then always finds the datagram expired (no float rounding between).
        if not heap or now < self._oldest + max_age_s or self._confirmed:
            return 0
        keep = [held for held in heap if now < held.arrived_at + max_age_s]
        dropped = len(heap) - len(keep)
        heapq.heapify(keep)
        self._heap = keep
        self._recount()
        self.hole_since = now
        return dropped

    def next_deadline(self, max_age_s: float, window_s: float | None = None) -> float | None:
        """When a timer next matters: the window's end once confirmed (then a gap is
        declared), else the oldest datagram's expiry. The window's end alone declares
        nothing while unconfirmed, so it must not be returned: it would be in the past
        from then on, and a caller sleeping until it would spin."""
        if not self._heap:
            return None
        if self._confirmed:
            return self.hole_since + (self.window_s if window_s is None else window_s)
        return self._oldest + max_age_s

    def clear(self) -> None:
        self._heap = []
        self._recount()

    def _forget(self, held: _Held) -> None:
        """A datagram left: undo its counts; confirmation is recounted (O(n)) only if it
        may have depended on it."""
        self._raw.discard(held.raw)
        if self._confirmed or held.arrived_at == self._oldest:
            self._recount()
            return
        _decrement(self._by_sequence, held.sequence)
        if held.deltas:
            _decrement(self._successors, held.sequence + held.deltas)
        else:
            _decrement(self._empty, held.sequence)

    def _recount(self) -> None:
        heap = self._heap
        self._raw = {held.raw for held in heap}
        by_sequence: dict[int, int] = {}
        successors: dict[int, int] = {}
        empty: dict[int, int] = {}
        for held in heap:
            by_sequence[held.sequence] = by_sequence.get(held.sequence, 0) + 1
            if held.deltas:
                target = held.sequence + held.deltas
                successors[target] = successors.get(target, 0) + 1
            else:
                empty[held.sequence] = empty.get(held.sequence, 0) + 1
        self._by_sequence, self._successors, self._empty = by_sequence, successors, empty
        self._confirmed = any(
            by_sequence.get(held.sequence + held.deltas, 0) > (0 if held.deltas else 1)
            for held in heap)
        self._oldest = min((held.arrived_at for held in heap), default=float("inf"))

    def _check(self, expected: int | None) -> None:
        heap = self._heap
        assert len(self._raw) == len(heap)
        assert {held.raw for held in heap} == self._raw
        assert len(heap) <= self.window_datagrams
        if expected is not None and heap:
            assert heap[0].sequence > expected, "a ready datagram was left behind"
        confirmed = any(
            sum(1 for other in heap if other.sequence == held.sequence + held.deltas)
            > (0 if held.deltas else 1) for held in heap)
        assert self._confirmed == confirmed, (self._confirmed, confirmed)
        assert self._oldest == min((held.arrived_at for held in heap), default=float("inf"))


def _decrement(counts: dict[int, int], key: int) -> None:
    left = counts[key] - 1
    if left:
        counts[key] = left
    else:
        del counts[key]
