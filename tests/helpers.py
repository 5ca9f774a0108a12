"""Test helpers: leaf models, a deterministic simulated network for the sans-I/O cores, and
free multicast endpoints for the tests that open real sockets.

:class:`Simulation` is our h11 ``ConnectionPair``: one :class:`PublisherCore`, any number of
:class:`SubscriberCore` s, and a fake multicast link between them with seeded loss,
duplication and reordering, all on a virtual clock. It touches no socket; only
:func:`free_endpoint` does (a bind probe that sends nothing).
"""

from __future__ import annotations

import heapq
import itertools
import random
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypedDict

from grapevine._publisher_core import PublisherConfig, PublisherCore
from grapevine._subscriber_core import StatusEvent, SubscriberConfig, SubscriberCore
from grapevine.codec import Decoded, decode_datagram, restamped
from grapevine.events import UpdateKind
from grapevine.testing import free_port

_CHAIN = struct.Struct("<QQ")
_MASK = (1 << 61) - 1
_endpoint_rng = random.Random()  # unseeded: concurrent test runs must not pick alike


class Endpoint(TypedDict):
    """Where a test stream goes: pass as ``**endpoint`` to Publisher, Subscriber,
    open_sender or open_receiver."""

    group: str
    port: int


def free_endpoint() -> Endpoint:
    """``{"group": ..., "port": ...}``: a random test group and a port free for it on this host.

    Groups are drawn from 239.255.72.1-239.255.75.250 (administratively scoped, and apart
    from the library's default 239.255.71.x). Use it with loopback only (the default
    interface 127.0.0.1 and TTL 0).
    """
    group = f"239.255.{_endpoint_rng.randrange(72, 76)}.{_endpoint_rng.randrange(1, 251)}"
    return {"group": group, "port": free_port(group)}


class ChainModel:
    """Leaf = (changes, fingerprint); every delta (an int) folds into the fingerprint.

    Order-sensitive, so any lost, duplicated or reordered delta shows in the final value.
    """

    def new_leaf(self) -> tuple[int, int]:
        return (0, 7)

    def apply(self, leaf: tuple[int, int], delta: int) -> tuple[int, int]:
        return (leaf[0] + 1, (leaf[1] * 1_000_003 + delta) & _MASK)

    def encode_delta(self, delta: int) -> bytes:
        return delta.to_bytes(8, "little")

    def decode_delta(self, payload: memoryview) -> int:
        return int.from_bytes(payload, "little")

    def encode_leaf(self, leaf: tuple[int, int]) -> bytes:
        return _CHAIN.pack(*leaf)

    def decode_leaf(self, payload: memoryview) -> tuple[int, int]:
        count, fingerprint = _CHAIN.unpack(payload)
        return (count, fingerprint)


class BlobModel:
    """Leaf = bytes of a chosen size (large ones need fragmented snapshots).

    Delta = (offset, data): overwrite ``data`` at ``offset``, growing the blob if needed.
    """

    def new_leaf(self) -> bytes:
        return b""

    def apply(self, leaf: bytes, delta: tuple[int, bytes]) -> bytes:
        offset, data = delta
        grown = leaf.ljust(offset + len(data), b"\0")
        return grown[:offset] + data + grown[offset + len(data) :]

    def encode_delta(self, delta: tuple[int, bytes]) -> bytes:
        return delta[0].to_bytes(4, "little") + delta[1]

    def decode_delta(self, payload: memoryview) -> tuple[int, bytes]:
        return int.from_bytes(payload[:4], "little"), bytes(payload[4:])

    def encode_leaf(self, leaf: bytes) -> bytes:
        return leaf

    def decode_leaf(self, payload: memoryview) -> bytes:
        return bytes(payload)



def capture(pub: PublisherCore[Any, Any], now: float) -> list[bytes]:
    """Every datagram the publisher wants to send at ``now``."""
    out = []
    while (datagram := pub.next_datagram(now)) is not None:
        out.append(bytes(datagram))
    return out


def drain(pub: PublisherCore[Any, Any], now: float) -> list[Decoded]:
    """Every datagram the publisher wants to send at ``now``, decoded."""
    return [decode_datagram(data) for data in capture(pub, now)]

@dataclass
class LinkFaults:
    """Per-datagram fault probabilities of the simulated link."""

    loss: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0
    max_delay_s: float = 0.004  # how late a reordered datagram may arrive


@dataclass
class SimSubscriber:
    core: SubscriberCore[Any, Any]
    faults: LinkFaults
    joined_at: float
    rng: random.Random
    events: list[StatusEvent] = field(default_factory=list)
    updates: list[tuple[int, UpdateKind, Any, Any, int, int]] = field(default_factory=list)
    first_synced_at: float | None = None


class Simulation:
    """A publisher, subscribers and a lossy link on a virtual clock (1 ms ticks)."""

    def __init__(self, model: Any, *, seed: int = 1, publisher: PublisherConfig | None = None,
                 subscriber: SubscriberConfig | None = None, tick_s: float = 0.001) -> None:
        self.model = model
        self.rng = random.Random(seed)
        self.now = 0.0
        self.tick_s = tick_s
        self.publisher_config = publisher or PublisherConfig()
        self.subscriber_config = subscriber or SubscriberConfig()
        self.publisher = PublisherCore(model, self.publisher_config, now=self.now,
                                       session_id=self.rng.getrandbits(63) + 1)
        self.subscribers: list[SimSubscriber] = []
        self._in_flight: list[tuple[float, int, int, bytes]] = []
        self._order = itertools.count()
        self.sent_datagrams = 0
        self.publisher_running = True

    def add_subscriber(self, faults: LinkFaults | None = None, *, seed: int | None = None,
                       config: SubscriberConfig | None = None) -> SimSubscriber:
        sub = SimSubscriber(
            SubscriberCore(self.model, config or self.subscriber_config),
            faults or LinkFaults(), self.now,
            random.Random(self.rng.getrandbits(32) if seed is None else seed),
        )
        self.subscribers.append(sub)
        return sub

    def restart_publisher(self, *, keep_state: bool = True, clean: bool = True) -> None:
        """Stop the publisher (sending END_OF_SESSION if clean) and start a new session."""
        old = self.publisher
        if clean:
            self._flush()
            datagram = bytes(old.end_of_session(self.now))
            for copy in range(3):  # each copy stamped apart, as the runtime publisher does
                self._broadcast(restamped(datagram, round(self.now * 1e9) + copy))
        self.publisher = PublisherCore(self.model, self.publisher_config, now=self.now,
                                       initial=dict(old.leaves.items()) if keep_state else None,
                                       session_id=self.rng.getrandbits(63) + 1)
        self.publisher_running = True

    def run(self, seconds: float, *, step: Callable[[Simulation], None] | None = None) -> None:
        """Advance the clock, calling ``step`` each tick (to publish), moving datagrams."""
        end = self.now + seconds
        while self.now < end:
            self.now = round(self.now + self.tick_s, 9)
            if step is not None and self.publisher_running:
                step(self)
            self._flush()
            self._deliver()
            for sub in self.subscribers:
                sub.core.poll(self.now)
                self._collect(sub)

    def _flush(self) -> None:
        if not self.publisher_running:
            return
        while True:
            datagram = self.publisher.next_datagram(self.now)
            if datagram is None:
                return
            self._broadcast(bytes(datagram))

    def _broadcast(self, datagram: bytes) -> None:
        self.sent_datagrams += 1
        for index, sub in enumerate(self.subscribers):
            faults, rng = sub.faults, sub.rng
            if faults.loss and rng.random() < faults.loss:
                continue
            copies = 2 if faults.duplicate and rng.random() < faults.duplicate else 1
            for _ in range(copies):
                delay = 0.0
                if faults.reorder and rng.random() < faults.reorder:
                    delay = rng.uniform(0, faults.max_delay_s)
                heapq.heappush(self._in_flight,
                               (self.now + delay, next(self._order), index, datagram))

    def _deliver(self) -> None:
        while self._in_flight and self._in_flight[0][0] <= self.now:
            _, _, index, datagram = heapq.heappop(self._in_flight)
            sub = self.subscribers[index]
            sub.core.receive(datagram, self.now)
            sub.core._check()
            self._collect(sub)

    def _collect(self, sub: SimSubscriber) -> None:
        core = sub.core
        if core.updates:
            sub.updates.extend(core.updates)
            core.updates.clear()
        if core.events:
            sub.events.extend(core.events)
            core.events.clear()
        if core.synced and sub.first_synced_at is None:
            sub.first_synced_at = self.now


def random_ops(sim: Simulation, *, rate: int = 3, leaf_ids: int = 50,
               delete_share: float = 0.02) -> None:
    """A step function: ``rate`` random creates/updates/deletes per tick."""
    pub = sim.publisher
    rng = sim.rng
    for _ in range(rate):
        leaf_id = rng.randrange(leaf_ids)
        if leaf_id in pub.leaves and rng.random() < delete_share:
            pub.delete(leaf_id)
        else:
            pub.publish(leaf_id, rng.getrandbits(32))


def assert_converged(sim: Simulation, sub: SimSubscriber) -> None:
    """The replica equals the publisher's state leaf by leaf, and says it is synced."""
    core = sub.core
    expected = dict(sim.publisher.leaves.items())
    actual = core.values()
    missing = sorted(set(expected) - set(actual))
    extra = sorted(set(actual) - set(expected))
    wrong = sorted(k for k in set(expected) & set(actual) if expected[k] != actual[k])
    assert not (missing or extra or wrong), (  # noqa: PT018 - one message shows all three
        f"replica differs: missing={missing[:10]} extra={extra[:10]} wrong={wrong[:10]} "
        f"stats={core.stats}"
    )
    assert core.stale_leaves() == [], core.stale_leaves()[:10]
    assert core.suspect_leaves() == [], core.suspect_leaves()[:10]
    assert core.synced, (core.leaf_set_known, core.unverified, core.stats)


class History:
    """Records every published change, to ask "what was leaf L just before sequence E?"."""

    _DELETED: Any = object()

    def __init__(self, sim: Simulation) -> None:
        self.sim = sim
        self._start()

    def _start(self) -> None:
        """Record from the publisher's current leaves and session on."""
        self.initial = dict(self.sim.publisher.leaves.items())
        self.changes: dict[int, list[tuple[int, Any]]] = {}
        self.session = self.sim.publisher.session_id

    def step(self, rate: int = 3, leaf_ids: int = 50, delete_share: float = 0.02) -> None:
        pub, rng = self.sim.publisher, self.sim.rng
        if pub.session_id != self.session:  # the publisher restarted: start over
            self._start()
        for _ in range(rate):
            leaf_id = rng.randrange(leaf_ids)
            if leaf_id in pub.leaves and rng.random() < delete_share:
                seq = pub.delete(leaf_id)
                self.changes.setdefault(leaf_id, []).append((seq, self._DELETED))
            else:
                seq = pub.publish(leaf_id, rng.getrandbits(32))
                self.changes.setdefault(leaf_id, []).append((seq, pub.leaves[leaf_id]))

    def value_before(self, leaf_id: int, seq: int) -> Any:
        value = self.initial.get(leaf_id, self._DELETED)
        for change_seq, changed in self.changes.get(leaf_id, []):
            if change_seq >= seq:
                break
            value = changed
        return value

    def check_fresh_leaves(self, sub: SimSubscriber) -> int:
        """Assert every leaf the subscriber calls fresh is right as of its position."""
        core = sub.core
        if core.session_id != self.session or core.expected is None:
            return 0
        checked = 0
        for leaf_id in list(core.leaves.keys()):
            if core.is_fresh(leaf_id):
                truth = self.value_before(leaf_id, core.expected)
                assert truth is not self._DELETED, (leaf_id, core.expected)
                assert core.get(leaf_id) == truth, (leaf_id, core.expected)
                checked += 1
        if core.synced:
            ids = set(self.initial) | set(self.changes)
            alive = {i for i in ids if self.value_before(i, core.expected) is not self._DELETED}
            assert set(core.values()) == alive, (sorted(alive ^ set(core.values()))[:10])
        return checked


def unnarrowed(flag: bool) -> bool:
    """``flag`` itself, returned from a call so that mypy does not narrow the expression.

    After ``assert not core.synced`` mypy takes ``core.synced`` to be False for the rest
    of the test, across the calls that change it, and a later ``assert core.synced`` makes
    what follows look unreachable. Assert a state the test goes on to change as
    ``assert not unnarrowed(core.synced)``: the same check at run time.
    """
    return flag


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Poll a condition on an Event's timed wait (no bare sleeps); its last value."""
    tick = threading.Event()
    for _ in range(int(timeout / 0.01)):
        if predicate():
            return True
        tick.wait(0.01)
    return predicate()


def fast_publisher(**overrides: Any) -> PublisherConfig:
    """A publisher config with a fast cycle (50 ms) and heartbeat (100 ms) for runtime tests."""
    values: dict[str, Any] = {"min_cycle_s": 0.05, "heartbeat_interval_s": 0.1}
    values.update(overrides)
    return PublisherConfig(**values)
