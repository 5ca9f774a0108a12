"""``grapevine demo``: a random market replicated to four subscribers, with faults.

Everything runs in one process, on loopback multicast (interface 127.0.0.1, TTL 0):

* one :class:`~grapevine.Publisher` of ``--instruments`` order books, fed by a seeded
  random market at ``--rate`` deltas per second;
* three subscribers from the start: ``clean``, ``loss5%`` (each datagram dropped with
  probability 5%; lost datagrams are sent again on request, SPEC §15) and ``bursty``
  (runs of datagrams dropped now and then, with retransmission off: the snapshot cycle
  repairs the books the loss touched);
* a fourth, ``late``, joining at 30% of ``--duration``;
* a publisher restart at 60% (close, which sends END_OF_SESSION, then a new session that
  starts from the same books);
* loss injection stops at 80%, so every replica must converge by the end.

At the end the market stops, every subscriber must be synced and hold books whose
checksums equal the publisher's; the exit status is 0 only then.
"""

from __future__ import annotations

import argparse
import contextlib
import random
import threading
import time
from dataclasses import dataclass, field
from queue import Empty, SimpleQueue
from typing import Any

from ._market import Market
from ._transport import DEFAULT_GROUP, DEFAULT_INTERFACE, free_port
from .book import BookDelta, OrderBook, OrderBookModel
from .events import Status, StatusEvent
from .publisher import Publisher
from .stats import SubscriberStats
from .subscriber import Subscriber, SubscriberConfig

__all__ = ["add_arguments", "run"]

_TICK_S = 0.01  # market batches are published every tick
_RESTART_PAUSE_S = 0.5  # how long the publisher is down during the restart
_CONVERGE_TIMEOUT_S = 15.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The demo's options."""
    parser.add_argument("--duration", type=float, default=20.0,
                        help="seconds of market activity (default 20)")
    parser.add_argument("--instruments", type=int, default=200,
                        help="number of order books (default 200)")
    parser.add_argument("--rate", type=float, default=5000.0,
                        help="book deltas per second (default 5000)")
    parser.add_argument("--seed", type=int, default=1, help="market and loss seed (default 1)")
    parser.add_argument("--port", type=int, default=0,
                        help="UDP port (default: a free one in 40000-60000)")
    parser.add_argument("--group", default=DEFAULT_GROUP,
                        help=f"multicast group (default {DEFAULT_GROUP}; loopback, TTL 0)")


# ---------------------------------------------------------------------- fault injection


class RandomLoss:
    """A drop filter losing each datagram independently with probability ``fraction``."""

    def __init__(self, fraction: float, seed: int) -> None:
        self.fraction = fraction
        self.rng = random.Random(seed)
        self.active = True

    def __call__(self, datagram: memoryview) -> bool:
        return self.active and self.rng.random() < self.fraction

    def describe(self) -> str:
        return f"{self.fraction:.0%} random loss"


class BurstLoss:
    """A drop filter that now and then loses a run of consecutive datagrams."""

    def __init__(self, seed: int, chance: float = 0.003, shortest: int = 10,
                 longest: int = 120) -> None:
        self.rng = random.Random(seed)
        self.chance = chance
        self.shortest, self.longest = shortest, longest
        self.remaining = 0
        self.bursts = 0
        self.active = True

    def __call__(self, datagram: memoryview) -> bool:
        if not self.active:
            return False
        if self.remaining:
            self.remaining -= 1
            return True
        if self.rng.random() < self.chance:
            self.bursts += 1
            self.remaining = self.rng.randint(self.shortest, self.longest) - 1
            return True
        return False

    def describe(self) -> str:
        return f"bursts of {self.shortest}-{self.longest} datagrams lost"


# ---------------------------------------------------------------------- subscribers


@dataclass
class _Tracked:
    """One demo subscriber and what the demo has seen of it."""

    name: str
    sub: Subscriber[OrderBook, BookDelta]
    started: float
    loss: RandomLoss | BurstLoss | None
    events: SimpleQueue[StatusEvent] = field(default_factory=SimpleQueue)
    counter: _UpdateCounter = field(default_factory=lambda: _UpdateCounter())
    first_sync: float | None = None
    announce_sync: bool = True  # print the next SYNCED (first one, or after a restart)
    sync_from: float = 0.0  # when the wait for that SYNCED began
    # Events summarised once a second: kind -> count, plus deltas missed by gaps.
    pending: dict[Status, int] = field(default_factory=dict)
    missed: int = 0
    gaps_resolved_seen: int = 0  # stats.gaps_resolved at the last summary

    @property
    def updates(self) -> int:
        return self.counter.count

    def label(self) -> str:
        return self.name if self.loss is None else f"{self.name} ({self.loss.describe()})"


def _start_subscriber(name: str, group: str, port: int,
                      loss: RandomLoss | BurstLoss | None, *,
                      retransmit: bool = True) -> _Tracked:
    events: SimpleQueue[StatusEvent] = SimpleQueue()
    counter = _UpdateCounter()
    # Callbacks given to the constructor are in place before the first datagram arrives.
    sub: Subscriber[OrderBook, BookDelta] = Subscriber(
        OrderBookModel(), group=group, port=port, interface=DEFAULT_INTERFACE,
        config=SubscriberConfig(retransmit=retransmit),
        drop_filter=loss, on_status=events.put, on_update=counter)
    now = time.monotonic()
    return _Tracked(name, sub, now, loss, events=events, counter=counter, sync_from=now)


class _UpdateCounter:
    """Counts leaf updates (only the dispatcher thread writes the count)."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, leaf_id: int, kind: Any, leaf: Any, delta: Any) -> None:
        self.count += 1


# ---------------------------------------------------------------------- output


class _Console:
    def __init__(self, start: float) -> None:
        self.start = start

    def say(self, text: str) -> None:
        print(text, flush=True)

    def event(self, text: str) -> None:
        print(f"[{time.monotonic() - self.start:5.1f}s] {text}", flush=True)


_SUMMARISED = (Status.GAP, Status.LEAF_STALE, Status.LEAF_REPAIRED, Status.SYNCED,
               Status.UNSYNCED)


def _drain_events(tracked: _Tracked, console: _Console) -> None:
    """Print the notable events at once; count the frequent ones for the next summary."""
    while True:
        try:
            event = tracked.events.get_nowait()
        except Empty:
            return
        kind = event.kind
        if kind is Status.SYNCED:
            if tracked.first_sync is None:
                tracked.first_sync = event.time - tracked.started
            if tracked.announce_sync:
                tracked.announce_sync = False
                since = "it started" if tracked.sync_from == tracked.started else "the restart"
                console.event(f"{tracked.name}: SYNCED "
                              f"({event.time - tracked.sync_from:.2f} s after {since})")
                continue
        if kind in _SUMMARISED:
            tracked.pending[kind] = tracked.pending.get(kind, 0) + 1
            if kind is Status.GAP and event.first_seq is not None and event.end_seq is not None:
                tracked.missed += event.end_seq - event.first_seq
            continue
        if kind is Status.RESTARTED:
            tracked.announce_sync = True
            tracked.sync_from = event.time
            console.event(f"{tracked.name}: RESTARTED - new publisher session "
                          f"{event.session_id or 0:#018x}, replica rebuilt")
        elif kind is Status.SESSION_STARTED:
            console.event(f"{tracked.name}: session {event.session_id or 0:#018x} heard")
        else:
            console.event(f"{tracked.name}: {kind.name}")


def _plural(count: int, noun: str) -> str:
    return f"{count:,} {noun}" + ("" if count == 1 else "s")


def _print_summaries(subs: list[_Tracked], console: _Console) -> None:
    for tracked in subs:
        pending = tracked.pending
        if not pending:
            continue
        parts = []
        if pending.get(Status.GAP):
            resolved = tracked.sub.stats().gaps_resolved
            named = resolved - tracked.gaps_resolved_seen
            tracked.gaps_resolved_seen = resolved
            parts.append(f"{_plural(pending[Status.GAP], 'gap')} "
                         f"({_plural(tracked.missed, 'delta')} missed, {named:,} resolved by "
                         f"TOUCHED summaries)")
        if pending.get(Status.LEAF_STALE):
            parts.append(f"{_plural(pending[Status.LEAF_STALE], 'book')} stale")
        if pending.get(Status.LEAF_REPAIRED):
            parts.append(f"{pending[Status.LEAF_REPAIRED]} repaired from snapshots")
        if pending.get(Status.SYNCED):
            parts.append(f"re-synced {pending[Status.SYNCED]}x")
        if parts:
            console.event(f"{tracked.name}: " + ", ".join(parts))
        pending.clear()
        tracked.missed = 0


def _print_status(pub: Publisher[OrderBook, BookDelta] | None, subs: list[_Tracked],
                  rate: float, console: _Console) -> None:
    if pub is None:
        head = "publisher: (restarting)"
    else:
        published = pub.stats()
        head = (f"publisher: {published.deltas:,} deltas ({rate:,.0f}/s), "
                f"{published.datagrams:,} datagrams, {published.cycles} snapshot cycles, "
                f"{published.leaves} books")
    console.event(head)
    for tracked in subs:
        sub = tracked.sub
        stats = sub.stats()
        fresh, total = sub.progress()
        state = "SYNCED " if sub.synced else "syncing"
        console.say(f"         {tracked.name:<8} {state} fresh {fresh:>4}/{total:<4} "
                    f"stale {stats.stale_leaves:>3}  suspect {stats.suspect_leaves:>3}  "
                    f"gaps {stats.gaps:>4}  "
                    f"repairs {stats.repairs:>5}  updates {tracked.updates:>8,}")


# ---------------------------------------------------------------------- verification


@dataclass
class _Result:
    name: str
    synced: bool
    stats: SubscriberStats
    first_sync: float | None
    mismatches: int
    books: int


def _mismatches(expected: dict[int, int], tracked: _Tracked) -> int:
    with tracked.sub.locked() as replica:
        got = {leaf_id: book.checksum() for leaf_id, book in replica.items()}
    return sum(1 for leaf_id in expected.keys() | got.keys()
               if expected.get(leaf_id) != got.get(leaf_id))


def _converge(pub: Publisher[OrderBook, BookDelta], subs: list[_Tracked],
              console: _Console) -> list[_Result]:
    """Wait (bounded) for every subscriber to be synced and equal to the publisher."""
    with pub.locked() as leaves:
        expected = {leaf_id: book.checksum() for leaf_id, book in leaves.items()}
    deadline = time.monotonic() + _CONVERGE_TIMEOUT_S
    mismatches: dict[str, int] = {}
    for tracked in subs:
        # Synced, in the publisher's session, with every delta it published applied.
        tracked.sub.wait_until_applied(pub.last_sequence, session_id=pub.session_id,
                                       timeout=max(0.0, deadline - time.monotonic()))
        mismatches[tracked.name] = _mismatches(expected, tracked)
        _drain_events(tracked, console)
    _print_summaries(subs, console)
    return [_Result(t.name, t.sub.synced, t.sub.stats(), t.first_sync, mismatches[t.name],
                    len(expected)) for t in subs]


def _print_results(results: list[_Result], console: _Console) -> bool:
    console.say("")
    console.say("subscriber  synced  resent  gaps  missed  made stale  repairs  restarts  "
                "first sync  books equal")
    ok = True
    for r in results:
        good = r.synced and r.mismatches == 0
        ok = ok and good
        first = f"{r.first_sync:.2f} s" if r.first_sync is not None else "never"
        equal = (f"Y ({r.books}/{r.books})" if r.mismatches == 0
                 else f"N ({r.mismatches} of {r.books} differ)")
        console.say(f"{r.name:<10}  {'yes' if r.synced else 'NO':<6}  "
                    f"{r.stats.retransmitted_datagrams:>6}  {r.stats.gaps:>4}  "
                    f"{r.stats.missed_deltas:>6}  {r.stats.leaves_made_stale:>10}  "
                    f"{r.stats.repairs:>7}  {r.stats.restarts:>8}  {first:>10}  {equal}")
    console.say("(resent: lost datagrams the publisher sent again on request, so no gap;")
    console.say(" made stale: books that missed changes in a gap; repairs: books rebuilt from")
    console.say(" a snapshot. Books a gap only made suspect, proven by their next delta, and")
    console.say(" first installs at start-up or after the restart are not counted.)")
    console.say("")
    if ok:
        console.say(f"PASS: all {len(results)} subscribers synced; every replica equals the "
                    f"publisher's {results[0].books} books (checksums compared)")
    else:
        console.say("FAIL: some replicas are not synced or differ from the publisher")
    return ok


# ---------------------------------------------------------------------- main


def run(args: argparse.Namespace) -> int:
    """Run the demo; 0 if every replica converged to the publisher's books."""
    duration = float(args.duration)
    instruments = int(args.instruments)
    rate = float(args.rate)
    seed = int(args.seed)
    group = str(args.group)
    if duration <= 0 or instruments < 1 or rate <= 0:
        print("grapevine demo: --duration, --instruments and --rate must be positive")
        return 2
    port = int(args.port) or free_port(group)
    market = Market(instruments, seed)
    model = OrderBookModel()
    start = time.monotonic()
    console = _Console(start)
    console.say(f"grapevine demo: {instruments} order books, {rate:,.0f} deltas/s for "
                f"{duration:g} s on {group}:{port} (interface {DEFAULT_INTERFACE}, TTL 0)")
    console.say(f"  late subscriber at {0.3 * duration:.1f}s, publisher restart at "
                f"{0.6 * duration:.1f}s, loss injection off at {0.8 * duration:.1f}s")
    with contextlib.ExitStack() as stack:
        subs = [
            _start_subscriber("clean", group, port, None),
            _start_subscriber("loss5%", group, port, RandomLoss(0.05, seed * 7919 + 1)),
            _start_subscriber("bursty", group, port, BurstLoss(seed * 7919 + 2),
                              retransmit=False),
        ]
        for tracked in subs:
            stack.enter_context(tracked.sub)
        pub: Publisher[OrderBook, BookDelta] | None = stack.enter_context(
            Publisher(model, group=group, port=port, initial=market.copy_books()))
        late_at, restart_at, heal_at = 0.3 * duration, 0.6 * duration, 0.8 * duration
        restarted = healed = False
        down_until: float | None = None
        books: dict[int, OrderBook] = {}
        published = 0
        paced_from = 0.0  # elapsed time the rate is counted from (reset after the restart)
        last_status = 0.0
        last_count = 0
        tick = threading.Event()
        while True:
            elapsed = time.monotonic() - start
            if elapsed >= duration:
                break
            if pub is not None:
                due = int(rate * (elapsed - paced_from)) - published
                due = min(due, int(rate * 0.1) + 1)  # never burst more than 0.1 s of market
                batch = market.batch(due)
                for leaf_id, delta in batch:
                    pub.publish(leaf_id, delta)
                published += len(batch)
            if len(subs) == 3 and elapsed >= late_at:
                console.event("late subscriber joins")
                subs.append(_start_subscriber("late", group, port, None))
                stack.enter_context(subs[-1].sub)
            if not restarted and elapsed >= restart_at and pub is not None:
                restarted = True
                with pub.locked() as leaves:
                    books = {leaf_id: book.copy() for leaf_id, book in leaves.items()}
                old_session = pub.session_id
                pub.close()
                pub = None
                down_until = elapsed + _RESTART_PAUSE_S
                if books != market.books:
                    raise RuntimeError("the demo's market and publisher disagree")  # a bug
                console.event(f"publisher session {old_session:#018x} closed "
                              "(END_OF_SESSION sent); restarting")
            if pub is None and down_until is not None and elapsed >= down_until:
                pub = stack.enter_context(
                    Publisher(model, group=group, port=port, initial=books))
                console.event(f"publisher restarted: new session {pub.session_id:#018x} "
                              f"from the same {len(books)} books")
                paced_from, published = elapsed, 0
            if not healed and elapsed >= heal_at:
                healed = True
                for tracked in subs:
                    if tracked.loss is not None:
                        tracked.loss.active = False
                console.event("loss injection off: every replica must now converge")
            for tracked in subs:
                _drain_events(tracked, console)
            if elapsed - last_status >= 1.0:
                _print_summaries(subs, console)
                total = market.deltas_made
                _print_status(pub, subs, (total - last_count) / (elapsed - last_status),
                              console)
                last_status, last_count = elapsed, total
            tick.wait(_TICK_S)

        if pub is None:  # only if the duration ended during the restart pause
            pub = stack.enter_context(Publisher(model, group=group, port=port, initial=books))
        console.event(f"market stopped after {market.deltas_made:,} deltas; "
                      "waiting for every replica to converge")
        pub.flush(timeout=5.0)
        results = _converge(pub, subs, console)
        ok = _print_results(results, console)
    return 0 if ok else 1
