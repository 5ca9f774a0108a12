"""The subscriber's protocol logic, without sockets, threads or clocks (sans-I/O).

Rule 1 (after h11): everything that decides what the replica holds and whether it can be
trusted lives here. :class:`SubscriberCore` is driven by two calls that take the current
time, :meth:`~SubscriberCore.receive` (one datagram's bytes) and
:meth:`~SubscriberCore.poll` (timers), and reports through two lists it appends to:
``updates`` (plain tuples ``(leaf_id, kind, leaf, delta)``) and ``events``
(:class:`~grapevine.StatusEvent`). Remote bad data never raises: it is counted.

The algorithm is SPEC §12. Its mechanisms each live in their own module, with their own
``_check()``: the reorder buffer (:mod:`._reorder`), the gap ledger and summary chain
(:mod:`._gaps`), leaf-id coverage (:mod:`._coverage`) and snapshot reassembly
(:mod:`._reassembly`). This module holds the leaves and the rules that tie them together.

**Never wrong, never stuck.** No datagram is believed on its own word where the stream can
contradict it, and every belief is checked again by later evidence:

* a sequence jump moves the stream only once two datagrams confirm it (``_reorder``), and a
  stream position that every datagram of the session stays behind for the restart grace is
  distrusted (a resync);
* a DELTA at a new stream position must carry a new ``leaf_seq`` for its leaf; a datagram
  whose new DELTAs all contradict the leaves is not of this stream position and is dropped;
* every snapshot of a fresh leaf *verifies* it (same ``leaf_seq``: same encoding), and
  absence claims never remove a fresh leaf on one claim: it goes stale, and only a later
  claim removes it; a snapshot that contradicts a deletion or the known leaf set wins over
  the older evidence;
* a payload the model rejects makes its leaf stale (repaired by the cycle), never an
  exception; END_OF_SESSION followed by more data of the session is not final.

So within a bounded time after the last bad datagram (SPEC §12(l)) the replica is equal and
synced again, whatever that datagram said.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from itertools import compress
from operator import itemgetter, not_
from typing import Any, Generic

from sortedcontainers import SortedDict

from . import wire
from ._coverage import Coverage
from ._errors import ConfigError, DecodeError, UnknownLeafError
from ._gaps import GapLedger, TouchedChain
from ._reassembly import Reassembler
from ._reorder import ReorderBuffer
from ._retransmit import RepairRequester
from ._shedding import Shedder
from ._stream_id import check_stream_id
from .auth import KeyRing, ReplayGuard, Verdict, Verifier
from .codec import (
    Decoded,
    Delta,
    EndOfSession,
    Heartbeat,
    Snapshot,
    Touched,
    _decode_datagram_fast,
    decode_datagram,
)
from .events import Status, StatusEvent, UpdateKind
from .model import DeltaT, LeafModel, LeafT
from .wire import DeltaFlag, SnapshotFlag

__all__ = [
    "Status",
    "StatusEvent",
    "SubscriberConfig",
    "SubscriberCore",
    "SubscriberCounters",
    "UpdateKind",
]

_MAX_ID = wire.MAX_LEAF_ID
_ABSENT: Any = object()  # value of a leaf known to exist but not yet installed
_RETIRED_SESSIONS = 16
# Heartbeat intervals a receiver will learn from the stream: a forged interval can neither
# make every pause look like a restart nor hide silence for long.
_MIN_INTERVAL_S, _MAX_INTERVAL_S = 0.05, 30.0
# Flag bits as plain ints: ``int & IntFlag`` goes through the enum's ``__rand__`` and
# builds an enum member (about a microsecond), once per DELTA off the hot path.
_CREATE, _DELETE = int(DeltaFlag.CREATE), int(DeltaFlag.DELETE)
_CREATE_OR_DELETE = _CREATE | _DELETE  # other DELTA flag bits are reserved
_SNAPSHOT_LAST, _SNAPSHOT_DELETED = int(SnapshotFlag.LAST), int(SnapshotFlag.DELETED)
_LAG_JUMP_S = 1.0  # a delay this far below the floor needs a second datagram to count
_LAG_WINDOW_S = 30.0  # the lag floor is the least delay seen over the last one or two
_FULL_CHECK_EVERY = 8  # verifications of unchanged leaves: one in this many re-encodes

CHANGED, REPLACED, DELETED = UpdateKind.CHANGED, UpdateKind.REPLACED, UpdateKind.DELETED
_new_tuple = tuple.__new__
_buffered_seq = itemgetter(1)  # the stream sequence of a buffered DELTA
_delta_leaf_id = itemgetter(1)  # the leaf_id of a DELTA (a Delta, or its fields' tuple)


def _as_delta(message: tuple[Any, ...]) -> Delta:
    """A DELTA as :class:`Delta`: the receive path's decoder gives plain tuples of the
    same fields (codec._decode_datagram_fast); the slow paths read them by name."""
    return message if type(message) is Delta else _new_tuple(Delta, message)


@dataclass(frozen=True)
class SubscriberConfig:
    """Subscriber tuning. Times are seconds of the clock the caller passes. The guide
    (docs/guide.md, "Tuning") weighs each knob with measured figures."""

    stream_id: int = 0
    """Which stream to follow among those sharing the group and port."""
    reorder_window_s: float = 0.02
    """How long a hole in the stream may wait for a late datagram before it is a gap.
    Larger tolerates more reordering; smaller reports loss (and starts repair) sooner."""
    reorder_window_datagrams: int = 512
    """Datagrams held ahead of a hole at most; beyond it the hole becomes a gap at once.
    It must cover what arrives while a retransmission is on its way: at 5,000 datagrams/s
    (100k deltas/s) 512 is about 100 ms (at most ~0.7 MB held). It was 64, about 13 ms at
    that rate: a loaded machine's answer came too late, and the hole became a gap."""
    silence_timeout_s: float | None = None
    """Nothing heard for this long: SILENT and unsynced. None: 3 heartbeat intervals (as
    the publisher announces them)."""
    restart_grace_s: float | None = None
    """How long the followed session must be silent before another session may replace it
    (a restart), and how long the whole stream may stay behind a position before a resync.
    None: 2 heartbeat intervals."""
    max_buffered_deltas_per_leaf: int = 4096
    """Deltas kept for a stale leaf until its repairing snapshot; past it they are dropped
    (``buffer_overflows``) and the repair waits for a later snapshot."""
    max_snapshot_bytes: int = 64 << 20
    """Largest leaf snapshot reassembled, bytes (``oversize_snapshots`` beyond)."""
    max_reassemblies: int = 256
    """Snapshots reassembled at once (fragments of large leaves)."""
    max_reassembly_bytes: int = 64 << 20
    """Bytes held by all partial snapshots together."""
    max_deleted_remembered: int = 1 << 16
    """Deleted leaves whose last ``leaf_seq`` is remembered, to refuse stale resurrections."""
    lag_warning_s: float | None = 1.0
    """LAGGING when datagrams arrive this much later than the promptest recent ones;
    CAUGHT_UP under half of it. None: no lag events."""
    keys: KeyRing | None = None
    """Accept only datagrams signed with one of these keys (SPEC §9); None: no checking."""
    replay_window_s: float = 2.0
    """With keys: a datagram is accepted once, and not if its send time is more than this
    much older than the newest accepted of its session (SPEC §9, replay)."""
    retransmit: bool = True
    """Ask for the datagrams of a hole to be sent again (SPEC §15) before declaring it a
    gap: a hole repaired in time leaves no leaf stale. False: the snapshot cycle repairs."""
    retransmit_wait_s: float = 0.06
    """How long a hole may wait for retransmission before it is a gap (then the snapshot
    cycle repairs what it touched). Deltas behind a hole wait too: this bounds the delay."""
    retransmit_delay_s: float = 0.001
    """The first request for a hole goes out after a random delay up to this, so the many
    receivers that lost the same datagram do not all ask at the same instant."""
    retransmit_timeout_s: float = 0.01
    """A request unanswered for about this long is repeated (the interval doubles, with
    random jitter of ±50%), up to ``retransmit_attempts`` requests."""
    retransmit_attempts: int = 3
    """Requests per hole before giving up on retransmission."""
    retransmit_max_deltas: int = 8192
    """Holes of more DELTAs than this are not asked for: the snapshot cycle is cheaper."""

    def __post_init__(self) -> None:
        check_stream_id(self.stream_id)
        if self.keys is not None and not isinstance(self.keys, KeyRing):
            raise ConfigError(f"keys must be a grapevine.KeyRing, not {self.keys!r}")
        if not 0 < self.replay_window_s <= 3600:
            raise ConfigError("replay_window_s must be between 0 and 3600 seconds")
        if self.reorder_window_s < 0 or self.reorder_window_datagrams < 2:
            raise ConfigError("reorder window must be >= 0 s and >= 2 datagrams")
        if not (0 <= self.retransmit_wait_s <= 10 and 0 <= self.retransmit_delay_s <= 1
                and 0 < self.retransmit_timeout_s <= 10 and self.retransmit_attempts >= 1
                and self.retransmit_max_deltas >= 1):
            raise ConfigError("retransmit_wait_s must be in 0..10 s, retransmit_delay_s in "
                              "0..1 s, retransmit_timeout_s in (0, 10] s, and "
                              "retransmit_attempts and retransmit_max_deltas positive")
        for name in ("silence_timeout_s", "restart_grace_s", "lag_warning_s"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigError(f"{name} must be positive")
        if min(self.max_buffered_deltas_per_leaf, self.max_snapshot_bytes,
               self.max_reassemblies, self.max_reassembly_bytes,
               self.max_deleted_remembered) < 1:
            raise ConfigError("buffer limits must be positive")


@dataclass
class SubscriberCounters:
    """Counters (plain ints, readable from any thread)."""

    datagrams: int = 0
    malformed: int = 0
    foreign_stream: int = 0
    foreign_session: int = 0
    duplicate_datagrams: int = 0
    reordered_datagrams: int = 0
    unconfirmed_datagrams: int = 0  # held ahead of a hole, never confirmed: dropped
    inconsistent_datagrams: int = 0  # new DELTAs that all contradicted the leaves: dropped
    deltas: int = 0
    late_deltas: int = 0  # behind the position, yet a held leaf's next change: applied
    duplicate_deltas: int = 0
    snapshots: int = 0
    snapshots_used: int = 0  # snapshots that installed, repaired or proved a leaf
    snapshots_verified: int = 0  # snapshots that matched a fresh leaf byte for byte
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
    bad_fragments: int = 0  # reassemblies dropped: overlapping fragments disagreed
    buffer_overflows: int = 0
    shed_deltas: int = 0  # DELTAs of STALE leaves not buffered because of overload
    leaves_shed: int = 0  # fresh leaves made STALE on purpose: the receive queue was filling
    repairs_deferred: int = 0  # repairs put off while overloaded (the queue not draining)
    bad_payloads: int = 0  # payloads the model rejected (decode or apply raised)
    divergences: int = 0  # evidence contradicted what the replica held as fresh
    census_mismatches: int = 0  # a snapshot's leaf count contradicted a complete coverage
    unauthenticated: int = 0  # with keys: datagrams without the AUTH trailer, dropped
    unknown_keys: int = 0  # with keys: signed with a key id not in the ring, dropped
    bad_tags: int = 0  # with keys: the tag did not verify (forged or corrupted), dropped
    replayed: int = 0  # with keys: seen before, or older than the replay window, dropped
    resyncs: int = 0  # the whole state was distrusted and rebuilt (resync events)
    retransmit_requests: int = 0  # ranges asked for again (SPEC §15)
    retransmit_unavailable: int = 0  # UNAVAILABLE answers: those holes fall back to snapshots
    retransmit_refused: int = 0  # retransmission packets dropped: malformed, foreign, unsigned


class _Leaf:
    """One leaf's replica record."""

    __slots__ = ("buffer", "checked", "claimed_by", "leaf_seq", "required", "seen_seq", "shed_at",
                 "stale", "value", "verified")

    def __init__(self, value: Any, leaf_seq: int, checked: int, seen_seq: int) -> None:
        self.value = value
        self.leaf_seq = leaf_seq  # last change applied (0: none known)
        self.checked = checked  # gaps this leaf is verified against (see _gaps)
        self.seen_seq = seen_seq  # stream point at which the leaf is known to exist
        self.stale = False
        self.required = 0  # a repairing snapshot needs as_of_seq >= this
        # Deltas held while stale: (leaf_seq, seq, flags, payload), in stream order.
        self.buffer: list[tuple[int, int, int, bytes]] | None = None
        # (leaf_seq, hash of the encoding) last found equal to the publisher's snapshot.
        self.verified: tuple[int, int] | None = None
        # The source (datagram sequence, cycle_id, cycle_position) of the absence claim that
        # made this FRESH leaf stale: only a claim from another source may remove it.
        self.claimed_by: tuple[int, int, int] | None = None
        # Shed (made STALE by choice, SubscriberCore._shed) while exact, when the session
        # had this many gaps; None otherwise. Until another gap, it missed nothing: no
        # DELETE either, so an absence claim alone does not remove it (_assert_absent).
        self.shed_at: int | None = None


class SubscriberCore(Generic[LeafT, DeltaT]):
    """Sequencing, gap detection, snapshot merge and sync state for one stream."""

    def __init__(self, model: LeafModel[LeafT, DeltaT],
                 config: SubscriberConfig | None = None) -> None:
        if not isinstance(model, LeafModel):
            raise ConfigError(f"model {model!r} does not implement grapevine.LeafModel")
        self.model = model
        self.config = config or SubscriberConfig()
        self.stats = SubscriberCounters()
        # (leaf_id, kind, value, delta, sequence, send_time_ns): see grapevine.events.Update
        self.updates: list[tuple[int, UpdateKind, Any, Any, int, int]] = []
        self._send_time_ns = 0  # publisher clock of the datagram being processed (0: none)
        self.events: list[StatusEvent] = []
        # Ranges (first_seq, end_seq) of the current session to ask a retransmission
        # server for; the runtime sends them (SPEC §15).
        self.requests: list[tuple[int, int]] = []
        self.leaves: SortedDict[int, _Leaf] = SortedDict()
        self.session_id: int | None = None
        self.synced = False
        self.silent = False
        self.heartbeat_interval_s = 0.5
        self.last_heard = 0.0
        self.last_error: DecodeError | None = None
        self.last_bad_payload: BaseException | None = None  # for the runtime's log
        self.last_rejected: Verdict | None = None  # the latest authentication failure
        self.last_distrust: StatusEvent | None = None  # the latest divergence or resync
        self.last_send_time_ns = 0  # publisher clock of the last datagram taken in order
        self.lag_s = 0.0
        self.lagging = False
        self._retired: list[int] = []
        self._verifications = 0
        self._behind_since: float | None = None  # first datagram behind the position
        # Whether the runtime reads too slowly: then leaves are shed, repairs wait for room
        # and STALE leaves keep no buffer (_buffer). Not per session: it is this process.
        self._shedder = Shedder()
        self._accepted = 0  # datagrams that passed the stream, key and session filters
        self._shedding = False  # the DELTA being processed arrived while overloaded
        keys = self.config.keys
        self._verifier = Verifier(keys) if keys is not None else None
        self._replay_guard = ReplayGuard(round(self.config.replay_window_s * 1e9))
        self._reset_session()

    # ------------------------------------------------------------------ public calls

    def receive(self, data: bytes | bytearray | memoryview, now: float) -> None:
        """Process one datagram received at ``now``. Never raises on bad remote data.

        It also runs the timers, so a caller need not :meth:`poll` after it.
        """
        self.stats.datagrams += 1
        verifier = self._verifier
        if verifier is not None and not self._authentic(verifier, data):
            self.poll(now)
            return
        try:
            # DELTAs may be plain tuples here (the Delta fields, in order): see _process.
            datagram = _decode_datagram_fast(data)
        except DecodeError as exc:
            self.stats.malformed += 1
            self.last_error = exc
            self.poll(now)
            return
        if datagram.stream_id != self.config.stream_id:
            self.stats.foreign_stream += 1
            self.poll(now)
            return
        if verifier is not None:
            # After the stream filter: other streams' clocks must not judge this one's.
            assert datagram.auth is not None
            if not self._replay_guard.accept(datagram.session_id, datagram.send_time_ns,
                                             datagram.auth.tag):
                self.stats.replayed += 1
                self.poll(now)
                return
        if datagram.session_id != self.session_id and not self._switch_session(datagram, now):
            self.stats.foreign_session += 1
            self.poll(now)
            return
        self.last_heard = now
        self._accepted += 1  # the stream's, whatever it holds (for _shedder)
        if self.silent:
            self.silent = False
            self._event(Status.RESUMED, now, session_id=self.session_id)
        if self.expected is None:
            self._anchor(datagram.sequence, now)
        sequence = datagram.sequence
        expected = self.expected
        assert expected is not None
        if sequence > expected:
            # A hole before this datagram: keep a private copy until the hole fills, or
            # until company confirms it and it becomes a gap.
            self._behind_since = None
            raw = bytes(data)
            messages = datagram.messages
            if not (messages and type(messages[0]) is tuple):
                # Payloads are views into the caller's buffer, which it reuses: decode the
                # copy. (Uniform DELTAs, as plain tuples, carry copies: keep them as they
                # are, which an overloaded subscriber behind a hole needs to keep up.)
                datagram = decode_datagram(raw)
            reorder = self._reorder
            evicted = reorder.evicted
            kept = reorder.hold(raw, datagram, now)
            if kept is True:
                self.stats.reordered_datagrams += 1
                # A held datagram farther ahead may have made room: dropped unconfirmed.
                self.stats.unconfirmed_datagrams += reorder.evicted - evicted
            elif kept is None:
                self.stats.duplicate_datagrams += 1
            else:
                self.stats.unconfirmed_datagrams += 1
        else:
            if sequence == expected:
                self._behind_since = None
            elif self._behind_since is None:
                self._behind_since = now
            elif now - self._behind_since >= self.restart_grace_s:
                # Every datagram of the session has been behind our position for the
                # restart grace: the position came from datagrams the stream never sent.
                self._resync(now, f"the stream stayed behind sequence {expected} for "
                                  f"{now - self._behind_since:.3f} s")
                self._anchor(sequence, now)
            self._process(datagram, now)
            if self._reorder:
                self._drain(now)
        self._run_timers(now)

    def set_keys(self, keys: KeyRing) -> None:
        """Rotate keys: accept datagrams signed with any key of ``keys`` from now on."""
        if self._verifier is None:
            raise ConfigError("this subscriber does not verify: give SubscriberConfig(keys=...)")
        if not isinstance(keys, KeyRing):
            raise ConfigError(f"keys must be a grapevine.KeyRing, not {keys!r}")
        self._verifier.ring = keys

    def _authentic(self, verifier: Verifier, data: bytes | bytearray | memoryview) -> bool:
        verdict = verifier.check(data)
        if verdict is Verdict.ACCEPTED:
            return True
        stats = self.stats
        if verdict is Verdict.UNAUTHENTICATED:
            stats.unauthenticated += 1
        elif verdict is Verdict.UNKNOWN_KEY:
            stats.unknown_keys += 1
        else:
            stats.bad_tags += 1
        self.last_rejected = verdict
        return False

    def poll(self, now: float) -> None:
        """Run timers: expire reorder holes into gaps, detect publisher silence."""
        if (self.session_id is not None and not self.silent and not self.ended
                and now - self.last_heard >= self.silence_timeout_s):
            self.silent = True
            self._event(Status.SILENT, now, session_id=self.session_id)
        self._run_timers(now)

    def next_poll(self, now: float) -> float:
        """The latest time :meth:`poll` should run next."""
        deadline = now + max(self.silence_timeout_s / 4, 0.005)
        hole = self._reorder.next_deadline(self.restart_grace_s, self._gap_window())
        if hole is not None:
            deadline = min(deadline, hole)
        requester = self._requester
        if requester:
            due = requester.next_deadline()
            if due is not None:
                deadline = min(deadline, due)
        return deadline

    def retransmit_unavailable(self, session_id: int, first_seq: int, end_seq: int,
                               now: float, held_end: int | None = None) -> None:
        """A retransmission server does not hold ``[first_seq, end_seq)`` of
        ``session_id``: those holes become gaps without waiting (SPEC §15), unless
        ``held_end`` (the end of what it holds) says it has not received them yet."""
        if self._requester is not None and session_id == self.session_id:
            self.stats.retransmit_unavailable += 1
            self._requester.unavailable(first_seq, end_seq, held_end)
        self._run_timers(now)

    def overloaded(self, now: float) -> None:
        """The runtime reads too slowly (the kernel dropped datagrams for it): asking for
        more would feed the overload, so the holes open now become gaps at once and the
        snapshot cycle repairs them (issue 12: degrade, do not collapse). It is also a full
        receive queue for :meth:`backlog`.

        Not before the subscriber has been synced in the session: a joiner's load is the
        snapshots it installs, the DELTAs it lost are few and cheap to ask for, and a gap
        would restart its gathering of the leaf set, a whole cycle, behind which it drops
        again (10,000 books: joins of 1.9-7.6 s with gaps; 1.4-1.7 s asking)."""
        requester = self._requester
        if requester and self._was_synced:
            for first, end in self._reorder.missing(self.expected or 0):
                requester.unavailable(first, end)
        self.backlog(1.0, now)
        if requester:
            self._run_timers(now)

    def backlog(self, fill: float, now: float) -> None:
        """The runtime's receive queue is ``fill`` full (0 to 1) at ``now``: it reports
        this when it reads a batch without emptying the queue. While the queue fills, some
        fresh leaves go STALE on purpose (the highest leaf ids first), so that those kept
        are followed exactly instead of all going STALE when the kernel drops datagrams;
        while overloaded, repairs wait until the queue drains, STALE leaves keep no buffer,
        and everything resumes by itself once the reports stop (SPEC §12(c), "Shedding
        leaves"; the policy is grapevine._shedding). Only once synced in the session: a
        subscriber still building its replica has no leaves worth shedding, and its load
        is the snapshots it installs."""
        if not self._was_synced and fill < 1.0:
            return  # still building its replica (see _reset_session)
        if self._shedder.report(fill, now, self.stats.datagrams, self._accepted) \
                and self._was_synced:
            self._shed(now)

    def _shed(self, now: float) -> None:
        """Make STALE a share of the leaves that are not: the highest leaf ids first."""
        held = self.leaves
        count = self._shedder.share(len(held) - len(self._stale))
        if not count or self.expected is None:
            return
        required = self.expected  # a repair must reflect every DELTA taken so far
        chosen = []
        for leaf_id in reversed(held):
            if not held[leaf_id].stale:
                chosen.append(leaf_id)
                if len(chosen) == count:
                    break
        gaps = self._gaps
        for leaf_id in chosen:
            rec = held[leaf_id]
            exact = not gaps.is_suspect(rec.checked)
            self._make_stale(rec, leaf_id, required=required, now=now,
                             reason="shed: the receive queue is filling")
            rec.shed_at = gaps.count if exact else None
        self.stats.leaves_shed += len(chosen)
        self._update_synced(now)

    def _gap_window(self) -> float:
        """How long a confirmed hole waits before it is a gap: longer while retransmission
        may still fill it."""
        requester = self._requester
        if requester and requester.waiting():
            return max(self.config.reorder_window_s, self.config.retransmit_wait_s)
        return self.config.reorder_window_s

    def resync(self, now: float, reason: str = "requested") -> None:
        """Distrust the whole replica and rebuild it from the stream (the session stays).

        Every held leaf is reported DELETED and comes back from the snapshot cycle; the
        replica is SYNCED again after one complete cycle (two for a stream of one leaf with
        no DELTA between its snapshots: SPEC §12(g)).
        """
        self._resync(now, reason)
        self._update_synced(now)

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
        return len(self._stale) + self._gaps.suspects

    @property
    def stale_count(self) -> int:
        """Leaves known to have missed changes. O(1)."""
        return len(self._stale)

    def is_fresh(self, leaf_id: int) -> bool:
        """True if the leaf is installed, not stale and verified against every gap."""
        rec = self.leaves.get(leaf_id)
        return (rec is not None and rec.value is not _ABSENT and not rec.stale
                and not self._gaps.is_suspect(rec.checked))

    def stale_leaves(self) -> list[int]:
        """Leaves known to have missed changes, waiting for a repairing snapshot. O(n)."""
        return [leaf_id for leaf_id, rec in self.leaves.items() if rec.stale]

    def suspect_leaves(self) -> list[int]:
        """Leaves a gap may have touched, not yet proven either way. O(n)."""
        is_suspect = self._gaps.is_suspect
        return [leaf_id for leaf_id, rec in self.leaves.items()
                if not rec.stale and is_suspect(rec.checked)]

    def values(self) -> dict[int, Any]:
        """A new dict of every installed leaf's value (fresh or not), by leaf id."""
        return {leaf_id: rec.value for leaf_id, rec in self.leaves.items()
                if rec.value is not _ABSENT}

    def get(self, leaf_id: int) -> Any:
        """The leaf's current value; KeyError if not installed."""
        rec = self.leaves.get(leaf_id)
        if rec is None or rec.value is _ABSENT:
            raise UnknownLeafError(f"leaf {leaf_id} is not held")
        return rec.value

    def progress(self) -> tuple[int, int]:
        """(leaves installed and fresh, leaves the publisher has) for a sync progress bar."""
        fresh = len(self.leaves) - self.unverified
        return fresh, max(self._publisher_leaf_count, fresh)

    def _check(self) -> None:
        """Assert the bookkeeping invariants (tests call this after every datagram)."""
        stale = [rec for rec in self.leaves.values() if rec.stale]
        assert self._stale == set(stale), (len(self._stale), len(stale))
        assert self._bulk_shed_upto <= (self.expected or 0)
        self._gaps._check([rec.checked for rec in self.leaves.values() if not rec.stale])
        expected = self.expected
        for rec in self.leaves.values():
            assert (rec.buffer is not None) == rec.stale
            assert rec.shed_at is None or rec.stale
            assert rec.value is not _ABSENT or rec.stale
            if rec.stale and expected is not None:
                # A repair must always be possible from a snapshot of the current position.
                assert rec.required <= expected, (rec.required, expected)
            if rec.buffer:
                assert len(rec.buffer) <= self.config.max_buffered_deltas_per_leaf
                seqs = [item[1] for item in rec.buffer]
                assert seqs == sorted(set(seqs)), "the buffer is in stream order"
        self._reorder._check(expected)
        self._coverage._check()
        self._reassembler._check()
        assert len(self._gone) <= self.config.max_deleted_remembered
        if self.synced:
            assert self._leaf_set_known
            assert self.unverified == 0
            assert not self.ended
            assert not self.silent

    # ------------------------------------------------------------------ sessions

    def _reset_session(self) -> None:
        config = self.config
        # Synced at some point of this session: a whole replica, which shedding protects.
        # Before that (a join, a rebuild) the snapshots being installed are the load, and
        # shedding leaves cannot lighten it: it would only put off the join (backlog()).
        self._was_synced = False
        self.expected: int | None = None
        self.base = 0
        self.ended = False
        self._ended_at = 0  # header sequence of the END_OF_SESSION taken
        self._behind_since = None
        self._reorder = ReorderBuffer(window_s=config.reorder_window_s,
                                      window_datagrams=config.reorder_window_datagrams)
        self._requester: RepairRequester | None = None
        if config.retransmit:
            self._requester = RepairRequester(
                delay_s=config.retransmit_delay_s, timeout_s=config.retransmit_timeout_s,
                attempts=config.retransmit_attempts, max_deltas=config.retransmit_max_deltas)
        self._gaps = GapLedger()
        self._chain = TouchedChain()
        # Leaf-set coverage set aside at the first unresolved gap, restored if summaries
        # resolve every gap since (None once a gap is given up on).
        self._saved_coverage: tuple[Coverage, int, bool] | None = None
        self._stale: set[_Leaf] = set()  # the STALE records (their count is O(1))
        # Overloaded, whole datagrams' DELTAs of STALE leaves are dropped in bulk, with no
        # per-DELTA record (see _process): every position before this one may have held
        # such a DELTA, so a repair must be as of this position or later (_repair).
        self._bulk_shed_upto = 0
        # The publisher's leaf count (cycle_count) in the last snapshot taken at the stream
        # position, if no CREATE, DELETE or gap came since: the leaf count the replica must
        # have at any later position until one does (_on_snapshot, _count_changes).
        self._census: int | None = None
        self._coverage = Coverage()
        self._coverage_from = 0
        self._leaf_set_known = False
        self._datagram_sequence = 0
        # Leaves known absent: leaf_id -> (leaf_seq they had, first sequence they are
        # absent at). Stops an older snapshot resurrecting them.
        self._gone: dict[int, tuple[int, int]] = {}
        self._reassembler = Reassembler(max_snapshot_bytes=config.max_snapshot_bytes,
                                        max_total_bytes=config.max_reassembly_bytes,
                                        max_partials=config.max_reassemblies)
        self._publisher_leaf_count = 0
        self._lag_floor = self._lag_floor_previous = float("inf")
        self._lag_candidate: float | None = None  # a far lower delay awaiting confirmation
        self._late_before_previous = False  # the previous datagram was over the threshold
        self._lag_window_start = 0.0

    def _anchor(self, sequence: int, now: float) -> None:
        self.base = self.expected = sequence
        self._coverage_from = sequence

    def _switch_session(self, datagram: Decoded, now: float) -> bool:
        new = datagram.session_id
        old = self.session_id
        if old is None:
            self.session_id = new
            self.last_heard = now
            self._event(Status.SESSION_STARTED, now, session_id=new)
            return True
        quiet = now - self.last_heard >= self.restart_grace_s
        # END_OF_SESSION lets a new session in at once; a session left before comes back
        # only after the followed one fell silent (a forged END_OF_SESSION and a forged
        # session must not lock the real one out for good).
        if not (quiet or (self.ended and new not in self._retired)):
            return False
        if old not in self._retired:
            self._retired.append(old)
            del self._retired[:-_RETIRED_SESSIONS]
        self._clear_replica()
        self._reset_session()
        self.session_id = new
        self.silent = False
        self.stats.restarts += 1
        self._event(Status.RESTARTED, now, session_id=new)
        return True

    def _position(self) -> int:
        """The sequence of the last delta the stream has passed (0: none)."""
        return self.expected - 1 if self.expected is not None else 0

    def _clear_replica(self) -> None:
        for leaf_id, rec in self.leaves.items():
            if rec.value is not _ABSENT:
                self.updates.append((leaf_id, DELETED, None, None, self._position(), 0))
        self.leaves.clear()

    def _resync(self, now: float, reason: str) -> None:
        self.stats.resyncs += 1
        self._clear_replica()
        self._reset_session()
        self._distrust(Status.RESYNC, now, reason)

    def _distrust(self, kind: Status, now: float, reason: str,
                  leaf_id: int | None = None) -> None:
        if kind is Status.LEAF_DIVERGED:
            self.stats.divergences += 1
        event = StatusEvent(kind, now, leaf_id=leaf_id, session_id=self.session_id,
                            reason=reason)
        self.last_distrust = event
        self.events.append(event)

    # ------------------------------------------------------------------ sequencing

    def _run_timers(self, now: float) -> None:
        self._send_time_ns = 0  # what timers change comes from no datagram
        reorder = self._reorder
        if reorder:
            dropped = reorder.drop_unconfirmed(now, self.restart_grace_s)
            if dropped:
                self.stats.unconfirmed_datagrams += dropped
            requester = self._requester
            if requester is not None and self.expected is not None:
                requester.update(reorder.missing(self.expected), now)
                due = requester.due(now)
                if due:
                    self.requests.extend(due)
                    self.stats.retransmit_requests += len(due)
            window = self._gap_window()
            end = reorder.gap_end(now, window)
            while end is not None:
                self._declare_gap(end, now)
                end = reorder.gap_end(now, window)
        elif self._requester:
            self._requester.clear()
        self._update_synced(now)

    def _drain(self, now: float) -> None:
        reorder = self._reorder
        drained = False
        while self.expected is not None:
            datagram = reorder.pop_ready(self.expected)
            if datagram is None:
                break
            self._process(datagram, now)
            drained = True
        if drained:
            reorder.restart_timer(now)

    def _declare_gap(self, end: int, now: float) -> None:
        first = self.expected
        assert first is not None
        assert end > first
        self._census = None  # the gap may hide CREATEs and DELETEs
        gaps = self._gaps
        if not gaps.unresolved:
            self._saved_coverage = (self._coverage, self._coverage_from, self._leaf_set_known)
        elif self._saved_coverage is not None:
            # Ranges gathered between unresolved gaps hold too if those gaps resolve.
            self._saved_coverage[0].merge(self._coverage)
        gaps.declare(first, end)
        self.expected = end
        self._behind_since = None
        self.stats.gaps += 1
        self.stats.missed_deltas += end - first
        # Every leaf may have been touched; the leaf set may have changed.
        self._coverage = Coverage()
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
        gaps = self._gaps.count
        duplicates = applied = 0
        consistent = False  # some new DELTA agreed with the leaves
        prechecked = False  # the whole datagram was judged (_contradicts_the_replica)
        if self.ended and datagram.sequence >= self._ended_at and not any(
                type(message) is EndOfSession for message in datagram.messages):
            # More data of a session that said it ended: the END_OF_SESSION was not final.
            self.ended = False
            self._event(Status.RESUMED, now, session_id=self.session_id,
                        reason="data after END_OF_SESSION")
        in_order = datagram.sequence >= expected
        first_new = expected
        shedding = self._shedding = now < self._shedder.overloaded_until
        shed = 0  # DELTAs of STALE leaves dropped in bulk
        send_time = self._send_time_ns = datagram.send_time_ns
        self._datagram_sequence = datagram.sequence  # the source of its snapshots' claims
        messages: list[Any] = datagram.messages  # a DELTA may be a plain tuple: see below
        bulk_end = 0
        if (shedding and in_order and self._stale and messages and type(messages[0]) is tuple
                and not len(self._reassembler)):
            # Overloaded, and a datagram of uniform DELTAs (all plain tuples, no flags: see
            # codec._decode_datagram_fast): those of STALE leaves are dropped in bulk, found
            # in C with no Python step per DELTA, since skipping them one by one costs half
            # as much as applying them. What the one-by-one path records per DELTA (the
            # repair must be as of a later position) is recorded once for all of them:
            # _bulk_shed_upto. Only leaves that are not STALE go through the loop below.
            stale = list(map(self._stale.__contains__,
                             map(leaves_get, map(_delta_leaf_id, messages))))
            skipped = stale.count(True)
            if skipped:
                messages = list(compress(messages, map(not_, stale)))
                bulk_end = datagram.sequence + len(stale)
                shed += skipped
                applied += skipped
        for message in messages:
            kind = type(message)
            # A DELTA is a plain tuple from the receive path's decoder, a Delta from the
            # reorder buffer's; the slow paths below take it as a Delta (_as_delta).
            if kind is tuple or kind is Delta:
                seq, leaf_id, leaf_seq, flags, payload = message
                if seq < expected:
                    if not self._late_delta(_as_delta(message), now):
                        duplicates += 1
                    continue
                rec = leaves_get(leaf_id)
                if (rec is not None and leaf_seq == rec.leaf_seq + 1 and not flags
                        and rec.checked == gaps and not rec.stale):
                    # Hot path, inlined: the next change of a verified leaf.
                    try:
                        change = decode_delta(payload)
                        value = rec.value = apply(rec.value, change)
                    except Exception as exc:  # noqa: BLE001 - the model rejected remote data
                        self._bad_delta(rec, leaf_id, seq, exc, now)
                    else:
                        rec.leaf_seq = leaf_seq
                        rec.seen_seq = seq
                        append_update((leaf_id, CHANGED, value, change, seq, send_time))
                    consistent = True
                else:
                    if not consistent and not prechecked:
                        # The first new DELTA off the hot path, none agreeing before it:
                        # judge the whole datagram before anything of it is applied.
                        prechecked = True
                        if self._contradicts_the_replica(datagram, seq):
                            # Not this stream position's DELTAs (a replayed or re-sequenced
                            # copy): drop the datagram, keep the position, leave no trace.
                            stats.inconsistent_datagrams += 1
                            self.expected = first_new
                            return
                    if rec is not None and rec.stale and not flags & _CREATE_OR_DELETE:
                        # Step (c) 5 without the slow path's detour: a STALE leaf buffers
                        # every DELTA but CREATE and DELETE (its leaf_seq judges nothing).
                        # (Overloaded, most such DELTAs were dropped in bulk above.)
                        self._buffer(rec, seq, leaf_id, leaf_seq, flags, payload)
                        expected = seq + 1
                        applied += 1
                        continue
                    self.expected = seq
                    delta = _as_delta(message)
                    verdict = self._on_delta_slow(rec, delta, now)
                    if verdict is False:
                        self._contradicted_leaf(leaf_id, delta, now)
                    consistent = consistent or verdict is True
                expected = seq + 1
                applied += 1
                continue
            self.expected = expected
            if kind is Snapshot:
                self._on_snapshot(message, now)
            elif kind is Heartbeat:
                stats.heartbeats += 1
                if message.interval_ms and in_order:
                    self.heartbeat_interval_s = min(max(message.interval_ms / 1000,
                                                        _MIN_INTERVAL_S), _MAX_INTERVAL_S)
            elif kind is Touched:
                self._on_touched(message, now)
            elif kind is EndOfSession:
                if in_order and not self.ended:
                    self.ended = True
                    self._ended_at = datagram.sequence
                    self._event(Status.SESSION_ENDED, now, session_id=self.session_id)
            else:
                stats.unknown_messages += 1
        if bulk_end:
            expected = max(expected, bulk_end)
            self._bulk_shed_upto = bulk_end
        self.expected = expected
        stats.deltas += applied
        stats.shed_deltas += shed
        if duplicates:
            stats.duplicate_deltas += duplicates
            if not applied:
                stats.duplicate_datagrams += 1
        if in_order and datagram.send_time_ns:
            self._measure_lag(datagram.send_time_ns, now)

    def _late_delta(self, delta: Delta, now: float) -> bool:
        """A DELTA behind the stream position that is the next change of a held leaf: the
        position passed it without it (reordered past a gap, or a forged DELTA took its
        sequence). Applying it is right whatever else the leaf missed; a leaf reported
        fresh that lacked it was wrong. True if it was used."""
        rec = self.leaves.get(delta.leaf_id)
        if (rec is None or rec.stale or delta.flags & _CREATE_OR_DELETE or rec.value is _ABSENT
                or delta.leaf_seq != rec.leaf_seq + 1):
            return False
        if not self._gaps.is_suspect(rec.checked):
            self._distrust(Status.LEAF_DIVERGED, now,
                           f"a late DELTA is the leaf's next change ({delta.leaf_seq})",
                           delta.leaf_id)
        try:
            change = self.model.decode_delta(delta.payload)  # type: ignore[arg-type]
            rec.value = self.model.apply(rec.value, change)
        except Exception as exc:  # noqa: BLE001 - the model rejected remote data
            self._bad_delta(rec, delta.leaf_id, delta.seq, exc, now)
            return True
        rec.leaf_seq = delta.leaf_seq
        rec.seen_seq = max(rec.seen_seq, delta.seq)
        self.stats.late_deltas += 1
        self.updates.append((delta.leaf_id, CHANGED, rec.value, change, delta.seq,
                             self._send_time_ns))
        return True

    def _contradicts_the_replica(self, datagram: Decoded, from_seq: int) -> bool:
        """True if some DELTA of ``datagram`` at or after ``from_seq`` contradicts a leaf
        and none agrees with one. Pure: judged on the state before any of them.

        A DELTA agrees if its leaf_seq is above the held leaf's (or the deletion's we
        remember), contradicts it if not; a STALE leaf's or an unknown leaf's judges
        nothing. It runs for every datagram whose DELTAs are all of STALE leaves (an
        overloaded subscriber that sheds leaves sees mostly those): it reads the tuples'
        fields by position, with no object per DELTA."""
        contradicted = False
        leaves_get = self.leaves.get
        gone_get = self._gone.get
        messages: list[Any] = datagram.messages  # a DELTA may be a plain tuple
        for message in messages:
            kind = type(message)
            # A DELTA's fields: (seq, leaf_id, leaf_seq, flags, payload).
            if (kind is tuple or kind is Delta) and message[0] >= from_seq:
                rec = leaves_get(message[1])
                if rec is not None:
                    if rec.stale:
                        continue
                    held_leaf_seq = rec.leaf_seq
                else:
                    gone = gone_get(message[1])
                    if gone is None:
                        continue
                    held_leaf_seq = gone[0]
                if message[2] > held_leaf_seq:
                    return False
                contradicted = True
        return contradicted

    # ------------------------------------------------------------------ deltas

    def _on_delta_slow(self, rec: _Leaf | None, delta: Delta, now: float) -> bool | None:
        """Apply a DELTA off the hot path. Returns True if its leaf_seq agreed with a held
        leaf, False if it contradicted one (a leaf_seq already seen, at a new stream
        position), None if there was nothing to compare with."""
        leaf_id = delta.leaf_id
        flags = delta.flags
        if rec is not None:
            # A stale leaf's own leaf_seq is not trusted to judge the stream: its deltas
            # are buffered and the repair sorts them out.
            if delta.leaf_seq <= rec.leaf_seq and not rec.stale:
                return False
        else:
            gone = self._gone.get(leaf_id)
            if gone is not None and delta.leaf_seq <= gone[0]:
                return False
        model = self.model
        if flags & _CREATE_OR_DELETE:
            self._census = None  # the publisher's leaf count may change here
        if flags & _DELETE:
            # The leaf does not exist after this delta, whatever we missed before it.
            self._forget(leaf_id, delta.leaf_seq, delta.seq + 1)
            if rec is None:
                return None
            self._remove(leaf_id, rec, delta.seq)
            return True
        if flags & _CREATE:
            # Applied to an empty leaf: complete on its own, whatever we missed before it.
            try:
                change = model.decode_delta(delta.payload)  # type: ignore[arg-type]
                value = model.apply(model.new_leaf(), change)
            except Exception as exc:  # noqa: BLE001 - the model rejected remote data
                if rec is None:
                    rec = self._new_unknown_leaf(leaf_id, required=delta.seq + 1,
                                                 seen_seq=delta.seq)
                self._bad_delta(rec, leaf_id, delta.seq, exc, now)
                return None
            self._gone.pop(leaf_id, None)
            if rec is None:
                rec = _Leaf(value, delta.leaf_seq, self._gaps.count, delta.seq)
                self.leaves[leaf_id] = rec
                self._gaps.track(rec.checked)
            else:
                self._mark_verified(rec, self._gaps.count)
                rec.value = value
                rec.leaf_seq = delta.leaf_seq
                rec.seen_seq = delta.seq
            self.updates.append((leaf_id, CHANGED, value, change, delta.seq, self._send_time_ns))
            return True
        if rec is None:
            # A change to a leaf we do not hold: it waits for a snapshot.
            rec = self._new_unknown_leaf(leaf_id, required=delta.seq, seen_seq=delta.seq)
            self._buffer(rec, *delta)
            return None
        if rec.stale:
            self._buffer(rec, *delta)
            return None
        if delta.leaf_seq == rec.leaf_seq + 1:
            # The next change of a suspect leaf proves it untouched by the gaps (or a
            # reserved flag bit we ignore): apply it as a normal change.
            if self._gaps.is_suspect(rec.checked):
                self.stats.suspects_proven += 1
            self._mark_verified(rec, self._gaps.count)
            try:
                change = model.decode_delta(delta.payload)  # type: ignore[arg-type]
                rec.value = model.apply(rec.value, change)
            except Exception as exc:  # noqa: BLE001 - the model rejected remote data
                self._bad_delta(rec, leaf_id, delta.seq, exc, now)
                return True
            rec.leaf_seq = delta.leaf_seq
            rec.seen_seq = delta.seq
            self.updates.append((leaf_id, CHANGED, rec.value, change, delta.seq,
                                 self._send_time_ns))
            return True
        # leaf_seq jumped: this leaf missed changes. A repair must reflect everything
        # before this delta.
        self._make_stale(rec, leaf_id, required=delta.seq, now=now)
        self._buffer(rec, *delta)
        return True

    def _contradicted_leaf(self, leaf_id: int, delta: Delta, now: float) -> None:
        """A DELTA at a new stream position repeats a leaf_seq the leaf already had, while
        other DELTAs of its datagram fit: the leaf's own record is what is wrong."""
        rec = self.leaves.get(leaf_id)
        if rec is None:
            # A remembered deletion the stream contradicts: forget it, take the DELTA.
            self._gone.pop(leaf_id, None)
            self._distrust(Status.LEAF_DIVERGED, now, "a DELTA contradicts its deletion",
                           leaf_id)
            self._on_delta_slow(None, delta, now)
            return
        self._distrust(Status.LEAF_DIVERGED, now,
                       f"a new DELTA repeats leaf_seq {delta.leaf_seq}", leaf_id)
        self._make_stale(rec, leaf_id, required=delta.seq + 1, now=now)

    def _bad_delta(self, rec: _Leaf, leaf_id: int, seq: int, exc: BaseException,
                   now: float) -> None:
        """The model rejected a DELTA: the leaf's value is unknown from here on; a repair
        must reflect this delta too."""
        self.stats.bad_payloads += 1
        self.last_bad_payload = exc
        if rec.stale:
            assert rec.buffer is not None
            rec.buffer.clear()
            rec.required = max(rec.required, seq + 1)
        else:
            self._make_stale(rec, leaf_id, required=seq + 1, now=now)

    def _new_unknown_leaf(self, leaf_id: int, *, required: int, seen_seq: int) -> _Leaf:
        """A leaf known to exist whose value waits for a snapshot (stale, not shown)."""
        rec = _Leaf(_ABSENT, 0, self._gaps.count, seen_seq)
        rec.stale, rec.required, rec.buffer = True, required, []
        self.leaves[leaf_id] = rec
        self._stale.add(rec)
        return rec

    def _make_stale(self, rec: _Leaf, leaf_id: int, *, required: int, now: float,
                    reason: str | None = None) -> None:
        """A held leaf must be repaired by a snapshot as of ``required`` or later."""
        rec.shed_at = None  # evidence against it, if it was shed: no longer known exact
        if rec.stale:
            rec.required = max(rec.required, required)
            return
        self._gaps.untrack(rec.checked)
        self._stale.add(rec)
        rec.stale, rec.required, rec.buffer = True, required, []
        if rec.value is not _ABSENT:
            self.stats.leaves_made_stale += 1
            self._event(Status.LEAF_STALE, now, leaf_id=leaf_id, reason=reason)

    def _buffer(self, rec: _Leaf, seq: int, leaf_id: int, leaf_seq: int, flags: int,
                payload: memoryview | bytes) -> None:
        """Keep a DELTA of a STALE leaf for its repair (SPEC §12(c), the buffer).

        While the runtime reads too slowly (:meth:`overloaded`), it is not kept: the buffer
        is emptied and the repair must reflect this DELTA too, as when the buffer is full.
        That is always safe (a repair then needs a later snapshot, never a wrong one), and
        it costs no repair time on an in-order stream: a buffered DELTA at sequence q only
        serves a snapshot with ``as_of_seq`` <= q processed after it, and the publisher
        queues a snapshot ahead of every DELTA published after it was encoded. The
        exception is a snapshot in fragments, whose reassembly completes after such
        DELTAs: while one is in progress for the leaf, its DELTAs are buffered still."""
        buffer = rec.buffer
        assert buffer is not None
        if seq > rec.seen_seq:
            rec.seen_seq = seq
        if self._shedding and not self._reassembler.in_progress(leaf_id):
            buffer.clear()
            rec.required = max(rec.required, seq + 1)
            self.stats.shed_deltas += 1
            return
        if len(buffer) >= self.config.max_buffered_deltas_per_leaf:
            # Forget the buffer; the repair must then reflect this delta too.
            buffer.clear()
            rec.required = max(rec.required, seq + 1)
            self.stats.buffer_overflows += 1
            return
        buffer.append((leaf_seq, seq, flags, bytes(payload)))

    def _mark_verified(self, rec: _Leaf, checked: int) -> None:
        """The leaf is right as of a point after the first ``checked`` gaps."""
        if rec.stale:
            self._stale.discard(rec)
            rec.stale = False
            rec.buffer = None
            rec.claimed_by = None
            rec.shed_at = None
        else:
            self._gaps.untrack(rec.checked)
            checked = max(checked, rec.checked)
        rec.checked = checked
        self._gaps.track(checked)

    def _remove(self, leaf_id: int, rec: _Leaf, seq: int | None = None) -> None:
        """Drop a leaf; ``seq`` is the DELETE delta's sequence (default: the position)."""
        if rec.stale:
            self._stale.discard(rec)
        else:
            self._gaps.untrack(rec.checked)
        del self.leaves[leaf_id]
        if rec.value is not _ABSENT:
            self.updates.append((leaf_id, DELETED, None, None,
                                 self._position() if seq is None else seq, self._send_time_ns))

    def _forget(self, leaf_id: int, leaf_seq: int, absent_from: int) -> None:
        """Remember that the leaf, last at ``leaf_seq``, is absent from ``absent_from`` on."""
        gone = self._gone
        gone.pop(leaf_id, None)
        gone[leaf_id] = (leaf_seq, absent_from)
        if len(gone) > self.config.max_deleted_remembered:
            del gone[next(iter(gone))]  # the oldest; a snapshot can still correct it

    # ------------------------------------------------------------------ summaries

    def _on_touched(self, touched: Touched, now: float) -> None:
        """Extend the chain of consecutive summaries; resolve the gaps it covers; check
        the fresh leaves it names."""
        self.stats.touched_summaries += 1
        gaps = self._gaps
        if not self._chain.add(touched, extend=bool(gaps.unresolved)):
            return
        self._check_touched(touched, now)
        if gaps.unresolved:
            chain = self._chain
            covered = [index for index, (first, end) in gaps.unresolved.items()
                       if chain.covers(first, end)]
            if covered:
                self._resolve(covered, now)

    def _check_touched(self, touched: Touched, now: float) -> None:
        """A summary is evidence too: a fresh leaf it lists must hold at least the listed
        leaf_seq, since every DELTA of the window is behind the stream position."""
        leaves = self.leaves
        gaps = self._gaps
        for leaf_id, listed in touched.entries:
            rec = leaves.get(leaf_id)
            if (rec is not None and not rec.stale and rec.leaf_seq < listed
                    and not gaps.is_suspect(rec.checked)):
                self._distrust(Status.LEAF_DIVERGED, now,
                               f"a summary lists leaf_seq {listed} > {rec.leaf_seq}", leaf_id)
                self._make_stale(rec, leaf_id, required=touched.end_seq, now=now)

    def _resolve(self, covered: list[int], now: float) -> None:
        """The chain names every leaf the covered gaps may have touched: act on exactly
        those; every other leaf is thereby proven untouched by them, at once."""
        end = self._chain.end
        gaps = self._gaps
        # A leaf that holds its listed change is current as of `end`: proven against the
        # gaps that end by then, never against a later one (SPEC §12(k)).
        proven = gaps.proven_upto(end)
        leaves = self.leaves
        for leaf_id, listed in self._chain.entries.items():
            rec = leaves.get(leaf_id)
            if rec is None:
                gone = self._gone.get(leaf_id)
                if gone is None or listed > gone[0]:
                    # Created (or changed) in a gap and never seen: wait for its snapshot.
                    self._new_unknown_leaf(leaf_id, required=end, seen_seq=end - 1)
            elif rec.stale:
                rec.required = max(rec.required, end)  # its repair must cover the gaps
                rec.shed_at = None  # and if it was shed, the gaps touched it
            elif rec.leaf_seq >= listed:
                # Its change `listed` (not a DELETE: it is held) is in the window: the leaf
                # exists as of `end`.
                rec.seen_seq = max(rec.seen_seq, end - 1)
                if rec.checked < proven:
                    self._mark_verified(rec, proven)
            else:
                self._make_stale(rec, leaf_id, required=end, now=now)
        gaps.resolve(covered)
        self.stats.gaps_resolved += len(covered)
        if not gaps.unresolved and self._saved_coverage is not None:
            # Every gap since the coverage was set aside is resolved, and the CREATEs they
            # hid are now unknown stale leaves: what was known of the leaf set holds again.
            coverage, coverage_from, known = self._saved_coverage
            coverage.merge(self._coverage)
            self._coverage, self._coverage_from = coverage, coverage_from
            self._leaf_set_known = known or coverage.known
            self._saved_coverage = None

    # ------------------------------------------------------------------ snapshots

    def _on_snapshot(self, snap: Snapshot, now: float) -> None:
        self.stats.snapshots += 1
        payload: memoryview | bytes = snap.payload
        if snap.total_length != len(payload):
            reassembler = self._reassembler
            oversize, inconsistent = reassembler.oversize, reassembler.inconsistent
            assembled = reassembler.add(snap.leaf_id, snap.leaf_seq, snap.as_of_seq,
                                        snap.total_length, snap.fragment_offset, payload)
            self.stats.oversize_snapshots += reassembler.oversize - oversize
            self.stats.bad_fragments += reassembler.inconsistent - inconsistent
            if assembled is None:
                return
            payload = assembled
        self._publisher_leaf_count = snap.cycle_count
        as_of = snap.as_of_seq
        leaf_id = snap.leaf_id
        last = snap.flags & _SNAPSHOT_LAST
        # Where this snapshot's claims come from: copies of one snapshot, however often
        # repeated or re-stamped, are one source (SPEC §12(f), (g)).
        source = (self._datagram_sequence, snap.cycle_id, snap.cycle_position)
        # The range assertions: no leaf in [range_start, leaf_id) (nor above it if LAST).
        if self.leaves:
            self._assert_absent(snap.range_start, leaf_id, as_of, now, source,
                                inclusive_hi=False)
            if last and leaf_id < _MAX_ID:
                self._assert_absent(leaf_id + 1, _MAX_ID, as_of, now, source,
                                    inclusive_hi=True)
        known_before = self._leaf_set_known  # before this snapshot's own range counts
        if not known_before and as_of >= self._coverage_from:
            self._coverage.add(snap.range_start, _MAX_ID if last else leaf_id, source)
            if self._coverage.known:
                self._leaf_set_known = True
        if snap.flags & _SNAPSHOT_DELETED:
            rec = self.leaves.get(leaf_id)
            if rec is not None:
                self._assert_absent(leaf_id, leaf_id, as_of, now, source, inclusive_hi=True)
        else:
            rec = self.leaves.get(leaf_id)
            if rec is None:
                self._install(leaf_id, snap, payload, now, leaf_set_known=known_before)
            elif rec.stale:
                self._repair(leaf_id, rec, snap, payload, now)
            else:
                self._verify(leaf_id, rec, snap, payload, now)
        if not known_before and self._leaf_set_known and self._census is not None \
                and self._census != len(self.leaves):
            # This snapshot's claims completed the leaf set, yet a snapshot taken at the
            # stream position since the last CREATE, DELETE or gap counted other leaves:
            # a claim is false (one real snapshot copied and re-flagged LAST is complete,
            # consistent and a second source). Do not believe the set; gather it again.
            self.stats.census_mismatches += 1
            self._forget_leaf_set()
        if as_of == self.expected:
            self._census = snap.cycle_count
        if as_of == self.expected and self._coverage.complete and not self.unverified:
            self._check_census(snap, now)

    def _check_census(self, snap: Snapshot, now: float) -> None:
        """Every id is asserted absent or held, and every held leaf is fresh, as of this
        snapshot's moment: then the replica must have exactly ``cycle_count`` leaves, with
        ``cycle_position`` of them below this one. A mismatch means an absence claim was
        false (forged, or mutated on the way): forget the leaf set and rebuild it."""
        leaves = self.leaves
        below = leaves.bisect_left(snap.leaf_id)
        position, count = snap.cycle_position, snap.cycle_count  # 0, 0 in the empty marker
        if below == position and len(leaves) == count:
            return
        if self._leaf_set_known:
            self._distrust(Status.LEAF_DIVERGED, now,
                           f"the publisher counts {count} leaves ({position} below leaf "
                           f"{snap.leaf_id}), the replica {len(leaves)} ({below})")
        self.stats.census_mismatches += 1
        self._forget_leaf_set()

    def _install(self, leaf_id: int, snap: Snapshot, payload: memoryview | bytes,
                 now: float, *, leaf_set_known: bool) -> None:
        """A snapshot of a leaf not held: install it if it is provably current."""
        as_of = snap.as_of_seq
        gone = self._gone.get(leaf_id)
        if gone is not None and as_of < gone[1]:
            return  # older than the deletion we know of
        if as_of < max(self.base, self._gaps.last_end):
            return  # changes after as_of may have been lost: not provably current
        value = self._decode_leaf(payload)
        if value is _ABSENT:
            return
        if gone is not None and snap.leaf_seq <= gone[0]:
            # The leaf exists after its deletion with no newer change: one of the two
            # claims is false, and the later one wins.
            self._distrust(Status.LEAF_DIVERGED, now,
                           "a snapshot contradicts the leaf's deletion", leaf_id)
        if leaf_set_known and gone is None:
            # Every id was asserted absent or held since the last gap, and no CREATE of
            # this leaf was seen: the leaf-set knowledge was wrong. Rebuild it.
            self._distrust(Status.LEAF_DIVERGED, now,
                           "a snapshot shows a leaf the known leaf set lacks", leaf_id)
            self._forget_leaf_set()
        rec = self.leaves[leaf_id] = _Leaf(value, snap.leaf_seq, self._gaps.count, as_of - 1)
        self._gaps.track(rec.checked)
        self._gone.pop(leaf_id, None)
        self.stats.snapshots_used += 1
        self.stats.installs += 1
        self.updates.append((leaf_id, REPLACED, value, None, rec.seen_seq, self._send_time_ns))

    def _verify(self, leaf_id: int, rec: _Leaf, snap: Snapshot,
                payload: memoryview | bytes, now: float) -> None:
        """A snapshot of a held, non-stale leaf: prove a suspect, check a fresh one."""
        suspect = self._gaps.is_suspect(rec.checked)
        if suspect and snap.as_of_seq < self._gaps.last_end:
            return  # too old to prove anything about the last gap
        if snap.leaf_seq < rec.leaf_seq:
            if snap.as_of_seq > rec.seen_seq:
                # The publisher had an older leaf_seq after we applied ours: one of them
                # is false (a gap explains a leaf behind, never ahead, so a SUSPECT leaf
                # too). Distrust ours; a later snapshot repairs it.
                self._distrust(Status.LEAF_DIVERGED, now,
                               f"a snapshot at leaf_seq {snap.leaf_seq} is behind the leaf",
                               leaf_id)
                self._make_stale(rec, leaf_id, required=snap.as_of_seq, now=now)
            return
        same_leaf_seq = snap.leaf_seq == rec.leaf_seq
        if same_leaf_seq:
            if self._same_encoding(rec, payload):
                self.stats.snapshots_verified += 1
                rec.seen_seq = max(rec.seen_seq, snap.as_of_seq - 1)
                if suspect:
                    self.stats.suspects_proven += 1
                    self._mark_verified(rec, self._gaps.proven_upto(snap.as_of_seq))
                return
            reason = f"the snapshot at leaf_seq {snap.leaf_seq} differs from the leaf"
        else:
            reason = f"a snapshot at leaf_seq {snap.leaf_seq} is ahead of the leaf"
        value = self._decode_leaf(payload)
        if value is _ABSENT:
            self._make_stale(rec, leaf_id, required=snap.as_of_seq, now=now)
            return
        if not suspect or same_leaf_seq:
            # A gap explains a leaf behind the publisher, never other bytes at the same
            # leaf_seq: that is a divergence even for a suspect leaf.
            self._distrust(Status.LEAF_DIVERGED, now, reason, leaf_id)
        self._mark_verified(rec, self._gaps.proven_upto(snap.as_of_seq))
        rec.value = value
        rec.leaf_seq = snap.leaf_seq
        rec.seen_seq = max(rec.seen_seq, snap.as_of_seq - 1)
        self.stats.snapshots_used += 1
        self.updates.append((leaf_id, REPLACED, value, None, rec.seen_seq, self._send_time_ns))

    def _repair(self, leaf_id: int, rec: _Leaf, snap: Snapshot, payload: memoryview | bytes,
                now: float) -> None:
        """A stale leaf: repair it if this snapshot reflects all it missed and chains with
        the deltas it buffered since."""
        as_of = snap.as_of_seq
        # _bulk_shed_upto: DELTAs of this leaf before it may have been dropped unrecorded.
        if as_of < max(rec.required, self._bulk_shed_upto) or (
                rec.checked != self._gaps.count and as_of < self._gaps.last_end):
            return
        if self._was_synced and not self._shedder.admits(now):
            # Overloaded and the queue not draining: one more leaf to follow would fill it
            # further. A later snapshot repairs the leaf (SPEC §12(c), shedding leaves).
            self.stats.repairs_deferred += 1
            return
        # Buffered deltas before as_of are in the snapshot; those after it must continue
        # it without a hole. (A buffered entry that fits neither is not the stream's.)
        # The buffer is in stream order: skip what is older than as_of without looking.
        buffer = rec.buffer or []
        start = bisect.bisect_left(buffer, as_of, key=_buffered_seq)
        chain = [item for item in buffer[start:] if item[0] > snap.leaf_seq]
        next_leaf_seq = snap.leaf_seq + 1
        for item in chain:
            if item[0] != next_leaf_seq:
                return  # a change between the snapshot and the buffer is missing
            next_leaf_seq += 1
        model = self.model
        value = self._decode_leaf(payload)
        if value is _ABSENT:
            return
        try:
            for _, _, _, delta_payload in chain:
                value = model.apply(value, model.decode_delta(memoryview(delta_payload)))
        except Exception as exc:  # noqa: BLE001 - the model rejected remote data
            self.stats.bad_payloads += 1
            self.last_bad_payload = exc
            assert rec.buffer is not None
            rec.required = max(rec.required, rec.buffer[-1][1] + 1)
            rec.buffer.clear()
            return
        announced = rec.value is not _ABSENT
        # max: a leaf verified against every gap when it went stale, and repaired from a
        # snapshot older than the last gap (allowed then), stays verified.
        self._mark_verified(rec, max(rec.checked, self._gaps.proven_upto(as_of)))
        rec.value = value
        rec.leaf_seq = next_leaf_seq - 1
        rec.seen_seq = max(rec.seen_seq, as_of - 1)
        self.stats.snapshots_used += 1
        self.updates.append((leaf_id, REPLACED, value, None, rec.seen_seq, self._send_time_ns))
        if announced:
            self.stats.repairs += 1
            self._event(Status.LEAF_REPAIRED, now, leaf_id=leaf_id)
        else:
            self.stats.installs += 1

    def _decode_leaf(self, payload: memoryview | bytes) -> Any:
        try:
            return self.model.decode_leaf(memoryview(payload))
        except Exception as exc:  # noqa: BLE001 - the model rejected remote data
            self.stats.bad_payloads += 1
            self.last_bad_payload = exc
            return _ABSENT

    def _same_encoding(self, rec: _Leaf, payload: memoryview | bytes) -> bool:
        """Whether the leaf encodes to ``payload``. A leaf unchanged since it last matched
        is compared by hash (a hash costs ~0.2 us, an order book's encoding ~5 us), but
        one time in ``_FULL_CHECK_EVERY`` it is encoded anyway: only that notices a value
        changed in place without a delta (an application mutating the replica it reads)."""
        digest = hash(bytes(payload))
        verified = rec.verified
        self._verifications += 1
        if (verified is not None and verified[0] == rec.leaf_seq and verified[1] == digest
                and self._verifications % _FULL_CHECK_EVERY):
            return True
        try:
            same = self.model.encode_leaf(rec.value) == payload
        except Exception:  # noqa: BLE001 - a value the model cannot encode is not the publisher's
            same = False
        rec.verified = (rec.leaf_seq, digest) if same else None
        return same

    def _assert_absent(self, lo: int, hi: int, as_of: int, now: float,
                       source: tuple[int, int, int], *,
                       inclusive_hi: bool) -> None:
        """No leaf exists in the range as of ``as_of``: remove the leaves we hold there
        that we have not seen exist since. A fresh leaf is never removed on one claim (its
        DELETE could not have been missed): it goes stale, and the next claim removes it
        unless a snapshot proves it first. That next claim must come from another source
        (datagram sequence, cycle_id, cycle_position): a copy of the first claims nothing
        new."""
        if lo > hi or (lo == hi and not inclusive_hi):
            return
        leaves = self.leaves
        doomed = [leaf_id for leaf_id in leaves.irange(lo, hi, inclusive=(True, inclusive_hi))
                  if leaves[leaf_id].seen_seq < as_of]
        is_suspect = self._gaps.is_suspect
        gaps = self._gaps.count
        for leaf_id in doomed:
            rec = leaves[leaf_id]
            # A fresh leaf, or one shed while exact and touched by no gap since: it missed
            # no DELETE, so the claim contradicts what we know.
            exact = rec.shed_at == gaps if rec.stale else not is_suspect(rec.checked)
            if exact:
                self._distrust(Status.LEAF_DIVERGED, now,
                               "a snapshot claims a fresh leaf does not exist", leaf_id)
                self._make_stale(rec, leaf_id, required=as_of, now=now)
                rec.claimed_by = source
                continue
            if rec.claimed_by == source:
                continue
            self.stats.inferred_deletes += 1
            self._remove(leaf_id, rec)
            self._forget(leaf_id, rec.leaf_seq, as_of)

    def _forget_leaf_set(self) -> None:
        """Distrust what is known of the leaf set: coverage starts again from here."""
        self._coverage = Coverage()
        self._coverage_from = self.expected or 0
        self._leaf_set_known = False
        self._saved_coverage = None

    # ------------------------------------------------------------------ status

    def _measure_lag(self, send_time_ns: int, now: float) -> None:
        """Lag = how much later than the promptest datagram of the last 30-60 s this one
        arrived, on the publisher's clock against ours (no clock sync needed).

        One datagram cannot move it far: a delay more than ``_LAG_JUMP_S`` below the floor
        (a send time far in the future: forged, corrupted, or the publisher's clock
        stepped) lowers the floor only when the next datagram agrees, and LAGGING is
        declared only when two datagrams in a row are late."""
        delay = now - send_time_ns / 1e9
        floor = min(self._lag_floor, self._lag_floor_previous)
        if delay < floor - _LAG_JUMP_S:
            candidate = self._lag_candidate
            self._lag_candidate = delay
            if candidate is None or abs(delay - candidate) > _LAG_JUMP_S:
                return  # unconfirmed: neither the floor nor the lag moves
        self._lag_candidate = None
        self.last_send_time_ns = send_time_ns
        if now - self._lag_window_start >= _LAG_WINDOW_S:
            self._lag_window_start = now
            self._lag_floor_previous, self._lag_floor = self._lag_floor, delay
        elif delay < self._lag_floor:
            self._lag_floor = delay
        self.lag_s = lag = max(0.0, delay - min(self._lag_floor, self._lag_floor_previous))
        threshold = self.config.lag_warning_s
        if threshold is None:
            return
        late = lag > threshold
        if not self.lagging and late and self._late_before_previous:
            self.lagging = True
            self._event(Status.LAGGING, now, session_id=self.session_id,
                        reason=f"datagrams arrive {lag:.3f} s late")
        elif self.lagging and lag < threshold / 2:
            self.lagging = False
            self._event(Status.CAUGHT_UP, now, session_id=self.session_id)
        self._late_before_previous = late

    def _update_synced(self, now: float) -> None:
        gaps = self._gaps
        if gaps.unresolved and gaps.counts_changed and gaps.give_up_irrelevant():
            # Only a leaf leaving its `checked` count can make a gap irrelevant. The
            # CREATEs a given-up gap may have hidden stay unknown: drop the saved coverage.
            self._saved_coverage = None
        synced = (self._leaf_set_known and self.unverified == 0 and not self.silent
                  and not self.ended and self.session_id is not None)
        if synced != self.synced:
            self.synced = synced
            self._was_synced = self._was_synced or synced
            self._event(Status.SYNCED if synced else Status.UNSYNCED, now,
                        session_id=self.session_id)

    def _event(self, kind: Status, now: float, **fields: Any) -> None:
        self.events.append(StatusEvent(kind, now, **fields))

