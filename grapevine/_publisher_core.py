"""The publisher's protocol logic, without sockets, threads or clocks (sans-I/O).

:class:`PublisherCore` owns the source-of-truth leaves, assigns stream and leaf sequence
numbers, runs the snapshot cycle and packs datagrams. It is driven by calls:
:meth:`~PublisherCore.publish` / :meth:`~PublisherCore.delete` from the user, and
:meth:`~PublisherCore.next_datagram` with the current time from whoever sends. It is not
thread-safe: the runtime layer (:mod:`grapevine.publisher`) serialises calls with a lock.

Ordering rule (SPEC "Publisher behaviour"): deltas and snapshots leave through one FIFO.
A snapshot is encoded when the pacing budget allows and queued *behind* every delta it
already reflects, so ``as_of_seq`` never runs ahead of the deltas a receiver has been sent.

A leaf the model cannot encode (``encode_leaf`` raises or returns something that is not
bytes) is skipped for that cycle, never sent half-built, and reported: see
``PublisherCore._snapshot_failed`` for why and :attr:`PublisherCore.snapshot_failures`.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from typing import Any, Generic

from sortedcontainers import SortedDict

from . import wire
from ._errors import ConfigError, EncodeError, LeafIdError, QueueFullError, UnknownLeafError
from ._retransmit import DatagramRing, RetransmitServer
from ._stream_id import check_stream_id
from .auth import KeyRing, sign
from .codec import (
    DELTA_OVERHEAD,
    HEADER_SIZE,
    SNAPSHOT_OVERHEAD,
    TOUCHED_ENTRY_SIZE,
    TOUCHED_OVERHEAD,
    DatagramBuilder,
    Snapshot,
    Touched,
)
from .model import DeltaT, LeafModel, LeafT
from .wire import AUTH_TRAILER_SIZE, DeltaFlag, SnapshotFlag

__all__ = ["PublisherConfig", "PublisherCore", "PublisherCounters", "QueueFullError"]

# Don't start a snapshot fragment in the tail of a datagram smaller than this.
_MIN_FRAGMENT = 64
_MAX_LEAF_ID = wire.MAX_LEAF_ID
_MAX_TOTAL_LENGTH = 0xFFFF_FFFF  # a snapshot's total_length is a u32
_ABSENT: Any = object()
_dict_set = dict.__setitem__




@dataclass(frozen=True)
class PublisherConfig:
    """Publisher tuning. Every rate is per second of the clock the caller passes. The
    guide (docs/guide.md, "Tuning") weighs each knob with measured figures."""

    stream_id: int = 0
    """Which stream this publisher is, among streams sharing a group and port (u32)."""
    max_datagram_size: int = wire.DEFAULT_DATAGRAM_SIZE
    """Largest datagram sent, bytes (default 1400: fits an Ethernet MTU without IP
    fragmentation). Larger means fewer datagrams per delta and per snapshot, but above the
    path MTU IP fragments them and losing one fragment loses the whole datagram."""
    snapshot_bytes_per_s: float = 16_000_000.0
    """Bandwidth budget of the snapshot cycle, bytes/s. A cycle takes about
    ``max(min_cycle_s, state bytes / snapshot_bytes_per_s)``: late joiners sync and lost
    changes are repaired within about one cycle, at this constant cost in bandwidth (and
    CPU on every subscriber). The default (it was 8 MB/s) syncs a late joiner to 10,000
    order books of 20 levels a side (11.6 MB) in 0.8 s; states under 8 MB never reach it
    (their cycle is ``min_cycle_s``). Lower it on links that cannot spare 128 Mbit/s."""
    min_cycle_s: float = 0.5
    """Shortest snapshot cycle, seconds: for small states, the cycle's period (and thus a
    late joiner's sync time, and the repair time of a loss retransmission cannot repair)
    instead of the bandwidth budget. Such a cycle is spread evenly over this period (a
    datagram's worth at a time), not sent in one burst that deltas would wait behind;
    only a publisher's first cycle goes out at the full budget.

    Every snapshot costs an encoding on the publisher (none for a leaf unchanged since
    its last one) and a check on every subscriber: at 20,000 book deltas/s over 1,000
    books, ``tools/bench_cycle.py`` measured 2.2x the CPU per delta of the deltas alone
    on each side with a 0.25 s cycle (the default before issue 12), 1.4-1.6x with 0.5 s
    (the default since retransmission repairs most losses within milliseconds), 1.2-1.3x
    with 1 s."""
    heartbeat_interval_s: float = 0.5
    """Idle interval after which a HEARTBEAT is sent. Subscribers derive their silence
    timeout (3 intervals) and restart grace (2 intervals) from it."""
    max_queued_deltas: int = 65_536
    """Deltas published but not yet sent before ``publish`` blocks (or raises
    QueueFullError with ``on_full="error"``): back-pressure, never a dropped change."""
    linger_s: float = 0.0
    """Hold a datagram that is not yet full for up to this long after the first delta of a
    burst, so that deltas published one by one share datagrams (fewer packets, up to this
    much more latency). 0: send as soon as the queue is empty."""
    touched_interval_s: float = 0.01
    """Every this often, a TOUCHED summary names the leaves the last window of deltas
    changed, so receivers that lose deltas know exactly which leaves the loss touched.
    0 turns summaries off (receivers then prove leaves one by one)."""
    keys: KeyRing | None = None
    """Sign every datagram with the ring's signing key (SPEC §9); None: unauthenticated.
    The trailer takes 20 of the ``max_datagram_size`` bytes."""
    retransmit_datagrams: int = 4096
    """Recent delta datagrams kept to answer retransmission requests (SPEC §15), at most;
    0 turns retransmission off. Holes older than what is kept are repaired by snapshots."""
    retransmit_bytes: int = 8 << 20
    """Bytes of recent datagrams kept, at most (the oldest go first)."""
    retransmit_answer_datagrams: int = 64
    """Datagrams sent in answer to one request, at most (the requester asks again for the
    rest)."""
    retransmit_bytes_per_s: float = 10e6
    """Answer bytes per second for one requester (burst 256 KiB); requests beyond are
    dropped. It bounds what anyone forging requests can make the publisher send."""

    def __post_init__(self) -> None:
        check_stream_id(self.stream_id)
        minimum = HEADER_SIZE + SNAPSHOT_OVERHEAD + _MIN_FRAGMENT
        if self.keys is not None:
            if not isinstance(self.keys, KeyRing):
                raise ConfigError(f"keys must be a grapevine.KeyRing, not {self.keys!r}")
            minimum += AUTH_TRAILER_SIZE
        if not minimum <= self.max_datagram_size <= wire.MAX_DATAGRAM_SIZE:
            raise ConfigError(f"max_datagram_size {self.max_datagram_size} is outside "
                              f"{minimum}..{wire.MAX_DATAGRAM_SIZE}")
        if not self.snapshot_bytes_per_s > 0:
            raise ConfigError("snapshot_bytes_per_s must be positive")
        if self.min_cycle_s < 0:
            raise ConfigError("min_cycle_s must not be negative")
        if not 0.001 <= self.heartbeat_interval_s <= 3600:
            raise ConfigError("heartbeat_interval_s must be between 0.001 and 3600")
        if self.max_queued_deltas < 1:
            raise ConfigError("max_queued_deltas must be at least 1")
        if not 0 <= self.linger_s <= 1:
            raise ConfigError("linger_s must be between 0 and 1 second")
        if not 0 <= self.touched_interval_s <= 10:
            raise ConfigError("touched_interval_s must be between 0 (off) and 10 seconds")
        if (self.retransmit_datagrams < 0 or self.retransmit_bytes < 1
                or self.retransmit_answer_datagrams < 1 or self.retransmit_bytes_per_s <= 0):
            raise ConfigError("retransmit_datagrams must be >= 0 (0: off) and the other "
                              "retransmit limits positive")


@dataclass
class PublisherCounters:
    """Counters; read them from any thread (values are plain ints)."""

    deltas: int = 0
    datagrams: int = 0
    delta_datagrams: int = 0
    snapshots: int = 0
    snapshot_fragments: int = 0
    snapshot_bytes: int = 0
    touched_summaries: int = 0
    touched_entries: int = 0
    heartbeats: int = 0
    cycles: int = 0
    bytes_sent: int = 0
    snapshot_errors: int = 0  # encode_leaf calls that failed (the leaf's snapshot skipped)


class _QueuedSnapshot:
    """A snapshot waiting in the FIFO; fragmented lazily to fill datagrams."""

    __slots__ = ("offset", "payload", "template")

    def __init__(self, template: Snapshot, payload: bytes) -> None:
        self.template = template
        self.payload = payload
        self.offset = 0


def new_session_id() -> int:
    """A random, nonzero 64-bit session id."""
    while True:
        value = int.from_bytes(os.urandom(8), "little")
        if value:
            return value


class PublisherCore(Generic[LeafT, DeltaT]):
    """Sequencing, snapshot cycle and datagram packing for one publisher session."""

    def __init__(self, model: LeafModel[LeafT, DeltaT], config: PublisherConfig | None = None,
                 *, initial: Mapping[int, LeafT] | None = None, session_id: int | None = None,
                 now: float = 0.0) -> None:
        if not isinstance(model, LeafModel):
            raise ConfigError(f"model {model!r} does not implement grapevine.LeafModel "
                              "(new_leaf, apply, encode_delta, decode_delta, encode_leaf, "
                              "decode_leaf)")
        self.model = model
        self.config = config or PublisherConfig()
        self.session_id = session_id if session_id is not None else new_session_id()
        self.stats = PublisherCounters()
        self._max_queued = self.config.max_queued_deltas
        # The signing keys can change while the publisher runs (rotation: set_keys); the
        # trailer's 20 bytes come off every datagram's room for messages when signing.
        self.keys = self.config.keys
        self._room = room = self.config.max_datagram_size - (
            AUTH_TRAILER_SIZE if self.keys else 0)
        self._max_payload = room - HEADER_SIZE - DELTA_OVERHEAD
        self.leaves: SortedDict[int, Any] = SortedDict()
        for leaf_id, value in (initial or {}).items():
            self._check_leaf_id(leaf_id)
            self.leaves[leaf_id] = value  # leaf_seq 0: unchanged in this session
        self._leaf_seqs: dict[int, int] = {}
        # Each leaf's last snapshot encoding, with the leaf_seq it encodes: an unchanged
        # leaf is not encoded again in the next cycle (a copy of the state in encoded
        # form, a small share of a decoded order book's memory).
        self._encodings: dict[int, tuple[int, bytes]] = {}
        self.next_seq = 1  # the sequence the next published delta gets
        self._packed_seq = 1  # the sequence of the next delta not yet packed in a datagram
        self._queue: deque[tuple[int, int, int, bytes] | _QueuedSnapshot | Touched] = deque()
        self._queued_deltas = 0
        self._queued_delta_bytes = 0
        self._builder = DatagramBuilder(self.config.stream_id, self.session_id, room)
        # Recent delta datagrams and the server that answers requests for them (SPEC §15).
        self.retransmit_server: RetransmitServer | None = None
        if self.config.retransmit_datagrams:
            self.retransmit_server = RetransmitServer(
                DatagramRing(self.config.retransmit_datagrams, self.config.retransmit_bytes),
                stream_id=self.config.stream_id, keys=self.keys,
                max_answer_datagrams=self.config.retransmit_answer_datagrams,
                bytes_per_s=self.config.retransmit_bytes_per_s)
            self.retransmit_server.session_id = self.session_id
        self._fragment_room = room - HEADER_SIZE - SNAPSHOT_OVERHEAD
        # Snapshot cycle state.
        self.cycle_id = 0
        self._cursor: int | None = None  # last leaf id snapshotted in this cycle
        self._cycle_started_at = now - self.config.min_cycle_s  # first cycle starts at once
        # Whether cycles are spread over min_cycle_s (see _spread_due_at): from the second
        # one on; the first goes out at the budget, so a new publisher's state reaches its
        # subscribers as soon as it can.
        self._spreading = False
        self._tokens = 0.0
        self._tokens_at = now
        self._last_send = now - self.config.heartbeat_interval_s  # heartbeat at once
        # The current TOUCHED window: leaf -> leaf_seq for the deltas since _touched_from.
        self._summaries = self.config.touched_interval_s > 0
        self._touched: dict[int, int] = {}
        self._touched_from = 1
        self._touched_at = now
        self._touched_max = (room - HEADER_SIZE - TOUCHED_OVERHEAD) // TOUCHED_ENTRY_SIZE
        self._last_heartbeat = self._last_send
        self._heartbeat_ms = round(self.config.heartbeat_interval_s * 1000)
        self.ended = False
        # Leaves whose latest encode_leaf failed -> that exception (see _snapshot_failed).
        self.snapshot_failures: dict[int, Exception] = {}
        # (leaf, exception) each time a leaf starts failing, for the runtime to report;
        # bounded, so a caller that never drains it does not grow without limit.
        self.new_snapshot_failures: deque[tuple[int, Exception]] = deque(maxlen=256)

    # ------------------------------------------------------------------ user side

    def publish(self, leaf_id: int, delta: DeltaT) -> int:
        """Apply ``delta`` to leaf ``leaf_id`` (creating it if absent) and queue it.

        Returns the delta's stream sequence number. Raises :class:`QueueFullError` (and
        changes nothing) when the queue is full, :class:`EncodeError` for an invalid id or
        a payload too large for one datagram.
        """
        # The hot path: attribute lookups are cached and the SortedDict's Python-level
        # __setitem__ is bypassed for leaves that already exist (their keys do not move).
        if type(leaf_id) is not int or not 0 <= leaf_id <= _MAX_LEAF_ID:
            self._check_leaf_id(leaf_id)
        if self._queued_deltas >= self._max_queued:
            raise QueueFullError(f"{self._queued_deltas} deltas are queued "
                                 f"(max_queued_deltas={self._max_queued})")
        model = self.model
        payload = model.encode_delta(delta)
        if len(payload) > self._max_payload:
            raise EncodeError(f"a delta payload of {len(payload)} bytes does not fit one "
                              f"{self._room}-byte datagram (room for messages)")
        leaves = self.leaves
        current = leaves.get(leaf_id, _ABSENT)
        if current is not _ABSENT:
            _dict_set(leaves, leaf_id, model.apply(current, delta))  # type: ignore[arg-type]
            flags = 0
        else:
            leaves[leaf_id] = model.apply(model.new_leaf(), delta)
            flags = DeltaFlag.CREATE
        return self._enqueue_delta(leaf_id, flags, payload)

    def delete(self, leaf_id: int) -> int:
        """Remove leaf ``leaf_id`` and queue a DELETE delta. Raises KeyError if absent."""
        self._check_leaf_id(leaf_id)
        if leaf_id not in self.leaves:
            raise UnknownLeafError(f"leaf {leaf_id} does not exist")
        if self._queued_deltas >= self.config.max_queued_deltas:
            raise QueueFullError(f"{self._queued_deltas} deltas are queued")
        del self.leaves[leaf_id]
        self._encodings.pop(leaf_id, None)
        if self.snapshot_failures:
            self.snapshot_failures.pop(leaf_id, None)
        return self._enqueue_delta(leaf_id, DeltaFlag.DELETE, b"")

    @property
    def queued_deltas(self) -> int:
        """Deltas published but not yet packed into a datagram."""
        return self._queued_deltas

    @property
    def queue_fills_a_datagram(self) -> bool:
        """True if the queued deltas fill at least one datagram (lingering is pointless)."""
        return self._queued_delta_bytes >= self._room - HEADER_SIZE

    def leaf_seq(self, leaf_id: int) -> int:
        """The leaf's current leaf sequence (0 if it never changed in this session)."""
        return self._leaf_seqs.get(leaf_id, 0)

    # ------------------------------------------------------------------ sending side

    def set_keys(self, keys: KeyRing) -> None:
        """Rotate keys: datagrams from now on are signed with ``keys``' signing key.
        Receivers must accept it first (give them a ring with both keys)."""
        if self.keys is None:
            raise ConfigError("this publisher does not sign: give PublisherConfig(keys=...)")
        if not isinstance(keys, KeyRing):
            raise ConfigError(f"keys must be a grapevine.KeyRing, not {keys!r}")
        self.keys = keys
        if self.retransmit_server is not None:
            self.retransmit_server.set_keys(keys)

    def answer(self, request: bytes | bytearray | memoryview, requester: Hashable,
               now: float, send_time_ns: int = 0) -> list[bytes]:
        """The packets that answer a retransmission request from ``requester`` (an
        address): the original datagrams, or UNAVAILABLE. Never raises on bad input."""
        server = self.retransmit_server
        if server is None:
            return []
        return server.handle(request, requester, now, send_time_ns or max(1, round(now * 1e9)))

    def next_datagram(self, now: float, send_time_ns: int = 0) -> memoryview | None:
        """The next datagram to send at time ``now``, or None if nothing is due.

        ``now`` drives pacing (any monotonic clock, seconds); ``send_time_ns`` is the wall
        clock (Unix ns) written into the header for captures and latency measurement
        (0: ``now`` in nanoseconds).

        Call repeatedly until it returns None, then wait until :meth:`next_wakeup` or a
        publish. The returned view is valid until the next call.
        """
        if self.ended:
            return None
        if self._touched and now - self._touched_at >= self.config.touched_interval_s:
            self._queue_touched()
            self._touched_at = now
        self._maybe_queue_snapshot(now)
        if not self._queue:
            if now - self._last_send >= self.config.heartbeat_interval_s:
                self._builder.start(self._packed_seq)
                self._add_heartbeat(now)
                return self._finish(now, send_time_ns)
            return None
        return self._pack(now, send_time_ns)

    def _add_heartbeat(self, now: float) -> None:
        self._builder.add_heartbeat(self._heartbeat_ms)
        self._last_heartbeat = now
        self.stats.heartbeats += 1

    def next_wakeup(self, now: float) -> float:
        """The latest time at which :meth:`next_datagram` must be called again."""
        heartbeat_at = self._last_send + self.config.heartbeat_interval_s
        if self._queue:
            return now
        snapshot_at = self._snapshot_due_at(now)
        if self._touched:
            heartbeat_at = min(heartbeat_at, self._touched_at + self.config.touched_interval_s)
        return min(heartbeat_at, snapshot_at)

    def end_of_session(self, now: float, send_time_ns: int = 0) -> memoryview:
        """Mark the session ended and return the END_OF_SESSION datagram.

        Queued deltas must have been drained first (call :meth:`next_datagram` until the
        queue is empty); any still queued are discarded.
        """
        self.ended = True
        self._queue.clear()
        self._queued_deltas = 0
        self._queued_delta_bytes = 0
        return self.end_of_session_copy(now, send_time_ns)

    def end_of_session_copy(self, now: float, send_time_ns: int = 0) -> memoryview:
        """Another END_OF_SESSION datagram, stamped (and signed) on its own: receivers take
        byte-identical datagrams for one, so each repeated copy must differ."""
        builder = self._builder
        builder.start(self.next_seq)
        builder.add_end_of_session()
        return self._finish(now, send_time_ns)

    # ------------------------------------------------------------------ internals

    def _enqueue_delta(self, leaf_id: int, flags: int, payload: bytes) -> int:
        leaf_seq = self._leaf_seqs.get(leaf_id, 0) + 1
        self._leaf_seqs[leaf_id] = leaf_seq
        seq = self.next_seq
        self.next_seq = seq + 1
        self._queue.append((leaf_id, leaf_seq, flags, payload))
        self._queued_deltas += 1
        self._queued_delta_bytes += DELTA_OVERHEAD + len(payload)
        self.stats.deltas += 1
        if self._summaries:
            touched = self._touched
            touched[leaf_id] = leaf_seq
            if len(touched) >= self._touched_max:
                self._queue_touched()  # a summary must fit one datagram
        return seq

    def _queue_touched(self) -> None:
        """Queue the summary of the current window behind the last delta it covers."""
        entries = tuple(sorted(self._touched.items()))
        self._queue.append(Touched(self._touched_from, self.next_seq, entries))
        self._touched_from = self.next_seq
        self._touched = {}
        self.stats.touched_summaries += 1
        self.stats.touched_entries += len(entries)

    def _pack(self, now: float, send_time_ns: int) -> memoryview:
        builder = self._builder
        first = self._packed_seq
        builder.start(first)
        if now - self._last_heartbeat >= self.config.heartbeat_interval_s:
            # A busy stream also carries a heartbeat once per interval, so receivers
            # always learn the interval (and derive their silence timeout) from it.
            self._add_heartbeat(now)
        queue = self._queue
        add_deltas = builder.add_queued_deltas
        while True:
            if not queue:
                # Fill the rest of the datagram with snapshots while the budget allows.
                if builder.room < SNAPSHOT_OVERHEAD + _MIN_FRAGMENT:
                    break
                self._maybe_queue_snapshot(now)
                if not queue:
                    break
            item = queue[0]
            if type(item) is tuple:
                add_deltas(queue)  # every leading delta that fits
                if queue and type(queue[0]) is tuple:
                    break  # the next one did not fit: the datagram is full
                continue
            if type(item) is Touched:
                if not builder.add_touched(item):
                    break
                queue.popleft()
                continue
            assert isinstance(item, _QueuedSnapshot)
            if not self._pack_fragment(item):
                break
            queue.popleft()
        packed = builder.delta_count
        if packed:
            self._packed_seq += packed
            self._queued_deltas -= packed
            self._queued_delta_bytes -= builder.delta_bytes
            self.stats.delta_datagrams += 1
        datagram = self._finish(now, send_time_ns)
        if packed and self.retransmit_server is not None:
            self.retransmit_server.ring.add(first, first + packed, bytes(datagram))
        return datagram

    def _pack_fragment(self, item: _QueuedSnapshot) -> bool:
        """Pack as much of a queued snapshot as fits; True once all of it is packed.

        A snapshot that fits whole in an empty datagram is never split to fill the rest
        of this one: it goes whole in the next. Receivers then need no reassembly (a
        quarter of a joining subscriber's CPU when 1,162-byte books straddled 1,400-byte
        datagrams, nearly all of them) and a lost datagram costs one leaf's snapshot, not
        two; the price is a less full datagram now and then.
        """
        builder = self._builder
        payload = item.payload
        while True:
            room = builder.room - SNAPSHOT_OVERHEAD
            remaining = len(payload) - item.offset
            if room < min(_MIN_FRAGMENT, remaining) or (
                    room < remaining and not item.offset and remaining <= self._fragment_room):
                return False
            size = min(room, remaining)
            fragment = item.template._replace(
                fragment_offset=item.offset,
                payload=payload if size == len(payload) else
                payload[item.offset : item.offset + size],
            )
            builder.add_snapshot(fragment)
            self.stats.snapshot_fragments += 1
            item.offset += size
            if item.offset >= len(payload):
                return True

    def _finish(self, now: float, send_time_ns: int) -> memoryview:
        # Without a wall clock (simulations), ``now`` stamps the datagram: two heartbeats
        # are then never byte-identical, as receivers expect of a live stream.
        datagram = self._builder.finish(send_time_ns or max(1, round(now * 1e9)))
        if self.keys is not None:
            datagram = memoryview(sign(datagram, self.keys))
        self._last_send = now
        self.stats.datagrams += 1
        self.stats.bytes_sent += len(datagram)
        return datagram

    def _snapshot_due_at(self, now: float) -> float:
        """When the next batch (a datagram's worth) of snapshots may be queued."""
        if self._cursor is not None:
            spread_at = self._spread_due_at()
            if now < spread_at:
                return spread_at
        return self._budget_due_at(now)

    def _budget_due_at(self, now: float) -> float:
        """When the next snapshot may be queued by the budget and the cycle's start."""
        if self._cursor is None and now < self._cycle_started_at + self.config.min_cycle_s:
            return self._cycle_started_at + self.config.min_cycle_s
        self._refill(now)
        if self._tokens >= 0:
            return now
        return now + (-self._tokens) / self.config.snapshot_bytes_per_s

    def _spread_due_at(self) -> float:
        """When the cycle under way may queue its next datagram's worth of snapshots.

        A state smaller than ``min_cycle_s`` of budget used to go out in a burst at the
        full budget (1,000 order books: ~40 ms of back-to-back snapshots every 250 ms),
        and every delta published during the burst waited behind it, in the sender and in
        every receiver: latency spikes of tens of ms. Instead the cycle keeps pace with
        its clock: the next leaf is due once the share of ``min_cycle_s`` elapsed reaches
        its position in the cycle, counted against the leaves there are now (so a state
        that grows or shrinks keeps the period). A batch then takes a datagram's worth
        (small leaves share datagrams, as in a burst), and a state too large for the
        budget is paced by the budget alone, as before.
        """
        count = len(self.leaves)
        if not (self._spreading and count) or self._cursor is None:
            return 0.0
        position = self.leaves.bisect_right(self._cursor)
        return self._cycle_started_at + self.config.min_cycle_s * position / count

    def _end_cycle(self) -> None:
        self._cursor = None
        self.stats.cycles += 1
        self._spreading = True

    def _refill(self, now: float) -> None:
        rate = self.config.snapshot_bytes_per_s
        # Allow a burst of one datagram's worth (or 10 ms of budget), no more.
        cap = max(float(self.config.max_datagram_size), rate * 0.01)
        self._tokens = min(cap, self._tokens + (now - self._tokens_at) * rate)
        self._tokens_at = now

    def _maybe_queue_snapshot(self, now: float) -> None:
        # Queue the snapshots the budget allows now, but at most a datagram's worth per
        # call: under load they wait behind the deltas already queued yet keep their pace
        # (every datagram built queues more), and no call encodes more than that at once,
        # so a delta published meanwhile never waits behind a long slice of snapshot work
        # (and an unbounded budget cannot make one call run for ever).
        # The spreading of a small state's cycle (_spread_due_at) decides when a batch
        # starts; within it, only the budget does, so small leaves share datagrams.
        if self._snapshot_due_at(now) > now:
            return
        stats = self.stats
        start_bytes, start_count = stats.snapshot_bytes, stats.snapshots
        quantum = self._room - HEADER_SIZE
        while True:
            self._queue_next_snapshot(now)
            count = stats.snapshots - start_count
            queued = stats.snapshot_bytes - start_bytes + count * SNAPSHOT_OVERHEAD
            # Stop when another snapshot of the batch's average size would not fit.
            if (queued + queued / max(count, 1) > quantum
                    or self._budget_due_at(now) > now):
                break

    def _queue_next_snapshot(self, now: float) -> None:
        leaves = self.leaves
        keys = leaves.keys()
        if self._cursor is None:
            # A new cycle starts at the lowest leaf id.
            self.cycle_id = (self.cycle_id + 1) & 0xFFFF_FFFF
            self._cycle_started_at = now
            position = 0
        else:
            position = leaves.bisect_right(self._cursor)
        count = len(leaves)
        if count == 0:
            template = Snapshot(0, 0, self.cycle_id, 0, 0, 0, self.next_seq, 0, 0,
                                SnapshotFlag.DELETED | SnapshotFlag.LAST, b"")
            payload = b""
            self._cursor = None
        elif position >= count:
            # The leaves after the cursor were deleted: the cycle is over.
            self._end_cycle()
            return
        else:
            leaf_id = keys[position]
            range_start = keys[position - 1] + 1 if position else 0
            last = position == count - 1
            leaf_seq = self._leaf_seqs.get(leaf_id, 0)
            cached = self._encodings.get(leaf_id)
            if cached is not None and cached[0] == leaf_seq:
                # Unchanged since its last snapshot (leaf_seq names one state of a leaf
                # for the whole session, deletes included): encoding it again would
                # give the same bytes, and it is most of a large state's cycle cost.
                payload = cached[1]
            else:
                try:
                    payload = self._encode_leaf(leaves[leaf_id])
                except Exception as exc:  # noqa: BLE001 - the model's: skip the leaf, see below
                    self._snapshot_failed(leaf_id, exc, last)
                    return
                if self.snapshot_failures:
                    self.snapshot_failures.pop(leaf_id, None)  # it encodes again
                self._encodings[leaf_id] = (leaf_seq, payload)
            template = Snapshot(leaf_id, range_start, self.cycle_id, position, count,
                                leaf_seq, self.next_seq, len(payload), 0,
                                SnapshotFlag.LAST if last else 0, b"")
            self._cursor = None if last else leaf_id
        self._queue.append(_QueuedSnapshot(template, payload))
        self._tokens -= len(payload) + SNAPSHOT_OVERHEAD
        if self._cursor is None:
            self._end_cycle()
        self.stats.snapshots += 1
        self.stats.snapshot_bytes += len(payload)

    def _encode_leaf(self, leaf: Any) -> bytes:
        """The model's encoding of a leaf, checked to be bytes a snapshot can carry."""
        encoded: object = self.model.encode_leaf(leaf)
        if type(encoded) is bytes:
            payload = encoded
        elif isinstance(encoded, bytearray | memoryview):
            payload = bytes(encoded)  # a copy: the snapshot is fragmented later
        else:
            raise TypeError(f"encode_leaf returned {type(encoded).__name__}, not bytes")
        if len(payload) > _MAX_TOTAL_LENGTH:
            raise EncodeError(f"a leaf encoding of {len(payload)} bytes is longer than a "
                              f"snapshot's total_length allows ({_MAX_TOTAL_LENGTH})")
        return payload

    def _snapshot_failed(self, leaf_id: int, exc: Exception, last: bool) -> None:
        """``encode_leaf`` failed for ``leaf_id``: skip its snapshot in this cycle.

        Why skip rather than stop the publisher: the failure concerns one leaf, and the
        protocol already degrades per leaf. Nothing is sent for this leaf, and the other
        snapshots' range assertions are computed from the real leaf set (the next leaf's
        ``range_start`` is this leaf's id + 1), so no snapshot ever claims the leaf is absent
        and no receiver deletes it: receivers that need this leaf's snapshot (late joiners,
        repairs after a loss) never get it reported fresh and so never report themselves
        synced: truthful, while every other leaf keeps replicating and deltas keep flowing.
        The next cycle tries again (a later delta may make the leaf encodable). Skipping is
        never silent: it is counted in ``stats.snapshot_errors``, kept in
        :attr:`snapshot_failures` until the leaf encodes again or is deleted, and queued in
        :attr:`new_snapshot_failures` for the runtime to log. Stopping the whole stream
        would turn one leaf's bug into an outage of every leaf for every subscriber.
        """
        self.stats.snapshot_errors += 1
        if leaf_id not in self.snapshot_failures:
            self.new_snapshot_failures.append((leaf_id, exc))
        self.snapshot_failures[leaf_id] = exc
        # Charge the attempt like an empty snapshot, so pacing (and the loop in
        # _maybe_queue_snapshot) goes on even when every leaf fails.
        self._tokens -= SNAPSHOT_OVERHEAD
        if last:
            self._end_cycle()
        else:
            self._cursor = leaf_id

    @staticmethod
    def _check_leaf_id(leaf_id: int) -> None:
        if not isinstance(leaf_id, int) or not 0 <= leaf_id <= wire.MAX_LEAF_ID:
            raise LeafIdError(f"leaf_id {leaf_id!r} must be an int in 0..{wire.MAX_LEAF_ID}")
