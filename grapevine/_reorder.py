"""The reorder buffer: datagrams that arrived after a hole in the stream, waiting for it.

A datagram whose header ``sequence`` is beyond the next expected one proves that DELTAs are
missing before it, *if it is genuine*. A hole is declared a gap (SPEC §12(b)) only when

* the reorder window has passed: ``window_s`` since the hole opened (or since the last
  buffered datagram was drained), or ``window_datagrams`` datagrams are buffered; and
* the buffer is **confirmed**: it holds two distinct datagrams that follow each other in
  the stream (one at ``s`` carrying ``n`` DELTAs and another at ``s + n``). An honest
  publisher confirms a hole within one heartbeat interval at most, since every datagram it
  sends after the hole is at or beyond it; a single corrupted, forged or replayed datagram
  with a far-off sequence never confirms itself, so it cannot move the stream position (as
  Aeron drops data beyond its receiver window). Light reordering in quiet periods is
  therefore not loss: a lone early datagram waits for its company.

Unconfirmed datagrams older than ``max_unconfirmed_s`` are dropped and counted.
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
            self._raw.discard(farthest.raw)
        if not heap:
            self.hole_since = now
        deltas = sum(1 for message in datagram.messages if type(message) is Delta)
        heapq.heappush(self._heap, _Held(datagram.sequence, next(self._arrival), now, deltas,
                                         raw, datagram))
        self._raw.add(raw)
        return True

    def pop_ready(self, expected: int) -> Decoded | None:
        """The lowest held datagram if the stream has reached it (sequence <= expected)."""
        heap = self._heap
        if heap and heap[0].sequence <= expected:
            held = heapq.heappop(heap)
            self._raw.discard(held.raw)
            return held.datagram
        return None

    def restart_timer(self, now: float) -> None:
        """Datagrams were drained and some remain: the window runs again from now."""
        if self._heap:
            self.hole_since = now

    def gap_end(self, now: float) -> int | None:
        """Where a gap ends if the hole should be declared one now, else None."""
        heap = self._heap
        if not heap:
            return None
        if now - self.hole_since < self.window_s and len(heap) < self.window_datagrams:
            return None
        if not self.confirmed():
            return None
        return heap[0].sequence

    def confirmed(self) -> bool:
        """True if two distinct held datagrams follow each other in the stream."""
        by_sequence: dict[int, int] = {}
        for held in self._heap:
            by_sequence[held.sequence] = by_sequence.get(held.sequence, 0) + 1
        for held in self._heap:
            # A DELTA-less datagram is followed by another at the same sequence.
            if by_sequence.get(held.sequence + held.deltas, 0) > (0 if held.deltas else 1):
                return True
        return False

    def drop_unconfirmed(self, now: float, max_age_s: float) -> int:
        """Drop datagrams held longer than ``max_age_s`` that nothing confirmed."""
        heap = self._heap
        if not heap or self.confirmed():
            return 0
        keep = [held for held in heap if now - held.arrived_at < max_age_s]
        dropped = len(heap) - len(keep)
        if dropped:
            heapq.heapify(keep)
            self._heap = keep
            self._raw = {held.raw for held in keep}
            self.hole_since = now
        return dropped

    def next_deadline(self, max_age_s: float) -> float | None:
        """When a timer next matters: the window's end, or the oldest datagram's expiry."""
        heap = self._heap
        if not heap:
            return None
        oldest = min(held.arrived_at for held in heap)
        return min(self.hole_since + self.window_s, oldest + max_age_s)

    def clear(self) -> None:
        self._heap = []
        self._raw = set()

    def _check(self, expected: int | None) -> None:
        assert len(self._raw) == len(self._heap)
        assert {held.raw for held in self._heap} == self._raw
        assert len(self._heap) <= self.window_datagrams
        if expected is not None and self._heap:
            assert self._heap[0].sequence > expected, "a ready datagram was left behind"
