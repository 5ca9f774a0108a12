"""Unit tests of the subscriber core's mechanisms on their own: the reorder buffer and
fragment reassembly, each checked with its own ``_check()`` after every call."""

from __future__ import annotations

from grapevine._reassembly import Reassembler
from grapevine._reorder import ReorderBuffer
from grapevine.codec import DatagramBuilder, decode_datagram


def heartbeat(sequence: int, tag: int = 0) -> bytes:
    builder = DatagramBuilder(0, 9)
    builder.start(sequence)
    builder.add_heartbeat(100)
    return bytes(builder.finish(1_000 + tag))


def test_a_full_reorder_buffer_counts_the_datagram_it_evicts() -> None:
    buffer = ReorderBuffer(window_s=1.0, window_datagrams=3)
    for sequence in (100, 200, 300):
        raw = heartbeat(sequence)
        assert buffer.hold(raw, decode_datagram(raw), 0.0) is True
        buffer._check(10)
    raw = heartbeat(50)  # nearer: the farthest (300) makes room
    assert buffer.hold(raw, decode_datagram(raw), 0.0) is True
    buffer._check(10)
    assert buffer.evicted == 1
    raw = heartbeat(400)  # farthest of all: refused, counted by the caller
    assert buffer.hold(raw, decode_datagram(raw), 0.0) is False
    assert buffer.evicted == 1
    assert len(buffer) == 3


def test_an_unconfirmed_hole_has_no_deadline_before_its_expiry() -> None:
    buffer = ReorderBuffer(window_s=0.02, window_datagrams=64)
    raw = heartbeat(100)
    buffer.hold(raw, decode_datagram(raw), 1.0)
    assert buffer.gap_end(5.0) is None  # alone: never a gap
    assert buffer.next_deadline(0.2) == 1.0 + 0.2
    assert buffer.drop_unconfirmed(1.0 + 0.2, 0.2) == 1
    buffer._check(10)
    assert buffer.next_deadline(0.2) is None


def test_a_confirmed_hole_is_due_at_the_window_end() -> None:
    buffer = ReorderBuffer(window_s=0.02, window_datagrams=64)
    for tag in (1, 2):  # two distinct DELTA-less datagrams at one sequence confirm
        raw = heartbeat(100, tag)
        buffer.hold(raw, decode_datagram(raw), 1.0)
    buffer._check(10)
    assert buffer.next_deadline(0.2) == 1.0 + 0.02
    assert buffer.gap_end(1.0 + 0.02) == 100


def test_a_repeated_fragment_costs_nothing_against_the_byte_cap() -> None:
    """Only bytes not held yet count: a fragment repeated many times never evicts another
    reassembly nor drops its own."""
    reassembler = Reassembler(max_snapshot_bytes=1000, max_total_bytes=150, max_partials=8)
    first = bytes(range(100))
    assert reassembler.add(1, 1, 5, 200, 0, first[:80]) is None
    assert reassembler.add(2, 1, 5, 200, 0, first[:60]) is None
    for _ in range(10):
        assert reassembler.add(1, 1, 5, 200, 0, first[:80]) is None
        reassembler._check()
    assert len(reassembler) == 2
    assert reassembler.evicted == 0
    assert reassembler.bytes_held == 140


def test_an_overlapping_fragment_that_disagrees_drops_the_reassembly() -> None:
    reassembler = Reassembler(max_snapshot_bytes=1000, max_total_bytes=1000, max_partials=8)
    assert reassembler.add(1, 1, 5, 10, 0, b"abcdef") is None
    assert reassembler.add(1, 1, 5, 10, 4, b"XXxxxx") is None
    assert reassembler.inconsistent == 1
    assert len(reassembler) == 0
    assert reassembler.add(1, 1, 5, 10, 0, b"abcdef") is None
    assert reassembler.add(1, 1, 5, 10, 4, b"efghij") == b"abcdefghij"
    reassembler._check()
