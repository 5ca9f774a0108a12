"""The stream repeater (grapevine.repeater): link framing, checks and queue without a
network, then real repeater pairs on loopback (multicast on 127.0.0.1 with TTL 0, the
link on 127.0.0.1).

On one host the two "networks" are two groups: the send side joins group A, the receive
side multicasts to group B (``remap``), and subscribers listen on B.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import struct
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from helpers import free_endpoint, wait_until

from grapevine import (
    ConfigError,
    KeyRing,
    Publisher,
    PublisherConfig,
    Subscriber,
    SubscriberConfig,
)
from grapevine._transport import open_receiver, open_sender
from grapevine.auth import generate_key
from grapevine.book import OrderBookModel
from grapevine.cli import main as cli_main
from grapevine.codec import DatagramBuilder, Delta, decode_datagram
from grapevine.repeater import (
    DROP_REASONS,
    FRAME_DATAGRAM,
    FRAME_KEEPALIVE,
    Endpoint,
    FrameReader,
    LinkError,
    Repeater,
    _FrameQueue,
    _Recent,
    _undelivered_frames,
    datagram_problem,
    encode_frame,
    hello,
)
from grapevine.testing import Market

ROOT = Path(__file__).resolve().parent.parent
VECTORS = [json.loads(p.read_text())
           for p in sorted((ROOT / "protocol" / "vectors").glob("*.json"))]
# Invalid vectors whose fault is in the 36-byte header (or the size): the cheap check
# catches these; the others need the whole decoder.
HEADER_FIELDS = ("magic", "version", "session_id", "datagram", "auth", "header")


def datagram(sequence: int, *, size: int = 200, stream_id: int = 1,
             session_id: int = 0x5EED) -> bytes:
    """A valid datagram of ``size`` bytes: one DELTA whose payload fills it."""
    builder = DatagramBuilder(stream_id, session_id, max_size=max(size, 85))
    builder.start(sequence)
    builder.add_delta(1, sequence, 0, bytes(size - 36 - 16))
    return bytes(builder.finish(1_767_225_600_000_000_000 + sequence))


def ep(endpoint: Mapping[str, Any]) -> str:
    return f"{endpoint['group']}:{endpoint['port']}"


# --------------------------------------------------------------------------- sans network


def test_endpoint_parse_and_key() -> None:
    endpoint = Endpoint.parse("239.255.71.1:47100")
    assert endpoint == Endpoint("239.255.71.1", 47100)
    assert str(endpoint) == "239.255.71.1:47100"
    assert endpoint.key == bytes([239, 255, 71, 1]) + (47100).to_bytes(2, "little")
    assert Endpoint.from_key(endpoint.key) == endpoint
    assert Endpoint.parse(("239.1.2.3", 5)) == Endpoint("239.1.2.3", 5)
    for bad in ("10.0.0.1:5000", "239.1.2.3", "239.1.2.3:0", "239.1.2.3:70000", "x:1"):
        with pytest.raises(ConfigError):
            Endpoint.parse(bad)


def test_frames_survive_any_split_and_skip_what_they_do_not_know() -> None:
    a, b = Endpoint("239.1.1.1", 1000), Endpoint("239.2.2.2", 2000)
    stream = (hello() + encode_frame(a.key, b"first") + struct.pack("<BBH", FRAME_KEEPALIVE, 0, 0)
              + struct.pack("<BBH", 77, 0, 3) + b"xyz"  # an unknown kind: skipped
              + struct.pack("<BBH", FRAME_DATAGRAM, 0, 2) + b"ab"  # too short for an address
              + encode_frame(b.key, b"") + encode_frame(a.key, bytes(range(256)) * 200))
    expected = [(a.key, b"first"), (b.key, b""), (a.key, bytes(range(256)) * 200)]
    for chunk in (1, 3, 7, 4096, len(stream)):
        reader = FrameReader()
        frames = []
        for start in range(0, len(stream), chunk):
            frames += reader.feed(stream[start:start + chunk])
        assert frames == expected
        assert (reader.keepalives, reader.unknown_frames, reader.bad_frames) == (1, 1, 1)
        assert reader.buffered == 0


def test_a_connection_that_does_not_start_with_the_hello_is_refused() -> None:
    reader = FrameReader()
    assert reader.feed(b"GRP") == []  # not enough to judge yet
    with pytest.raises(LinkError):
        reader.feed(b"V\x01\x00\x01\x00\x00\x00")  # a Grapevine datagram, not a link
    with pytest.raises(LinkError):
        FrameReader().feed(b"GRPL\x02\x00\x00\x00")  # a future link version


def test_encode_frame_refuses_what_the_length_cannot_hold() -> None:
    assert len(encode_frame(Endpoint("239.1.1.1", 1).key, bytes(65529))) == 65539
    with pytest.raises(ValueError, match="does not fit"):
        encode_frame(Endpoint("239.1.1.1", 1).key, bytes(65530))


@pytest.mark.parametrize("vector", VECTORS, ids=[v["name"] for v in VECTORS])
def test_checks_against_every_vector(vector: dict[str, Any]) -> None:
    data = bytes.fromhex(vector["hex"])
    if vector["valid"]:
        assert datagram_problem(data) is None
        assert datagram_problem(data, full=True) is None
        return
    assert datagram_problem(data, full=True) is not None
    header_fault = vector["error"]["field"].startswith(HEADER_FIELDS)
    assert (datagram_problem(data) is not None) == header_fault, vector["error"]


def test_the_header_check_refuses_garbage() -> None:
    rng = random.Random(5)
    for size in (0, 1, 35, 36, 100, 1400):
        assert datagram_problem(bytes(rng.randrange(256) for _ in range(size))) is not None
    assert datagram_problem(bytes(65508)) is not None


def test_queue_drops_the_oldest_and_counts() -> None:
    queue = _FrameQueue(1000)
    dropped = [queue.push(bytes([i]) * 300) for i in range(5)]
    assert dropped == [0, 0, 0, 1, 1]
    assert [f[0] for f in queue.frames] == [2, 3, 4]
    assert queue.bytes == 900
    assert queue.high_water == 900
    assert [f[0] for f in queue.pop_batch(600)] == [2, 3]
    assert [f[0] for f in queue.pop_batch(1)] == [4]  # always at least one frame
    assert queue.bytes == 0
    assert queue.pop_batch(1000) == []


def test_recent_datagrams_catch_copies_within_the_window() -> None:
    recent = _Recent(3)
    assert [recent.seen_before(d) for d in (b"a", b"b", b"a", b"c", b"d")] == [
        False, False, True, False, False]
    assert recent.seen_before(b"a") is False  # forgotten: four newer ones since
    assert _Recent(0).seen_before(b"a") is False
    assert _Recent(0).seen_before(b"a") is False


def test_undelivered_frames_count_from_the_newest() -> None:
    closed = socket.socket()
    closed.close()  # no SIOCOUTQ: only the bytes never written count
    written = deque([100, 200, -4, 300])  # a keepalive between the last two frames
    assert _undelivered_frames(closed, written, 0) == 0
    assert _undelivered_frames(closed, written, 1) == 1
    assert _undelivered_frames(closed, written, 300) == 1
    assert _undelivered_frames(closed, written, 301) == 1  # the keepalive is no frame
    assert _undelivered_frames(closed, written, 305) == 2
    assert _undelivered_frames(closed, written, 10_000) == 3


@pytest.mark.parametrize(("role", "kwargs", "match"), [
    ("send", {}, "needs peer"),
    ("receive", {}, "needs listen"),
    ("send", {"peer": "127.0.0.1:1", "listen": "127.0.0.1:0"}, "receive-side"),
    ("send", {"peer": "127.0.0.1:1", "ttl": 1}, "receive-side"),
    ("receive", {"listen": "127.0.0.1:0", "peer": "127.0.0.1:1"}, "send-side"),
    ("send", {"peer": "127.0.0.1"}, "HOST:PORT"),
    ("send", {"peer": "127.0.0.1:0"}, "must not be 0"),
    ("send", {"peer": "127.0.0.1:1", "transport": "sctp"}, "transport"),
    ("send", {"peer": "127.0.0.1:1", "validation": "none"}, "validation"),
    ("send", {"peer": "127.0.0.1:1", "max_queue_bytes": 1000}, "max_queue_bytes"),
    ("send", {"peer": "127.0.0.1:1", "interface": "eth0"}, "interface"),
    ("send", {"peer": "127.0.0.1:1", "keepalive_interval_s": 5}, "keepalive"),
    ("receive", {"listen": "127.0.0.1:0", "remap": {"239.9.9.9:9": "239.9.9.8:9"}}, "remap"),
    ("relay", {"peer": "127.0.0.1:1"}, "role"),
])
def test_configuration_errors(role: Any, kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        Repeater(role, ["239.255.72.1:47100"], **kwargs)


def test_a_repeater_carries_at_least_one_group() -> None:
    with pytest.raises(ConfigError, match="at least one"):
        Repeater("send", [], peer="127.0.0.1:1")


# --------------------------------------------------------------------------- loopback runs


class Tap:
    """An ``on_forward`` callback that records what the receive side multicast."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.seen: list[tuple[Endpoint, bytes]] = []

    def __call__(self, endpoint: Endpoint, data: bytes) -> None:
        with self.cond:
            self.seen.append((endpoint, data))
            self.cond.notify_all()

    def wait_for(self, count: int, timeout: float = 10) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: len(self.seen) >= count, timeout)


@pytest.fixture
def pair() -> Iterator[dict[str, Any]]:
    """A send side on group A and a receive side multicasting to group B, linked by TCP
    on loopback; ``tap`` sees every datagram multicast on B."""
    a, b = free_endpoint(), free_endpoint()
    tap = Tap()
    with Repeater("receive", [ep(a)], listen="127.0.0.1:0", remap={ep(a): ep(b)},
                  on_forward=tap) as rx, Repeater("send", [ep(a)], peer=rx.link_address) as tx:
        assert tx.wait_connected(10)
        assert rx.wait_connected(10)
        yield {"a": a, "b": b, "rx": rx, "tx": tx, "tap": tap}


def converged(pub: Publisher[Any, Any], sub: Subscriber[Any, Any]) -> bool:
    pub.flush(10)
    if not sub.wait_until_applied(pub.last_sequence, session_id=pub.session_id, timeout=20):
        return False
    truth = {leaf: book.checksum() for leaf, book in pub.values().items()}
    with sub.locked() as replica:
        return {leaf: book.checksum() for leaf, book in replica.items()} == truth


def publish(pub: Publisher[Any, Any], market: Market, count: int) -> None:
    for leaf_id, delta in market.batch(count):
        pub.publish(leaf_id, delta)


@pytest.mark.network
@pytest.mark.timeout(60)
def test_a_stream_crosses_the_link_and_the_replica_converges(pair: dict[str, Any]) -> None:
    model = OrderBookModel()
    market = Market(100, seed=7)
    rx, tx = pair["rx"], pair["tx"]
    names = {t.name for t in threading.enumerate()}
    assert {f"grapevine-repeat-in[{ep(pair['a'])}]",
            f"grapevine-repeat-link[127.0.0.1:{rx.link_address[1]}]",
            f"grapevine-repeat-out[127.0.0.1:{rx.link_address[1]}]"} <= names
    with Subscriber(model, **pair["b"]) as sub, \
            Publisher(model, initial=market.copy_books(), **pair["a"]) as pub:
        publish(pub, market, 5000)
        assert converged(pub, sub)
        sent = pub.stats().datagrams
    assert wait_until(lambda: rx.stats().forwarded >= sent)
    out, into = tx.stats(), rx.stats()
    assert out.forwarded == into.received == into.forwarded >= sent
    assert out.total_dropped == into.total_dropped == 0
    assert out.groups == {ep(pair["a"]): out.forwarded}
    assert into.groups == {ep(pair["a"]): into.forwarded}
    assert (out.connects, out.reconnects, into.connects) == (1, 0, 1)
    json.dumps(out.to_dict())  # plain values, for logs and the CLI
    tx.close()
    tx.close()  # idempotent
    assert not tx.connected


@pytest.mark.network
@pytest.mark.timeout(30)
def test_datagrams_arrive_byte_for_byte_in_order_and_garbage_stays_behind(
        pair: dict[str, Any]) -> None:
    a, b, rx, tx, tap = pair["a"], pair["b"], pair["rx"], pair["tx"], pair["tap"]
    listener = open_receiver(b["group"], b["port"])
    listener.settimeout(5)
    signed = bytearray(datagram(5, stream_id=3))
    signed[5] |= 1  # AUTH, with a trailer the repeater neither checks nor changes
    signed += struct.pack("<I", 9) + bytes(range(16))
    good = [datagram(1), datagram(2, stream_id=2, session_id=77), bytes(signed),
            datagram(3, size=1400), datagram(4, size=9000)]
    garbage = [b"", b"GRPV", bytes(36), b"GRPV\x02" + bytes(40),  # short, bad magic, version
               b"GRPV\x01\x00\x00\x00" + bytes(12) + bytes(16)]  # session 0
    sock = open_sender(a["group"], a["port"])
    try:
        for data in [good[0], garbage[0], good[1], garbage[1], garbage[2], good[2],
                     garbage[3], good[3], garbage[4], good[0], good[4]]:
            sock.send(data)
        assert tap.wait_for(len(good))
        received = []
        buffer = bytearray(70_000)
        for _ in good:
            size = listener.recv_into(buffer)
            received.append(bytes(buffer[:size]))
    finally:
        sock.close()
        listener.close()
    assert received == good  # the same bytes, in the same order, nothing else
    assert [data for _, data in tap.seen] == good
    assert {endpoint for endpoint, _ in tap.seen} == {Endpoint.parse(ep(b))}
    stats = tx.stats()
    assert stats.dropped["malformed"] == len(garbage)
    assert stats.dropped["duplicate"] == 1  # good[0] sent twice
    assert rx.stats().total_dropped == 0


@pytest.mark.network
@pytest.mark.timeout(60)
def test_a_signed_stream_repeats_unchanged_and_verifies() -> None:
    a, b = free_endpoint(), free_endpoint()
    keys = KeyRing.from_text(generate_key(4))
    model = OrderBookModel()
    market = Market(50, seed=2)
    with Repeater("receive", [ep(a)], listen="127.0.0.1:0", remap={ep(a): ep(b)}) as rx, \
            Repeater("send", [ep(a)], peer=rx.link_address, validation="full") as tx, \
            Subscriber(model, config=SubscriberConfig(keys=keys), **b) as sub, \
            Publisher(model, config=PublisherConfig(keys=keys), initial=market.copy_books(),
                      **a) as pub:
        assert tx.wait_connected(10)
        publish(pub, market, 3000)
        assert converged(pub, sub)
        stats = sub.stats()
    assert (stats.unauthenticated, stats.unknown_keys, stats.bad_tags, stats.replayed) == (
        0, 0, 0, 0)
    assert tx.stats().total_dropped == 0


@pytest.mark.network
@pytest.mark.timeout(60)
def test_udp_link_and_several_groups_over_one_link() -> None:
    a1, a2, b1, b2 = (free_endpoint() for _ in range(4))
    model = OrderBookModel()
    markets = [Market(30, seed=1), Market(30, seed=2)]
    remap = {ep(a1): ep(b1), ep(a2): ep(b2)}
    with Repeater("receive", [ep(a1), ep(a2)], listen="127.0.0.1:0", remap=remap,
                  transport="udp") as rx, \
            Repeater("send", [ep(a1), ep(a2)], peer=rx.link_address, transport="udp") as tx, \
            Subscriber(model, **b1) as sub1, Subscriber(model, stream_id=5, **b2) as sub2, \
            Publisher(model, initial=markets[0].copy_books(), **a1) as pub1, \
            Publisher(model, initial=markets[1].copy_books(), stream_id=5, **a2) as pub2:
        assert tx.connected  # UDP: nothing to connect
        assert rx.connected
        publish(pub1, markets[0], 2000)
        publish(pub2, markets[1], 2000)
        assert converged(pub1, sub1)
        assert converged(pub2, sub2)
    groups = rx.stats().groups
    assert groups[ep(a1)] > 0
    assert groups[ep(a2)] > 0


@pytest.mark.network
@pytest.mark.timeout(30)
def test_bad_link_input_is_counted_and_never_stops_the_repeater(pair: dict[str, Any]) -> None:
    rx, tap = pair["rx"], pair["tap"]
    a = Endpoint.parse(ep(pair["a"]))
    # 1. Not a repeater at all: the connection is closed and counted.
    with socket.create_connection(rx.link_address, timeout=5) as stranger:
        stranger.sendall(b"GET / HTTP/1.1\r\n\r\n")
        assert stranger.recv(10) == b""  # closed by the repeater
    assert rx.stats().link_errors == 1
    # 2. A good hello, then every kind of bad frame, then one good datagram: frames of a
    # connection are handled in order, so once the good one is out every bad one counted.
    with socket.create_connection(rx.link_address, timeout=5) as client:
        client.sendall(hello()
                       + encode_frame(Endpoint("239.9.9.9", 9).key, datagram(1))  # unknown
                       + encode_frame(a.key, b"GRPV" + bytes(60))  # malformed
                       + encode_frame(a.key, bytes(65529))  # too large to be a datagram
                       + struct.pack("<BBH", FRAME_DATAGRAM, 0, 3) + b"abc"  # no address
                       + struct.pack("<BBH", 200, 0, 1) + b"?"  # unknown kind
                       + struct.pack("<BBH", FRAME_KEEPALIVE, 0, 0)
                       + encode_frame(a.key, datagram(42)))
        assert tap.wait_for(1)
        client.sendall(struct.pack("<BBH", FRAME_DATAGRAM, 0, 500) + b"partial")
    # 3. The repeater carries on: a datagram through the regular path still arrives.
    sock = open_sender(pair["a"]["group"], pair["a"]["port"])
    try:
        sock.send(datagram(43))
        assert tap.wait_for(2)
    finally:
        sock.close()
    stats = rx.stats()
    assert [data for _, data in tap.seen] == [datagram(42), datagram(43)]
    assert stats.dropped["unknown_group"] == 1
    assert stats.dropped["malformed"] == 1
    assert stats.dropped["too_large"] == 1
    assert stats.dropped["bad_frame"] == 1
    assert stats.unknown_frames == 1
    assert stats.keepalives >= 1
    assert stats.internal_errors == 0
    assert wait_until(lambda: rx.stats().dropped["link_lost"] == 1)  # the cut-short frame
    assert rx.failure is None


@pytest.mark.network
@pytest.mark.timeout(30)
def test_a_udp_link_counts_datagrams_that_are_not_one_frame() -> None:
    a, b = free_endpoint(), free_endpoint()
    tap = Tap()
    with Repeater("receive", [ep(a)], listen="127.0.0.1:0", remap={ep(a): ep(b)},
                  transport="udp", on_forward=tap) as rx, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as link:
        key = Endpoint.parse(ep(a)).key
        link.sendto(encode_frame(key, datagram(1))[:-5], rx.link_address)  # truncated
        link.sendto(encode_frame(key, datagram(2)) + b"extra", rx.link_address)  # trailing
        link.sendto(encode_frame(key, datagram(3)), rx.link_address)
        assert tap.wait_for(1)
        assert [data for _, data in tap.seen] == [datagram(3)]
        assert rx.stats().dropped["bad_frame"] == 2


@pytest.mark.network
@pytest.mark.timeout(30)
def test_the_queue_keeps_the_newest_while_the_peer_is_down_then_delivers_them() -> None:
    a, b = free_endpoint(), free_endpoint()
    with socket.socket() as probe:  # a TCP port the kernel picks, free once closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    limit = 2 * (65507 + 10)
    with Repeater("send", [ep(a)], peer=("127.0.0.1", port), max_queue_bytes=limit,
                  reconnect_min_s=0.05, reconnect_max_s=0.2) as tx:
        sock = open_sender(a["group"], a["port"])
        try:
            sent = [datagram(i, size=1000) for i in range(1, 301)]
            for data in sent:
                sock.send(data)
        finally:
            sock.close()
        assert wait_until(lambda: tx.stats().received == 300)  # counted once queued
        stats = tx.stats()
        frame = 1000 + 10
        assert stats.queue_datagrams == limit // frame
        assert stats.queue_bytes == stats.queue_datagrams * frame <= limit
        assert stats.dropped["queue_full"] == 300 - stats.queue_datagrams
        assert stats.connect_failures >= 1
        assert not tx.connected
        kept = stats.queue_datagrams
        # The peer comes up: the newest datagrams, in order, are delivered.
        tap = Tap()
        with Repeater("receive", [ep(a)], listen=("127.0.0.1", port), remap={ep(a): ep(b)},
                      on_forward=tap):
            assert tap.wait_for(kept)
            assert [data for _, data in tap.seen] == sent[-kept:]
            assert tx.stats().connects == 1


@pytest.mark.network
@pytest.mark.timeout(30)
def test_the_send_side_reconnects_when_the_receive_side_restarts() -> None:
    a, b = free_endpoint(), free_endpoint()
    first, second = Tap(), Tap()
    rx = Repeater("receive", [ep(a)], listen="127.0.0.1:0", remap={ep(a): ep(b)},
                  on_forward=first)
    port = rx.link_address[1]
    sock = open_sender(a["group"], a["port"])
    try:
        with Repeater("send", [ep(a)], peer=rx.link_address, reconnect_min_s=0.05,
                      reconnect_max_s=0.2, keepalive_interval_s=0.05) as tx:
            sock.send(datagram(1))
            assert first.wait_for(1)
            rx.close()
            with Repeater("receive", [ep(a)], listen=("127.0.0.1", port),
                          remap={ep(a): ep(b)}, on_forward=second) as rx2:
                # Datagrams sent before the link is back are lost or queued; keep the
                # stream going until one arrives through the new receive side.
                sequence = 2
                while not second.wait_for(1, timeout=0.05):
                    sock.send(datagram(sequence))
                    sequence += 1
                    assert sequence < 1000, "the send side never reconnected"
                assert rx2.stats().connects == 1
            stats = tx.stats()
            assert stats.connects >= 2
            assert stats.reconnects == stats.connects - 1
            assert stats.link_errors >= 1
    finally:
        sock.close()
        rx.close()


@pytest.mark.network
@pytest.mark.timeout(30)
def test_full_validation_drops_what_only_the_decoder_sees() -> None:
    a, b = free_endpoint(), free_endpoint()
    truncated = datagram(1)[:-1]  # a good header, a DELTA one byte short
    tap = Tap()
    with Repeater("receive", [ep(a)], listen="127.0.0.1:0", remap={ep(a): ep(b)},
                  on_forward=tap) as rx, \
            Repeater("send", [ep(a)], peer=rx.link_address, validation="full") as tx:
        sock = open_sender(a["group"], a["port"])
        try:
            sock.send(truncated)
            sock.send(datagram(2))
        finally:
            sock.close()
        assert tap.wait_for(1)
        assert [data for _, data in tap.seen] == [datagram(2)]
        assert tx.stats().dropped["malformed"] == 1


@pytest.mark.network
@pytest.mark.timeout(30)
def test_a_failing_tap_is_counted_and_forwarding_goes_on() -> None:
    a, b = free_endpoint(), free_endpoint()
    calls: list[bytes] = []
    done = threading.Event()

    def tap(endpoint: Endpoint, data: bytes) -> None:
        calls.append(data)
        if len(calls) == 2:
            done.set()
        raise RuntimeError("a retransmission server with a bug")

    listener = open_receiver(b["group"], b["port"])
    listener.settimeout(5)
    try:
        with Repeater("receive", [ep(a)], listen="127.0.0.1:0", remap={ep(a): ep(b)},
                      on_forward=tap) as rx, \
                Repeater("send", [ep(a)], peer=rx.link_address):
            sock = open_sender(a["group"], a["port"])
            try:
                sock.send(datagram(1))
                sock.send(datagram(2))
            finally:
                sock.close()
            assert done.wait(10)
            buffer = bytearray(2000)
            got = [bytes(buffer[:listener.recv_into(buffer)]) for _ in range(2)]
            assert got == [datagram(1), datagram(2)]
            stats = rx.stats()
            assert stats.tap_errors == 2
            assert stats.forwarded == 2
    finally:
        listener.close()


@pytest.mark.network
@pytest.mark.timeout(30)
def test_a_repeater_loop_is_cut_after_one_lap() -> None:
    """A to B and B back to A on the same groups: each datagram comes back to A once and
    the send side drops it as a copy, so nothing circulates."""
    a, b = free_endpoint(), free_endpoint()
    with Repeater("receive", [ep(a)], listen="127.0.0.1:0", remap={ep(a): ep(b)}) as rx1, \
            Repeater("receive", [ep(b)], listen="127.0.0.1:0", remap={ep(b): ep(a)}) as rx2, \
            Repeater("send", [ep(a)], peer=rx1.link_address) as tx1, \
            Repeater("send", [ep(b)], peer=rx2.link_address) as tx2:
        assert tx1.wait_connected(10)
        assert tx2.wait_connected(10)
        sock = open_sender(a["group"], a["port"])
        try:
            for sequence in range(1, 51):
                sock.send(datagram(sequence))
        finally:
            sock.close()
        assert wait_until(lambda: tx1.stats().dropped["duplicate"] == 50)
        assert rx1.stats().forwarded == 50  # once to B, never again
        assert rx2.stats().forwarded == 50  # once back to A
        assert tx2.stats().forwarded == 50


def test_every_public_name_is_documented() -> None:
    """The rule tests/test_docs.py applies to the public modules."""
    import inspect

    import grapevine.repeater as module
    for name in module.__all__:
        obj = getattr(module, name)
        if not (inspect.isclass(obj) or inspect.isfunction(obj)):
            continue
        assert inspect.getdoc(obj), name
        for attr, member in vars(obj).items() if inspect.isclass(obj) else ():
            if isinstance(member, classmethod):
                member = member.__func__
            bases = getattr(obj, "__mro__", ())[1:]
            if attr.startswith("_") or any(attr in vars(base) for base in bases):
                continue
            if inspect.isfunction(member) or isinstance(member, property):
                assert member.__doc__, f"{name}.{attr}"


def test_stats_name_every_drop_reason() -> None:
    with Repeater("receive", ["239.255.72.9:47100"], listen="127.0.0.1:0") as rx:
        stats = rx.stats()
    assert tuple(stats.dropped) == DROP_REASONS
    assert stats.role == "receive"
    assert "receive/tcp" in stats.summary()


# --------------------------------------------------------------------------- the command


def test_cli_refuses_incomplete_roles(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["repeat", "--send", "--group", "239.255.72.1:47100"]) == 2
    assert "--peer" in capsys.readouterr().err
    assert cli_main(["repeat", "--receive", "--group", "239.255.72.1:47100"]) == 2
    assert "--listen" in capsys.readouterr().err
    assert cli_main(["repeat", "--send", "--peer", "127.0.0.1:9", "--group",
                     "239.255.72.1:47100=239.255.72.2:47100"]) == 2
    assert "remaps" in capsys.readouterr().err


class Process:
    """A ``grapevine repeat`` subprocess and its JSON event lines."""

    def __init__(self, *argv: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "grapevine", "repeat", *argv], stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert self.proc.stdout is not None
        self.lines = self.proc.stdout

    def event(self) -> dict[str, Any]:
        line = self.lines.readline()  # the test's timeout bounds this read
        assert line, self.proc.stderr.read() if self.proc.stderr else "no output"
        parsed: dict[str, Any] = json.loads(line)
        return parsed

    def stop(self) -> tuple[dict[str, Any], str]:
        self.proc.send_signal(signal.SIGTERM)
        final = self.event()
        _, err = self.proc.communicate(timeout=20)
        return final, err


@pytest.mark.network
@pytest.mark.timeout(60)
def test_cli_pair_carries_a_datagram_and_reports_stats() -> None:
    a, b = free_endpoint(), free_endpoint()
    rx = Process("--receive", "--listen", "127.0.0.1:0", "--group", f"{ep(a)}={ep(b)}",
                 "--stats-interval", "0.2")
    tx: Process | None = None
    listener = open_receiver(b["group"], b["port"])
    listener.settimeout(10)
    try:
        ready = rx.event()
        assert ready["event"] == "ready"
        assert ready["role"] == "receive"
        assert rx.proc.stderr is not None
        while "datagrams/s forwarded" not in rx.proc.stderr.readline():
            pass  # the periodic stats line, every 0.2 s (the test's timeout bounds this)
        tx = Process("--send", "--peer", ready["link"], "--group", ep(a),
                     "--stats-interval", "0.2")
        assert tx.event()["event"] == "ready"
        sock = open_sender(a["group"], a["port"])
        buffer = bytearray(2000)
        try:
            # Until the link is up, datagrams may wait in the queue or (before the
            # group is joined) go nowhere: send until one arrives.
            for sequence in range(1, 200):
                sock.send(datagram(sequence))
                listener.settimeout(0.1)
                try:
                    size = listener.recv_into(buffer)
                    break
                except TimeoutError:
                    continue
            else:
                pytest.fail("nothing crossed the CLI pair")
        finally:
            sock.close()
        assert buffer[:4] == b"GRPV"
        assert size == 200
        tx.proc.send_signal(signal.SIGUSR1)
        stats = tx.event()
        assert stats["event"] == "stats"
        assert stats["role"] == "send"
        assert stats["forwarded"] >= 1
        final, err = tx.stop()
        assert final["event"] == "final"
        assert tx.proc.returncode == 0
        assert "grapevine repeat stopped: send/tcp" in err
        final, _ = rx.stop()
        assert final["forwarded"] >= 1
        assert rx.proc.returncode == 0
    finally:
        listener.close()
        for process in (tx, rx):
            if process is not None and process.proc.poll() is None:
                process.proc.kill()
                process.proc.communicate(timeout=10)


@pytest.mark.network
@pytest.mark.timeout(60)
def test_subscribers_on_b_repair_from_the_repeater_not_across_the_link(
        pair: dict[str, Any]) -> None:
    """A datagram lost on B is asked for at its source address, the repeater's: it answers
    from its cache (SPEC §15), the publisher on A never hears of it, and no gap occurs."""
    model = OrderBookModel()
    market = Market(50, seed=3)
    rx = pair["rx"]
    lost: list[int] = []

    def drop(view: memoryview) -> bool:
        decoded = decode_datagram(view)
        if not lost and decoded.sequence > 1000 and any(
                type(m) is Delta for m in decoded.messages):
            lost.append(decoded.sequence)
            return True
        return False

    # A generous wait: on a loaded CI machine the answer may take longer than the default
    # 60 ms, and this test is about who answers, not how fast.
    patient = SubscriberConfig(retransmit_wait_s=2.0)
    with Subscriber(model, config=patient, drop_filter=drop, **pair["b"]) as sub, \
            Publisher(model, initial=market.copy_books(), **pair["a"]) as pub:
        for _ in range(10):
            publish(pub, market, 300)
            pub.flush(10)
        assert converged(pub, sub)
        stats, published = sub.stats(), pub.stats()
    assert lost
    assert stats.gaps == 0, (stats, rx.stats())
    assert stats.retransmitted_datagrams >= 1
    assert published.retransmit_requests == 0  # nothing crossed the link to repair
    assert rx.stats().retransmit["datagrams_sent"] >= 1
