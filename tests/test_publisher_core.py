"""The publisher's sans-I/O core: sequencing, pacing, the cycle's range assertions."""

from __future__ import annotations

from typing import Any

import pytest
from helpers import BlobModel, ChainModel, drain, unnarrowed

from grapevine import ConfigError, EncodeError, QueueFullError
from grapevine._publisher_core import PublisherConfig, PublisherCore
from grapevine.codec import (
    SNAPSHOT_OVERHEAD,
    Delta,
    Heartbeat,
    Snapshot,
    Touched,
    decode_datagram,
)
from grapevine.wire import MAX_LEAF_ID, DeltaFlag, SnapshotFlag


def test_sequence_numbers_and_leaf_sequences() -> None:
    pub = PublisherCore(ChainModel(), PublisherConfig(min_cycle_s=100), session_id=1)
    assert [pub.publish(leaf, 1) for leaf in (5, 5, 6)] == [1, 2, 3]
    assert pub.delete(5) == 4
    assert pub.publish(5, 2) == 5
    deltas = [m for d in drain(pub, 0.0) for m in d.messages if isinstance(m, Delta)]
    assert [(d.seq, d.leaf_id, d.leaf_seq, d.flags) for d in deltas] == [
        (1, 5, 1, DeltaFlag.CREATE), (2, 5, 2, 0), (3, 6, 1, DeltaFlag.CREATE),
        (4, 5, 3, DeltaFlag.DELETE), (5, 5, 4, DeltaFlag.CREATE),  # leaf_seq never reused
    ]


def test_queue_full_raises_and_changes_nothing() -> None:
    pub = PublisherCore(ChainModel(), PublisherConfig(max_queued_deltas=2), session_id=1)
    pub.publish(1, 1)
    pub.publish(1, 2)
    before = pub.leaves[1]
    with pytest.raises(QueueFullError):
        pub.publish(1, 3)
    assert pub.leaves[1] == before
    assert pub.next_seq == 3
    drain(pub, 0.0)
    pub.publish(1, 3)


def test_snapshots_never_run_ahead_of_the_deltas_sent() -> None:
    pub = PublisherCore(ChainModel(), PublisherConfig(min_cycle_s=0), session_id=1)
    sent = 0
    for step in range(200):
        for i in range(step % 7):
            pub.publish(i, step)
        for datagram in drain(pub, step * 0.001):
            position = datagram.sequence
            for message in datagram.messages:
                if isinstance(message, Delta):
                    position = message.seq + 1
                    sent = position
                elif isinstance(message, Snapshot):
                    assert message.as_of_seq <= position <= sent + 1


def test_a_cycle_asserts_every_leaf_id_exactly() -> None:
    pub = PublisherCore(ChainModel(), PublisherConfig(min_cycle_s=100), session_id=1)
    ids = [0, 3, 4, 1000, MAX_LEAF_ID]
    for leaf in ids:
        pub.publish(leaf, 1)
    snaps = [m for d in drain(pub, 1.0) for m in d.messages if isinstance(m, Snapshot)]
    assert [s.leaf_id for s in snaps] == ids
    assert [s.range_start for s in snaps] == [0, 1, 4, 5, 1001]
    assert [s.cycle_position for s in snaps] == [0, 1, 2, 3, 4]
    assert {s.cycle_count for s in snaps} == {5}
    assert [bool(s.flags & SnapshotFlag.LAST) for s in snaps] == [False] * 4 + [True]


def test_an_empty_state_sends_the_empty_cycle_marker() -> None:
    pub = PublisherCore(ChainModel(), session_id=1)
    snaps = [m for d in drain(pub, 0.0) for m in d.messages if isinstance(m, Snapshot)]
    assert len(snaps) == 1
    assert snaps[0].flags == SnapshotFlag.DELETED | SnapshotFlag.LAST
    assert (snaps[0].cycle_count, snaps[0].range_start, snaps[0].leaf_id) == (0, 0, 0)


def test_snapshot_bandwidth_is_paced() -> None:
    rate = 50_000.0
    pub = PublisherCore(BlobModel(), PublisherConfig(snapshot_bytes_per_s=rate, min_cycle_s=0),
                        session_id=1)
    for leaf in range(100):
        pub.publish(leaf, (0, bytes(500)))
    drain(pub, 0.0)
    start = pub.stats.snapshot_bytes
    for tick in range(1, 1001):  # ten simulated seconds
        drain(pub, tick * 0.01)
    sent = pub.stats.snapshot_bytes - start
    assert 0.8 * rate * 10 <= sent <= 1.2 * rate * 10


def test_min_cycle_spaces_small_cycles_and_heartbeats_fill_silence() -> None:
    pub = PublisherCore(ChainModel(), PublisherConfig(min_cycle_s=1.0, heartbeat_interval_s=0.2),
                        session_id=1)
    pub.publish(1, 1)
    drain(pub, 0.0)
    heartbeats = 0
    for tick in range(1, 300):  # three seconds
        for datagram in drain(pub, tick * 0.01):
            heartbeats += any(isinstance(m, Heartbeat) for m in datagram.messages)
    assert pub.stats.cycles in (3, 4)
    assert heartbeats >= 5


def snapshot_times(pub: PublisherCore[Any, Any], start: float, seconds: float,
                   step: float = 0.001) -> list[tuple[float, int]]:
    """(time, snapshots in the datagram) for every datagram carrying snapshots."""
    out = []
    for tick in range(round(seconds / step)):
        now = start + tick * step
        for datagram in drain(pub, now):
            snaps = sum(isinstance(m, Snapshot) for m in datagram.messages)
            if snaps:
                out.append((now, snaps))
    return out


@pytest.mark.parametrize("leaves", [60, 1000])
def test_a_small_states_cycle_is_spread_over_min_cycle_not_burst(leaves: int) -> None:
    """After the first cycle (at the budget), snapshots keep pace with min_cycle_s: no
    window of 10 ms carries more than its share of the cycle plus one datagram's worth,
    the cycle still takes min_cycle_s, and small leaves still share datagrams."""
    pub = PublisherCore(ChainModel(), PublisherConfig(min_cycle_s=0.25), session_id=1)
    for leaf in range(leaves):
        pub.publish(leaf, leaf)
    first = snapshot_times(pub, 0.0, 0.25)
    assert sum(n for _, n in first) == leaves
    assert first[-1][0] < 0.05  # the first cycle goes at the budget
    times = snapshot_times(pub, 0.25, 1.0)
    assert pub.stats.cycles == 5  # one at the budget, then one per 0.25 s
    per_datagram = max(n for _, n in times)
    assert per_datagram > 10  # batched, not one snapshot per datagram
    share = leaves * 0.01 / 0.25
    for at, _ in times:
        window = sum(n for t, n in times if at <= t < at + 0.01)
        assert window <= share + 2 * per_datagram, (at, window)


def test_a_spread_cycle_keeps_its_period_when_the_state_grows() -> None:
    pub = PublisherCore(ChainModel(), PublisherConfig(min_cycle_s=0.25), session_id=1)
    for leaf in range(10):
        pub.publish(leaf, leaf)
    snapshot_times(pub, 0.0, 0.25)  # the first cycle, of 10 leaves
    for leaf in range(10, 2000):  # the state grows 200-fold
        pub.publish(leaf, leaf)
    snapshot_times(pub, 0.25, 1.0)
    assert pub.stats.cycles >= 4  # spread against the leaves there are now, not the past

def test_large_leaves_are_fragmented_into_full_datagrams() -> None:
    pub = PublisherCore(BlobModel(), PublisherConfig(max_datagram_size=300, min_cycle_s=100),
                        session_id=1)
    for offset in range(0, 3000, 100):
        pub.publish(9, (offset, b"z" * 100))
    frags = [m for d in drain(pub, 1.0) for m in d.messages if isinstance(m, Snapshot)]
    assert len(frags) > 10
    assert {f.total_length for f in frags} == {3000}
    assert b"".join(bytes(f.payload) for f in frags) == pub.leaves[9]
    assert [f.fragment_offset for f in frags] == sorted({f.fragment_offset for f in frags})


def test_bad_config_and_ids_are_rejected() -> None:
    with pytest.raises(ConfigError):
        PublisherConfig(max_datagram_size=50)
    with pytest.raises(ConfigError):
        PublisherConfig(snapshot_bytes_per_s=0)
    with pytest.raises(ConfigError):
        PublisherCore(object(), session_id=1)  # type: ignore[arg-type]
    pub = PublisherCore(ChainModel(), session_id=1)
    with pytest.raises(EncodeError):
        pub.publish(MAX_LEAF_ID + 1, 1)


def test_snapshots_keep_their_pace_when_the_sender_is_saturated() -> None:
    rate = 20_000.0
    pub = PublisherCore(ChainModel(), PublisherConfig(snapshot_bytes_per_s=rate, min_cycle_s=0,
                                                      max_queued_deltas=10**6), session_id=1)
    for leaf in range(50):
        pub.publish(leaf, 0)
    for tick in range(1, 501):  # five seconds; the sender manages 20 datagrams a tick only
        for i in range(2_000):  # far more deltas than it can send: the queue keeps growing
            pub.publish(i % 50, i)
        for _ in range(20):
            pub.next_datagram(tick * 0.01)
    assert pub.queued_deltas > 100_000
    # The budget counts each snapshot's bytes on the wire (payload and message overhead).
    budget_used_per_s = (pub.stats.snapshot_bytes + pub.stats.snapshots * SNAPSHOT_OVERHEAD) / 5
    assert 0.8 * rate < budget_used_per_s < 1.2 * rate


def test_queue_knows_when_it_fills_a_datagram() -> None:
    pub = PublisherCore(ChainModel(), PublisherConfig(min_cycle_s=100, linger_s=0.01),
                        session_id=1)
    per_delta = 16 + 8  # DELTA_OVERHEAD + an 8-byte ChainModel payload
    fits = (1400 - 36) // per_delta
    for i in range(fits - 1):
        pub.publish(1, i)
    assert not unnarrowed(pub.queue_fills_a_datagram)
    pub.publish(1, 0)
    pub.publish(1, 0)
    assert unnarrowed(pub.queue_fills_a_datagram)
    drain(pub, 0.0)
    assert not pub.queue_fills_a_datagram
    with pytest.raises(ConfigError):
        PublisherConfig(linger_s=2)


def test_a_busy_stream_still_carries_a_heartbeat_every_interval() -> None:
    pub = PublisherCore(ChainModel(), PublisherConfig(heartbeat_interval_s=0.1), session_id=1)
    beats = 0
    for tick in range(100):  # one second, never idle
        pub.publish(tick % 5, tick)
        for datagram in drain(pub, tick * 0.01):
            beats += sum(isinstance(m, Heartbeat) for m in datagram.messages)
    assert 9 <= beats <= 11


def test_add_queued_deltas_packs_exactly_what_add_delta_would() -> None:
    """The builder's per-datagram fast path against the per-delta one, on random deltas
    and mixed queues: the same bytes, the same items left, the same errors."""
    import random
    from collections import deque

    from grapevine.codec import DatagramBuilder

    rng = random.Random(7)
    for _ in range(300):
        items: list[Any] = []
        for _ in range(rng.randrange(0, 80)):
            if rng.random() < 0.05:
                items.append(Touched(1, 2, ()))  # any non-delta item stops the batch
            else:
                flags = rng.choice([0, 0, 0, int(DeltaFlag.CREATE), int(DeltaFlag.DELETE)])
                payload = b"" if flags == DeltaFlag.DELETE else bytes(rng.randrange(0, 90))
                items.append((rng.randrange(1 << 32), rng.randrange(1, 1 << 32), flags,
                              payload))
        size = rng.randrange(200, 1400)
        fast, slow = DatagramBuilder(0, 1, size), DatagramBuilder(0, 1, size)
        fast.start(5)
        slow.start(5)
        if rng.random() < 0.5:
            fast.add_heartbeat(100)
            slow.add_heartbeat(100)
        queue = deque(items)
        fast.add_queued_deltas(queue)
        expected = deque(items)
        while expected and type(expected[0]) is tuple and slow.add_delta(*expected[0]):
            expected.popleft()
        assert list(queue) == list(expected)
        assert (fast.count, fast.delta_count, fast.delta_bytes, fast.room) == (
            slow.count, slow.delta_count, slow.delta_bytes, slow.room)
        assert bytes(fast.finish(9)) == bytes(slow.finish(9))


@pytest.mark.parametrize("bad", [(1, 0, 0, b"x"), (1, 1, 3, b""), (1, 1, 2, b"x"),
                                 (1 << 32, 1, 0, b"x"), (1, 1, 0, bytes(2000))])
def test_add_queued_deltas_raises_what_add_delta_raises(bad: tuple[int, int, int, bytes]
                                                        ) -> None:
    from collections import deque

    from grapevine.codec import DatagramBuilder

    builder = DatagramBuilder(0, 1, 1400)
    builder.start(1)
    with pytest.raises(EncodeError):
        builder.add_queued_deltas(deque([bad]))
    builder.start(1)
    queue: deque[Any] = deque([(1, 1, 0, b"ok"), bad])
    if len(bad[3]) > 1400:  # too large for any datagram, but not for this one's rest
        builder.add_queued_deltas(queue)
        assert builder.delta_count == 1
        assert len(queue) == 1
    else:
        with pytest.raises(EncodeError):
            builder.add_queued_deltas(queue)


def test_add_touched_packs_what_the_decoder_reads_and_refuses_what_it_drops() -> None:
    import random

    from grapevine.codec import DatagramBuilder

    rng = random.Random(3)
    for count in (0, 1, 2, 50, 110):
        ids = sorted(rng.sample(range(1 << 32), count))
        entries = tuple((leaf, rng.randrange(1, 1 << 63)) for leaf in ids)
        builder = DatagramBuilder(0, 1, 1400)
        builder.start(10)
        assert builder.add_touched(Touched(3, 10, entries))
        [message] = decode_datagram(bytes(builder.finish(1))).messages
        assert message == Touched(3, 10, entries)
    for bad in (((2, 1), (1, 1)), ((1, 1), (1, 2)), ((1, 0),), ((1 << 32, 1),)):
        builder = DatagramBuilder(0, 1, 1400)
        builder.start(10)
        with pytest.raises(EncodeError):
            builder.add_touched(Touched(3, 10, bad))
    builder = DatagramBuilder(0, 1, 1400)
    builder.start(10)
    with pytest.raises(EncodeError):
        builder.add_touched(Touched(3, 11, ()))  # ahead of the stream


def test_an_unchanged_leaf_is_not_encoded_again_by_the_next_cycle() -> None:
    class CountingModel:
        """A leaf is an int; a delta adds to it. Counts encode_leaf calls."""

        def __init__(self) -> None:
            self.encoded: list[int] = []

        def new_leaf(self) -> int:
            return 0

        def apply(self, leaf: int, delta: int) -> int:
            return leaf + delta

        def encode_delta(self, delta: int) -> bytes:
            return delta.to_bytes(8, "little")

        def decode_delta(self, payload: memoryview) -> int:
            return int.from_bytes(payload, "little")

        def encode_leaf(self, leaf: int) -> bytes:
            self.encoded.append(leaf)
            return leaf.to_bytes(8, "little")

        def decode_leaf(self, payload: memoryview) -> int:
            return int.from_bytes(payload, "little")

    model = CountingModel()
    pub = PublisherCore(model, PublisherConfig(min_cycle_s=0.0), initial={1: 10, 2: 20},
                        session_id=1)
    pub.publish(3, 30)
    drain(pub, 1.0)
    assert sorted(model.encoded) == [10, 20, 30]
    pub.publish(2, 1)  # leaf 2 changes; 1 and 3 do not
    pub.delete(3)
    pub.publish(3, 5)  # re-created: a new leaf_seq, encoded again
    snapshots = [m for d in drain(pub, 2.0) for m in d.messages if isinstance(m, Snapshot)]
    assert sorted(model.encoded) == [5, 10, 20, 21, 30]
    # The cached encodings are what the leaves encode to now.
    assert {s.leaf_id: bytes(s.payload) for s in snapshots} == {
        leaf: value.to_bytes(8, "little") for leaf, value in pub.leaves.items()}


def test_a_snapshot_that_fits_a_datagram_is_never_split_across_two() -> None:
    """Leaves a little under a datagram each used to straddle datagrams nearly all of them
    (the rest of one datagram, then the next): each now goes whole."""
    pub = PublisherCore(BlobModel(), PublisherConfig(min_cycle_s=0.0), session_id=1)
    for leaf in range(50):
        pub.publish(leaf, (0, bytes([leaf]) * 900))  # 900 bytes: one per 1,400-byte datagram
    for offset in range(0, 3000, 1000):  # larger than any datagram: still fragmented
        pub.publish(99, (offset, b"z" * 1000))
    snapshots = [m for d in drain(pub, 1.0) for m in d.messages if isinstance(m, Snapshot)]
    whole = [s for s in snapshots if s.leaf_id != 99]
    assert {s.leaf_id for s in whole} == set(range(50))
    assert all(s.fragment_offset == 0 and len(s.payload) == s.total_length for s in whole)
    assert sum(s.leaf_id == 99 for s in snapshots) >= 3
