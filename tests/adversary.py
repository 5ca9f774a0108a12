"""A hostile network for the sans-I/O cores, and an oracle that judges every subscriber.

:class:`World` puts one :class:`PublisherCore` and a few :class:`SubscriberCore` s on a
virtual clock (integer microseconds) and lets a driver choose every move: what the
publisher does, what happens to each datagram on each subscriber's link, and which forged
datagrams an attacker injects. The drivers are Hypothesis (tests/test_explorer.py), plain
seeded random schedules (:func:`random_schedule`, tools/explore.py) and hand-written
regression tests. A move is a plain tuple such as ``("drop", 0, "delta", -1)``, so any
schedule replays exactly from its list of moves and prints as a test.

The oracle runs after every datagram delivered and every poll (:meth:`World.check`):

* nothing escapes ``receive()`` / ``poll()`` and ``core._check()`` passes;
* memory stays under bounds computed from the subscriber's config (found by looking at the
  core's containers; whatever cannot be found is skipped, so internal renames are fine);
* STRICT: a leaf the core reports fresh equals the publisher's value as of the core's
  position (``core.expected``), and ``synced`` means the whole replica equals it. Honest
  moves (loss, duplication, any delay, any order, re-split fragments, replays, restarts)
  never suspend this. A subscriber that received forged *content* is "tainted": the strict
  check is suspended for it until the next heal. Forged *control* datagrams (no leaf
  content: END_OF_SESSION, header sequence, foreign sessions, LAST/range on a copy of a
  real snapshot) taint only when ``Scenario.attacks == "all"``; in ``"control"`` mode the
  strict check must hold through them.
* HEALING (the ``heal`` move): the attacker stops, links are clean, honest traffic flows
  for the restart grace plus two full snapshot cycles; then every subscriber must follow
  the publisher's session, be synced and equal to the publisher. After that the strict
  check applies to every subscriber again.

A failure raises :class:`OracleFailure` (an AssertionError) naming what was wrong.
"""

from __future__ import annotations

import bisect
import itertools
import math
import random
import struct
import time
import traceback
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from helpers import BlobModel, ChainModel

from grapevine import wire
from grapevine._errors import DecodeError
from grapevine._publisher_core import PublisherConfig, PublisherCore
from grapevine._retransmit import RetransmitMessage, decode_retransmit, encode_retransmit
from grapevine._subscriber_core import SubscriberConfig, SubscriberCore
from grapevine.codec import HEADER_SIZE, DatagramBuilder, Delta, Snapshot, Touched, decode_datagram
from grapevine.model import LeafModel
from grapevine.wire import MessageKind, SnapshotFlag

Move = tuple[Any, ...]

LATENCY_US = 2_000  # every datagram takes 2 ms unless a move says otherwise
POISON = 1 << 63  # a chain delta this large makes StrictChainModel.apply raise
MAX_BLOB = 4096  # StrictBlobModel refuses leaves larger than this
FOREIGN_SESSION = 0xF0_0000_0000  # forged session ids are FOREIGN_SESSION + small numbers
# "retransmit": a datagram sent again by unicast in answer to a request (SPEC §15).
DATAGRAM_CLASSES = ("any", "delta", "snapshot", "touched", "quiet", "heartbeat", "eos",
                    "retransmit")


# --------------------------------------------------------------------------- models


class StrictChainModel(ChainModel):
    """ChainModel that rejects what a real application's model would reject: a delta
    payload that is not 8 bytes, and "poison" deltas >= 2**63 (``apply`` raises). The
    publisher never sends either; only an attacker (or corruption) does."""

    def decode_delta(self, payload: memoryview) -> int:
        if len(payload) != 8:
            raise ValueError(f"a chain delta is 8 bytes, not {len(payload)}")
        return super().decode_delta(payload)

    def apply(self, leaf: tuple[int, int], delta: int) -> tuple[int, int]:
        if delta >= POISON:
            raise ValueError(f"poison delta {delta:#x}")
        return super().apply(leaf, delta)

    # decode_leaf is ChainModel's: struct.error (not ValueError) for a wrong length.


class StrictBlobModel(BlobModel):
    """BlobModel with a size limit: short delta payloads, blobs past MAX_BLOB bytes and
    writes beyond it raise ValueError (instead of allocating gigabytes)."""

    def decode_delta(self, payload: memoryview) -> tuple[int, bytes]:
        if len(payload) < 4:
            raise ValueError(f"a blob delta needs a 4-byte offset, got {len(payload)} bytes")
        return super().decode_delta(payload)

    def apply(self, leaf: bytes, delta: tuple[int, bytes]) -> bytes:
        if delta[0] + len(delta[1]) > MAX_BLOB:
            raise ValueError(f"write past {MAX_BLOB} bytes")
        return super().apply(leaf, delta)

    def decode_leaf(self, payload: memoryview) -> bytes:
        if len(payload) > MAX_BLOB:
            raise ValueError(f"a blob of {len(payload)} bytes is over {MAX_BLOB}")
        return super().decode_leaf(payload)


def strict_model(kind: str) -> LeafModel[Any, Any]:
    """The model of a scenario's ``model``: StrictChainModel for "chain", else
    StrictBlobModel. Which one is known at run time only: leaves and deltas are Any."""
    return StrictChainModel() if kind == "chain" else StrictBlobModel()


def blob_delta(value: int) -> tuple[int, bytes]:
    """The blob delta a publish move's int stands for: up to 24 bytes somewhere in the
    first ~500, so leaves grow to a few hundred bytes and snapshots need fragments."""
    offset = (value >> 8) % 480
    return offset, bytes([value & 0xFF]) * (1 + (value >> 17) % 24)


# --------------------------------------------------------------------------- scenario


@dataclass(frozen=True)
class Scenario:
    """What the world is made of. ``repr()`` is valid Python (printed in traces)."""

    model: str = "chain"  # "chain" (16-byte leaves) or "blob" (fragmented snapshots)
    subscribers: int = 2
    # Which moves random schedules draw, and whether control forgeries taint:
    # "honest" (no forgery), "control" (control forgeries must keep the strict oracle),
    # "all" (content forgeries too; control ones then taint like content).
    attacks: str = "all"
    touched: bool = True  # TOUCHED summaries on
    leaf_pool: tuple[int, ...] = (0, 1, 2, 3, 4, 5, 6, 7, wire.MAX_LEAF_ID)
    initial_leaves: int = 4  # the first session starts with this many leaves (leaf_seq 0)
    min_cycle_s: float | None = None  # None: 0.05 s (chain) or 0.1 s (blob)
    retransmit: bool = True  # the publisher answers requests; even subscribers ask (SPEC §15)

    @property
    def control_taints(self) -> bool:
        return self.attacks == "all"

    def publisher_config(self) -> PublisherConfig:
        # Fast cycles and heartbeats keep simulated time (and test time) short.
        return PublisherConfig(
            max_datagram_size=1400 if self.model == "chain" else 200,
            min_cycle_s=self.min_cycle_s or (0.05 if self.model == "chain" else 0.1),
            heartbeat_interval_s=0.1,
            touched_interval_s=0.005 if self.touched else 0.0,
            retransmit_datagrams=64 if self.retransmit else 0,  # small: ranges age out
        )

    def subscriber_config(self, index: int) -> SubscriberConfig:
        if index % 2 == 0:
            # The defaults users get (retransmission on, unless the scenario turns it off).
            return SubscriberConfig(retransmit=self.retransmit)
        # Tight limits, so that overflow paths run: a short reorder window, few pending
        # datagrams, small delta buffers, few and small reassemblies; no retransmission,
        # so the snapshot cycle repairs every loss.
        return SubscriberConfig(reorder_window_s=0.005, reorder_window_datagrams=8,
                                max_buffered_deltas_per_leaf=16, max_snapshot_bytes=2048,
                                max_reassemblies=4, retransmit=False)


# --------------------------------------------------------------------------- wire surgery

# Field -> (offset, struct code). Header offsets are from the datagram start; message
# offsets from the message start (its 4-byte header included).
_HEADER_FIELDS = {"flags": (5, "B"), "message_count": (6, "H"), "stream_id": (8, "I"),
                  "session_id": (12, "Q"), "sequence": (20, "Q"), "send_time_ns": (28, "Q")}
_MESSAGE_FIELDS = {"kind": (0, "B"), "flags": (1, "B"), "length": (2, "H")}
_BODY_FIELDS: dict[int, dict[str, tuple[int, str]]] = {
    MessageKind.DELTA: {"leaf_id": (4, "I"), "leaf_seq": (8, "Q")},
    MessageKind.SNAPSHOT: {"leaf_id": (4, "I"), "range_start": (8, "I"), "cycle_id": (12, "I"),
                           "cycle_position": (16, "I"), "cycle_count": (20, "I"),
                           "leaf_seq": (24, "Q"), "as_of_seq": (32, "Q"),
                           "total_length": (40, "I"), "fragment_offset": (44, "I")},
    MessageKind.TOUCHED: {"first_seq": (4, "Q"), "end_seq": (12, "Q")},
}
_SCOPE_KIND = {"delta": MessageKind.DELTA, "snapshot": MessageKind.SNAPSHOT,
               "touched": MessageKind.TOUCHED, "message": None}
# Fields a mutation may target, for random drivers.
MUTABLE_FIELDS = (
    *(f"header.{name}" for name in _HEADER_FIELDS),
    "message.kind", "message.length",
    "delta.flags", "delta.leaf_id", "delta.leaf_seq",
    "snapshot.flags", *(f"snapshot.{name}" for name in _BODY_FIELDS[MessageKind.SNAPSHOT]),
    "touched.first_seq", "touched.end_seq", "touched.entry_leaf_id", "touched.entry_leaf_seq",
)
# Mutations that forge no leaf content: the control forgeries of the strict-control mode.
# (header.sequence counts only on a datagram without deltas: on one with deltas it moves
# real changes to other stream positions, which is forged content.)
CONTROL_FIELDS = frozenset({"header.flags", "header.message_count", "header.stream_id",
                            "header.session_id", "header.send_time_ns",
                            "snapshot.range_start", "snapshot.cycle_id",
                            "snapshot.cycle_position", "snapshot.cycle_count"})


def message_spans(data: bytes) -> list[tuple[int, int, int]]:
    """(kind, start, stop) of each message of a well-formed datagram without trailer."""
    (count,) = struct.unpack_from("<H", data, 6)
    spans = []
    offset = HEADER_SIZE
    for _ in range(count):
        kind, _flags, length = struct.unpack_from("<BBH", data, offset)
        stop = offset + 4 + length
        spans.append((kind, offset, stop))
        offset = stop
    return spans


def _pick_span(data: bytes, scope: str, which: int) -> tuple[int, int, int] | None:
    wanted = _SCOPE_KIND[scope]
    spans = [s for s in message_spans(data) if wanted is None or s[0] == wanted]
    return spans[which % len(spans)] if spans else None


def patch_field(data: bytes, target: str, op: str, operand: int, which: int = 0,
                at: int = 0) -> tuple[bytes, int, int] | None:
    """Change one field of a copy of ``data``: ``op`` is "set", "xor" or "add" (wrapping
    at the field's width). ``target`` is "header.<f>", "message.<f>" (any message) or
    "<kind>.<f>"; ``which`` picks among the matching messages and ``at`` among a
    TOUCHED's entries. Returns (new bytes, old value, new value), or None if the datagram
    has no such field."""
    scope, name = target.split(".")
    if scope == "header":
        offset, code = _HEADER_FIELDS[name]
    else:
        span = _pick_span(data, scope, which)
        if span is None:
            return None
        kind, start, stop = span
        if name in _MESSAGE_FIELDS:
            relative, code = _MESSAGE_FIELDS[name]
        elif name.startswith("entry_"):
            entries = (stop - start - 20) // 12
            if entries <= 0:
                return None
            relative = 20 + 12 * (at % entries) + (0 if name == "entry_leaf_id" else 4)
            code = "I" if name == "entry_leaf_id" else "Q"
        else:
            relative, code = _BODY_FIELDS[kind][name]
        offset = start + relative
    buffer = bytearray(data)
    (old,) = struct.unpack_from("<" + code, buffer, offset)
    mask = (1 << (8 * struct.calcsize(code))) - 1
    new = {"set": operand, "xor": old ^ operand, "add": old + operand}[op] & mask
    struct.pack_into("<" + code, buffer, offset, new)
    return bytes(buffer), old, new


def replace_body(data: bytes, scope: str, which: int, body: bytes) -> bytes:
    """``data`` with the chosen message's body replaced (its length field follows)."""
    span = _pick_span(data, scope, which)
    assert span is not None
    _, start, stop = span
    return data[: start + 2] + struct.pack("<H", len(body)) + body + data[stop:]


def stamped(data: bytes, send_time_ns: int) -> bytes:
    """A copy of a datagram with another header ``send_time_ns`` (an informational field)."""
    return data[:28] + struct.pack("<Q", send_time_ns) + data[36:]


def classes_of(data: bytes) -> frozenset[str]:
    """What a datagram carries, for selectors such as ("drop", sub, "touched", -1)."""
    try:
        messages = decode_datagram(data).messages
    except DecodeError:
        return frozenset({"any", "malformed"})
    kinds = {type(m).__name__ for m in messages}
    out = {"any"}
    out.update(name for cls, name in (("Delta", "delta"), ("Snapshot", "snapshot"),
                                      ("Touched", "touched"), ("Heartbeat", "heartbeat"),
                                      ("EndOfSession", "eos")) if cls in kinds)
    if "Delta" not in kinds:
        out.add("quiet")
    return frozenset(out)


def leaf_ids_in(data: bytes) -> set[int]:
    """Every leaf id a datagram names (deltas, snapshots, summary entries)."""
    try:
        messages = decode_datagram(data).messages
    except DecodeError:
        return set()
    ids: set[int] = set()
    for m in messages:
        if isinstance(m, Delta | Snapshot):
            ids.add(m.leaf_id)
        elif isinstance(m, Touched):
            ids.update(leaf_id for leaf_id, _ in m.entries)
    return ids


def fragment_pieces(rng: random.Random, total: int) -> list[tuple[int, int]]:
    """Honest but unusual framing of a ``total``-byte encoding: pieces that overlap the
    previous one, repeats, any order, sometimes one piece lost."""
    if total <= 1:
        return [(0, total)] * rng.randint(1, 2)
    cuts = sorted({0, total, *(rng.randrange(1, total) for _ in range(rng.randint(1, 4)))})
    pieces = [(max(0, a - rng.choice((0, 0, 1, 3, 8))), b) for a, b in itertools.pairwise(cuts)]
    if len(pieces) > 2 and rng.random() < 0.3:
        del pieces[rng.randrange(len(pieces))]  # a lost fragment: the rest must not do
    pieces += [rng.choice(pieces) for _ in range(rng.randint(0, 2))]
    if rng.random() < 0.7:
        rng.shuffle(pieces)
    return pieces


# --------------------------------------------------------------------------- the world


class OracleFailure(AssertionError):
    """The oracle found a subscriber misbehaving. ``kind`` is one of "exception",
    "invariant", "memory", "strict", "heal"; ``signature`` identifies the failure for
    shrinking (same kind, same exception type)."""

    def __init__(self, kind: str, detail: str, step: int, move: Move | None,
                 extra: str = "") -> None:
        super().__init__(f"[{kind}] at move {step} {move!r}: {detail}")
        self.kind = kind
        self.detail = detail
        self.step = step
        self.move = move
        self.signature = (kind, extra)


_DELETED: Any = object()


class SessionLog:
    """Every change one publisher session made, to answer "what was leaf L just before
    stream sequence E?" (the value a subscriber at position E must hold)."""

    def __init__(self, initial: Mapping[int, Any]) -> None:
        self.initial = dict(initial)
        self.changes: dict[int, list[tuple[int, Any]]] = {}

    def record(self, leaf_id: int, seq: int, value: Any) -> None:
        self.changes.setdefault(leaf_id, []).append((seq, value))

    def value_before(self, leaf_id: int, seq: int) -> Any:
        changes = self.changes.get(leaf_id, ())
        i = bisect.bisect_left(changes, seq, key=lambda change: change[0])
        return changes[i - 1][1] if i else self.initial.get(leaf_id, _DELETED)

    def alive_before(self, seq: int) -> dict[int, Any]:
        out = {}
        for leaf_id in set(self.initial) | set(self.changes):
            value = self.value_before(leaf_id, seq)
            if value is not _DELETED:
                out[leaf_id] = value
        return out

    def lag(self, leaf_id: int, value: Any, seq: int) -> str:
        """How a wrong value relates to the truth, e.g. "1 change(s) behind"."""
        history = [(0, self.initial.get(leaf_id, _DELETED)), *self.changes.get(leaf_id, ())]
        now = [i for i, (s, _) in enumerate(history) if s < seq or i == 0][-1]
        matches = [i for i, (_, v) in enumerate(history) if v == value]
        if not matches:
            return "a value the publisher never had"
        return f"{now - matches[-1]} change(s) behind" if matches[-1] <= now else "ahead"


@dataclass
class Flight:
    """One datagram on its way to one subscriber."""

    due: int | None  # delivery time in microseconds; None: held until released
    order: int  # ties on ``due`` are delivered in sending order
    data: bytes
    tag: str  # "honest", "control" (forged, no leaf content) or "content" (forged)
    classes: frozenset[str]
    ids: frozenset[int] = frozenset()  # the leaf ids it names


@dataclass
class Faults:
    """Random per-datagram faults of one link, drawn from their own seeded stream."""

    rng: random.Random
    loss: int  # percentages
    dup: int
    delay: int
    hold: int
    max_delay_ms: int


@dataclass
class Sub:
    index: int
    config: SubscriberConfig
    core: SubscriberCore[Any, Any]
    inflight: list[Flight] = field(default_factory=list)
    faults: Faults | None = None
    armed: list[tuple[str, str, int]] = field(default_factory=list)
    tainted: bool = False
    seen_ids: set[int] = field(default_factory=set)
    events: deque[Any] = field(default_factory=lambda: deque(maxlen=12))
    received: int = 0


@dataclass
class Sent:
    session_id: int
    data: bytes
    classes: frozenset[str]


class World:
    """One publisher, ``scenario.subscribers`` subscribers and the adversary between."""

    def __init__(self, scenario: Scenario | None = None) -> None:
        self.scenario = scenario = scenario or Scenario()
        self.model = strict_model(scenario.model)
        self.pub_config = scenario.publisher_config()
        self.now_us = 0
        self.trace: list[Move] = []
        self.logs: dict[int, SessionLog] = {}
        self.archive: deque[Sent] = deque(maxlen=256)  # every datagram the publisher sent
        self.snapshots: deque[tuple[int, Snapshot]] = deque(maxlen=32)  # complete, honest
        self._fragments: dict[tuple[int, ...], dict[int, bytes]] = {}
        self._order = itertools.count()
        self._sessions = itertools.count(1)
        self.subs = [Sub(i, cfg, SubscriberCore(self.model, cfg))
                     for i, cfg in ((i, scenario.subscriber_config(i))
                                    for i in range(scenario.subscribers))]
        initial = {leaf_id: self.model.apply(self.model.new_leaf(), self.delta(leaf_id + 1))
                   for leaf_id in scenario.leaf_pool[: scenario.initial_leaves]}
        self.pub = self._new_publisher(initial)
        self.pump()

    # ------------------------------------------------------------------ driving

    @property
    def now(self) -> float:
        return self.now_us / 1_000_000

    def run(self, moves: Iterable[Move]) -> None:
        for move in moves:
            self.apply(move)

    def apply(self, move: Move) -> None:
        self.trace.append(tuple(move))
        name, *args = move
        getattr(self, f"move_{name}")(*args)

    def delta(self, value: int) -> Any:
        return value if self.scenario.model == "chain" else blob_delta(value)

    @property
    def log(self) -> SessionLog:
        return self.logs[self.pub.session_id]

    # ------------------------------------------------------------------ publisher moves

    def move_publish(self, leaf_id: int, value: int) -> None:
        """Change (or create) a leaf; the datagram leaves at once."""
        self._change(leaf_id, value)
        self.pump()

    def move_delete(self, leaf_id: int) -> None:
        if leaf_id in self.pub.leaves:
            self._change(leaf_id, None)
            self.pump()

    def move_burst(self, seed: int, count: int) -> None:
        """``count`` random changes at one instant (they share datagrams)."""
        rng = random.Random(seed)
        for _ in range(count):
            self._random_change(rng)
        self.pump()

    def move_restart(self, clean: bool, keep_state: bool) -> None:
        """A new publisher session: after END_OF_SESSION x3 if ``clean``, else a crash
        (whatever was queued is lost)."""
        if clean:
            self.pump()
            eos = bytes(self.pub.end_of_session(self.now))
            for copy in range(3):  # stamped apart, as the runtime publisher sends them
                self._broadcast(stamped(eos, self.now_us * 1000 + copy + 1))
        self.pub = self._new_publisher(dict(self.pub.leaves.items()) if keep_state else {})
        self.pump()

    def move_advance(self, ms: float) -> None:
        """Let time pass: the publisher sends (cycle, summaries, heartbeats), datagrams
        arrive when due, subscribers' timers run."""
        self.advance_us(round(ms * 1000))

    # ------------------------------------------------------------------ delivery moves
    # ``cls`` selects datagrams by what they carry (DATAGRAM_CLASSES); ``k`` picks among
    # the matches in sending order, negative from the newest. No match: nothing happens.

    def move_drop(self, sub: int, cls: str, k: int) -> None:
        s = self.sub(sub)
        i = self._pick(s.inflight, cls, k)
        if i is not None:
            del s.inflight[i]

    def move_dup(self, sub: int, cls: str, k: int) -> None:
        s = self.sub(sub)
        i = self._pick(s.inflight, cls, k)
        if i is not None:
            f = s.inflight[i]
            s.inflight.append(Flight(f.due, next(self._order), f.data, f.tag, f.classes,
                                     f.ids))

    def move_delay(self, sub: int, cls: str, k: int, ms: float) -> None:
        s = self.sub(sub)
        i = self._pick(s.inflight, cls, k)
        if i is not None:
            f = s.inflight[i]
            f.due = (self.now_us if f.due is None else f.due) + round(ms * 1000)

    def move_hold(self, sub: int, cls: str, k: int) -> None:
        """Hold a datagram until released (or until the next heal)."""
        s = self.sub(sub)
        i = self._pick(s.inflight, cls, k)
        if i is not None:
            s.inflight[i].due = None

    def move_release(self, sub: int, cls: str, k: int) -> None:
        """Deliver a datagram now, held or not: any delivery order is possible."""
        s = self.sub(sub)
        i = self._pick(s.inflight, cls, k)
        if i is not None:
            self._deliver(s, s.inflight.pop(i))

    def move_arm(self, sub: int, cls: str, action: str, ms: float = 0) -> None:
        """Do ``action`` ("drop", "dup", "hold", "delay" by ``ms``) to the next datagram of
        class ``cls`` the publisher sends to ``sub`` (arms are used in order)."""
        self.sub(sub).armed.append((cls, action, round(ms * 1000)))

    def move_faults(self, sub: int, seed: int, loss: int, dup: int, delay: int, hold: int,
                    max_delay_ms: int) -> None:
        """Random faults (percentages) on every later datagram to ``sub``; all 0: clean."""
        s = self.sub(sub)
        s.faults = (Faults(random.Random(seed), loss, dup, delay, hold, max(1, max_delay_ms))
                    if loss or dup or delay or hold else None)

    def move_replay(self, sub: int, cls: str, k: int) -> None:
        """A late copy of a datagram the publisher sent earlier (any session): honest."""
        sent = [a for a in self.archive if cls in a.classes]
        if sent:
            a = sent[k % len(sent)]
            self._inject(self.sub(sub), a.data, "honest")

    def move_fragments(self, sub: int, k: int, pieces: Iterable[tuple[int, int]]) -> None:
        """Re-send snapshot ``k`` (of the complete ones seen, negative from the newest) as
        the given [start, stop) pieces of its encoding, one datagram each: honest bytes,
        other framing (overlapping, repeated, out of order, incomplete)."""
        if not self.snapshots:
            return
        session_id, snap = self.snapshots[k % len(self.snapshots)]
        for start, stop in pieces:
            start = min(start, snap.total_length)
            stop = max(start, min(stop, snap.total_length))
            builder = DatagramBuilder(self.pub_config.stream_id, session_id,
                                      wire.MAX_DATAGRAM_SIZE)
            builder.start(snap.as_of_seq)  # honest: the stream was there when it was made
            builder.add_snapshot(snap._replace(fragment_offset=start,
                                               payload=snap.payload[start:stop]))
            self._inject(self.sub(sub), bytes(builder.finish(0)), "honest")

    def move_refragment(self, sub: int, k: int, seed: int) -> None:
        if self.snapshots:
            total = self.snapshots[k % len(self.snapshots)][1].total_length
            self.move_fragments(sub, k, fragment_pieces(random.Random(seed), total))

    def move_rejoin(self, sub: int) -> None:
        """The subscriber restarts: a late joiner with an empty replica."""
        s = self.sub(sub)
        s.core = SubscriberCore(self.model, s.config)
        s.tainted = False
        s.seen_ids = set()
        s.events.clear()

    def move_overload(self, sub: int) -> None:
        """The runtime reports kernel drops (it read too slowly): holes become gaps at
        once and, for a while, STALE leaves keep no buffer. At any moment, not only after
        a loss: the promises must hold whenever it comes."""
        self._call(self.sub(sub), None, overloaded=True)

    def move_backlog(self, sub: int, fills: list[float]) -> None:
        """The runtime reports its receive queue filling: ``fills``, one report every
        millisecond (what a receiver reading batches without emptying its queue sends).
        Rising long enough, it sheds leaves and puts repairs off; at any moment, under any
        fault or attack, every promise must hold, and the leaves come back once the
        reports stop."""
        s = self.sub(sub)
        for fill in fills:
            self._call(s, None, backlog=fill)
            self.advance_us(1000)

    # ------------------------------------------------------------------ attacks

    def move_mutate(self, sub: int, cls: str, k: int, target: str, op: str, operand: int,
                    which: int = 0, at: int = 0) -> None:
        """Inject a copy of a real datagram (``k``-th of class ``cls`` sent, from the
        newest) with one field changed (see :func:`patch_field`)."""
        sent = [a for a in self.archive if cls in a.classes]
        if not sent:
            return
        original = sent[k % len(sent)].data
        patched = patch_field(original, target, op, operand, which, at)
        if patched is None:
            return
        data, old, new = patched
        tag = "content"
        scope = target.split(".")[0]
        span = _pick_span(original, scope, which) if scope != "header" else None
        if target == "header.session_id" and new in self.logs:
            tag = "content"  # moved into another real session: that is forged content
        elif target in CONTROL_FIELDS or (target == "header.sequence"
                                        and "delta" not in classes_of(original)):
            tag = "control"
        elif (target in ("snapshot.flags", "message.flags") and old ^ new == SnapshotFlag.LAST
              and span is not None and span[0] == MessageKind.SNAPSHOT):
            tag = "control"  # only LAST changed on a real snapshot: a claim, no content
        self._inject(self.sub(sub), data, tag)

    def move_payload(self, sub: int, cls: str, k: int, scope: str, how: str,
                     which: int = 0) -> None:
        """Inject a copy of a real datagram with one DELTA or SNAPSHOT payload (or one
        TOUCHED's entries) replaced: "short", "long", "empty", "poison" (decodes, but the
        model's apply refuses it), "garbage" (same length, other bytes)."""
        sent = [a for a in self.archive if cls in a.classes]
        if not sent:
            return
        original = sent[k % len(sent)].data
        span = _pick_span(original, scope, which)
        if span is None:
            return
        _, start, stop = span
        body = original[start + 4 : stop]
        fixed = {"delta": 12, "snapshot": 44, "touched": 16}[scope]
        head, payload = body[:fixed], body[fixed:]
        if scope == "touched":
            entries = [payload[i : i + 12] for i in range(0, len(payload), 12)]
            if how == "short" and entries:
                del entries[which % len(entries)]
            elif how == "long":
                entries.append(struct.pack("<IQ", wire.MAX_LEAF_ID, 1))
            elif how == "empty":
                entries = []
            payload = b"".join(entries)
        else:
            poison = (struct.pack("<Q", POISON | 0xBAD) if self.scenario.model == "chain"
                      else struct.pack("<I", 1 << 30) + b"x")
            payload = {"short": payload[:-1], "long": payload + b"\x01", "empty": b"",
                       "poison": poison if scope == "delta" else payload[:7],
                       "garbage": bytes(b ^ 0x5A for b in payload)}[how]
            if scope == "snapshot":
                # A whole (unfragmented) snapshot of the new payload.
                head = head[:36] + struct.pack("<II", len(payload), 0)
        self._inject(self.sub(sub), replace_body(original, scope, which, head + payload),
                     "content")

    def move_forge(self, sub: int, what: str, arg: int = 0) -> None:
        """Inject a datagram made from scratch:

        * "eos": END_OF_SESSION with the live session id and the stream's position;
        * "huge_seq": a HEARTBEAT with the live session id and sequence 2**62;
        * "flip_seq": a HEARTBEAT at the stream's position with bit ``arg`` flipped;
        * "foreign": a HEARTBEAT of session FOREIGN_SESSION + ``arg``, sequence 1;
        * "foreign_eos": END_OF_SESSION of a foreign session;
        * "last": a copy of the newest real snapshot number ``arg`` of its datagram, made
          a consistent end of cycle (LAST set, cycle_count = cycle_position + 1): it
          claims no leaf above it exists;
        * "empty_cycle": the empty-cycle marker (DELETED|LAST: "no leaf exists") in the
          live session: forged content.
        """
        if what == "last":
            for sent in reversed(self.archive):
                snaps = [m for m in decode_datagram(sent.data).messages if isinstance(m, Snapshot)
                         and not m.flags & SnapshotFlag.DELETED]
                if snaps and sent.session_id == self.pub.session_id:
                    snap = snaps[arg % len(snaps)]
                    claim = snap._replace(flags=snap.flags | SnapshotFlag.LAST,
                                          cycle_count=snap.cycle_position + 1,
                                          payload=bytes(snap.payload))
                    builder = DatagramBuilder(self.pub_config.stream_id, sent.session_id,
                                              wire.MAX_DATAGRAM_SIZE)
                    builder.start(snap.as_of_seq)
                    builder.add_snapshot(claim)
                    self._inject(self.sub(sub), bytes(builder.finish(self.now_us * 1000 + 7)),
                                 "control")
                    return
            return
        session, sequence, tag = self.pub.session_id, self.pub.next_seq, "control"
        if what in ("foreign", "foreign_eos"):
            session, sequence = FOREIGN_SESSION + arg % 4, 1
        elif what == "huge_seq":
            sequence = 1 << 62
        elif what == "flip_seq":
            sequence ^= 1 << (arg % 64)
        builder = DatagramBuilder(self.pub_config.stream_id, session)
        builder.start(sequence)
        if what in ("eos", "foreign_eos"):
            builder.add_end_of_session()
        elif what == "empty_cycle":
            builder.add_snapshot(Snapshot(0, 0, self.pub.cycle_id, 0, 0, 0, sequence, 0, 0,
                                          SnapshotFlag.DELETED | SnapshotFlag.LAST, b""))
            tag = "content"
        else:
            builder.add_heartbeat(round(self.pub_config.heartbeat_interval_s * 1000))
        # Stamped like a live datagram, so that repeated forgeries are not byte-identical.
        self._inject(self.sub(sub), bytes(builder.finish(self.now_us * 1000 + 7)), tag)

    # ------------------------------------------------------------------ healing

    def move_heal(self, seed: int, publish: bool = True) -> None:
        """The attack is over: forged datagrams still in flight vanish, honest held ones
        arrive now, links are clean. Honest traffic (changes every 5 ms if ``publish``)
        then flows for the restart grace plus two full snapshot cycles; after that every
        subscriber must be synced and equal to the publisher, and is strictly checked
        again from then on."""
        rng = random.Random(seed)
        for s in self.subs:
            s.inflight = [f for f in s.inflight if f.tag == "honest"]
            for f in s.inflight:
                f.due = self.now_us if f.due is None else min(f.due, self.now_us)
            s.faults = None
            s.armed.clear()
        self.advance_us(0)
        grace_us = max(self._grace_us(s) for s in self.subs)
        start = self.now_us
        cycles_at: int | None = None
        # Two full cycles: the one in progress ends, then two more start and end.
        while cycles_at is None or self.pub.stats.cycles < cycles_at + 3:
            if publish:
                self._random_change(rng)
                self.pump()
            self.advance_us(5_000)
            if cycles_at is None and self.now_us - start >= grace_us:
                cycles_at = self.pub.stats.cycles
            # (The grace itself may be 60 s: a forged HEARTBEAT interval raises it until
            # an honest one is processed in order, SPEC §12(l).)
            if self.now_us - start > grace_us + 60_000_000:
                self.fail("heal", "the publisher completed no snapshot cycle in 60 s "
                                  "after the restart grace")
        # A quiet tail so that everything sent is delivered and reorder windows expire.
        tail = max(s.config.reorder_window_s for s in self.subs) + 0.05
        self.advance_us(round(tail * 1_000_000))
        for s in self.subs:
            self._check_healed(s)
            s.tainted = False

    def _grace_us(self, s: Sub) -> int:
        """The restart grace: 2 heartbeat intervals of the publisher, or what the
        subscriber uses if longer (one that has seen no heartbeat of its session uses its
        configured default, SPEC 6.4)."""
        grace = s.config.restart_grace_s or 2 * self.pub_config.heartbeat_interval_s
        return round(max(grace, getattr(s.core, "restart_grace_s", 0.0)) * 1_000_000)

    def _check_healed(self, s: Sub) -> None:
        core, pub = s.core, self.pub
        problems, tags = [], []
        if core.session_id != pub.session_id:
            tags.append("session")
            problems.append(f"follows session {_hex(core.session_id)}, not the publisher's "
                            f"{_hex(pub.session_id)}")
        elif core.expected != pub.next_seq:
            tags.append("position")
            problems.append(f"expected={core.expected} but the publisher's next sequence is "
                            f"{pub.next_seq}")
        if not core.synced:
            tags.append("unsynced")
            problems.append(f"not synced (stale={core.stale_leaves()[:8]}, "
                            f"suspect={core.suspect_leaves()[:8]})")
        diff = _diff(dict(pub.leaves.items()), core.values())
        if diff:
            tags.append("replica")
            problems.append(f"replica differs from the publisher: {diff}")
        if problems:
            self.fail("heal", f"subscriber {s.index} after 2 full cycles + restart grace of "
                              f"honest traffic: " + "; ".join(problems) + self._context(s),
                      extra=",".join(tags))

    # ------------------------------------------------------------------ the network

    def sub(self, index: int) -> Sub:
        return self.subs[index % len(self.subs)]

    def _new_publisher(self, initial: Mapping[int, Any]) -> PublisherCore[Any, Any]:
        # Spread over 64 bits like real random ids, so that a forged copy with a flipped
        # session_id bit never lands on another real session by accident.
        session_id = (next(self._sessions) * 0x9E37_79B9_7F4A_7C15) & ((1 << 64) - 1) | 1
        pub = PublisherCore(self.model, self.pub_config, initial=initial,
                            session_id=session_id, now=self.now)
        self.logs[session_id] = SessionLog(initial)
        return pub

    def _change(self, leaf_id: int, value: int | None) -> None:
        if value is None:
            seq = self.pub.delete(leaf_id)
            self.log.record(leaf_id, seq, _DELETED)
        else:
            seq = self.pub.publish(leaf_id, self.delta(value))
            self.log.record(leaf_id, seq, self.pub.leaves[leaf_id])

    def _random_change(self, rng: random.Random) -> None:
        leaf_id = rng.choice(self.scenario.leaf_pool)
        if leaf_id in self.pub.leaves and rng.random() < 0.1:
            self._change(leaf_id, None)
        else:
            self._change(leaf_id, rng.getrandbits(32))

    def pump(self) -> None:
        """Send every datagram the publisher has due now."""
        while (datagram := self.pub.next_datagram(self.now)) is not None:
            self._broadcast(bytes(datagram))

    def _broadcast(self, data: bytes) -> None:
        classes = classes_of(data)
        ids = frozenset(leaf_ids_in(data))
        self.archive.append(Sent(self.pub.session_id, data, classes))
        self._collect_snapshots(data)
        for s in self.subs:
            self._route(s, data, classes, ids)

    def _route(self, s: Sub, data: bytes, classes: frozenset[str],
               ids: frozenset[int]) -> None:
        due: int | None = self.now_us + LATENCY_US
        copies = 1
        action, ms = "", 0
        for i, (cls, armed_action, armed_ms) in enumerate(s.armed):
            if cls in classes:
                action, ms = armed_action, armed_ms
                del s.armed[i]
                break
        else:
            if s.faults is not None:
                f, roll = s.faults, s.faults.rng.randrange
                if roll(100) < f.loss:
                    action = "drop"
                elif roll(100) < f.hold:
                    action = "hold"
                elif roll(100) < f.delay:
                    action, ms = "delay", 1000 * (1 + roll(f.max_delay_ms))
                elif roll(100) < f.dup:
                    action = "dup"
        if action == "drop":
            return
        if action == "hold":
            due = None
        elif action == "delay":
            due = self.now_us + ms
        elif action == "dup":
            copies = 2
        for _ in range(copies):
            s.inflight.append(Flight(due, next(self._order), data, "honest", classes, ids))

    def _request(self, s: Sub, first: int, end: int) -> None:
        """A subscriber asks for [first, end) again: the request crosses its link (and may
        be lost there), the publisher answers, and every answer crosses the link back
        under the same faults as the stream (SPEC §15)."""
        session_id = s.core.session_id
        if session_id is None or (s.faults is not None and s.faults.rng.randrange(100)
                                  < s.faults.loss):
            return
        request = encode_retransmit(RetransmitMessage(
            wire.RetransmitKind.REQUEST, self.pub_config.stream_id, session_id, first, end))
        for answer in self.pub.answer(request, s.index, self.now):
            if answer[:4] == wire.RETRANSMIT_MAGIC:
                classes, ids = frozenset({"any", "retransmit", "quiet"}), frozenset[int]()
            else:
                classes = classes_of(answer) | {"retransmit"}
                ids = frozenset(leaf_ids_in(answer))
            self._route(s, answer, classes, ids)

    def _inject(self, s: Sub, data: bytes, tag: str) -> None:
        s.inflight.append(Flight(self.now_us + LATENCY_US, next(self._order), data, tag,
                                 classes_of(data), frozenset(leaf_ids_in(data))))

    def _collect_snapshots(self, data: bytes) -> None:
        """Keep complete honest snapshots (reassembled here) for re-fragmenting moves."""
        for m in decode_datagram(data).messages:
            if not isinstance(m, Snapshot):
                continue
            if len(m.payload) == m.total_length:
                self.snapshots.append((self.pub.session_id, m._replace(payload=bytes(m.payload))))
                continue
            key = (self.pub.session_id, m.leaf_id, m.leaf_seq, m.as_of_seq, m.cycle_id)
            if len(self._fragments) > 64:
                self._fragments.clear()
            parts = self._fragments.setdefault(key, {})
            parts[m.fragment_offset] = bytes(m.payload)
            whole = b""
            while len(whole) in parts:
                whole += parts[len(whole)]
            if len(whole) == m.total_length:
                del self._fragments[key]
                self.snapshots.append((key[0], m._replace(fragment_offset=0, payload=whole)))

    @staticmethod
    def _pick(flights: list[Flight], cls: str, k: int) -> int | None:
        matches = [i for i, f in enumerate(flights) if cls in f.classes]
        return matches[k % len(matches)] if matches else None

    def advance_us(self, duration: int) -> None:
        end = self.now_us + duration
        while True:
            self.pump()
            self._deliver_due()
            for s in self.subs:
                self._call(s, None)
            if self.now_us >= end:
                return
            self.now_us = min(end, self._next_event())

    def _next_event(self) -> int:
        """The next instant anything happens (event-driven, so 10 s cost little)."""
        times = [self.pub.next_wakeup(self.now)]
        for s in self.subs:
            times.extend(f.due / 1_000_000 for f in s.inflight if f.due is not None)
            # Timers need not be exact: like the runtime, wake at most every millisecond.
            next_poll = getattr(s.core, "next_poll", None)
            times.append(max(next_poll(self.now), self.now + 0.001) if next_poll
                         else self.now + 0.005)
        return max(self.now_us + 1, math.ceil(min(times) * 1_000_000 - 1e-3))

    def _deliver_due(self) -> None:
        while True:
            due = [(f.due, f.order, s, f) for s in self.subs for f in s.inflight
                   if f.due is not None and f.due <= self.now_us]
            if not due:
                return
            _, _, s, f = min(due, key=lambda item: (item[0], item[1]))
            s.inflight.remove(f)
            self._deliver(s, f)

    def _deliver(self, s: Sub, f: Flight) -> None:
        if f.tag == "content" or (f.tag == "control" and self.scenario.control_taints):
            s.tainted = True
        s.seen_ids |= f.ids
        s.received += 1
        self._call(s, f.data)

    def _call(self, s: Sub, data: bytes | None, *, overloaded: bool = False,
              backlog: float | None = None) -> None:
        """receive() (or poll() if ``data`` is None, or overloaded() or backlog()), then
        the oracle."""
        what = ("overloaded" if overloaded else "backlog" if backlog is not None
                else "poll" if data is None else "receive")
        try:
            if overloaded:
                s.core.overloaded(self.now)
            elif backlog is not None:
                s.core.backlog(backlog, self.now)
            elif data is None:
                s.core.poll(self.now)
            elif data[:4] == wire.RETRANSMIT_MAGIC:  # an UNAVAILABLE answer, as the runtime
                packet = decode_retransmit(data)
                s.core.retransmit_unavailable(packet.session_id, packet.first_seq,
                                              packet.end_seq, self.now, packet.available_end)
            else:
                s.core.receive(data, self.now)
        except Exception as exc:  # noqa: BLE001 - anything escaping the core is the finding
            tb = "".join(traceback.format_exception(exc, limit=-3))
            self.fail("exception", f"{type(exc).__name__}: {exc} escaped {what}() of "
                                   f"subscriber {s.index}\n{tb}", extra=type(exc).__name__)
        for name in ("updates", "events"):  # the runtime drains these; so do we
            items = getattr(s.core, name, None)
            if items:
                if name == "events":
                    s.events.extend(items)
                items.clear()
        requests, s.core.requests = s.core.requests, []
        self.check(s)
        for first, end in requests:
            self._request(s, first, end)

    # ------------------------------------------------------------------ the oracle

    def check(self, s: Sub) -> None:
        try:
            s.core._check()
        except Exception as exc:  # noqa: BLE001 - a broken invariant, reported with context
            self.fail("invariant", f"subscriber {s.index}: _check() failed: "
                                   f"{type(exc).__name__}: {exc}" + self._context(s))
        self._check_memory(s)
        if not s.tainted:
            self._check_strict(s)

    def _check_strict(self, s: Sub) -> None:
        core = s.core
        log = self.logs.get(core.session_id) if core.session_id is not None else None
        expected = core.expected
        if log is None or expected is None:
            return  # no session yet, or a forged one (only possible when tainted)
        values = core.values()
        for leaf_id, value in values.items():
            if not core.is_fresh(leaf_id):
                continue
            truth = log.value_before(leaf_id, expected)
            if truth is _DELETED:
                self.fail("strict", f"subscriber {s.index}: leaf {leaf_id} is reported "
                                    f"fresh but did not exist before sequence {expected}"
                          + self._context(s), extra="fresh-absent")
            if value != truth:
                self.fail("strict", f"subscriber {s.index}: leaf {leaf_id} is reported fresh "
                                    f"but is {log.lag(leaf_id, value, expected)} (position "
                                    f"expected={expected}): {_short(value)} != "
                                    f"{_short(truth)}" + self._context(s), extra="fresh-wrong")
        if core.synced:
            diff = _diff(log.alive_before(expected), values)
            if diff:
                self.fail("strict", f"subscriber {s.index} is synced at expected={expected} "
                                    f"but its replica differs: {diff}" + self._context(s),
                          extra="synced-differs")

    def _check_memory(self, s: Sub) -> None:
        cfg, seen = s.config, len(s.seen_ids)
        limits = {
            "pending datagrams": cfg.reorder_window_datagrams,
            "deltas buffered by one leaf": cfg.max_buffered_deltas_per_leaf,
            "reassemblies": cfg.max_reassemblies,
            "bytes of one reassembly": cfg.max_snapshot_bytes,
            "reassembly bytes": getattr(cfg, "max_reassembly_bytes",
                                        cfg.max_reassemblies * cfg.max_snapshot_bytes),
            # Records, summaries and tombstones only for leaf ids something named.
            "leaf records": seen,
            "summary chain entries": seen,
            "tombstones": seen,
        }
        for what, amount in footprint(s.core).items():
            if what in limits and amount > limits[what]:
                self.fail("memory", f"subscriber {s.index} holds {amount} {what}, over the "
                                    f"bound {limits[what]} from its config" + self._context(s))

    # ------------------------------------------------------------------ reporting

    def fail(self, kind: str, detail: str, extra: str = "") -> None:
        step = len(self.trace) - 1
        raise OracleFailure(kind, detail, step, self.trace[step] if self.trace else None,
                            extra)

    def _context(self, s: Sub) -> str:
        core = s.core
        stats = core.stats
        counters = {k: v for k, v in vars(stats).items() if v} if hasattr(stats, "__dict__") \
            else stats
        events = [(e.kind.name, e.leaf_id, e.first_seq, e.end_seq) for e in s.events]
        return (f"\n  now={self.now:.6f}s session={_hex(core.session_id)} "
                f"publisher={_hex(self.pub.session_id)} next_seq={self.pub.next_seq} "
                f"expected={core.expected} synced={core.synced}"
                f"\n  stats={counters}\n  recent events={events}")


def footprint(core: Any) -> dict[str, int]:
    """What a subscriber core holds, found by attribute name pattern and shape (so that
    internal renames and refactors are tolerated): whatever is not found is absent."""
    out: dict[str, int] = {}
    for name, value in _attributes(core).items():
        low = name.lower().strip("_")
        if ("pending" in low or "reorder" in low) and hasattr(value, "__len__"):
            out["pending datagrams"] = len(value)
        elif "reassembl" in low:
            partials = value if isinstance(value, Mapping) else _first_mapping(value)
            if partials is not None:
                sizes = [_held_bytes(v, 3) for v in partials.values()] if partials else []
                out["reassemblies"] = len(sizes)
                out["reassembly bytes"] = sum(sizes)
                out["bytes of one reassembly"] = max(sizes, default=0)
        elif low == "leaves" and isinstance(value, Mapping):
            out["leaf records"] = len(value)
            out["deltas buffered by one leaf"] = max(
                (len(buffer) for rec in value.values()
                 if (buffer := getattr(rec, "buffer", None))), default=0)
        elif low == "chain":
            entries = value if isinstance(value, Mapping) else _first_mapping(value)
            if entries is not None:
                out["summary chain entries"] = len(entries)
        elif low in ("deleted", "gone") and isinstance(value, Mapping):
            out["tombstones"] = len(value)
    return out


def _first_mapping(obj: Any) -> Mapping[Any, Any] | None:
    for value in _attributes(obj).values():
        if isinstance(value, Mapping):
            return value
    return None


_SLOTS: dict[type, tuple[str, ...]] = {}


def _attributes(obj: Any) -> dict[str, Any]:
    attrs = dict(getattr(obj, "__dict__", {}))
    slots = _SLOTS.get(type(obj))
    if slots is None:
        slots = _SLOTS[type(obj)] = tuple(
            name for cls in type(obj).__mro__ for name in getattr(cls, "__slots__", ()))
    for name in slots:
        if hasattr(obj, name):
            attrs[name] = getattr(obj, name)
    return attrs


def _held_bytes(obj: Any, depth: int = 2) -> int:
    """Bytes held in ``obj``'s byte buffers (one reassembly), a few levels deep."""
    if isinstance(obj, bytes | bytearray | memoryview):
        return len(obj)
    if depth == 0 or isinstance(obj, int | float | str):
        return 0
    if isinstance(obj, Mapping):
        return sum(_held_bytes(v, depth - 1) for v in obj.values())
    if isinstance(obj, list | tuple):
        return sum(_held_bytes(v, depth - 1) for v in obj)
    return sum(_held_bytes(v, depth - 1) for v in _attributes(obj).values())


def _diff(truth: Mapping[int, Any], actual: Mapping[int, Any]) -> str:
    missing = sorted(set(truth) - set(actual))
    extra = sorted(set(actual) - set(truth))
    wrong = sorted(k for k in set(truth) & set(actual) if truth[k] != actual[k])
    if not (missing or extra or wrong):
        return ""
    return f"missing={missing[:10]} extra={extra[:10]} wrong={wrong[:10]}"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _hex(value: int | None) -> str:
    return "None" if value is None else f"{value:#x}"


# --------------------------------------------------------------------------- schedules

_DELAYS_MS = (5, 30, 100, 1000, 10_000)
_ADVANCE_MS = (1, 1, 2, 3, 5, 5, 10, 20, 30, 50, 100, 250)


def random_move(rng: random.Random, scenario: Scenario) -> Move:
    """One move of a random schedule; every random choice is in the move's arguments."""
    sub = rng.randrange(scenario.subscribers)
    cls = rng.choice(DATAGRAM_CLASSES)
    k = rng.choice((-1, -1, -2, 0, rng.randrange(-6, 6)))
    leaf = rng.choice(scenario.leaf_pool)
    kinds = ["publish"] * 12 + ["advance"] * 12 + ["burst"] * 3 + ["delete"] * 2
    kinds += ["drop"] * 5 + ["dup"] * 2 + ["delay"] * 3 + ["hold"] * 2 + ["release"] * 3
    kinds += ["arm"] * 3 + ["faults", "replay", "refragment", "restart", "rejoin", "heal"]
    kinds += ["long_advance"] + ["overload"] * 2 + ["backlog"] * 2
    if scenario.attacks in ("control", "all"):
        kinds += ["forge_control"] * 2 + ["mutate_control"] * 2
    if scenario.attacks == "all":
        kinds += ["mutate"] * 4 + ["payload"] * 2 + ["forge_content"]
    kind = rng.choice(kinds)
    if kind == "publish":
        return ("publish", leaf, rng.getrandbits(32))
    if kind == "delete":
        return ("delete", leaf)
    if kind == "burst":
        return ("burst", rng.getrandbits(16), rng.randint(2, 30))
    if kind == "advance":
        return ("advance", rng.choice(_ADVANCE_MS))
    if kind == "long_advance":
        return ("advance", rng.choice((300, 500, 1000, 1000, 10_000)))
    if kind in ("drop", "dup", "hold", "release", "replay"):
        return (kind, sub, cls, k)
    if kind == "delay":
        return ("delay", sub, cls, k, rng.choice(_DELAYS_MS))
    if kind == "arm":
        action = rng.choice(("drop", "drop", "hold", "dup", "delay"))
        return ("arm", sub, rng.choice(DATAGRAM_CLASSES[1:]), action, rng.choice(_DELAYS_MS))
    if kind == "faults":
        if rng.random() < 0.3:
            return ("faults", sub, 0, 0, 0, 0, 0, 1)
        return ("faults", sub, rng.getrandbits(16), rng.choice((0, 5, 20, 50)),
                rng.choice((0, 5, 20)), rng.choice((0, 10, 30)), rng.choice((0, 0, 5)),
                rng.choice((5, 30, 150)))
    if kind == "refragment":
        return ("refragment", sub, rng.randrange(-4, 0), rng.getrandbits(16))
    if kind == "restart":
        return ("restart", rng.random() < 0.5, rng.random() < 0.6)
    if kind in ("rejoin", "overload"):
        return (kind, sub)
    if kind == "backlog":  # a queue filling for up to 120 ms, maybe draining at the end
        steps = rng.randint(1, 120)
        start, top = rng.random() * 0.3, rng.uniform(0.2, 0.99)
        fills = [round(start + (top - start) * i / steps, 3) for i in range(steps)]
        if rng.random() < 0.5:
            fills += fills[::-1][:rng.randint(1, steps)]
        return ("backlog", sub, fills)
    if kind == "heal":
        return ("heal", rng.getrandbits(16), rng.random() < 0.7)
    if kind == "forge_control":
        what = rng.choice(("eos", "huge_seq", "flip_seq", "foreign", "foreign_eos", "last"))
        return ("forge", sub, what, rng.randrange(64))
    if kind == "forge_content":
        return ("forge", sub, "empty_cycle", 0)
    if kind == "mutate_control":
        target = rng.choice(("header.sequence", "header.session_id", "snapshot.range_start",
                             "snapshot.flags", "snapshot.cycle_count",
                             "snapshot.cycle_position", "header.flags"))
        if target == "snapshot.flags":
            return ("mutate", sub, "snapshot", k, target, "xor", SnapshotFlag.LAST,
                    rng.randrange(4))
        return ("mutate", sub, "quiet" if target == "header.sequence" else cls, k, target,
                "xor", 1 << rng.randrange(64 if target.startswith("header") else 32),
                rng.randrange(4))
    if kind == "mutate":
        target = rng.choice(MUTABLE_FIELDS)
        op = rng.choice(("xor", "xor", "set", "add"))
        operand = {"xor": 1 << rng.randrange(64), "add": rng.choice((1, 2**64 - 1, 2**32)),
                   "set": rng.choice((0, 1, 2, 3, 2**62, 2**32 - 1))}[op]
        return ("mutate", sub, cls, k, target, op, operand, rng.randrange(4), rng.randrange(4))
    assert kind == "payload"
    scope = rng.choice(("delta", "delta", "snapshot", "touched"))
    how = rng.choice(("short", "long", "empty", "poison", "garbage"))
    return ("payload", sub, scope if rng.random() < 0.8 else cls, k, scope, how,
            rng.randrange(4))


def random_schedule(seed: int, scenario: Scenario, moves: int) -> Iterator[Move]:
    """A reproducible schedule: ``moves`` random moves, then a final heal."""
    rng = random.Random(seed)
    for _ in range(moves):
        yield random_move(rng, scenario)
    yield ("heal", seed & 0xFFFF, True)


def run_schedule(scenario: Scenario, moves: Iterable[Move]) -> World:
    """Replay a schedule in a fresh world; raises OracleFailure if the oracle objects."""
    world = World(scenario)
    world.run(moves)
    return world


# Named scenarios for the drivers: the model, what the attacker may do, summaries on/off.
SCENARIOS = {
    f"{model}-{attacks}{'' if touched else '-nosummary'}": Scenario(
        model=model, attacks=attacks, touched=touched)
    for model in ("chain", "blob")
    for attacks in ("honest", "control", "all")
    for touched in (True, False)
    if touched or model == "chain"
}


def shrink(scenario: Scenario, moves: list[Move], signature: tuple[str, str],
           deadline: float | None = None) -> list[Move]:
    """Greedily delete moves (halves, quarters, ... single moves) while the schedule still
    fails the same way; ``deadline`` (time.monotonic()) bounds the effort."""
    def fails(candidate: list[Move]) -> bool:
        try:
            run_schedule(scenario, candidate)
        except OracleFailure as failure:
            return failure.signature == signature
        return False

    chunk = max(1, len(moves) // 2)
    while True:
        i, removed = 0, False
        while i < len(moves):
            if deadline is not None and time.monotonic() > deadline:
                return moves
            candidate = moves[:i] + moves[i + chunk :]
            if candidate and fails(candidate):
                moves, removed = candidate, True  # try the same place again
            else:
                i += chunk
        if not removed:
            if chunk == 1:
                return moves
            chunk //= 2


def as_test(name: str, scenario: Scenario, moves: list[Move], failure: OracleFailure) -> str:
    """A failing schedule as a ready-to-paste regression test."""
    first_line = failure.detail.splitlines()[0].replace("\\", "/").replace('"', "'")[:72]
    lines = [f"def test_{name}() -> None:",
             f'    """{failure.kind}: {first_line}"""',
             f"    run_schedule({scenario_expr(scenario)}, ["]
    lines += [f"        {move!r}," for move in moves]
    lines.append("    ])")
    return "\n".join(lines)


def scenario_expr(scenario: Scenario) -> str:
    """Python source for a scenario: its name in SCENARIOS if it has one."""
    for name, known in SCENARIOS.items():
        if known == scenario:
            return f"SCENARIOS[{name!r}]"
    return repr(scenario)
