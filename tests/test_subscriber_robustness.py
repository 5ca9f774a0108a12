"""Scripted hostile cases for the subscriber core: each names the attack it models.

The explorer (test_explorer.py) searches for new failures; these pin behaviours of the
defences themselves: confirmation of sequence jumps, the position watchdog, inconsistent
datagrams, END_OF_SESSION rules, resync, lag, heartbeat clamping.
"""

from __future__ import annotations

from helpers import ChainModel, capture, unnarrowed

from grapevine._publisher_core import PublisherConfig, PublisherCore
from grapevine._subscriber_core import Status, SubscriberConfig, SubscriberCore
from grapevine.codec import (
    DatagramBuilder,
    Delta,
    Snapshot,
    decode_datagram,
    encode_datagram,
    restamped,
)
from grapevine.wire import SnapshotFlag

QUIET = PublisherConfig(min_cycle_s=0.05, heartbeat_interval_s=0.1, touched_interval_s=0.0)


class Feed:
    """One publisher core and one subscriber core on a virtual clock; datagrams by hand."""

    def __init__(self, leaves: int = 5, session_id: int = 11,
                 config: SubscriberConfig | None = None) -> None:
        self.pub = PublisherCore(ChainModel(), QUIET, now=0.0, session_id=session_id)
        # Nobody answers retransmission requests here: holes become gaps after the window.
        self.sub = SubscriberCore(ChainModel(), config or SubscriberConfig(retransmit=False))
        self.now = 0.0
        for leaf_id in range(leaves):
            self.pub.publish(leaf_id, leaf_id)

    def sent(self) -> list[bytes]:
        return capture(self.pub, self.now)

    def deliver(self, datagrams: list[bytes]) -> None:
        for datagram in datagrams:
            self.now += 0.0001
            self.sub.receive(datagram, self.now)
            self.sub._check()

    def run(self, seconds: float, *, publish: bool = False) -> None:
        """Let time pass with an honest stream (10 ms ticks)."""
        end = self.now + seconds
        tick = 0
        while self.now < end:
            self.now += 0.01
            tick += 1
            if publish:
                self.pub.publish(tick % 5, tick)
            self.deliver(self.sent())
            self.sub.poll(self.now)
            self.sub._check()

    def equal(self) -> bool:
        return self.sub.values() == dict(self.pub.leaves.items())

    def heartbeat_at(self, sequence: int, interval_ms: int = 100,
                     session_id: int | None = None) -> bytes:
        builder = DatagramBuilder(0, session_id or self.pub.session_id)
        builder.start(sequence)
        builder.add_heartbeat(interval_ms)
        return bytes(builder.finish(round(self.now * 1e9) + 7))


def test_a_lone_datagram_far_ahead_never_moves_the_stream() -> None:
    feed = Feed()
    feed.run(0.3, publish=True)
    assert feed.sub.synced
    expected = feed.sub.expected
    assert expected is not None
    forged = feed.heartbeat_at(1 << 62)
    feed.deliver([forged, forged])  # a replayed copy confirms nothing
    feed.run(0.5, publish=True)
    assert feed.sub.stats.gaps == 0
    assert feed.sub.stats.unconfirmed_datagrams >= 1  # expired after the restart grace
    assert feed.sub.expected is not None
    assert feed.sub.expected > expected
    assert feed.sub.synced
    assert feed.equal()


def test_a_confirmed_forged_jump_is_undone_by_the_position_watchdog() -> None:
    """Two distinct forged datagrams confirm a jump to 2**62; the honest stream then stays
    behind the position, which is distrusted after the restart grace: a resync."""
    feed = Feed()
    feed.run(0.3, publish=True)
    feed.deliver([feed.heartbeat_at(1 << 62), feed.heartbeat_at(1 << 62, interval_ms=99)])
    feed.now += 0.05
    feed.sub.poll(feed.now)  # the reorder window passes: a gap to 2**62
    assert feed.sub.stats.gaps == 1
    assert not unnarrowed(feed.sub.synced)
    feed.run(1.0, publish=True)
    assert feed.sub.stats.resyncs == 1
    event = feed.sub.last_distrust
    assert event is not None
    assert event.kind is Status.RESYNC
    feed.run(0.5, publish=True)
    assert feed.sub.synced
    assert feed.equal()


def test_a_replayed_datagram_at_the_current_position_is_dropped_whole() -> None:
    """An old datagram re-sequenced to the next position: all its deltas repeat leaf_seqs
    the leaves already have, so it is not this position's; the honest one still applies."""
    feed = Feed()
    feed.run(0.3, publish=True)
    feed.pub.publish(1, 111)
    feed.pub.publish(2, 222)
    old = [d for d in feed.sent() if any(type(m) is Delta for m in decode_datagram(d).messages)][-1]
    feed.deliver([old])
    feed.pub.publish(3, 333)
    honest = feed.sent()
    forged = decode_datagram(old)._replace(sequence=decode_datagram(honest[0]).sequence)
    feed.deliver([encode_datagram(forged)])
    assert feed.sub.stats.inconsistent_datagrams == 1
    feed.deliver(honest)
    assert feed.sub.is_fresh(3)
    assert feed.sub.get(3) == feed.pub.leaves[3]
    assert feed.sub.stats.gaps == 0
    assert feed.equal()



def test_a_dropped_inconsistent_datagram_leaves_no_trace() -> None:
    """A re-sequenced datagram whose first DELTA names a leaf the replica does not hold
    (nothing to compare: it would be held for a snapshot) and whose second repeats a
    leaf_seq leaf 0 already had. It is judged whole before anything of it is applied:
    dropped, and no unknown leaf 7 is left waiting for a snapshot that never comes."""
    feed = Feed()
    feed.run(0.3, publish=True)
    assert feed.sub.synced
    expected = feed.sub.expected
    assert expected is not None
    builder = DatagramBuilder(0, feed.pub.session_id)
    builder.start(expected)
    builder.add_delta(7, 3, 0, ChainModel().encode_delta(1))
    builder.add_delta(0, feed.sub.leaves[0].leaf_seq, 0, ChainModel().encode_delta(2))
    feed.deliver([bytes(builder.finish(round(feed.now * 1e9)))])
    assert feed.sub.stats.inconsistent_datagrams == 1
    assert 7 not in feed.sub.leaves
    assert feed.sub.expected == expected
    assert feed.sub.synced
    feed.run(0.3, publish=True)
    assert feed.sub.synced
    assert feed.equal()

def test_a_forged_end_of_session_is_undone_by_the_next_datagram() -> None:
    feed = Feed()
    feed.run(0.3, publish=True)
    assert feed.sub.synced
    builder = DatagramBuilder(0, feed.pub.session_id)
    builder.start(feed.pub.next_seq)
    builder.add_end_of_session()
    feed.deliver([bytes(builder.finish(1))])
    assert unnarrowed(feed.sub.ended)
    assert not unnarrowed(feed.sub.synced)
    feed.run(0.2)  # heartbeats only
    assert not feed.sub.ended
    assert feed.sub.synced
    assert Status.RESUMED in [event.kind for event in feed.sub.events]


def test_a_forged_session_after_a_forged_end_lets_the_real_one_back() -> None:
    """END_OF_SESSION and a datagram of a new session, both forged: the subscriber follows
    the forgery, which then falls silent; the real session is taken back and rebuilt."""
    feed = Feed()
    feed.run(0.3, publish=True)
    builder = DatagramBuilder(0, feed.pub.session_id)
    builder.start(feed.pub.next_seq)
    builder.add_end_of_session()
    feed.deliver([bytes(builder.finish(1)), feed.heartbeat_at(1, session_id=999)])
    assert feed.sub.session_id == 999
    feed.run(1.0, publish=True)
    assert feed.sub.session_id == feed.pub.session_id
    feed.run(0.5, publish=True)
    assert feed.sub.synced
    assert feed.equal()


def test_a_hole_before_end_of_session_does_not_hold_up_the_next_session() -> None:
    feed = Feed()
    feed.run(0.3, publish=True)
    feed.pub.publish(0, 5)
    feed.sent()  # the last deltas are lost
    end = bytes(feed.pub.end_of_session(feed.now))
    # Three copies, each stamped apart (as Publisher.close sends them): two distinct
    # datagrams at one sequence confirm the hole, so END_OF_SESSION is reached.
    feed.deliver([restamped(end, 100 + copy) for copy in range(3)])
    feed.now += 0.05
    feed.sub.poll(feed.now)
    assert feed.sub.ended
    successor = PublisherCore(ChainModel(), QUIET, now=feed.now, session_id=12,
                              initial=dict(feed.pub.leaves.items()))
    feed.pub = successor
    feed.run(0.05)  # well inside the restart grace
    assert feed.sub.session_id == 12
    feed.run(0.3)
    assert feed.sub.synced
    assert feed.equal()


def test_resync_rebuilds_the_replica_from_the_cycle() -> None:
    feed = Feed()
    feed.run(0.3, publish=True)
    feed.sub.resync(feed.now)
    assert feed.sub.values() == {}
    assert not unnarrowed(feed.sub.synced)
    assert feed.sub.stats.resyncs == 1
    feed.run(0.3, publish=True)
    assert feed.sub.synced
    assert feed.equal()


def test_a_forged_heartbeat_interval_is_clamped() -> None:
    feed = Feed()
    feed.run(0.3)
    feed.deliver([feed.heartbeat_at(feed.pub.next_seq, interval_ms=1)])
    assert feed.sub.restart_grace_s >= 0.1  # not 2 ms: a pause is not a restart
    feed.deliver([feed.heartbeat_at(feed.pub.next_seq, interval_ms=0xFFFFFFFF)])
    assert feed.sub.silence_timeout_s <= 90  # silence is still noticed


def test_lag_is_measured_without_clock_sync_and_reported() -> None:
    """The publisher's clock is 1000 s off ours; a subscriber that falls 2 s behind
    reports LAGGING, and CAUGHT_UP once it is back."""
    sub = SubscriberCore(ChainModel(), SubscriberConfig(lag_warning_s=1.0))
    offset_ns = 1000 * 10**9

    def heartbeat(sent_at: float, received_at: float) -> None:
        builder = DatagramBuilder(0, 5)
        builder.start(1)
        builder.add_heartbeat(100)
        sub.receive(bytes(builder.finish(round(sent_at * 1e9) + offset_ns)), received_at)

    for step in range(10):
        heartbeat(step * 0.1, step * 0.1 + 0.001)
    assert sub.lag_s < 0.01
    heartbeat(1.0, 3.0)
    assert not unnarrowed(sub.lagging)  # one late datagram is not yet lagging
    assert abs(sub.lag_s - 2.0) < 0.01
    heartbeat(1.1, 3.1)
    assert unnarrowed(sub.lagging)
    heartbeat(3.1, 3.101)
    assert not sub.lagging
    kinds = [event.kind for event in sub.events]
    assert kinds.index(Status.LAGGING) < kinds.index(Status.CAUGHT_UP)


def test_a_forged_delta_that_takes_the_next_sequence_cannot_hide_the_real_one() -> None:
    """A forged DELTA at the sequence the publisher has not used yet consumes it; the
    real DELTA then arrives 'behind' the position, yet it is its leaf's next change, so it
    is applied (and the leaf it reveals as behind is counted as a divergence)."""
    feed = Feed()
    feed.run(0.3, publish=True)
    leaf_seq = feed.pub.leaf_seq(4)
    builder = DatagramBuilder(0, feed.pub.session_id)
    builder.start(feed.pub.next_seq)
    builder.add_delta(0, feed.pub.leaf_seq(0) + 50, 0, (9).to_bytes(8, "little"))
    feed.deliver([bytes(builder.finish(1))])  # leaf 0 jumps: stale, repaired later
    feed.pub.publish(4, 444)
    feed.deliver(feed.sent())
    assert feed.pub.leaf_seq(4) == leaf_seq + 1
    assert feed.sub.stats.late_deltas == 1
    assert feed.sub.get(4) == feed.pub.leaves[4]
    feed.run(0.5, publish=True)
    assert feed.sub.synced
    assert feed.equal()


def _snapshot_datagram(feed: Feed, snapshot: Snapshot) -> bytes:
    """A datagram holding only ``snapshot``, at its own stream position."""
    builder = DatagramBuilder(0, feed.pub.session_id)
    builder.start(snapshot.as_of_seq)
    builder.add_snapshot(snapshot._replace(payload=bytes(snapshot.payload)))
    return bytes(builder.finish(int(feed.now * 1e9) + 1))


def _snapshot_of(datagrams: list[bytes], leaf_id: int) -> Snapshot:
    return next(message for decoded in map(decode_datagram, datagrams)
                for message in decoded.messages
                if isinstance(message, Snapshot) and message.leaf_id == leaf_id)


def test_one_datagram_claiming_a_whole_cycle_does_not_sync_a_joiner() -> None:
    """A copy of leaf 0's real snapshot re-flagged as the end of a one-leaf cycle is a
    complete, consistent claim. Alone it is not corroborated (SPEC §12(g)): the joiner
    stays unsynced, however often the copy is repeated and re-stamped."""
    feed = Feed(leaves=4)
    leaf0 = _snapshot_of(feed.sent(), 0)
    claim = leaf0._replace(flags=leaf0.flags | SnapshotFlag.LAST, cycle_count=1)
    for _ in range(3):
        feed.now += 0.001
        feed.deliver([_snapshot_datagram(feed, claim)])
    assert feed.sub.values() == {0: feed.pub.leaves[0]}
    assert not feed.sub.leaf_set_known
    assert not unnarrowed(feed.sub.synced)
    feed.run(0.3)  # honest cycles: they build the real leaf set
    assert feed.sub.synced
    assert feed.equal()


def test_a_false_claim_completed_by_an_honest_snapshot_fails_the_census() -> None:
    """The forged one-leaf claim, then one honest snapshot (leaf 2, another datagram and
    cycle): together they cover every id from two sources, but leaf 2's snapshot says the
    publisher has 4 leaves, 2 of them below it, and the replica holds 2 (1 below). The
    census refutes the claim: the leaf set is forgotten, never SYNCED on it."""
    feed = Feed(leaves=4)
    leaf0 = _snapshot_of(feed.sent(), 0)
    claim = leaf0._replace(flags=leaf0.flags | SnapshotFlag.LAST, cycle_count=1)
    feed.deliver([_snapshot_datagram(feed, claim)])
    leaf2 = leaf0
    while leaf2.cycle_id == leaf0.cycle_id:  # leaf 2's snapshot of a later cycle
        feed.now += 0.05
        later = feed.sent()
        if any(s.leaf_id == 2 for d in later for s in decode_datagram(d).messages
               if isinstance(s, Snapshot)):
            leaf2 = _snapshot_of(later, 2)
    feed.deliver([_snapshot_datagram(feed, leaf2)])
    assert feed.sub.stats.census_mismatches == 1
    assert not feed.sub.leaf_set_known
    assert not unnarrowed(feed.sub.synced)
    feed.run(0.3)
    assert feed.sub.synced
    assert feed.equal()


def test_the_census_finds_a_leaf_missing_from_a_known_leaf_set() -> None:
    """Self-healing of the leaf set itself: a synced replica that lost a leaf without any
    claim saying so (an application or library bug) is caught by the next in-order
    snapshot's count, reported as a divergence and rebuilt."""
    feed = Feed(leaves=4)
    feed.run(0.3)
    assert feed.sub.synced
    feed.sub._remove(3, feed.sub.leaves[3])  # the replica silently loses a leaf
    feed.run(0.3)
    assert feed.sub.stats.census_mismatches >= 1
    assert feed.sub.stats.divergences >= 1
    assert feed.sub.synced
    assert feed.equal()



def test_one_datagram_stamped_far_in_the_future_does_not_skew_the_lag() -> None:
    """A send time an hour ahead would lower the lag floor by an hour, and every honest
    datagram would then look an hour late for up to a minute. Unconfirmed, it is ignored;
    a publisher clock that really stepped is followed from its second datagram."""
    sub = SubscriberCore(ChainModel(), SubscriberConfig(lag_warning_s=1.0))

    def heartbeat(sent_at: float, received_at: float) -> None:
        builder = DatagramBuilder(0, 5)
        builder.start(1)
        builder.add_heartbeat(100)
        sub.receive(bytes(builder.finish(round(sent_at * 1e9))), received_at)

    for step in range(10):
        heartbeat(100 + step * 0.1, step * 0.1 + 0.001)
    heartbeat(100 + 3600, 1.0)  # forged: an hour ahead
    for step in range(11, 20):
        heartbeat(100 + step * 0.1, step * 0.1 + 0.001)
        assert sub.lag_s < 0.01
    assert not sub.lagging
    assert Status.LAGGING not in [event.kind for event in sub.events]
    heartbeat(5000 + 2.0, 2.0)  # the publisher's clock steps forward for good
    heartbeat(5000 + 2.1, 2.1)
    assert sub.last_send_time_ns == round((5000 + 2.1) * 1e9)
    assert sub.lag_s < 0.01


def test_next_poll_is_never_in_the_past_while_a_lone_datagram_waits() -> None:
    """A lone datagram ahead of a hole is not confirmed, so the reorder window's end
    declares nothing; next_poll() must then point at its expiry, not at the window's end
    (which would be in the past, and a receiver thread sleeping until it would spin)."""
    feed = Feed()
    feed.run(0.3, publish=True)
    expected = feed.sub.expected
    assert expected is not None
    feed.deliver([feed.heartbeat_at(expected + 5)])
    polls = 0
    while feed.sub._reorder:
        at = feed.sub.next_poll(feed.now)
        assert at > feed.now
        feed.now = at
        feed.sub.poll(feed.now)
        polls += 1
    assert polls <= 20  # the expiry came after a bounded number of wake-ups
    assert feed.sub.stats.unconfirmed_datagrams == 1


def _gap_with_suspects(feed: Feed) -> list[int]:
    """Lose one datagram of leaf 0's change, confirm the hole with two later ones, let
    the reorder window pass: a gap, after which unproven leaves are suspect."""
    feed.run(0.3)
    feed.pub.publish(0, 1000)
    feed.sent()  # lost
    for value in (2000, 3000):
        feed.pub.publish(1, value)
        feed.deliver([d for d in feed.sent()
                      if not any(isinstance(m, Snapshot) for m in decode_datagram(d).messages)])
    feed.now += 0.05
    feed.sub.poll(feed.now)
    assert feed.sub.stats.gaps == 1
    return feed.sub.suspect_leaves()


def test_other_bytes_at_the_same_leaf_seq_are_a_divergence_even_for_a_suspect_leaf() -> None:
    """A gap explains a leaf that is behind the publisher, never a leaf whose bytes differ
    at the same leaf_seq: that is counted and reported, not replaced silently."""
    feed = Feed()
    suspects = _gap_with_suspects(feed)
    leaf_id = suspects[-1]
    rec = feed.sub.leaves[leaf_id]
    expected = feed.sub.expected
    assert expected is not None
    payload = ChainModel().encode_leaf((rec.value[0] + 7, rec.value[1]))
    builder = DatagramBuilder(0, feed.pub.session_id)
    builder.start(expected)
    builder.add_snapshot(Snapshot(leaf_id, leaf_id, 99, leaf_id, 5, rec.leaf_seq, expected,
                                  len(payload), 0, 0, payload))
    divergences = feed.sub.stats.divergences
    feed.deliver([bytes(builder.finish(round(feed.now * 1e9)))])
    assert feed.sub.stats.divergences == divergences + 1
    event = feed.sub.last_distrust
    assert event is not None
    assert event.leaf_id == leaf_id
    feed.run(0.3)  # the honest cycle repairs it
    assert feed.sub.synced
    assert feed.equal()


def test_a_late_delta_with_a_reserved_flag_bit_is_still_applied() -> None:
    """Reserved DELTA flag bits are ignored (SPEC §6.2): a late DELTA that is a held
    leaf's next change is applied whatever they hold."""
    feed = Feed()
    feed.run(0.3)
    expected = feed.sub.expected
    assert expected is not None
    leaf_seq = feed.sub.leaves[2].leaf_seq
    builder = DatagramBuilder(0, feed.pub.session_id)
    builder.start(expected - 1)
    builder.add_delta(2, leaf_seq + 1, 0x80, ChainModel().encode_delta(5))
    feed.deliver([bytes(builder.finish(round(feed.now * 1e9)))])
    assert feed.sub.stats.late_deltas == 1
    assert feed.sub.leaves[2].leaf_seq == leaf_seq + 1


def test_a_refused_install_counts_no_divergence() -> None:
    """A snapshot of a deleted leaf that contradicts the deletion counts a divergence only
    if it is installed: one the model rejects is a bad payload, nothing more."""
    feed = Feed()
    feed.run(0.3)
    feed.pub.delete(4)
    feed.deliver(feed.sent())
    assert 4 not in feed.sub.values()
    expected = feed.sub.expected
    assert expected is not None
    builder = DatagramBuilder(0, feed.pub.session_id)
    builder.start(expected)
    builder.add_snapshot(Snapshot(4, 4, 99, 4, 5, feed.pub.leaf_seq(4) - 1, expected, 3, 0, 0,
                                  b"bad"))
    bad = feed.sub.stats.bad_payloads
    feed.sub.events.clear()
    feed.deliver([bytes(builder.finish(round(feed.now * 1e9)))])
    assert feed.sub.stats.bad_payloads == bad + 1
    # (Its leaf count may still refute the leaf set: that is the census, a separate check.)
    assert not [event for event in feed.sub.events if event.kind is Status.LEAF_DIVERGED
                and "deletion" in (event.reason or "")]


def test_a_verified_leaf_is_seen_as_of_its_snapshot() -> None:
    """Verification raises seen_seq: a claim as of before the verifying snapshot (but after
    the leaf's last change) cannot make the leaf stale."""
    feed = Feed()
    feed.run(0.3)
    feed.pub.publish(2, 77)
    feed.deliver(feed.sent())
    changed_at = feed.sub.leaves[2].seen_seq
    for value in range(5):  # other leaves move the stream on
        feed.pub.publish(0, 1000 + value)
        feed.deliver(feed.sent())
    verified = feed.sub.stats.snapshots_verified
    feed.run(0.2)  # a cycle verifies leaf 2 as of now
    assert feed.sub.stats.snapshots_verified > verified
    assert feed.sub.leaves[2].seen_seq > changed_at + 1
    three = feed.sub.leaves[3]
    payload = ChainModel().encode_leaf(three.value)
    builder = DatagramBuilder(0, feed.pub.session_id)
    builder.start(changed_at + 1)  # an old position: claims [2, 3) empty as of then
    builder.add_snapshot(Snapshot(3, 2, 99, 2, 5, three.leaf_seq, changed_at + 1,
                                  len(payload), 0, 0, payload))
    divergences = feed.sub.stats.divergences
    feed.deliver([bytes(builder.finish(round(feed.now * 1e9)))])
    assert feed.sub.stats.divergences == divergences
    assert feed.sub.is_fresh(2)
