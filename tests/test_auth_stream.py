"""Authenticated streams through the sans-I/O cores (issue 8): every forged, mutated or
replayed datagram is dropped and counted before the core sees it, and the replica stays
synced and equal after every datagram; key rotation in the middle of a stream loses
nothing."""

from __future__ import annotations

import random

import pytest
from helpers import ChainModel

from grapevine import ConfigError
from grapevine._publisher_core import PublisherConfig, PublisherCore
from grapevine._subscriber_core import SubscriberConfig, SubscriberCore
from grapevine.auth import Key, KeyRing, sign
from grapevine.codec import DatagramBuilder, Snapshot, decode_datagram
from grapevine.wire import SnapshotFlag

KEY_1 = Key(1, bytes(range(32)))
KEY_2 = Key(2, bytes(range(32, 64)))
ATTACKER = Key(1, bytes(range(64, 96)))  # the right key id, the wrong secret


class SignedFeed:
    """A signing publisher core and a verifying subscriber core on a virtual clock."""

    def __init__(self, pub_ring: KeyRing, sub_ring: KeyRing, leaves: int = 6) -> None:
        self.pub = PublisherCore(ChainModel(), PublisherConfig(
            min_cycle_s=0.05, heartbeat_interval_s=0.1, keys=pub_ring), now=0.0, session_id=21)
        self.sub = SubscriberCore(ChainModel(), SubscriberConfig(keys=sub_ring))
        self.now = 0.0
        self.sent: list[bytes] = []  # every honest datagram, for replays
        for leaf_id in range(leaves):
            self.pub.publish(leaf_id, leaf_id)

    def step(self, *, publish: bool = True, check_synced: bool = False) -> list[bytes]:
        """10 ms: maybe a change, then every datagram due, each delivered and checked."""
        self.now += 0.01
        if publish:
            self.pub.publish(round(self.now * 100) % 6, round(self.now * 1000))
        out = []
        while (datagram := self.pub.next_datagram(self.now)) is not None:
            data = bytes(datagram)
            assert len(data) <= self.pub.config.max_datagram_size
            out.append(data)
            self.deliver(data, check_synced=check_synced)
        self.sent += out
        return out

    def deliver(self, data: bytes, *, check_synced: bool = False) -> None:
        self.now += 0.0001
        self.sub.receive(data, self.now)
        self.sub._check()
        if check_synced:
            assert self.sub.synced, self.sub.stats
            assert self.equal()

    def equal(self) -> bool:
        return self.sub.values() == dict(self.pub.leaves.items())


def forgeries(feed: SignedFeed) -> list[bytes]:
    """What an attacker without the key sends: the attacks of issue 7, unsigned, signed
    with the wrong key, or signed and then bit-flipped."""
    session, position = feed.pub.session_id, feed.pub.next_seq
    forged = []
    for sequence in (1 << 62, position, position ^ (1 << 40)):
        builder = DatagramBuilder(0, session)
        builder.start(sequence)
        builder.add_heartbeat(100)
        forged.append(bytes(builder.finish(123)))
    builder = DatagramBuilder(0, session)
    builder.start(position)
    builder.add_end_of_session()
    forged.append(bytes(builder.finish(124)))
    builder = DatagramBuilder(0, session)
    builder.start(position)
    builder.add_snapshot(Snapshot(0, 0, 7, 0, 1, 5, position, 16, 0, SnapshotFlag.LAST,
                                  ChainModel().encode_leaf((9, 9))))
    forged.append(bytes(builder.finish(125)))
    wrong_key = KeyRing([ATTACKER])
    signed_wrong = [sign(data, wrong_key) for data in forged]
    real = feed.sent[-1]
    flipped = []
    rng = random.Random(7)
    for _ in range(50):
        copy = bytearray(real)
        copy[rng.randrange(len(copy))] ^= 1 << rng.randrange(8)
        flipped.append(bytes(copy))
    return forged + signed_wrong + flipped


def test_a_signed_stream_syncs_and_every_forgery_is_dropped_and_counted() -> None:
    feed = SignedFeed(KeyRing([KEY_1]), KeyRing([KEY_1]))
    for _ in range(40):
        feed.step()
    assert feed.sub.synced
    assert feed.equal()
    attacks = forgeries(feed)
    for data in attacks:
        feed.deliver(data, check_synced=True)  # never unsynced, never wrong
        feed.step(check_synced=True)
    stats = feed.sub.stats
    assert stats.unauthenticated + stats.unknown_keys + stats.bad_tags == len(attacks)
    assert stats.unauthenticated >= 5  # the unsigned ones (and flips of the AUTH bit)
    assert stats.bad_tags >= 5  # the wrong secret under the right key id, and most flips
    assert stats.malformed == 0  # nothing forged ever reached the decoder
    assert stats.divergences == 0
    assert stats.gaps == 0


def test_replays_old_and_recent_are_dropped_and_counted() -> None:
    feed = SignedFeed(KeyRing([KEY_1]), KeyRing([KEY_1]))
    for _ in range(400):  # 4 s of stream: the first datagrams are older than the window
        feed.step()
    old = feed.sent[:40]
    recent = feed.sent[-5:]
    replayed = feed.sub.stats.replayed
    for data in old + recent:
        feed.deliver(data, check_synced=True)
    assert feed.sub.stats.replayed - replayed == len(old) + len(recent)
    assert feed.sub.stats.duplicate_datagrams == 0  # none reached the core
    feed.step(check_synced=True)


def test_an_old_end_of_session_replayed_after_a_restart_is_rejected() -> None:
    feed = SignedFeed(KeyRing([KEY_1]), KeyRing([KEY_1]))
    for _ in range(30):
        feed.step()
    old_end = bytes(feed.pub.end_of_session(feed.now))
    feed.deliver(old_end)
    assert feed.sub.ended
    new = PublisherCore(ChainModel(), PublisherConfig(min_cycle_s=0.05, heartbeat_interval_s=0.1,
                                                      keys=KeyRing([KEY_1])),
                        now=feed.now, session_id=22)
    for leaf_id in range(6):
        new.publish(leaf_id, 100 + leaf_id)
    feed.pub, feed.sent = new, []
    for _ in range(300):  # 3 s of the new session
        feed.step()
    assert feed.sub.session_id == 22
    assert feed.sub.synced
    replayed = feed.sub.stats.replayed
    feed.deliver(old_end, check_synced=True)  # the old session's end, replayed
    assert feed.sub.stats.replayed == replayed + 1
    assert feed.sub.session_id == 22


def test_key_rotation_in_the_middle_of_a_stream_loses_nothing() -> None:
    both = KeyRing([KEY_1, KEY_2], signing_key_id=1)
    feed = SignedFeed(KeyRing([KEY_1]), both)
    for _ in range(30):
        feed.step()
    assert feed.sub.synced
    feed.pub.set_keys(KeyRing([KEY_2]))  # the publisher switches to the new key
    for _ in range(30):
        feed.step(check_synced=True)
    feed.sub.set_keys(KeyRing([KEY_2]))  # then receivers drop the old one
    for _ in range(30):
        feed.step(check_synced=True)
    stats = feed.sub.stats
    assert stats.unknown_keys == stats.bad_tags == stats.unauthenticated == 0
    assert stats.gaps == 0
    assert stats.deltas == feed.pub.next_seq - 1  # every delta of the stream, applied


def test_a_subscriber_without_keys_reads_a_signed_stream() -> None:
    pub = PublisherCore(ChainModel(), PublisherConfig(min_cycle_s=0.05, keys=KeyRing([KEY_1])),
                        now=0.0, session_id=5)
    sub = SubscriberCore(ChainModel())
    for leaf_id in range(3):
        pub.publish(leaf_id, leaf_id)
    now = 0.0
    for _ in range(20):
        now += 0.01
        while (datagram := pub.next_datagram(now)) is not None:
            assert decode_datagram(datagram).auth is not None
            sub.receive(datagram, now)
    assert sub.synced
    assert sub.values() == dict(pub.leaves.items())


def test_keys_are_checked_at_the_call() -> None:
    with pytest.raises(ConfigError):
        PublisherConfig(keys="0123")  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        SubscriberConfig(keys=b"0123")  # type: ignore[arg-type]
    core = PublisherCore(ChainModel(), PublisherConfig(), now=0.0, session_id=5)
    with pytest.raises(ConfigError, match="does not sign"):
        core.set_keys(KeyRing([KEY_1]))
    sub = SubscriberCore(ChainModel())
    with pytest.raises(ConfigError, match="does not verify"):
        sub.set_keys(KeyRing([KEY_1]))


def test_a_signed_publisher_fits_full_summaries_and_snapshots_into_its_room() -> None:
    """With keys every datagram loses 20 bytes to the trailer: a TOUCHED summary of the
    most leaves that fit, the largest delta and fragmented snapshots must all still fit
    (found by tools/bench_core.py: a full summary overflowed a signed datagram)."""
    ring = KeyRing([KEY_1])
    config = PublisherConfig(min_cycle_s=0.0, keys=ring, max_datagram_size=600)
    pub = PublisherCore(ChainModel(), config, now=0.0, session_id=9)
    sub = SubscriberCore(ChainModel(), SubscriberConfig(keys=ring))
    now = 0.0
    for round_ in range(5):
        for leaf_id in range(500):  # many leaves touched: summaries as full as they get
            pub.publish(leaf_id, round_ * 1000 + leaf_id)
        now += 0.02
        while (datagram := pub.next_datagram(now)) is not None:
            assert len(datagram) <= 600
            sub.receive(datagram, now)
    assert sub.stats.bad_tags == sub.stats.unauthenticated == 0
    assert sub.stats.touched_summaries > 0
    for _ in range(100):
        now += 0.01
        while (datagram := pub.next_datagram(now)) is not None:
            sub.receive(datagram, now)
    assert sub.synced
    assert sub.values() == dict(pub.leaves.items())


def test_datagrams_captured_minutes_earlier_are_rejected_as_too_old() -> None:
    """Issue 8's replay of captures minutes old: three minutes of stream later, the
    captured datagrams (deltas, snapshots, heartbeats, summaries) are all too old."""
    feed = SignedFeed(KeyRing([KEY_1]), KeyRing([KEY_1]))
    for _ in range(50):
        feed.step()
    captured = list(feed.sent)
    feed.now += 180.0  # three minutes on: the publisher idles (heartbeats and cycles)
    for _ in range(20):
        feed.step()
    assert feed.sub.synced
    replayed = feed.sub.stats.replayed
    for data in captured:
        feed.deliver(data, check_synced=True)
    assert feed.sub.stats.replayed - replayed == len(captured)
