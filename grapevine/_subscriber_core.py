"""The subscriber's protocol logic, without sockets, threads or clocks (sans-I/O).

Rule 1 (after h11): everything that decides what the replica holds and whether it can be
trusted lives in this file. :class:`SubscriberCore` is driven by two calls that take the
current time, :meth:`~SubscriberCore.receive` (one datagram's bytes) and
:meth:`~SubscriberCore.poll` (timers), and reports through two lists it appends to:
``updates`` (plain tuples ``(leaf_id, kind, leaf, delta)``) and ``events``
(:class:`StatusEvent`). Remote bad data never raises: it is counted.

The algorithm is the one in protocol/SPEC.md, "Receiver algorithm":

* stream sequence numbers order deltas; holes wait a reorder window, then become gaps;
* leaf sequence numbers (CME's RptSeq) tell, per leaf, whether changes were missed;
* after a gap every leaf is *suspect* until a delta or snapshot proves it untouched; a leaf
  known to have missed changes is *stale* and buffers its deltas until a snapshot that
  chains with them repairs it;
* snapshots assert that no leaf exists in ``[range_start, leaf_id)``; the union of those
  ranges tells when the whole leaf set is known, and removes leaves whose delete was lost;
* TOUCHED summaries name the leaves each window of deltas changed; once consecutive
  summaries cover a gap, exactly the listed leaves that missed changes go stale and every
  other leaf is cleared of that gap at once (step (k) of the SPEC).

Suspects cost O(1) per gap: each leaf records ``checked``, the number of gaps it has been
verified against, and a leaf is suspect while ``checked`` is at or below the index of the
newest gap no summary has resolved (``max_unresolved``). A histogram of ``checked`` keeps
the count of suspects exact when summaries resolve gaps.
"""

from __future__ import annotations

import enum
import heapq
import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Generic, NamedTuple

from sortedcontainers import SortedDict

from . import wire
from ._errors import ConfigError, DecodeError
from .codec import Decoded, Delta, EndOfSession, Heartbeat, Snapshot, Touched, decode
from .model import DeltaT, LeafModel, LeafT
from .wire import DeltaFlag, SnapshotFlag

__all__ = [
    "Status",
    "StatusEvent",
    "SubscriberConfig",
    "SubscriberCore",
    "SubscriberStats",
    "UpdateKind",
]

_MAX_ID = wire.MAX_LEAF_ID
_ABSENT: Any = object()  # value of a leaf known to exist but not yet installed
_MAX_CHAIN = 1 << 20  # leaves a chain of TOUCHED summaries may hold before it is dropped


class UpdateKind(enum.IntEnum):
    """What happened to a leaf, as delivered to leaf callbacks."""

    CHANGED = 1  # a delta was applied (``delta`` is the decoded delta)
    REPLACED = 2  # a snapshot was installed (initial sync or repair); ``delta`` is None
    DELETED = 3  # the leaf no longer exists; ``leaf`` is None
    CONFLATED = 4  # several changes, delivered late as one; read the leaf


CHANGED, REPLACED, DELETED = UpdateKind.CHANGED, UpdateKind.REPLACED, UpdateKind.DELETED


class Status(enum.Enum):
    """Status changes reported to status callbacks."""

    SESSION_STARTED = "session started"  # first datagram of a publisher session
    SYNCED = "synced"  # every leaf known and fresh
    UNSYNCED = "unsynced"  # no longer synced (gap, silence, session end)
    GAP = "gap"  # deltas [first_seq, end_seq) were lost; all leaves suspect
    LEAF_STALE = "leaf stale"  # leaf_id missed changes; it waits for a snapshot
    LEAF_REPAIRED = "leaf repaired"  # leaf_id was repaired from a snapshot
    SILENT = "publisher silent"  # nothing heard for the silence timeout
    RESUMED = "publisher resumed"  # heard again after SILENT
    RESTARTED = "publisher restarted"  # a new session replaced the old: replica rebuilt
    SESSION_ENDED = "session ended"  # the publisher stopped cleanly


class StatusEvent(NamedTuple):
    """One status change. Fields that do not apply to ``kind`` are None."""

    kind: Status
    time: float
    leaf_id: int | None = None
    first_seq: int | None = None
    end_seq: int | None = None
    session_id: int | None = None


@dataclass(frozen=True)
class SubscriberConfig:
    """Subscriber tuning. Times are seconds of the clock the caller passes."""

    stream_id: int = 0
    reorder_window_s: float = 0.02
    reorder_window_datagrams: int = 64
    silence_timeout_s: float | None = None  # None: 3 heartbeat intervals
    restart_grace_s: float | None = None  # None: 2 heartbeat intervals
    max_buffered_deltas_per_leaf: int = 4096
    max_snapshot_bytes: int = 64 << 20
    max_reassemblies: int = 256

    def __post_init__(self) -> None:
        if not 0 <= self.stream_id <= 0xFFFF_FFFF:
            raise ConfigError(f"stream_id {self.stream_id} is outside 0..2**32-1")
        if self.reorder_window_s < 0 or self.reorder_window_datagrams < 1:
            raise ConfigError("reorder window must be >= 0 s and >= 1 datagram")
        for name in ("silence_timeout_s", "restart_grace_s"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigError(f"{name} must be positive")
        if self.max_buffered_deltas_per_leaf < 1 or self.max_snapshot_bytes < 1:
            raise ConfigError("buffer limits must be positive")


@dataclass
class SubscriberStats:
    """Counters (plain ints, readable from any thread)."""

    datagrams: int = 0
    malformed: int = 0
    foreign_stream: int = 0
    foreign_session: int = 0
    duplicate_datagrams: int = 0
    reordered_datagrams: int = 0
    deltas: int = 0
    duplicate_deltas: int = 0
    snapshots: int = 0
    snapshots_used: int = 0  # snapshots that installed, repaired or proved a leaf
    installs: int = 0  # leaves first installed from a snapshot (startup, lost CREATE)
    heartbeats: int = 0
    unknown_messages: int = 0
    gaps: int = 0
    missed_deltas: int = 0
    leaves_made_stale: int = 0  # held leaves found to have missed changes (LEAF_STALE)
    suspects_proven: int = 0
    touched_summaries: int = 0
    gaps_resolved: int = 0  # gap episodes whose touched leaves summaries named exactly
    repairs: int = 0
    inferred_deletes: int = 0
    restarts: int = 0
    oversize_snapshots: int = 0
    buffer_overflows: int = 0


class _Leaf:
    """One leaf's replica record."""

    __slots__ = ("buffer", "checked", "leaf_seq", "required", "seen_seq", "stale", "value")

    def __init__(self, value: Any, leaf_seq: int, checked: int, seen_seq: int) -> None:
        self.value = value
        self.leaf_seq = leaf_seq  # last change applied (0: none known)
        self.checked = checked  # gaps this leaf is verified against
        self.seen_seq = seen_seq  # stream point at which the leaf is known to exist
        self.stale = False
        self.required = 0  # a repairing snapshot needs as_of_seq >= this
        # Deltas held while stale: (leaf_seq, seq, flags, payload).
        self.buffer: list[tuple[int, int, int, bytes]] | None = None


class _Coverage:
    """Union of leaf-id ranges asserted by snapshots: disjoint, sorted [lo, hi] pairs."""

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

    @property
    def complete(self) -> bool:
        return self.ranges.get(0) == _MAX_ID

    def clear(self) -> None:
        self.ranges.clear()


class _Reassembly:
    __slots__ = ("buffer", "key", "offsets", "received")

    def __init__(self, key: tuple[int, int], total: int) -> None:
        self.key = key
        self.buffer = bytearray(total)
        self.offsets: set[int] = set()
        self.received = 0


class SubscriberCore(Generic[LeafT, DeltaT]):
    """Sequencing, gap detection, snapshot merge and sync state for one stream."""

    def __init__(self, model: LeafModel[LeafT, DeltaT],
                 config: SubscriberConfig | None = None) -> None:
        if not isinstance(model, LeafModel):
            raise ConfigError(f"model {model!r} does not implement grapevine.LeafModel")
        self.model = model
        self.config = config or SubscriberConfig()
        self.stats = SubscriberStats()
        self.updates: list[tuple[int, UpdateKind, Any, Any]] = []
        self.events: list[StatusEvent] = []
        self.leaves: SortedDict[int, _Leaf] = SortedDict()
        self.session_id: int | None = None
        self.synced = False
        self.silent = False
        self.ended = False
        self.heartbeat_interval_s = 0.5
        self.last_heard = 0.0
        self.last_error: DecodeError | None = None
        self._retired: list[int] = []
        self.expected: int | None = None
        self._pending: list[tuple[int, int, Decoded]] = []
        self._arrival: Iterator[int] = itertools.count()
        self._reset_session()

    # ------------------------------------------------------------------ public calls

    def receive(self, data: bytes | bytearray | memoryview, now: float) -> None:
        """Process one datagram received at ``now``. Never raises on bad remote data.

        It also runs the timers, so a caller need not :meth:`poll` after it.
        """
        self.stats.datagrams += 1
        try:
            datagram = decode(data)
        except DecodeError as exc:
            self.stats.malformed += 1
            self.last_error = exc
            self.poll(now)
            return
        if datagram.stream_id != self.config.stream_id:
            self.stats.foreign_stream += 1
            self.poll(now)
            return
        if datagram.session_id != self.session_id and not self._switch_session(datagram, now):
            self.stats.foreign_session += 1
            self.poll(now)
            return
        self.last_heard = now
        if self.silent:
            self.silent = False
            self._event(Status.RESUMED, now, session_id=self.session_id)
        if self.expected is None:
            self.base = self.expected = datagram.sequence
            self._coverage_from = datagram.sequence
        sequence = datagram.sequence
        if sequence > self.expected:
            # A hole before this datagram: keep a private copy until the hole fills or expires.
            if not self._pending:
                self._hole_since = now
            owned = decode(bytes(data))
            heapq.heappush(self._pending, (sequence, next(self._arrival), owned))
            self.stats.reordered_datagrams += 1
            if len(self._pending) >= self.config.reorder_window_datagrams:
                self._declare_gap(now)
        else:
            self._process(datagram, now)
            if self._pending:
                self._drain(now)
        if self._pending and now - self._hole_since >= self.config.reorder_window_s:
            self._declare_gap(now)
        self._update_synced(now)

    def poll(self, now: float) -> None:
        """Run timers: expire reorder holes into gaps, detect publisher silence."""
        if self._pending and now - self._hole_since >= self.config.reorder_window_s:
            self._declare_gap(now)
        if (self.session_id is not None and not self.silent and not self.ended
                and now - self.last_heard >= self.silence_timeout_s):
            self.silent = True
            self._event(Status.SILENT, now, session_id=self.session_id)
        self._update_synced(now)

    def next_poll(self, now: float) -> float:
        """The latest time :meth:`poll` should run next."""
        deadline = now + max(self.silence_timeout_s / 4, 0.005)
        if self._pending:
            deadline = min(deadline, self._hole_since + self.config.reorder_window_s)
        return deadline

    @property
    def silence_timeout_s(self) -> float:
        configured = self.config.silence_timeout_s
        return configured if configured is not None else 3 * self.heartbeat_interval_s

    @property
    def restart_grace_s(self) -> float:
        configured = self.config.restart_grace_s
        return configured if configured is not None else 2 * self.heartbeat_interval_s

    @property
    def leaf_set_known(self) -> bool:
        """True when snapshots since the last gap have covered every leaf id."""
        return self._leaf_set_known

    @property
    def unverified(self) -> int:
        """Leaves that are stale or suspect (not fresh). O(1)."""
        return self._stale_count + self._suspects

    def is_fresh(self, leaf_id: int) -> bool:
        """True if the leaf is installed, not stale and verified against every gap."""
        rec = self.leaves.get(leaf_id)
        return (rec is not None and rec.value is not _ABSENT
                and not self._is_unverified(rec))

    def stale_leaves(self) -> list[int]:
        """Leaves known to have missed changes, waiting for a repairing snapshot. O(n)."""
        return [leaf_id for leaf_id, rec in self.leaves.items() if rec.stale]

    def suspect_leaves(self) -> list[int]:
        """Leaves a gap may have touched, not yet proven either way. O(n)."""
        return [leaf_id for leaf_id, rec in self.leaves.items()
                if not rec.stale and self._is_unverified(rec)]

    def values(self) -> dict[int, Any]:
        """A new dict of every installed leaf's value (fresh or not), by leaf id."""
        return {leaf_id: rec.value for leaf_id, rec in self.leaves.items()
                if rec.value is not _ABSENT}

    def get(self, leaf_id: int) -> Any:
        """The leaf's current value; KeyError if not installed."""
        rec = self.leaves[leaf_id]
        if rec.value is _ABSENT:
            raise KeyError(leaf_id)
        return rec.value

    def progress(self) -> tuple[int, int]:
        """(leaves installed and fresh, leaves the publisher has) for a sync progress bar."""
        fresh = len(self.leaves) - self.unverified
        return fresh, max(self._publisher_leaf_count, fresh)

    def _check(self) -> None:
        """Assert the bookkeeping invariants (tests call this after every datagram)."""
        stale = [rec for rec in self.leaves.values() if rec.stale]
        assert self._stale_count == len(stale), (self._stale_count, len(stale))
        counts: dict[int, int] = {}
        for rec in self.leaves.values():
            if not rec.stale:
                counts[rec.checked] = counts.get(rec.checked, 0) + 1
            assert rec.checked <= self._gap_count
            assert (rec.buffer is not None) == rec.stale
            assert rec.value is not _ABSENT or rec.stale
        assert counts == self._checked_counts, (counts, self._checked_counts)
        suspects = sum(n for checked, n in counts.items() if checked <= self._max_unresolved)
        assert self._suspects == suspects, (self._suspects, suspects)
        assert self._max_unresolved == max(self._unresolved, default=-1)
        assert all(index < self._gap_count for index in self._unresolved)
        if self.synced:
            assert self._leaf_set_known
            assert self.unverified == 0

    # ------------------------------------------------------------------ sessions

    def _reset_session(self) -> None:
        self.expected = None
        self.base = 0
        self._pending = []
        self._arrival = itertools.count()
        self._hole_since = 0.0
        self._gap_count = 0
        self._last_gap_end = 0
        # Gaps no summary has resolved: index -> (first_seq, end_seq).
        self._unresolved: dict[int, tuple[int, int]] = {}
        self._max_unresolved = -1
        # Leaf-set coverage set aside at the first unresolved gap, restored if summaries
        # resolve every gap since (None once a gap is given up on).
        self._saved_coverage: tuple[_Coverage, int, bool] | None = None
        self._chain: dict[int, int] = {}
        self._chain_from = self._chain_to = -1
        self._checked_counts: dict[int, int] = {}  # non-stale leaves by `checked`
        self._counts_changed = False  # since the last look for gaps to give up
        self._suspects = 0
        self._stale_count = 0
        self._coverage = _Coverage()
        self._coverage_from = 0
        self._leaf_set_known = False
        self._deleted: dict[int, int] = {}
        self._reassembly: dict[int, _Reassembly] = {}
        self._publisher_leaf_count = 0
        self.ended = False

    def _switch_session(self, datagram: Decoded, now: float) -> bool:
        new = datagram.session_id
        old = self.session_id
        if old is None:
            self.session_id = new
            self.last_heard = now
            self._event(Status.SESSION_STARTED, now, session_id=new)
            return True
        if new in self._retired:
            return False
        if not self.ended and now - self.last_heard < self.restart_grace_s:
            return False  # the followed session is alive: this is a stranger
        self._retired.append(old)
        del self._retired[:-16]
        for leaf_id, rec in self.leaves.items():
            if rec.value is not _ABSENT:
                self.updates.append((leaf_id, DELETED, None, None))
        self.leaves.clear()
        self._reset_session()
        self.session_id = new
        self.silent = False
        self.stats.restarts += 1
        self._event(Status.RESTARTED, now, session_id=new)
        return True

    # ------------------------------------------------------------------ sequencing

    def _drain(self, now: float) -> None:
        pending = self._pending
        while pending and self.expected is not None and pending[0][0] <= self.expected:
            _, _, datagram = heapq.heappop(pending)
            self._process(datagram, now)
        if pending:
            self._hole_since = now

    def _declare_gap(self, now: float) -> None:
        first = self.expected
        assert first is not None
        end = self._pending[0][0]
        index = self._gap_count
        self._gap_count += 1
        self._last_gap_end = end
        self.expected = end
        self.stats.gaps += 1
        self.stats.missed_deltas += end - first
        # Every leaf may have been touched; the leaf set may have changed. What the receiver
        # knew of the leaf set is set aside: a summary covering the gaps can restore it.
        if not self._unresolved:
            self._saved_coverage = (self._coverage, self._coverage_from, self._leaf_set_known)
        elif self._saved_coverage is not None:
            # Ranges gathered between unresolved gaps hold too if those gaps resolve.
            saved = self._saved_coverage[0]
            for lo, hi in self._coverage.ranges.items():
                saved.add(lo, hi)
        self._unresolved[index] = (first, end)
        self._max_unresolved = index
        self._suspects = len(self.leaves) - self._stale_count
        self._coverage = _Coverage()
        self._coverage_from = end
        self._leaf_set_known = False
        self._event(Status.GAP, now, first_seq=first, end_seq=end)
        self._drain(now)

    def _process(self, datagram: Decoded, now: float) -> None:
        stats = self.stats
        expected = self.expected
        assert expected is not None
        leaves_get = self.leaves.get
        decode_delta = self.model.decode_delta
        apply = self.model.apply
        append_update = self.updates.append
        gaps = self._gap_count
        duplicates = applied = 0
        for message in datagram.messages:
            if type(message) is Delta:
                seq, leaf_id, leaf_seq, flags, payload = message
                if seq < expected:
                    duplicates += 1
                    continue
                expected = seq + 1  # == expected before: datagrams are processed in order
                applied += 1
                rec = leaves_get(leaf_id)
                if (rec is not None and leaf_seq == rec.leaf_seq + 1 and not flags
                        and rec.checked == gaps and not rec.stale):
                    # Hot path, inlined: the next change of a verified leaf.
                    change = decode_delta(payload)  # type: ignore[arg-type]
                    value = rec.value = apply(rec.value, change)
                    rec.leaf_seq = leaf_seq
                    rec.seen_seq = seq
                    append_update((leaf_id, CHANGED, value, change))
                else:
                    self._on_delta_slow(rec, message)
            elif type(message) is Snapshot:
                self._on_snapshot(message, now)
            elif type(message) is Heartbeat:
                stats.heartbeats += 1
                if message.interval_ms:
                    self.heartbeat_interval_s = message.interval_ms / 1000
            elif type(message) is Touched:
                self._on_touched(message, now)
            elif type(message) is EndOfSession:
                self._on_end_of_session(now)
            else:
                stats.unknown_messages += 1
        self.expected = expected
        stats.deltas += applied
        if duplicates:
            stats.duplicate_deltas += duplicates
            if not applied:
                stats.duplicate_datagrams += 1

    # ------------------------------------------------------------------ deltas

    def _on_delta_slow(self, rec: _Leaf | None, delta: Delta) -> None:
        leaf_id = delta.leaf_id
        flags = delta.flags
        known = rec.leaf_seq if rec is not None else self._deleted.get(leaf_id, 0)
        if delta.leaf_seq <= known:
            self.stats.duplicate_deltas += 1
            return
        if flags & DeltaFlag.DELETE:
            # The leaf does not exist after this delta, whatever we missed before it.
            self._deleted[leaf_id] = delta.leaf_seq
            if rec is not None:
                self._remove(leaf_id, rec)
            return
        model = self.model
        if flags & DeltaFlag.CREATE:
            # Applied to an empty leaf: complete on its own, whatever we missed before it.
            change = model.decode_delta(delta.payload)  # type: ignore[arg-type]
            value = model.apply(model.new_leaf(), change)
            self._deleted.pop(leaf_id, None)
            if rec is None:
                rec = _Leaf(value, delta.leaf_seq, self._gap_count, delta.seq)
                self.leaves[leaf_id] = rec
                self._track(rec)
            else:
                self._mark_verified(rec)
                rec.value = value
                rec.leaf_seq = delta.leaf_seq
                rec.seen_seq = delta.seq
            self.updates.append((leaf_id, CHANGED, value, change))
            return
        if rec is None:
            # A change to a leaf we do not hold: it waits for a snapshot.
            rec = self._new_unknown_leaf(leaf_id, required=delta.seq, seen_seq=delta.seq)
            self._buffer(rec, delta)
            return
        if rec.stale:
            self._buffer(rec, delta)
            return
        if delta.leaf_seq == rec.leaf_seq + 1:
            # The next change of a suspect leaf proves it untouched by the gaps (or a
            # reserved flag bit we ignore): apply it as a normal change.
            if self._is_suspect(rec):
                self.stats.suspects_proven += 1
            self._mark_verified(rec)
            change = model.decode_delta(delta.payload)  # type: ignore[arg-type]
            rec.value = model.apply(rec.value, change)
            rec.leaf_seq = delta.leaf_seq
            rec.seen_seq = delta.seq
            self.updates.append((leaf_id, CHANGED, rec.value, change))
            return
        # leaf_seq jumped: this leaf missed changes. A repair must reflect everything
        # before this delta.
        self._make_stale(rec, leaf_id, required=delta.seq, now=self.last_heard)
        self._buffer(rec, delta)

    # ------------------------------------------------------------------ verification
    # Every non-stale leaf is counted in _checked_counts under its `checked`; a leaf is
    # suspect while checked <= _max_unresolved. These helpers keep the counts exact.

    def _is_suspect(self, rec: _Leaf) -> bool:
        return not rec.stale and rec.checked <= self._max_unresolved

    def _is_unverified(self, rec: _Leaf) -> bool:
        return rec.stale or rec.checked <= self._max_unresolved

    def _track(self, rec: _Leaf) -> None:
        counts = self._checked_counts
        counts[rec.checked] = counts.get(rec.checked, 0) + 1
        if rec.checked <= self._max_unresolved:
            self._suspects += 1

    def _untrack(self, rec: _Leaf) -> None:
        self._counts_changed = True  # the lowest `checked` may have risen
        counts = self._checked_counts
        left = counts[rec.checked] - 1
        if left:
            counts[rec.checked] = left
        else:
            del counts[rec.checked]
        if rec.checked <= self._max_unresolved:
            self._suspects -= 1

    def _new_unknown_leaf(self, leaf_id: int, *, required: int, seen_seq: int) -> _Leaf:
        """A leaf known to exist whose value waits for a snapshot (stale, not shown)."""
        rec = _Leaf(_ABSENT, 0, self._gap_count, seen_seq)
        rec.stale, rec.required, rec.buffer = True, required, []
        self.leaves[leaf_id] = rec
        self._stale_count += 1
        return rec

    def _make_stale(self, rec: _Leaf, leaf_id: int, *, required: int, now: float) -> None:
        """A held, non-stale leaf missed changes: announce it and wait for a repair."""
        self._untrack(rec)
        self._stale_count += 1
        rec.stale, rec.required, rec.buffer = True, required, []
        self.stats.leaves_made_stale += 1
        self._event(Status.LEAF_STALE, now, leaf_id=leaf_id)

    def _buffer(self, rec: _Leaf, delta: Delta) -> None:
        buffer = rec.buffer
        assert buffer is not None
        rec.seen_seq = delta.seq
        if len(buffer) >= self.config.max_buffered_deltas_per_leaf:
            # Forget the buffer; the repair must then reflect this delta too.
            buffer.clear()
            rec.required = delta.seq + 1
            self.stats.buffer_overflows += 1
            return
        buffer.append((delta.leaf_seq, delta.seq, delta.flags, bytes(delta.payload)))

    def _mark_verified(self, rec: _Leaf) -> None:
        if rec.stale:
            self._stale_count -= 1
            rec.stale = False
            rec.buffer = None
        else:
            self._untrack(rec)
        rec.checked = self._gap_count
        self._track(rec)

    def _remove(self, leaf_id: int, rec: _Leaf) -> None:
        if rec.stale:
            self._stale_count -= 1
        else:
            self._untrack(rec)
        del self.leaves[leaf_id]
        self._deleted[leaf_id] = max(self._deleted.get(leaf_id, 0), rec.leaf_seq)
        if rec.value is not _ABSENT:
            self.updates.append((leaf_id, DELETED, None, None))

    # ------------------------------------------------------------------ summaries

    def _on_touched(self, touched: Touched, now: float) -> None:
        """Extend the chain of consecutive summaries; resolve the gaps it covers."""
        self.stats.touched_summaries += 1
        if self._chain_from <= touched.first_seq and touched.end_seq <= self._chain_to:
            return  # a duplicate (or a window already in the chain)
        if (touched.first_seq == self._chain_to and self._unresolved
                and len(self._chain) < _MAX_CHAIN):
            self._chain.update(touched.entries)
            self._chain_to = touched.end_seq
        else:
            # A new chain; with no gap to resolve, the latest window is all it needs.
            self._chain = dict(touched.entries)
            self._chain_from, self._chain_to = touched.first_seq, touched.end_seq
        if self._unresolved:
            covered = [index for index, (first, end) in self._unresolved.items()
                       if first >= self._chain_from and end <= self._chain_to]
            if covered:
                self._resolve(covered, now)

    def _resolve(self, covered: list[int], now: float) -> None:
        """The chain names every leaf the covered gaps may have touched: act on exactly
        those; every other leaf is thereby proven untouched by them, at once."""
        end = self._chain_to
        leaves = self.leaves
        for leaf_id, listed in self._chain.items():
            rec = leaves.get(leaf_id)
            if rec is None:
                if listed > self._deleted.get(leaf_id, 0):
                    # Created (or changed) in a gap and never seen: wait for its snapshot.
                    self._new_unknown_leaf(leaf_id, required=end, seen_seq=end - 1)
            elif rec.stale:
                rec.required = max(rec.required, end)  # its repair must cover the gaps
            elif rec.leaf_seq >= listed:
                # It holds the publisher's change `listed`: current as of `end`.
                if rec.checked != self._gap_count:
                    self._mark_verified(rec)
            else:
                self._make_stale(rec, leaf_id, required=end, now=now)
        for index in covered:
            del self._unresolved[index]
        self.stats.gaps_resolved += len(covered)
        self._set_max_unresolved(max(self._unresolved, default=-1))
        if not self._unresolved and self._saved_coverage is not None:
            # Every gap since the coverage was set aside is resolved, and the CREATEs they
            # hid are now unknown stale leaves: what was known of the leaf set holds again.
            coverage, coverage_from, known = self._saved_coverage
            for lo, hi in self._coverage.ranges.items():
                coverage.add(lo, hi)
            self._coverage, self._coverage_from = coverage, coverage_from
            self._leaf_set_known = known or coverage.complete
            self._saved_coverage = None

    def _set_max_unresolved(self, value: int) -> None:
        if value != self._max_unresolved:
            self._max_unresolved = value
            self._suspects = sum(count for checked, count in self._checked_counts.items()
                                 if checked <= value)

    def _forget_irrelevant_gaps(self) -> None:
        """Drop unresolved gaps no leaf is suspect for any more (all proven one by one).

        The CREATEs such a gap may have hidden stay unknown, so the coverage set aside
        for a summary to restore is dropped as well.
        """
        lowest = min(self._checked_counts, default=self._gap_count)
        stale = [index for index in self._unresolved if index < lowest]
        if stale:
            for index in stale:
                del self._unresolved[index]
            self._saved_coverage = None
            self._set_max_unresolved(max(self._unresolved, default=-1))

    # ------------------------------------------------------------------ snapshots

    def _on_snapshot(self, snap: Snapshot, now: float) -> None:
        self.stats.snapshots += 1
        payload: memoryview | bytes = snap.payload
        if snap.total_length != len(payload):
            assembled = self._reassemble(snap)
            if assembled is None:
                return
            payload = assembled
        self._publisher_leaf_count = snap.cycle_count
        as_of = snap.as_of_seq
        leaf_id = snap.leaf_id
        last = snap.flags & SnapshotFlag.LAST
        # The range assertions: no leaf in [range_start, leaf_id) (nor above it if LAST).
        if self.leaves:
            self._assert_absent(snap.range_start, leaf_id, as_of, inclusive_hi=False)
            if last and leaf_id < _MAX_ID:
                self._assert_absent(leaf_id + 1, _MAX_ID, as_of, inclusive_hi=True)
        if not self._leaf_set_known and as_of >= self._coverage_from:
            self._coverage.add(snap.range_start, _MAX_ID if last else leaf_id)
            if self._coverage.complete:
                self._leaf_set_known = True
        if snap.flags & SnapshotFlag.DELETED:
            rec = self.leaves.get(leaf_id)
            if rec is not None and rec.seen_seq < as_of:
                self.stats.inferred_deletes += 1
                self._remove(leaf_id, rec)
            return
        rec = self.leaves.get(leaf_id)
        gaps = self._gap_count
        if rec is None:
            if self._deleted.get(leaf_id, -1) >= snap.leaf_seq:
                return  # older than a delete we applied
            if as_of < max(self.base, self._last_gap_end):
                return  # changes after as_of may have been lost: not provably current
            value = self.model.decode_leaf(memoryview(payload))
            rec = self.leaves[leaf_id] = _Leaf(value, snap.leaf_seq, gaps, as_of - 1)
            self._track(rec)
            self._deleted.pop(leaf_id, None)
            self.stats.snapshots_used += 1
            self.stats.installs += 1
            self.updates.append((leaf_id, REPLACED, value, None))
            return
        if not rec.stale:
            if not self._is_unverified(rec) or as_of < self._last_gap_end:
                return  # verified leaves ignore snapshots; too old to prove anything
            if snap.leaf_seq == rec.leaf_seq:
                self._mark_verified(rec)
                self.stats.suspects_proven += 1
            elif snap.leaf_seq > rec.leaf_seq:
                self._mark_verified(rec)
                rec.value = self.model.decode_leaf(memoryview(payload))
                rec.leaf_seq = snap.leaf_seq
                rec.seen_seq = max(rec.seen_seq, as_of - 1)
                self.stats.snapshots_used += 1
                self.updates.append((leaf_id, REPLACED, rec.value, None))
            return
        # A stale leaf: repair it if this snapshot reflects all it missed and chains with
        # the deltas it buffered since.
        if as_of < rec.required or (rec.checked != gaps and as_of < self._last_gap_end):
            return
        buffer = rec.buffer or []
        chain = [item for item in buffer if item[0] > snap.leaf_seq]
        next_leaf_seq = snap.leaf_seq + 1
        for item in chain:
            if item[0] != next_leaf_seq:
                return  # a change between the snapshot and the buffer is missing
            next_leaf_seq += 1
        model = self.model
        value = model.decode_leaf(memoryview(payload))
        for _, _, _, delta_payload in chain:
            value = model.apply(value, model.decode_delta(memoryview(delta_payload)))
        announced = rec.value is not _ABSENT
        self._mark_verified(rec)
        rec.value = value
        rec.leaf_seq = next_leaf_seq - 1
        rec.seen_seq = max(rec.seen_seq, as_of - 1)
        self.stats.snapshots_used += 1
        self.updates.append((leaf_id, REPLACED, value, None))
        if announced:
            self.stats.repairs += 1
            self._event(Status.LEAF_REPAIRED, now, leaf_id=leaf_id)
        else:
            self.stats.installs += 1

    def _assert_absent(self, lo: int, hi: int, as_of: int, *, inclusive_hi: bool) -> None:
        if lo > hi or (lo == hi and not inclusive_hi):
            return
        doomed = [
            leaf_id
            for leaf_id in self.leaves.irange(lo, hi, inclusive=(True, inclusive_hi))
            if self.leaves[leaf_id].seen_seq < as_of
        ]
        for leaf_id in doomed:
            self.stats.inferred_deletes += 1
            self._remove(leaf_id, self.leaves[leaf_id])

    def _reassemble(self, snap: Snapshot) -> bytes | None:
        if snap.total_length > self.config.max_snapshot_bytes:
            self.stats.oversize_snapshots += 1
            return None
        key = (snap.leaf_seq, snap.as_of_seq)
        state = self._reassembly.get(snap.leaf_id)
        if state is None or state.key != key or len(state.buffer) != snap.total_length:
            if state is None and len(self._reassembly) >= self.config.max_reassemblies:
                del self._reassembly[next(iter(self._reassembly))]
            state = _Reassembly(key, snap.total_length)
            self._reassembly[snap.leaf_id] = state
        offset = snap.fragment_offset
        if offset in state.offsets:
            return None
        size = len(snap.payload)
        state.buffer[offset : offset + size] = snap.payload
        state.offsets.add(offset)
        state.received += size
        if state.received < snap.total_length:
            return None
        del self._reassembly[snap.leaf_id]
        return bytes(state.buffer)

    # ------------------------------------------------------------------ status

    def _on_end_of_session(self, now: float) -> None:
        if not self.ended:
            self.ended = True
            self._event(Status.SESSION_ENDED, now, session_id=self.session_id)

    def _update_synced(self, now: float) -> None:
        if self._unresolved and self._counts_changed:
            # Only a leaf leaving its `checked` count can make a gap irrelevant.
            self._counts_changed = False
            self._forget_irrelevant_gaps()
        synced = (self._leaf_set_known and self.unverified == 0 and not self.silent
                  and not self.ended and self.session_id is not None)
        if synced != self.synced:
            self.synced = synced
            self._event(Status.SYNCED if synced else Status.UNSYNCED, now,
                        session_id=self.session_id)

    def _event(self, kind: Status, now: float, **fields: Any) -> None:
        self.events.append(StatusEvent(kind, now, **fields))
