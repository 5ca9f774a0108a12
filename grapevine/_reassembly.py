"""Reassembly of fragmented snapshots, by covered byte ranges (never by byte counts).

A snapshot too large for one datagram arrives as fragments (SPEC §6.3) keyed by
(``leaf_id``, ``leaf_seq``, ``as_of_seq``). Fragments may be lost, repeated, reordered or,
from a faulty or hostile sender, overlap each other. Each partial snapshot keeps its bytes as
disjoint pieces; a fragment that overlaps bytes already held must agree with them, or the
whole reassembly is dropped. A snapshot is complete only when the pieces cover
``[0, total_length)`` exactly, so a hole can never be installed as zero bytes.

Memory is what was received, not what a header claims: nothing is preallocated, and the
bytes held across all partial snapshots are capped.
"""

from __future__ import annotations

from sortedcontainers import SortedDict

__all__ = ["Reassembler"]


class _Partial:
    __slots__ = ("as_of_seq", "held", "leaf_seq", "pieces", "total_length")

    def __init__(self, leaf_seq: int, as_of_seq: int, total_length: int) -> None:
        self.leaf_seq = leaf_seq
        self.as_of_seq = as_of_seq
        self.total_length = total_length
        self.pieces: SortedDict[int, bytes] = SortedDict()  # offset -> bytes, disjoint
        self.held = 0

    def new_ranges(self, offset: int, data: memoryview | bytes) -> list[tuple[int, int]] | None:
        """The byte ranges of a fragment not held yet; None if it disagrees with bytes
        already held. Changes nothing."""
        end = offset + len(data)
        pieces = self.pieces
        starts = pieces.keys()
        index = max(pieces.bisect_right(offset) - 1, 0)
        cursor = offset
        new: list[tuple[int, int]] = []
        while index < len(starts):
            start = starts[index]
            if start >= end:
                break
            piece = pieces[start]
            piece_end = start + len(piece)
            index += 1
            if piece_end <= offset:
                continue
            lo, hi = max(start, offset), min(piece_end, end)
            if piece[lo - start : hi - start] != data[lo - offset : hi - offset]:
                return None
            if lo > cursor:
                new.append((cursor, lo))
            cursor = max(cursor, hi)
        if cursor < end:
            new.append((cursor, end))
        return new

    def add(self, offset: int, data: memoryview | bytes, new: list[tuple[int, int]]) -> None:
        """Keep the ``new`` ranges (from :meth:`new_ranges`) of a fragment."""
        for lo, hi in new:
            self.pieces[lo] = bytes(data[lo - offset : hi - offset])
            self.held += hi - lo

    def _check(self) -> None:
        previous_end = 0
        held = 0
        for start, piece in self.pieces.items():
            assert start >= previous_end, "pieces overlap"
            assert piece, "empty piece"
            previous_end = start + len(piece)
            held += len(piece)
        assert held == self.held <= self.total_length
        assert previous_end <= self.total_length


class Reassembler:
    """Partial snapshots by leaf id, at most one per leaf, within count and byte caps."""

    def __init__(self, *, max_snapshot_bytes: int, max_total_bytes: int,
                 max_partials: int) -> None:
        self.max_snapshot_bytes = max_snapshot_bytes
        self.max_total_bytes = max_total_bytes
        self.max_partials = max_partials
        self._partials: dict[int, _Partial] = {}  # insertion order: oldest first
        self.bytes_held = 0
        self.oversize = 0  # fragments of snapshots over max_snapshot_bytes
        self.inconsistent = 0  # reassemblies dropped for disagreeing overlaps
        self.evicted = 0  # partial snapshots dropped for room

    def add(self, leaf_id: int, leaf_seq: int, as_of_seq: int, total_length: int,
            offset: int, data: memoryview | bytes) -> bytes | None:
        """Add one fragment; the whole encoding once every byte of it is held."""
        if total_length > self.max_snapshot_bytes:
            self.oversize += 1
            return None
        partials = self._partials
        partial = partials.get(leaf_id)
        if partial is not None and (partial.leaf_seq, partial.as_of_seq,
                                    partial.total_length) != (leaf_seq, as_of_seq, total_length):
            # Another snapshot of the same leaf. "Newer" is a later as_of_seq (or the same
            # point with other fields, which only a faulty sender makes): it replaces the
            # partial one; fragments of an older snapshot are ignored.
            if as_of_seq < partial.as_of_seq:
                return None
            self._drop(leaf_id)
            partial = None
        if partial is None:
            if len(partials) >= self.max_partials:
                self._drop(next(iter(partials)))
                self.evicted += 1
            partial = partials[leaf_id] = _Partial(leaf_seq, as_of_seq, total_length)
        new = partial.new_ranges(offset, data)
        if new is None:
            self.inconsistent += 1
            self._drop(leaf_id)
            return None
        # Only bytes not held yet count against the cap: a repeated fragment costs nothing.
        size = sum(hi - lo for lo, hi in new)
        while self.bytes_held + size > self.max_total_bytes and len(partials) > 1:
            oldest = next(iter(partials))
            if oldest == leaf_id:  # keep the one being added to; evict the next oldest
                oldest = next(key for key in partials if key != leaf_id)
            self._drop(oldest)
            self.evicted += 1
        if self.bytes_held + size > self.max_total_bytes:
            self._drop(leaf_id)
            self.evicted += 1
            return None
        partial.add(offset, data, new)
        self.bytes_held += size
        if partial.held < total_length:
            return None
        self._drop(leaf_id)
        return b"".join(partial.pieces.values())

    def clear(self) -> None:
        self._partials.clear()
        self.bytes_held = 0

    def in_progress(self, leaf_id: int) -> bool:
        """Whether a snapshot of ``leaf_id`` is being reassembled."""
        return leaf_id in self._partials

    def __len__(self) -> int:
        return len(self._partials)

    def _drop(self, leaf_id: int) -> None:
        partial = self._partials.pop(leaf_id)
        self.bytes_held -= partial.held

    def _check(self) -> None:
        held = 0
        for partial in self._partials.values():
            partial._check()
            held += partial.held
        assert held == self.bytes_held <= self.max_total_bytes
        assert len(self._partials) <= self.max_partials
