"""Shedding leaves under overload (issue 12, SPEC §12(c)): the policy on its own, then the
subscriber core under it. Each test tries to make shedding lie (a replica synced while
wrong, a leaf lost to a claim, a repair from a snapshot that misses a dropped DELTA) or
stall (a leaf never taken back)."""

from __future__ import annotations

from itertools import pairwise

from adversary import SCENARIOS, Move, Scenario, World, run_schedule
from helpers import ChainModel, unnarrowed
from test_subscriber_core import Pair

from grapevine._shedding import (
    ADMIT_BELOW,
    ADMIT_HOLD_S,
    OVERLOAD_S,
    RESHED_S,
    RISE_S,
    SAMPLE_S,
    SHED_AT,
    Shedder,
)
from grapevine._subscriber_core import Status, SubscriberConfig, SubscriberCore
from grapevine.codec import DatagramBuilder

MS = 0.001


def rising(shedder: Shedder, start: float, seconds: float, low: float, high: float,
           accepted_share: float = 1.0, counters: list[int] | None = None) -> list[float]:
    """Report a fill rising from ``low`` to ``high`` every millisecond for ``seconds``;
    the moments at which the shedder said to shed."""
    counters = counters if counters is not None else [0, 0]
    steps = round(seconds / MS)
    shed_at = []
    for i in range(steps):
        now = start + i * MS
        counters[0] += 10
        counters[1] += round(10 * accepted_share)
        if shedder.report(low + (high - low) * i / steps, now, counters[0], counters[1]):
            shed_at.append(now)
    return shed_at


def test_a_burst_the_queue_absorbs_sheds_nothing() -> None:
    """A queue that fills far past SHED_AT for less than RISE_S (less a sample), then
    drains: no shedding, and repairs are never put off (not overloaded)."""
    shedder = Shedder()
    counters = [0, 0]
    burst = RISE_S - SAMPLE_S
    assert rising(shedder, 1.0, burst, 0.1, 0.95, counters=counters) == []
    assert rising(shedder, 1.0 + burst, 0.05, 0.95, 0.3, counters=counters) == []
    assert not shedder.overloaded(1.2)
    assert shedder.admits(1.2)


def test_a_queue_that_keeps_filling_sheds_and_again_while_it_fills() -> None:
    shedder = Shedder()
    sheds = rising(shedder, 1.0, 0.2, 0.0, 0.9)
    assert sheds, "a queue filling for 200 ms must shed"
    first = sheds[0]
    assert first >= 1.0 + RISE_S - SAMPLE_S  # not before it has been filling for RISE_S
    # Overloaded now, it sheds again each RESHED_S while the queue is fuller than then.
    assert len(sheds) >= 5
    assert all(b - a >= RESHED_S - 1e-9 for a, b in pairwise(sheds))
    assert shedder.overloaded(sheds[-1])
    # A queue that stops filling sheds no more.
    last = sheds[-1]
    assert not any(shedder.report(0.85, last + SAMPLE_S * k, 10**6 + k, 10**6 + k)
                   for k in range(1, 30))


def test_a_flood_of_rejected_datagrams_sheds_nothing() -> None:
    """Forged, malformed or foreign datagrams filling the queue: shedding leaves cannot
    lighten that, so it must not cost the replica its leaves, even on kernel drops."""
    shedder = Shedder()
    counters = [0, 0]
    assert rising(shedder, 1.0, 0.3, 0.0, 0.99, accepted_share=0.3, counters=counters) == []
    assert not shedder.report(1.0, 1.3, counters[0] + 10, counters[1] + 3)
    assert shedder.admits(1.3)


def test_kernel_drops_shed_at_once() -> None:
    shedder = Shedder()
    assert shedder.report(1.0, 5.0, 100, 100)
    assert shedder.overloaded(5.0 + OVERLOAD_S - MS)
    assert not shedder.overloaded(5.0 + OVERLOAD_S)


def test_repairs_wait_while_the_queue_has_not_drained_and_resume_with_time_alone() -> None:
    shedder = Shedder()
    assert shedder.report(1.0, 5.0, 100, 100)
    assert not shedder.admits(5.0)
    shedder.report(ADMIT_BELOW * 2, 5.1, 200, 200)
    assert not shedder.admits(5.1 + ADMIT_HOLD_S * 0.5)
    # No report over ADMIT_BELOW for ADMIT_HOLD_S (the queue drained): room again.
    assert shedder.admits(5.1 + ADMIT_HOLD_S)
    shedder.report(0.9, 5.5, 300, 300)
    assert not shedder.admits(5.5)
    # And whatever was last reported, the overload ends with time alone.
    assert shedder.admits(5.0 + OVERLOAD_S)


# --------------------------------------------------------------------------- the core

def report_filling(pair: Pair, seconds: float, high: float = 0.9) -> None:
    """The runtime reports its queue filling from 0 to ``high`` for ``seconds``, with
    every datagram of the stream accepted."""
    steps = round(seconds / MS)
    sub = pair.sub
    for i in range(steps):
        pair.now += MS
        sub.stats.datagrams += 10  # as if read and accepted (the shedder's junk check)
        sub._accepted += 10
        sub.backlog(high * i / steps, pair.now)
        sub._check()


def test_shedding_keeps_the_lowest_leaves_exact_and_takes_the_others_back_later() -> None:
    pair = Pair(leaves=8)
    sub = pair.sub
    assert sub.synced
    sub.events.clear()
    report_filling(pair, 0.08, SHED_AT * 2)
    shed = [e.leaf_id for e in sub.events
            if e.kind is Status.LEAF_STALE and e.leaf_id is not None]
    assert shed
    assert shed == sorted(shed, reverse=True)  # the highest leaf ids first
    assert min(shed) == 8 - len(shed)
    assert all(e.reason and e.reason.startswith("shed") for e in sub.events
               if e.kind is Status.LEAF_STALE)
    assert Status.UNSYNCED in [e.kind for e in sub.events]
    assert sub.stats.leaves_shed == len(shed)
    kept = [leaf for leaf in range(8) if leaf not in shed]
    # Every leaf changes; the kept ones follow exactly, the shed ones skip their DELTAs.
    for value in range(3):
        for leaf in range(8):
            pair.pub.publish(leaf, 100 + value)
        pair.deliver(pair.sent())
    assert all(sub.is_fresh(leaf) and sub.get(leaf) == pair.pub.leaves[leaf] for leaf in kept)
    assert all(not sub.is_fresh(leaf) for leaf in shed)
    assert sub.stats.shed_deltas == 3 * len(shed)
    # Snapshots while overloaded and the queue still over ADMIT_BELOW: the repairs wait.
    cycle = pair.full_cycle()  # (forcing a cycle moves the clock 1 s: take it back)
    pair.now -= 1.0
    sub.backlog(ADMIT_BELOW * 2, pair.now)
    pair.deliver(cycle)
    assert sub.stats.repairs_deferred == len(shed)
    assert not unnarrowed(sub.synced)
    # The queue drains (no more reports): the next cycle takes them all back, exactly.
    pair.now += ADMIT_HOLD_S
    cycle = pair.full_cycle()
    pair.now -= 1.0
    assert sub._shedder.overloaded(pair.now)
    pair.deliver(cycle)
    assert sub.synced
    assert sub.values() == dict(pair.pub.leaves.items())


def test_a_datagram_dropped_in_bulk_is_reflected_by_any_repair() -> None:
    """Overloaded, a datagram of uniform DELTAs has those of STALE leaves dropped in one
    step, with no record per leaf: a snapshot older than that datagram must not repair any
    STALE leaf, since it may lack the dropped change; one as of after it repairs them."""
    pair = Pair(leaves=4)
    sub = pair.sub
    old_cycle = pair.full_cycle()  # as of now: before the DELTAs below
    report_filling(pair, 0.08, SHED_AT * 2)
    shed = [leaf for leaf in range(4) if not sub.is_fresh(leaf)]
    assert shed
    for leaf in range(4):
        pair.pub.publish(leaf, 7)
    datagrams = pair.sent()
    pair.deliver(datagrams)
    assert sub._bulk_shed_upto == sub.expected  # all in one uniform datagram, in bulk
    pair.now += OVERLOAD_S  # overload over: repairs are taken
    # The old cycle, replayed: its snapshots miss the dropped DELTAs.
    for datagram in old_cycle:
        pair.now += 0.0001
        sub.receive(datagram, pair.now)
        sub._check()
    assert all(not sub.is_fresh(leaf) for leaf in shed)
    pair.deliver(pair.full_cycle())
    assert sub.synced
    assert sub.values() == dict(pair.pub.leaves.items())


def test_l_a_shed_leaf_is_not_removed_by_one_forged_claim() -> None:
    """Found by the explorer (chain-control-nosummary, seed 5): a leaf shed while exact
    was STALE, and a STALE leaf goes on one absence claim (it may have missed its DELETE),
    so a forged LAST claim removed it and the subscriber was synced with it missing. A
    shed leaf missed nothing, no DELETE either, until a gap: it is protected as a fresh
    leaf is, and only a second claim from another source removes it."""
    run_schedule(Scenario(subscribers=1, attacks="control", retransmit=False), [
        ("advance", 100),
        ("backlog", 0, [round(0.9 * i / 80, 3) for i in range(80)]),
        ("forge", 0, "last", 0),
        ("advance", 10),
        ("heal", 0, False),
    ])


def test_shedding_under_every_fault_and_attack_keeps_every_promise() -> None:
    """Seeded schedules with the runtime's backlog reports among every other move: the
    oracle runs after every step."""
    shed = 0
    for index, name in enumerate(sorted(SCENARIOS)):
        scenario = SCENARIOS[name]
        world = World(scenario)
        moves: list[Move] = [("advance", 50)]
        for k in range(6):
            moves += [("publish", leaf, 1000 * k + leaf) for leaf in scenario.leaf_pool[:6]]
            moves += [("backlog", 0, [round(0.95 * i / 70, 3) for i in range(70)]),
                      ("drop", 0, "any", -1), ("advance", 30)]
        moves += [("heal", index, True)]
        world.run(moves)
        shed += world.subs[0].core.stats.leaves_shed
    assert shed > 0


def test_a_subscriber_without_reports_never_sheds() -> None:
    """No runtime (or an OS without SO_MEMINFO): nothing reports fills, nothing changes."""
    sub = SubscriberCore(Pair().sub.model, SubscriberConfig(retransmit=False))
    builder = DatagramBuilder(0, 3)
    builder.start(1)
    builder.add_heartbeat(500)
    sub.receive(bytes(builder.finish(1)), 0.0)
    assert sub.stats.leaves_shed == 0
    assert sub._shedder.admits(0.0)


def test_a_joining_subscriber_sheds_nothing_and_puts_off_no_repair() -> None:
    """Before it has been synced in the session, the load is the snapshots it installs:
    shedding would only put off the join (it did: a 10,000-book join took 2.3 s instead
    of 0.8 s in bench_peers, its repairs put off while its queue was full)."""
    pair = Pair(leaves=8)  # a running stream; its own subscriber is not the joiner
    joiner = SubscriberCore(ChainModel(), SubscriberConfig(retransmit=False))
    now = pair.now
    for leaf in range(8):  # changes first: leaves known to exist, waiting for snapshots
        pair.pub.publish(leaf, 50 + leaf)
    for datagram in pair.sent():
        now += 0.0001
        joiner.receive(datagram, now)
    for i in range(100):  # its queue filling for 100 ms while it joins
        now += MS
        joiner.stats.datagrams += 10
        joiner._accepted += 10
        joiner.backlog(0.9 * i / 100, now)
    for datagram in pair.full_cycle():
        now += 0.0001
        joiner.receive(datagram, now)
        joiner.backlog(0.95, now)
        joiner._check()
    assert joiner.stats.leaves_shed == 0
    assert joiner.stats.repairs_deferred == 0
    assert joiner.synced
    assert joiner.values() == dict(pair.pub.leaves.items())
