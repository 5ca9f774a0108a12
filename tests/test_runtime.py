"""Publisher and Subscriber over real loopback multicast (127.0.0.1, TTL 0)."""

from __future__ import annotations

import random
import socket
import threading
from typing import Any

import pytest
from helpers import ChainModel, Endpoint, fast_publisher, unnarrowed, wait_until

from grapevine import (
    BytesModel,
    ClosedError,
    ConfigError,
    KeyRing,
    LeafIdError,
    Publisher,
    QueueFullError,
    Status,
    StatusEvent,
    Subscriber,
    SubscriberConfig,
    UpdateKind,
)
from grapevine._transport import open_sender
from grapevine.auth import Key

pytestmark = pytest.mark.network


def test_subscribers_replicate_and_late_joiner_syncs(endpoint: Endpoint) -> None:
    model = ChainModel()
    with Publisher(model, config=fast_publisher(), **endpoint) as pub, \
            Subscriber(model, **endpoint) as first, Subscriber(model, **endpoint) as second:
        for i in range(20_000):
            pub.publish(i % 300, i)
        assert pub.flush(10)
        late = Subscriber(model, **endpoint)
        try:
            for i in range(5_000):
                pub.publish(i % 300, -i & 0xFFFF)
            assert pub.flush(10)
            for sub in (first, second, late):
                assert sub.wait_synced(10), sub.stats()

                def replicated(s: Subscriber[tuple[int, int], int] = sub) -> bool:
                    return s.values() == pub.values()

                assert wait_until(replicated)
            assert late.stats().deltas < first.stats().deltas
        finally:
            late.close()
        assert first.stats().internal_errors == 0


def test_loss_is_detected_and_repaired(endpoint: Endpoint) -> None:
    model = ChainModel()
    rng = random.Random(7)
    lossy = {"on": True}

    def drop(_: memoryview) -> bool:
        return lossy["on"] and rng.random() < 0.1

    # Snapshot repair is what this test is about: without retransmission (which would
    # fill most holes first; tests/test_retransmit.py covers it).
    config = SubscriberConfig(reorder_window_s=0.005, retransmit=False)
    with Publisher(model, config=fast_publisher(), **endpoint) as pub, \
            Subscriber(model, config=config, drop_filter=drop, **endpoint) as sub:
        events: list[StatusEvent] = []
        sub.on_status(events.append)
        for i in range(30_000):
            pub.publish(i % 500, i)
        assert pub.flush(10)
        lossy["on"] = False
        assert sub.wait_synced(15), sub.stats()
        assert wait_until(lambda: sub.values() == pub.values())
        stats = sub.stats()
        assert stats.injected_drops > 0
        assert stats.gaps > 0
        assert stats.gaps_resolved > 0  # TOUCHED summaries named what most gaps touched
        assert stats.repairs > 0
        assert wait_until(lambda: any(e.kind is Status.GAP for e in events))


def test_publisher_restart_rebuilds_the_replica(endpoint: Endpoint) -> None:
    model = ChainModel()
    with Subscriber(model, **endpoint) as sub:
        events: list[StatusEvent] = []
        sub.on_status(events.append)
        with Publisher(model, config=fast_publisher(), **endpoint) as pub:
            for i in range(100):
                pub.publish(i, i)
            assert sub.wait_synced(10)
            first_session = sub.session_id
        assert wait_until(lambda: any(e.kind is Status.SESSION_ENDED for e in events))
        with Publisher(model, config=fast_publisher(), **endpoint) as pub:
            for i in range(50, 80):
                pub.publish(i, 1000 + i)
            assert wait_until(lambda: sub.session_id != first_session)
            assert sub.wait_synced(10)
            assert wait_until(lambda: sub.values() == pub.values())
        assert wait_until(lambda: any(e.kind is Status.RESTARTED for e in events))


def test_callbacks_per_leaf_all_leaves_and_status(endpoint: Endpoint) -> None:
    model = BytesModel()
    seen_leaf: list[tuple[int, UpdateKind, Any, Any]] = []
    seen_all: list[int] = []
    statuses: list[Status] = []
    done = threading.Event()

    def on_leaf(leaf_id: int, kind: UpdateKind, leaf: Any, delta: Any) -> None:
        seen_leaf.append((leaf_id, kind, leaf, delta))
        if leaf == b"last":
            done.set()

    def broken(*_: Any) -> None:
        raise RuntimeError("a user bug")

    with Subscriber(model, **endpoint) as sub:
        sub.on_leaf(3, on_leaf)
        sub.on_update(lambda leaf_id, *_: seen_all.append(leaf_id))
        sub.on_update(broken)
        sub.on_status(lambda event: statuses.append(event.kind))
        with Publisher(model, config=fast_publisher(), **endpoint) as pub:
            pub.publish(1, b"a")
            pub.publish(3, b"b")
            pub.publish(3, b"last")
            assert done.wait(10)
            pub.delete(1)
            assert wait_until(lambda: 1 not in sub.values())
            assert wait_until(lambda: Status.SYNCED in statuses)
        assert [u[2] for u in seen_leaf if u[1] is UpdateKind.CHANGED] == [b"b", b"last"]
        assert {1, 3} <= set(seen_all)
        assert wait_until(lambda: Status.SYNCED in statuses and
                          Status.SESSION_ENDED in statuses)
        stats = sub.stats()
        assert stats.callback_errors >= 3
        assert stats.internal_errors == 0


def test_slow_callbacks_conflate_instead_of_growing(endpoint: Endpoint) -> None:
    model = ChainModel()
    release = threading.Event()
    delivered: list[tuple[int, UpdateKind]] = []

    def slow(leaf_id: int, kind: UpdateKind, *_: Any) -> None:
        release.wait(10)
        delivered.append((leaf_id, kind))

    with Subscriber(model, max_callback_backlog=100, **endpoint) as sub:
        sub.on_update(slow)
        with Publisher(model, config=fast_publisher(), **endpoint) as pub:
            for i in range(5_000):
                pub.publish(i % 10, i)
            assert pub.flush(10)
            assert wait_until(lambda: sub.stats().deltas == 5_000)
            assert sub.stats().callback_backlog <= 200
            release.set()
            assert wait_until(lambda: sub.stats().conflated_updates > 0)
            assert wait_until(lambda: any(k is UpdateKind.CONFLATED for _, k in delivered))
            assert len(delivered) < 5_000
            assert sub.values() == pub.values()


def test_inline_delivery(endpoint: Endpoint) -> None:
    model = BytesModel()
    threads: set[str] = set()
    got = threading.Event()

    def record(*_: Any) -> None:
        threads.add(threading.current_thread().name)
        got.set()

    with Subscriber(model, delivery="inline", **endpoint) as sub:
        sub.on_update(record)
        with Publisher(model, config=fast_publisher(), **endpoint) as pub:
            pub.publish(1, b"x")
            assert got.wait(10)
    assert all(name.startswith("grapevine-receiver[") for name in threads)


def test_hostile_datagrams_are_counted_and_the_receiver_survives(
        endpoint: Endpoint) -> None:
    model = BytesModel()
    with Subscriber(model, **endpoint) as sub, \
            open_sender(endpoint["group"], endpoint["port"]) as raw:
        rng = random.Random(3)
        for size in [0, 1, 35, 36, 37, 200, 1400, 9000]:
            raw.send(b"GRPV\x01" + rng.randbytes(max(size - 5, 0)))
        raw.send(b"\x00" * 64)
        assert wait_until(lambda: sub.stats().malformed >= 9)
        with Publisher(model, config=fast_publisher(), **endpoint) as pub:
            pub.publish(5, b"still alive")
            assert sub.wait_synced(10)
            assert wait_until(lambda: sub.values() == {5: b"still alive"})
        assert sub.stats().internal_errors == 0


def test_threads_are_named_and_close_is_idempotent(endpoint: Endpoint) -> None:
    model = BytesModel()
    pub = Publisher(model, **endpoint)
    sub = Subscriber(model, **endpoint)
    names = {t.name for t in threading.enumerate()}
    label = f"{endpoint['group']}:{endpoint['port']}/0"
    assert {f"grapevine-sender[{label}]", f"grapevine-receiver[{label}]",
            f"grapevine-dispatch[{label}]"} <= names
    for _ in range(2):
        sub.close()
        pub.close()
    with pytest.raises(ClosedError):
        pub.publish(1, b"x")
    with pytest.raises(ClosedError):
        sub.on_update(print)


def test_misuse_raises_at_the_call(endpoint: Endpoint) -> None:
    with pytest.raises(ConfigError, match="not a multicast"):
        Publisher(BytesModel(), group="10.1.2.3", port=endpoint["port"])
    with pytest.raises(ConfigError, match="not an IPv4"):
        Subscriber(BytesModel(), group="nonsense", port=endpoint["port"])
    with pytest.raises(ConfigError, match="LeafModel"):
        Publisher(object(), **endpoint)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="port"):
        Subscriber(BytesModel(), group=endpoint["group"], port=70000)
    with Publisher(BytesModel(), **endpoint) as pub:
        with pytest.raises(ValueError, match="leaf_id"):
            pub.publish(-1, b"x")
        with pytest.raises(KeyError):
            pub.delete(12345)
        with pytest.raises(ValueError, match="does not fit"):
            pub.publish(1, b"x" * 2000)


def test_full_queue_blocks_until_the_sender_makes_room(endpoint: Endpoint) -> None:
    model = ChainModel()
    config = fast_publisher(max_queued_deltas=8)
    with Publisher(model, config=config, **endpoint) as pub, \
            Subscriber(model, **endpoint) as sub:
        for i in range(20_000):
            pub.publish(i % 50, i)  # never more than 8 queued: publish waits for room
        assert pub.flush(10)
        assert pub.stats().queued_deltas == 0
        assert sub.wait_synced(10)
        assert wait_until(lambda: sub.values() == pub.values())


def test_defaults_stay_on_the_host(endpoint: Endpoint) -> None:
    sock = open_sender(endpoint["group"], endpoint["port"])
    try:
        ttl = sock.getsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL)
        interface = socket.inet_ntoa(sock.getsockopt(socket.IPPROTO_IP,
                                                     socket.IP_MULTICAST_IF, 4))
        assert (ttl, interface) == (0, "127.0.0.1")
        assert sock.getsockname()[0] == "127.0.0.1"
    finally:
        sock.close()


def test_constructor_callbacks_see_every_event_and_wait_until_applied(
        endpoint: Endpoint) -> None:
    model = BytesModel()
    with Publisher(model, initial={1: b"x"}, config=fast_publisher(), **endpoint) as pub:
        assert pub.last_sequence == 0
        statuses: list[Status] = []
        installs: list[int] = []
        with Subscriber(model, on_status=lambda e: statuses.append(e.kind),
                        on_update=lambda leaf_id, *_: installs.append(leaf_id),
                        **endpoint) as sub:
            seq = pub.publish(2, b"y")
            assert seq == pub.last_sequence == 1
            assert sub.wait_until_applied(seq, session_id=pub.session_id, timeout=10)
            assert sub.stream_position >= seq
            assert sub.values() == {1: b"x", 2: b"y"}
            assert not sub.wait_until_applied(seq, session_id=12345, timeout=0.05)
            assert wait_until(lambda: Status.SYNCED in statuses)
            assert statuses[0] is Status.SESSION_STARTED
            assert wait_until(lambda: set(installs) == {1, 2})


def test_linger_batches_deltas_published_one_by_one(endpoint: Endpoint) -> None:
    model = BytesModel()
    # Cycles every 0.5 s: a subscriber knows this small leaf set from two of them.
    config = fast_publisher(linger_s=0.3, heartbeat_interval_s=5.0, min_cycle_s=0.5)
    with Publisher(model, config=config, **endpoint) as pub, \
            Subscriber(model, **endpoint) as sub:
        seq = 0
        for i in range(20):  # 20 small deltas well inside one linger: one datagram
            seq = pub.publish(i, b"x")
        assert sub.wait_until_applied(seq, timeout=10)
        assert pub.stats().delta_datagrams == 1
        seq = pub.publish(99, b"y")
        assert pub.flush(timeout=0.2)  # flush does not wait out the linger
        assert sub.wait_until_applied(seq, timeout=10)


def test_changes_in_quick_succession_are_batched_by_the_sender_thread(
        endpoint: Endpoint) -> None:
    """The sender thread packs what is published while it wakes and works: a burst of
    changes published one by one shares datagrams (no linger needed)."""
    model = BytesModel()
    with Publisher(model, config=fast_publisher(), **endpoint) as pub, \
            Subscriber(model, **endpoint) as sub:
        assert sub.wait_synced(10)
        before = pub.stats().delta_datagrams
        seq = 0
        for i in range(2000):
            seq = pub.publish(i % 100, i.to_bytes(4, "little"))
        assert pub.flush(timeout=10)
        assert sub.wait_until_applied(seq, timeout=10)
        assert pub.stats().delta_datagrams - before < 500
        assert sub.values() == pub.values()


@pytest.mark.parametrize("inline", [False, True], ids=["dispatcher", "receiver_thread"])
def test_close_from_inside_a_callback(endpoint: Endpoint, inline: bool) -> None:
    model = BytesModel()
    closed = threading.Event()
    holder: list[Subscriber[bytes, bytes]] = []

    def close_me(*_: Any) -> None:
        holder[0].close()
        closed.set()

    sub = Subscriber(model, delivery="inline" if inline else "thread", on_update=close_me,
                     **endpoint)
    holder.append(sub)
    with Publisher(model, config=fast_publisher(), **endpoint) as pub:
        pub.publish(1, b"x")
        assert closed.wait(10)
    sub.close()  # idempotent; the thread-leak fixture checks that every thread ended
    with pytest.raises(ClosedError):
        sub.on_status(print)


def test_signed_stream_with_key_rotation_over_real_sockets(endpoint: Endpoint) -> None:
    """Issue 8 on loopback: a signing publisher, a verifying subscriber and an unsigned
    impostor on the same group and port; keys rotate in the middle of the stream. Nothing
    honest is lost, every impostor datagram is counted."""
    old, new = Key(1, bytes(range(32))), Key(2, bytes(range(1, 33)))
    model = ChainModel()
    sub_config = SubscriberConfig(keys=KeyRing([old, new], signing_key_id=1))
    with Publisher(model, config=fast_publisher(keys=KeyRing([old])), **endpoint) as pub, \
            Subscriber(model, config=sub_config, **endpoint) as sub, \
            Publisher(model, config=fast_publisher(), **endpoint) as impostor:
        for i in range(200):
            pub.publish(i % 10, i)
        assert sub.wait_until_applied(pub.last_sequence, timeout=10)
        impostor.publish(3, 999)  # an unsigned stream on the same group and port
        assert impostor.flush(5)
        pub.set_keys(KeyRing([new]))
        for i in range(200, 400):
            pub.publish(i % 10, i)
        assert sub.wait_until_applied(pub.last_sequence, session_id=pub.session_id,
                                      timeout=10)
        sub.set_keys(KeyRing([new]))
        for i in range(400, 500):
            pub.publish(i % 10, i)
        assert sub.wait_until_applied(pub.last_sequence, session_id=pub.session_id,
                                      timeout=10)
        assert sub.values() == pub.values()
        assert wait_until(lambda: sub.stats().unauthenticated > 0)
        stats = sub.stats()
        assert stats.bad_tags == stats.unknown_keys == 0
        assert stats.gaps == 0
        assert stats.restarts == 0


def test_callbacks_unsubscribe_and_per_leaf_callbacks_at_construction(
        endpoint: Endpoint) -> None:
    """on_leaf/on_update/on_status return a Subscription whose cancel() stops the calls
    (idempotent); per-leaf callbacks can be given at construction and see the first
    updates."""
    model = BytesModel()
    early: list[bytes | None] = []
    late: list[bytes | None] = []
    every: list[int] = []
    with Subscriber(model, on_leaf={1: lambda _id, _k, leaf, _d: early.append(leaf)},
                    **endpoint) as sub, Publisher(model, config=fast_publisher(),
                                                  **endpoint) as pub:
        leaf_2 = sub.on_leaf(2, lambda _id, _k, leaf, _d: late.append(leaf))
        updates = sub.on_update(lambda leaf_id, *_: every.append(leaf_id))
        assert unnarrowed(leaf_2.active)
        pub.publish(1, b"a")
        seq = pub.publish(2, b"b")
        assert sub.wait_until_applied(seq, timeout=10)
        assert wait_until(lambda: late == [b"b"] and early == [b"a"])
        leaf_2.cancel()
        leaf_2.cancel()  # idempotent
        assert not leaf_2.active
        with updates:  # a Subscription is also a context manager that cancels on exit
            pass
        pub.publish(2, b"c")
        seq = pub.publish(1, b"d")
        assert sub.wait_until_applied(seq, timeout=10)
        assert wait_until(lambda: early == [b"a", b"d"])
        assert late == [b"b"]  # cancelled: no more calls
        assert 1 in every
        assert every.count(1) == 1  # the update callback was cancelled before b"d"
    with pytest.raises(LeafIdError):
        Subscriber(model, on_leaf={-1: print}, **endpoint)


def test_publish_many_is_publish_in_a_batch(endpoint: dict[str, Any]) -> None:
    model = ChainModel()
    changes = [(i % 40, i) for i in range(3_000)]
    with Publisher(model, config=fast_publisher(), **endpoint) as pub, \
            Subscriber(model, **endpoint) as sub:
        assert pub.publish_many([]) == 0  # nothing published yet: the last sequence, 0
        last = pub.publish_many(changes)
        assert last == len(changes)
        assert pub.publish_many(iter([(7, 99)])) == last + 1
        assert sub.wait_until_applied(last + 1, session_id=pub.session_id, timeout=10)
        assert sub.values() == pub.values()
    reference = ChainModel()
    expected: dict[int, Any] = {}
    for leaf_id, delta in [*changes, (7, 99)]:
        expected[leaf_id] = reference.apply(expected.get(leaf_id, reference.new_leaf()), delta)
    assert pub.values() == expected


def test_publish_many_stops_at_a_full_queue_and_says_how_far_it_got(
        endpoint: dict[str, Any]) -> None:
    # The sender lingers (up to 1 s) over a datagram that is not full, so the queue of 5
    # stays full: the sixth change cannot be queued.
    config = fast_publisher(max_queued_deltas=5, linger_s=1.0)
    with Publisher(ChainModel(), config=config, on_full="error", **endpoint) as pub:
        with pytest.raises(QueueFullError) as caught:
            pub.publish_many((i, i) for i in range(10))
        assert caught.value.published == 5
        assert sorted(pub.values()) == [0, 1, 2, 3, 4]


def test_close_stops_a_publisher_whose_snapshot_cycle_never_runs_dry(
        endpoint: dict[str, Any]) -> None:
    """With an unbounded snapshot budget the sender always has another snapshot due; close
    must still stop it once every delta is out (it used to wait for an idle moment that
    never came, give up after the timeout and close the socket under the sender)."""
    config = fast_publisher(snapshot_bytes_per_s=1e12, min_cycle_s=0.0)
    ended = threading.Event()
    with Subscriber(BytesModel(), on_status=lambda e: ended.set()
                    if e.kind is Status.SESSION_ENDED else None, **endpoint) as sub:
        pub = Publisher(BytesModel(), config=config,
                        initial=dict.fromkeys(range(2000), b"x" * 100), **endpoint)
        seq = pub.publish(1, b"last")
        assert sub.wait_until_applied(seq, timeout=20)
        pub.close(timeout=10)
        assert not any(t.name.startswith("grapevine-sender") for t in threading.enumerate())
        assert pub.stats().send_errors == 0
        assert ended.wait(10)



def test_a_subscriber_that_reads_too_slowly_sheds_leaves_then_takes_them_back(
        endpoint: Endpoint) -> None:
    """Issue 12: inline callbacks made slow hold the receiver back while the publisher
    goes on; its receive queue fills, it sheds the highest leaves (LEAF_STALE "shed")
    instead of losing datagrams across all of them, and once the callbacks are quick
    again it takes every leaf back and is synced, equal to the publisher."""
    model = ChainModel()
    slow = threading.Event()
    slow.set()
    pause = threading.Event()  # never set: a timed wait is the callback's slowness
    shed: list[StatusEvent] = []

    def on_update(*_: Any) -> None:
        if slow.is_set():
            pause.wait(0.0002)

    def on_status(event: StatusEvent) -> None:
        if event.kind is Status.LEAF_STALE and event.reason and event.reason.startswith("shed"):
            shed.append(event)

    stop = threading.Event()
    with Subscriber(model, delivery="inline", receive_buffer_bytes=256 << 10,
                    on_status=on_status, **endpoint) as sub:
        sub.on_update(on_update)
        with Publisher(model, config=fast_publisher(), **endpoint) as pub:
            def publish() -> None:
                value = 0
                while not stop.is_set():
                    value += 1
                    for leaf in range(40):
                        pub.publish(leaf, value)
                    stop.wait(0.004)  # ~10,000 changes/s

            publisher = threading.Thread(target=publish, name="test-publisher")
            publisher.start()
            try:
                assert wait_until(lambda: sub.stats().leaves_shed > 0, timeout=20)
                slow.clear()
                assert wait_until(lambda: sub.synced and sub.stats().stale_leaves == 0,
                                  timeout=20)
            finally:
                stop.set()
                publisher.join(10)
            assert pub.flush(10)
            assert wait_until(lambda: sub.synced and sub.values() == pub.values())
    assert shed
    # The highest leaves went first: every leaf shed in the first round is above every
    # leaf it kept then.
    first_round = [e.leaf_id for e in shed if e.time == shed[0].time and e.leaf_id is not None]
    assert min(first_round) >= 40 - len(first_round)
