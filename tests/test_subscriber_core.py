"""The subscriber's sans-I/O core, driven datagram by datagram on a virtual clock."""

from __future__ import annotations

import os
import random
from typing import Any, TypedDict, Unpack

import pytest
from helpers import (
    BlobModel,
    ChainModel,
    History,
    LinkFaults,
    Simulation,
    assert_converged,
    capture,
    unnarrowed,
)

from grapevine._publisher_core import PublisherConfig, PublisherCore
from grapevine._shedding import ADMIT_HOLD_S
from grapevine._subscriber_core import (
    Status,
    StatusEvent,
    SubscriberConfig,
    SubscriberCore,
    UpdateKind,
)
from grapevine.codec import DatagramBuilder, Snapshot, decode_datagram
from grapevine.wire import SnapshotFlag

# More seeds for a soak: GRAPEVINE_SEEDS=200 pytest tests/test_subscriber_core.py -k random
RANDOM_SEEDS = int(os.environ.get("GRAPEVINE_SEEDS", "6"))


def kinds(events: list[StatusEvent]) -> list[Status]:
    return [e.kind for e in events]


class PublisherSettings(TypedDict, total=False):
    """PublisherConfig's float settings, as keyword arguments (see quiet_config)."""

    snapshot_bytes_per_s: float
    min_cycle_s: float
    heartbeat_interval_s: float
    linger_s: float
    touched_interval_s: float


class SubscriberSettings(TypedDict, total=False):
    """SubscriberConfig's float settings and ``retransmit``, as keyword arguments (see
    Pair)."""

    reorder_window_s: float
    silence_timeout_s: float
    restart_grace_s: float
    lag_warning_s: float
    replay_window_s: float
    retransmit_wait_s: float
    retransmit: bool


def quiet_config(**overrides: Unpack[PublisherSettings]) -> PublisherConfig:
    """A publisher that sends snapshots only when asked (huge min cycle) and, unless
    overridden, no TOUCHED summaries: the scripted tests below exercise the one-by-one
    proofs; the summary tests turn them on."""
    values: PublisherSettings = {
        "min_cycle_s": 1000.0, "heartbeat_interval_s": 1000.0, "touched_interval_s": 0.0}
    values.update(overrides)
    return PublisherConfig(**values)


class Pair:
    """One publisher core and one subscriber core, datagrams passed by hand."""

    def __init__(self, leaves: int = 0, touched_interval_s: float = 0.0,
                 **sub_config: Unpack[SubscriberSettings]) -> None:
        self.pub = PublisherCore(ChainModel(),
                                 quiet_config(touched_interval_s=touched_interval_s),
                                 now=0.0, session_id=11)
        # Nobody answers retransmission requests here: holes become gaps after the reorder
        # window, the behaviour these tests script (tests/test_retransmit.py has the rest).
        sub_config = {"retransmit": False, **sub_config}
        self.sub = SubscriberCore(ChainModel(), SubscriberConfig(**sub_config))
        self.now = 0.0
        for leaf_id in range(leaves):
            self.pub.publish(leaf_id, leaf_id)
        # The creates and two whole snapshot cycles (a leaf set is known only from
        # snapshots of two cycles); later cycles only when forced.
        self.deliver(self.full_cycle())
        self.deliver(self.full_cycle())
        # The summary window starts now, as if a summary had just gone out: the scripted
        # losses below then lose deltas, not the summary that would cover them.
        self.pub._touched_at = self.now

    def two_cycles(self) -> list[bytes]:
        """Two forced cycles: what a subscriber needs to know the leaf set again after
        losing it (SPEC §12(g): one cycle's claims are not corroborated)."""
        return self.full_cycle() + self.full_cycle()

    def sent(self) -> list[bytes]:
        return capture(self.pub, self.now)

    def deliver(self, datagrams: list[bytes], dt: float = 0.0001) -> None:
        for datagram in datagrams:
            self.now += dt
            self.sub.receive(datagram, self.now)
            self.sub._check()

    def tick(self, dt: float) -> None:
        """Let ``dt`` pass; an idle publisher's heartbeat arrives first (it confirms a
        hole in the stream: a lone datagram after a hole never becomes a gap)."""
        self.deliver([self.heartbeat()])
        self.now += dt
        self.sub.poll(self.now)

    def heartbeat(self) -> bytes:
        builder = DatagramBuilder(0, self.pub.session_id)
        builder.start(self.pub.next_seq)
        builder.add_heartbeat(1_000_000)
        return bytes(builder.finish(int(self.now * 1e9) + 1))

    def full_cycle(self) -> list[bytes]:
        """Force a new snapshot cycle now and return its datagrams."""
        assert self.pub._cursor is None, "the previous cycle is unfinished"
        self.now += 1.0  # refills the snapshot budget
        self.pub._cycle_started_at = -1e9  # lifts min_cycle_s once
        self.pub._spreading = False  # and its spreading: the whole cycle goes at once
        return self.sent()


def test_first_subscriber_syncs_from_the_first_cycle() -> None:
    pair = Pair(leaves=20)
    assert pair.sub.synced
    assert pair.sub.values() == dict(pair.pub.leaves.items())
    assert kinds(pair.sub.events)[:2] == [Status.SESSION_STARTED, Status.SYNCED]


def test_late_joiner_waits_for_a_cycle_then_matches() -> None:
    pub = PublisherCore(ChainModel(), quiet_config(min_cycle_s=0.0), now=0.0, session_id=5)
    for leaf_id in range(30):
        pub.publish(leaf_id, leaf_id)
    capture(pub, 0.0)  # the history the late joiner never sees (and leaf 0's snapshot)
    sub = SubscriberCore(ChainModel())
    for leaf_id in range(30):
        pub.publish(leaf_id, 100 + leaf_id)
    for datagram in capture(pub, 0.0):  # no snapshot budget left at the same instant
        sub.receive(datagram, 0.0)
    # Deltas for leaves it has no snapshot of yet: held, not shown, not synced.
    assert not unnarrowed(sub.synced)
    assert sub.values() == {}
    assert sub.unverified == 30
    now = 0.0
    while not sub.synced and now < 1:
        now += 0.01
        for datagram in capture(pub, now):
            sub.receive(datagram, now)
    assert sub.synced
    assert sub.values() == dict(pub.leaves.items())


def test_join_mid_cycle_needs_the_rest_of_the_cycle_only() -> None:
    config = quiet_config(snapshot_bytes_per_s=200.0, min_cycle_s=0.0)
    pub = PublisherCore(ChainModel(), config, now=0.0, session_id=5)
    for leaf_id in range(10):
        pub.publish(leaf_id, leaf_id)
    sub = SubscriberCore(ChainModel())
    now = 0.0
    joined = False
    for _ in range(400):
        now += 0.05
        for datagram in capture(pub, now):
            if decode_datagram(datagram).messages and now > 0.6:
                joined = True
            if joined:
                sub.receive(datagram, now)
        if sub.synced:
            break
    assert sub.synced, sub.stats
    assert sub.values() == dict(pub.leaves.items())


def test_reordering_inside_the_window_is_absorbed() -> None:
    pair = Pair(leaves=5, reorder_window_s=0.05)
    pair.pub.publish(1, 1)
    first = pair.sent()
    pair.pub.publish(2, 2)
    second = pair.sent()
    pair.deliver(second + first)
    assert pair.sub.stats.gaps == 0
    assert pair.sub.stats.reordered_datagrams == 1
    assert pair.sub.values() == dict(pair.pub.leaves.items())
    assert pair.sub.synced


def test_duplicates_are_counted_and_not_applied_twice() -> None:
    pair = Pair(leaves=3)
    pair.pub.publish(1, 42)
    datagrams = pair.sent()
    pair.deliver(datagrams + datagrams + datagrams)
    assert pair.sub.stats.duplicate_datagrams == 2
    assert pair.sub.get(1) == pair.pub.leaves[1]


def test_gap_makes_leaves_suspect_until_proven_and_touched_leaves_stale() -> None:
    pair = Pair(leaves=4, reorder_window_s=0.01)
    pair.pub.publish(0, 7)  # this datagram is lost: only leaf 0 is touched
    pair.sent()
    pair.pub.publish(1, 8)  # leaf 1's next change arrives: it proves leaf 1 untouched
    pair.deliver(pair.sent())
    pair.tick(0.02)
    sub = pair.sub
    assert sub.stats.gaps == 1
    assert Status.GAP in kinds(sub.events)
    assert not unnarrowed(sub.synced)
    assert sub.is_fresh(1)
    assert not sub.is_fresh(0)
    assert not sub.is_fresh(2)
    assert not sub.is_fresh(3)
    # Leaf 0's next change shows the jump: confirmed stale, announced.
    pair.pub.publish(0, 9)
    pair.deliver(pair.sent())
    assert [e.leaf_id for e in sub.events if e.kind is Status.LEAF_STALE] == [0]
    assert sub.stale_leaves() == [0]  # only the leaf the gap is known to have touched
    assert sub.suspect_leaves() == [2, 3]  # not proven either way: not fresh either
    # A snapshot cycle proves 2 and 3 and repairs 0.
    pair.deliver(pair.two_cycles())
    assert [e.leaf_id for e in sub.events if e.kind is Status.LEAF_REPAIRED] == [0]
    assert sub.stale_leaves() == []
    assert sub.suspect_leaves() == []
    assert sub.synced
    assert sub.values() == dict(pair.pub.leaves.items())


def leaf_0_made_stale() -> Pair:
    """Two leaves; a change of leaf 0 lost, the next one delivered: leaf 0 is STALE."""
    pair = Pair(leaves=2, reorder_window_s=0.01)
    pair.pub.publish(0, 1)
    pair.sent()  # lost
    pair.pub.publish(0, 2)
    pair.deliver(pair.sent())
    pair.tick(0.02)
    return pair


def test_a_stale_leaf_keeps_buffering_and_repairs_with_the_chain() -> None:
    pair = leaf_0_made_stale()
    # Snapshot taken now, then more changes that arrive after it.
    cycle = pair.full_cycle()
    pair.pub.publish(0, 3)
    later = pair.sent()
    pair.deliver(cycle + later)
    assert pair.sub.is_fresh(0)
    assert pair.sub.get(0) == pair.pub.leaves[0]


def test_an_old_snapshot_cannot_repair_a_leaf() -> None:
    pair = Pair(leaves=1, reorder_window_s=0.01)
    old_cycle = pair.full_cycle()  # as of before the loss
    pair.pub.publish(0, 1)
    pair.sent()  # lost
    pair.pub.publish(0, 2)
    pair.deliver(pair.sent())
    pair.tick(0.02)
    pair.deliver(old_cycle)  # a duplicate of an old datagram arriving very late
    assert not pair.sub.is_fresh(0)
    pair.deliver(pair.full_cycle())
    assert pair.sub.is_fresh(0)
    assert pair.sub.get(0) == pair.pub.leaves[0]


def test_a_delete_lost_in_a_gap_is_found_by_the_range_assertion() -> None:
    pair = Pair(leaves=5, reorder_window_s=0.01)
    pair.pub.delete(2)
    pair.sent()  # lost
    pair.pub.publish(0, 1)
    pair.deliver(pair.sent())
    pair.tick(0.02)
    assert 2 in pair.sub.values()
    assert not pair.sub.is_fresh(2)
    pair.deliver(pair.two_cycles())
    assert 2 not in pair.sub.values()
    assert (2, UpdateKind.DELETED, None, None) in [u[:4] for u in pair.sub.updates]
    assert pair.sub.synced


def test_a_create_lost_in_a_gap_is_found_in_the_next_cycle() -> None:
    pair = Pair(leaves=3, reorder_window_s=0.01)
    pair.pub.publish(10, 1)  # creates leaf 10; lost
    pair.sent()
    pair.pub.publish(0, 1)
    pair.deliver(pair.sent())
    pair.tick(0.02)
    assert not pair.sub.synced
    assert not pair.sub.leaf_set_known
    pair.deliver(pair.two_cycles())
    assert pair.sub.values() == dict(pair.pub.leaves.items())
    assert pair.sub.synced


def test_deleted_leaf_is_not_resurrected_by_an_older_snapshot() -> None:
    pair = Pair(leaves=2)
    cycle = pair.full_cycle()
    pair.pub.delete(1)
    pair.deliver(pair.sent())
    pair.deliver(cycle)  # late duplicate from before the delete
    assert 1 not in pair.sub.values()


def test_end_of_session_then_restart_rebuilds_without_mixing() -> None:
    pair = Pair(leaves=3)
    pair.deliver([bytes(pair.pub.end_of_session(pair.now))])
    assert Status.SESSION_ENDED in kinds(pair.sub.events)
    assert not unnarrowed(pair.sub.synced)
    new = PublisherCore(ChainModel(), quiet_config(), now=pair.now, session_id=12)
    new.publish(100, 1)
    pair.pub = new
    pair.deliver(pair.sent())
    assert Status.RESTARTED in kinds(pair.sub.events)
    assert not unnarrowed(pair.sub.synced)  # no snapshot of the new session yet
    pair.deliver(pair.full_cycle())
    assert not unnarrowed(pair.sub.synced)  # one cycle of the new session: not yet corroborated
    pair.deliver(pair.full_cycle())
    assert pair.sub.synced
    assert pair.sub.values() == dict(new.leaves.items())
    assert sorted(u[0] for u in pair.sub.updates if u[1] is UpdateKind.DELETED) == [0, 1, 2]


def test_crash_restart_is_adopted_only_after_the_old_session_falls_silent() -> None:
    pair = Pair(leaves=3, restart_grace_s=0.5)
    stranger = PublisherCore(ChainModel(), quiet_config(), now=pair.now, session_id=99)
    stranger.publish(50, 1)
    pair.deliver(capture(stranger, pair.now))
    assert pair.sub.session_id == 11
    assert pair.sub.stats.foreign_session >= 1
    pair.tick(0.6)  # the old session has been silent longer than the grace
    stranger.publish(50, 2)
    pair.deliver(capture(stranger, pair.now + 1))
    assert pair.sub.session_id == 99
    assert pair.sub.stats.restarts == 1


def test_silence_is_reported_and_resumes() -> None:
    pair = Pair(leaves=1, silence_timeout_s=0.3)
    pair.tick(0.31)
    assert Status.SILENT in kinds(pair.sub.events)
    assert not pair.sub.synced
    pair.pub.publish(0, 3)
    pair.deliver(pair.sent())
    assert Status.RESUMED in kinds(pair.sub.events)
    assert pair.sub.synced


def test_heartbeat_announces_missing_deltas() -> None:
    pub = PublisherCore(ChainModel(), quiet_config(heartbeat_interval_s=0.1), now=0.0,
                        session_id=3)
    sub = SubscriberCore(ChainModel(), SubscriberConfig(reorder_window_s=0.01, retransmit=False))
    pub.publish(0, 1)
    for datagram in capture(pub, 0.0):
        sub.receive(datagram, 0.0)
    pub.publish(0, 2)
    capture(pub, 0.01)  # lost; the stream then goes idle
    for datagram in capture(pub, 0.2):  # a heartbeat carrying the next sequence
        sub.receive(datagram, 0.2)
    sub.poll(0.25)
    # One datagram alone does not move the stream (it could be forged or corrupted)...
    assert sub.stats.gaps == 0
    assert sub.is_fresh(0)
    for datagram in capture(pub, 0.31):  # ...the next heartbeat confirms the hole
        sub.receive(datagram, 0.31)
    sub.poll(0.35)
    assert sub.stats.gaps == 1
    assert not sub.is_fresh(0)


def test_fragmented_snapshots_reassemble() -> None:
    model = BlobModel()
    pub = PublisherCore(model, PublisherConfig(max_datagram_size=200, min_cycle_s=0.25),
                        now=0.0, session_id=4)
    for leaf_id in range(3):
        for offset in range(0, 1000, 100):  # 1000-byte leaves need 7 fragments
            pub.publish(leaf_id, (offset, bytes([leaf_id + offset % 251]) * 100))
    sub = SubscriberCore(model)
    now = 0.0
    for _ in range(100):
        now += 0.01
        for datagram in capture(pub, now):
            if now > 0.02:  # join after the creates: only snapshots can sync it
                sub.receive(datagram, now)
    assert sub.synced
    assert sub.values() == dict(pub.leaves.items())


def test_lost_fragment_waits_for_the_next_cycle() -> None:
    model = BlobModel()
    pub = PublisherCore(model, PublisherConfig(max_datagram_size=200, min_cycle_s=0.05),
                        now=0.0, session_id=4)
    for offset in range(0, 1000, 100):
        pub.publish(0, (offset, b"x" * 100))
    capture(pub, 0.0)
    sub = SubscriberCore(model)
    dropped = 0
    now = 0.0
    for _ in range(100):
        now += 0.01
        for datagram in capture(pub, now):
            if dropped < 2 and any(m.__class__.__name__ == "Snapshot" for m in
                                   decode_datagram(datagram).messages):
                dropped += 1
                continue
            sub.receive(datagram, now)
    assert sub.synced
    assert sub.get(0) == pub.leaves[0]


def test_malformed_and_foreign_datagrams_are_counted_never_raised() -> None:
    pair = Pair(leaves=2)
    rng = random.Random(5)
    good = pair.full_cycle()[0]
    for _ in range(300):
        data = bytearray(good)
        for _ in range(rng.randrange(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        pair.sub.receive(bytes(data[: rng.randrange(len(data) + 1)]), pair.now)
    pair.sub.receive(b"", pair.now)
    pair.sub.receive(b"\xff" * 70000, pair.now)
    other = DatagramBuilder(stream_id=9, session_id=11)
    other.start(1)
    other.add_heartbeat(100)
    pair.sub.receive(other.finish(0), pair.now)
    assert pair.sub.stats.malformed > 100
    assert pair.sub.stats.foreign_stream == 1
    assert pair.sub.values() == dict(pair.pub.leaves.items())


@pytest.mark.parametrize("summaries", [True, False], ids=["touched", "no_touched"])
@pytest.mark.parametrize("seed", range(RANDOM_SEEDS))
def test_random_faults_converge_and_fresh_leaves_are_never_wrong(seed: int,
                                                                 summaries: bool) -> None:
    """Seeded loss, duplication, reordering, late joins, deletes and restarts."""
    rng = random.Random(seed)
    sim = Simulation(ChainModel(), seed=seed,
                     publisher=PublisherConfig(touched_interval_s=0.002 if summaries else 0),
                     subscriber=SubscriberConfig(reorder_window_s=0.003, retransmit=False))
    history = History(sim)
    faults = [LinkFaults(loss=rng.choice([0.0, 0.05, 0.1, 0.2]), duplicate=0.05,
                         reorder=rng.choice([0.0, 0.1, 0.3])) for _ in range(3)]
    subs = [sim.add_subscriber(faults[0])]
    checked = 0

    def step(s: Simulation) -> None:
        nonlocal checked
        history.step(rate=rng.randrange(1, 6), leaf_ids=60, delete_share=0.05)

    for phase in range(8):
        if phase == 2:
            subs.append(sim.add_subscriber(faults[1]))
        if phase == 4:
            subs.append(sim.add_subscriber(faults[2]))
        if phase == 5:
            sim.restart_publisher(keep_state=rng.random() < 0.5, clean=rng.random() < 0.5)
            history = History(sim)
        for _ in range(25):
            sim.run(0.01, step=step)
            for sub in subs:
                checked += history.check_fresh_leaves(sub)
    for sub in subs:
        sub.faults = LinkFaults()
    sim.run(2.0, step=step)
    sim.run(1.0)
    for sub in subs:
        assert_converged(sim, sub)
        history.check_fresh_leaves(sub)
    assert checked > 1000
    assert sum(sub.core.stats.gaps for sub in subs) > 0 or all(f.loss == 0 for f in faults)
    resolved = sum(sub.core.stats.gaps_resolved for sub in subs)
    assert (resolved > 0) == (summaries and sum(sub.core.stats.gaps for sub in subs) > 0)


def test_a_late_old_snapshot_cannot_install_a_leaf_hidden_by_a_gap() -> None:
    pair = Pair(leaves=1, reorder_window_s=0.01)
    pair.pub.publish(10, 1)  # creates leaf 10
    pair.sent()  # lost
    old_cycle = pair.full_cycle()  # shows leaf 10; withheld for now
    pair.pub.delete(10)
    pair.sent()  # lost
    pair.pub.publish(0, 5)
    pair.deliver(pair.sent())
    pair.tick(0.02)
    assert pair.sub.stats.gaps == 1
    pair.deliver(old_cycle)  # arrives very late, from before the delete
    assert 10 not in pair.sub.values()
    pair.deliver(pair.two_cycles())
    assert pair.sub.synced
    assert pair.sub.values() == dict(pair.pub.leaves.items())


def test_touched_summaries_name_exactly_the_leaves_a_gap_touched() -> None:
    pair = Pair(leaves=6, touched_interval_s=0.001, reorder_window_s=0.01)
    pair.pub.publish(0, 7)  # lost, with whatever summary shared its datagram
    pair.pub.publish(4, 7)
    pair.sent()
    pair.now += 0.002
    pair.pub.publish(1, 8)
    pair.deliver(pair.sent())  # deltas after the hole, and the summary covering it
    pair.tick(0.02)
    sub = pair.sub
    assert sub.stats.gaps == 1
    assert sub.stats.gaps_resolved == 1
    assert sub.stale_leaves() == [0, 4]  # exactly the leaves the lost deltas changed
    assert sub.suspect_leaves() == []  # everything else is known untouched at once
    assert all(sub.is_fresh(leaf) for leaf in (1, 2, 3, 5))
    assert sub.leaf_set_known  # no create or delete hid in the gap
    pair.deliver(pair.full_cycle())
    assert sub.synced
    assert sub.values() == dict(pair.pub.leaves.items())


def test_a_create_and_a_delete_lost_in_a_gap_are_named_by_the_summary() -> None:
    pair = Pair(leaves=3, touched_interval_s=0.001, reorder_window_s=0.01)
    pair.pub.publish(10, 1)  # creates leaf 10
    pair.pub.delete(2)
    pair.sent()  # both lost
    pair.now += 0.002
    pair.pub.publish(0, 5)
    pair.deliver(pair.sent())
    pair.tick(0.02)
    sub = pair.sub
    assert sub.stats.gaps_resolved == 1
    assert sub.stale_leaves() == [2, 10]  # 10 is known to exist, 2 to have changed
    assert 10 not in sub.values()
    assert not sub.synced
    pair.deliver(pair.full_cycle())
    assert sub.values() == dict(pair.pub.leaves.items())
    assert sub.synced


def test_without_a_covering_summary_leaves_are_proven_one_by_one() -> None:
    pair = Pair(leaves=4, touched_interval_s=0.001, reorder_window_s=0.01)
    pair.pub.publish(0, 1)
    pair.now += 0.002
    pair.sent()  # lost, with the summary of its window
    pair.pub.publish(3, 1)
    pair.now += 0.002
    pair.sent()  # lost too, with the next summary: the chain cannot cover the gap
    pair.pub.publish(1, 2)
    pair.now += 0.002
    pair.deliver(pair.sent())
    pair.tick(0.02)
    sub = pair.sub
    assert sub.stats.gaps == 1
    assert sub.stats.gaps_resolved == 0
    assert sub.suspect_leaves() == [0, 2, 3]
    pair.deliver(pair.two_cycles())
    assert sub.synced
    assert sub.values() == dict(pair.pub.leaves.items())


def test_an_overloaded_subscriber_keeps_no_buffer_for_stale_leaves_and_still_repairs() -> None:
    """Issue 12: while the runtime reports kernel drops, a STALE leaf's DELTAs are not
    kept (the buffer is emptied and the repair must reflect them, as on overflow); the
    next snapshot still repairs it exactly, and buffering resumes once the overload ends."""
    pair = leaf_0_made_stale()
    sub = pair.sub
    rec = sub.leaves[0]
    assert rec.stale
    assert rec.buffer
    sub.overloaded(pair.now)
    first_shed = sub.expected
    assert first_shed is not None
    for value in (3, 4):
        pair.pub.publish(0, value)
        pair.deliver(pair.sent())
    assert unnarrowed(rec.stale)
    # Not kept (dropped one by one, or in bulk with the datagram: see _process) ...
    assert all(seq < first_shed for _, seq, _, _ in rec.buffer or [])
    assert sub.stats.shed_deltas == 2
    # ... and the repair must reflect them.
    assert max(rec.required, sub._bulk_shed_upto) == sub.expected
    assert not sub.is_fresh(0)
    assert not unnarrowed(sub.synced)
    # An older snapshot than the shed DELTAs cannot repair it; the next cycle does.
    pair.deliver(pair.full_cycle())
    assert sub.is_fresh(0)
    assert sub.get(0) == pair.pub.leaves[0]
    assert sub.synced
    # Overload over: a leaf that goes stale buffers again.
    pair.now += 2.0
    pair.pub.publish(1, 1)
    pair.sent()  # lost
    pair.pub.publish(1, 2)
    pair.deliver(pair.sent())
    pair.tick(0.02)
    pair.pub.publish(1, 3)
    pair.deliver(pair.sent())
    assert sub.leaves[1].stale
    assert sub.leaves[1].buffer
    assert sub.stats.shed_deltas == 2


def test_an_overloaded_subscriber_buffers_while_a_fragmented_snapshot_assembles() -> None:
    """A snapshot in fragments completes after DELTAs that follow its first fragment: a
    STALE leaf keeps those even while overloaded, so that snapshot still repairs it."""
    model = BlobModel()
    sub = SubscriberCore(model, SubscriberConfig(retransmit=False))
    sub.overloaded(0.0)
    payload = b"y" * 300  # the leaf, 300 bytes, in two fragments
    now = ADMIT_HOLD_S  # still overloaded (no buffers), but repairs are taken again

    def send(sequence: int, add: Any) -> None:
        nonlocal now
        now += 0.0001
        builder = DatagramBuilder(0, 9, 1400)
        builder.start(sequence)
        add(builder)
        sub.receive(bytes(builder.finish(int(now * 1e9) + 1)), now)
        sub._check()

    # A DELTA of a leaf not held: an unknown STALE leaf, required = 1.
    send(1, lambda b: b.add_delta(0, 1, 0, model.encode_delta((0, b"x"))))
    assert unnarrowed(sub.leaves[0].stale)
    # The snapshot as of 2 (leaf_seq 1): first fragment, then the leaf's next DELTA at
    # sequence 2, then the last fragment.
    def fragment(offset: int, size: int) -> Snapshot:
        return Snapshot(leaf_id=0, leaf_seq=1, as_of_seq=2, cycle_id=1, range_start=0,
                        cycle_position=0, cycle_count=1, total_length=len(payload),
                        fragment_offset=offset, flags=SnapshotFlag.LAST,
                        payload=payload[offset:offset + size])

    send(2, lambda b: b.add_snapshot(fragment(0, 150)))
    send(2, lambda b: b.add_delta(0, 2, 0, model.encode_delta((0, b"z"))))
    assert sub.leaves[0].buffer
    send(3, lambda b: b.add_snapshot(fragment(150, 150)))
    assert not unnarrowed(sub.leaves[0].stale)
    assert sub.get(0) == model.apply(model.decode_leaf(memoryview(payload)), (0, b"z"))
