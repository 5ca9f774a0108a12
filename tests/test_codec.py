"""Round trips, fast path == construct path on generated datagrams, and EncodeError at the call."""

from __future__ import annotations

import struct
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # the venv may not have grapevine installed
    sys.path.insert(0, str(ROOT))

from grapevine import codec, wire  # noqa: E402
from grapevine._errors import DecodeError, EncodeError  # noqa: E402
from grapevine.codec import (  # noqa: E402
    AuthTag,
    DatagramBuilder,
    Decoded,
    Delta,
    EndOfSession,
    Heartbeat,
    Message,
    Snapshot,
    Touched,
    UnknownMessage,
)
from grapevine.wire import DeltaFlag, HeaderFlag, MessageKind, SnapshotFlag  # noqa: E402

U32 = 2**32 - 1
U64 = 2**64 - 1
SESSION = 0x1234_5678_9ABC_DEF0


normalise = codec.comparable


def builder_bytes(value: Decoded, max_size: int = wire.MAX_DATAGRAM_SIZE) -> bytes | None:
    """The fast path's encoding of ``value`` (None where DatagramBuilder cannot express it)."""
    try:
        return codec.encode_datagram(value, max_size)
    except EncodeError:
        return None


# --------------------------------------------------------------------------- strategies

u32 = st.integers(0, U32)
u64 = st.integers(0, U64)
small_payload = st.binary(max_size=40)
reserved_delta_bits = st.integers(0, 255).map(lambda f: f & ~3)
reserved_snapshot_bits = st.integers(0, 255).map(lambda f: f & ~3)


@st.composite
def deltas(draw: st.DrawFn) -> Delta:
    kind = draw(st.sampled_from([0, DeltaFlag.CREATE, DeltaFlag.DELETE]))
    flags = int(kind) | draw(reserved_delta_bits)
    data = b"" if kind == DeltaFlag.DELETE else draw(small_payload)
    return Delta(0, draw(u32), draw(st.integers(1, U64)), flags, data)


@st.composite
def snapshots(draw: st.DrawFn, next_seq: int) -> Snapshot:
    as_of = draw(st.integers(0, min(next_seq, U64)))
    cycle_id = draw(u32)
    leaf_seq = draw(u64)
    extra = draw(reserved_snapshot_bits)
    if draw(st.booleans()) and draw(st.booleans()):  # the empty-cycle marker: fixed fields
        flags = int(SnapshotFlag.DELETED | SnapshotFlag.LAST) | extra
        return Snapshot(0, 0, cycle_id, 0, 0, 0, as_of, 0, 0, flags, b"")
    leaf_id = draw(u32)
    range_start = draw(st.integers(0, leaf_id))
    count = draw(st.integers(1, U32))
    position = draw(st.one_of(st.just(count - 1), st.integers(0, count - 1)))
    # LAST only at the end of the cycle (where it is optional on the wire); never DELETED.
    last = position == count - 1 and draw(st.integers(0, 9)) > 0
    flags = extra | (SnapshotFlag.LAST if last else 0)
    data = draw(small_payload)
    fragment_offset = draw(st.integers(0, U32 - len(data)))
    total = draw(st.integers(fragment_offset + len(data), U32))
    return Snapshot(leaf_id, range_start, cycle_id, position, count, leaf_seq, as_of, total,
                    fragment_offset, flags, data)


@st.composite
def touched(draw: st.DrawFn, next_seq: int) -> Touched:
    """A valid TOUCHED at a position whose next DELTA has sequence ``next_seq``."""
    end_seq = draw(st.integers(0, min(next_seq, U64)))
    first_seq = draw(st.one_of(st.just(end_seq), st.integers(0, end_seq)))
    ids = draw(st.lists(u32, unique=True, max_size=6))
    entries = tuple((leaf_id, draw(st.integers(1, U64))) for leaf_id in sorted(ids))
    return Touched(first_seq, end_seq, entries)


# Kinds version 1 does not know (TOUCHED = 5 is the highest known one).
unknown_kinds = st.one_of(st.just(0), st.integers(max(MessageKind) + 1, 255))


@st.composite
def datagrams(draw: st.DrawFn, *, allow_extensions: bool = True) -> Decoded:
    sequence = draw(st.one_of(st.integers(0, 10_000), u64))
    seq = sequence
    messages: list[codec.Message] = []
    kinds = ["delta", "snapshot", "heartbeat", "eos", "touched"] + (
        ["unknown"] if allow_extensions else [])
    for kind in draw(st.lists(st.sampled_from(kinds), max_size=12)):
        if seq > U64 and kind in ("delta", "snapshot", "touched"):
            continue  # past DELTA 2^64 - 1 nothing sequenced fits (SPEC section 7)
        if kind == "delta":
            messages.append(draw(deltas())._replace(seq=seq))
            seq += 1
        elif kind == "snapshot":
            messages.append(draw(snapshots(seq)))
        elif kind == "heartbeat":
            messages.append(Heartbeat(draw(u32)))
        elif kind == "eos":
            messages.append(EndOfSession())
        elif kind == "touched":
            messages.append(draw(touched(seq)))
        else:
            messages.append(UnknownMessage(draw(unknown_kinds), draw(st.integers(0, 255)),
                                           draw(small_payload)))
    flags, auth = 0, None
    if allow_extensions:
        flags = draw(st.integers(0, 255))
        if flags & HeaderFlag.AUTH:
            auth = AuthTag(draw(u32), draw(st.binary(min_size=16, max_size=16)))
    return Decoded(wire.VERSION, flags, draw(u32), draw(st.integers(1, U64)), sequence,
                   draw(u64), messages, auth)


FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --------------------------------------------------------------------------- equivalence


@FAST
@given(datagrams())
def test_construct_encoding_decodes_identically_on_both_paths(value: Decoded) -> None:
    raw = codec.encode_with_construct(value)
    fast = codec.decode_datagram(raw)
    slow = codec.decode_with_construct(raw)
    assert normalise(fast) == normalise(slow) == normalise(value)
    assert codec.encode_with_construct(fast) == raw


@FAST
@given(datagrams(allow_extensions=False))
def test_builder_and_construct_produce_identical_bytes(value: Decoded) -> None:
    raw = codec.encode_with_construct(value)
    assert builder_bytes(value) == raw
    assert builder_bytes(value, max_size=max(len(raw), 85)) == raw


@FAST
@given(datagrams())
def test_decode_accepts_bytes_bytearray_and_memoryview(value: Decoded) -> None:
    raw = codec.encode_with_construct(value)
    expected = normalise(codec.decode_datagram(raw))
    assert normalise(codec.decode_datagram(bytearray(raw))) == expected
    assert normalise(codec.decode_datagram(memoryview(raw))) == expected
    assert normalise(codec.decode_datagram(memoryview(b"xx" + raw)[2:])) == expected
    assert normalise(codec.decode_with_construct(memoryview(raw))) == expected


def _strided(raw: bytes, buffer: bytearray | None = None) -> memoryview:
    """A non-contiguous view whose logical bytes are ``raw``: every other byte of ``buffer``."""
    interleaved = bytearray(2 * len(raw)) if buffer is None else buffer
    interleaved[::2] = raw
    interleaved[1::2] = b"\xee" * len(raw)
    view = memoryview(interleaved)[::2]
    assert not view.c_contiguous
    assert bytes(view) == raw
    return view


@FAST
@given(datagrams())
def test_decode_accepts_a_non_contiguous_memoryview_by_copying(value: Decoded) -> None:
    # SPEC-independent API rule: decode(data) decodes bytes(data), whatever the buffer's
    # layout; a strided view (which struct cannot read in place) is copied first.
    raw = codec.encode_with_construct(value)
    view = _strided(raw)
    expected = normalise(codec.decode_datagram(raw))
    assert normalise(codec.decode_datagram(view)) == expected
    assert normalise(codec.decode_with_construct(view)) == expected


def test_non_contiguous_memoryview_payloads_view_a_private_copy() -> None:
    raw = codec.encode_with_construct(Decoded(1, 0, 1, SESSION, 5, 0,
                                              [Delta(5, 1, 1, 0, b"abc")]))
    buffer = bytearray(2 * len(raw))
    delta = codec.decode_datagram(_strided(raw, buffer)).messages[0]
    assert isinstance(delta, Delta)
    buffer[:] = bytes(len(buffer))  # the caller reuses its buffer: the payload is unaffected
    assert bytes(delta.payload) == b"abc"


@pytest.mark.parametrize("decoder", [codec.decode_datagram, codec.decode_with_construct])
def test_non_contiguous_invalid_bytes_raise_decode_error(decoder: Any) -> None:
    raw = codec.encode_with_construct(Decoded(1, 0, 1, SESSION, 5, 0, [Heartbeat(9)]))
    with pytest.raises(DecodeError) as info:
        decoder(memoryview(raw)[::-1])  # negative stride: the bytes reversed, bad magic
    assert info.value.field == "magic"
    with pytest.raises(DecodeError) as info:
        decoder(_strided(raw)[: codec.HEADER_SIZE - 1])
    if decoder is codec.decode_datagram:  # (the construct path names its parse failure its own way)
        assert (info.value.field, info.value.offset) == ("header", codec.HEADER_SIZE - 1)


# --------------------------------------------------------------------------- round trips


def test_builder_round_trip_every_kind() -> None:
    builder = DatagramBuilder(3, SESSION)
    builder.start(100)
    assert builder.add_delta(1, 1, DeltaFlag.CREATE, b"new")
    assert builder.add_delta(1, 2, 0, b"change")
    snap = Snapshot(1, 0, 4, 0, 1, 2, 102, 6, 0, SnapshotFlag.LAST, b"state!")
    assert builder.add_snapshot(snap)
    assert builder.add_heartbeat(1000)
    assert builder.add_delta(1, 3, DeltaFlag.DELETE, b"")
    assert builder.add_end_of_session()
    assert (builder.count, builder.delta_count) == (6, 3)
    raw = bytes(builder.finish(123456789))
    decoded = codec.decode_datagram(raw)
    assert (decoded.stream_id, decoded.session_id, decoded.sequence, decoded.send_time_ns) == (
        3, SESSION, 100, 123456789)
    assert [type(m).__name__ for m in decoded.messages] == [
        "Delta", "Delta", "Snapshot", "Heartbeat", "Delta", "EndOfSession"]
    assert [m.seq for m in decoded.messages if isinstance(m, Delta)] == [100, 101, 102]
    assert normalise(decoded.messages[2]) == normalise(snap)
    assert codec.encode_with_construct(decoded) == raw
    assert normalise(codec.decode_with_construct(raw)) == normalise(decoded)


def test_builder_fills_to_max_size_and_reports_full() -> None:
    builder = DatagramBuilder(1, SESSION, 1400)
    builder.start(1)
    added = 0
    while builder.add_delta(added, 1, 0, bytes(18)):
        added += 1
    assert added == (1400 - codec.HEADER_SIZE) // (codec.DELTA_OVERHEAD + 18) == 40
    assert builder.room < codec.DELTA_OVERHEAD + 18
    raw = builder.finish(0)
    assert len(raw) == codec.HEADER_SIZE + added * (codec.DELTA_OVERHEAD + 18) <= 1400
    assert len(codec.decode_datagram(raw).messages) == added
    # A refused message leaves the datagram untouched.
    before = bytes(raw)
    assert not builder.add_delta(999, 1, 0, bytes(18))
    assert bytes(builder.finish(0)) == before


def test_builder_exact_fill() -> None:
    builder = DatagramBuilder(1, SESSION, 1400)
    builder.start(1)
    assert builder.add_delta(1, 1, 0, bytes(1400 - codec.HEADER_SIZE - codec.DELTA_OVERHEAD))
    assert builder.room == 0
    assert not builder.add_end_of_session()
    assert not builder.add_heartbeat(1)
    assert len(builder.finish(0)) == 1400


def test_builder_start_resets() -> None:
    builder = DatagramBuilder(1, SESSION)
    builder.start(1)
    builder.add_delta(1, 1, 0, b"abc")
    builder.start(50)
    assert (builder.count, builder.delta_count) == (0, 0)
    decoded = codec.decode_datagram(builder.finish(7))
    assert decoded.messages == []
    assert decoded.sequence == 50


def test_payloads_are_views_into_the_buffer() -> None:
    raw = bytearray(codec.encode_with_construct(
        Decoded(1, 0, 1, SESSION, 5, 0, [Delta(5, 1, 1, 0, b"abcd")])))
    decoded = codec.decode_datagram(raw)
    message = decoded.messages[0]
    assert isinstance(message, Delta)
    payload = message.payload
    assert isinstance(payload, memoryview)
    raw[-1] = ord("z")
    assert bytes(payload) == b"abcz"


def test_header_and_overhead_sizes_match_wire() -> None:
    assert codec.HEADER_SIZE == wire.Header.sizeof() == 36
    assert codec.MESSAGE_HEADER_SIZE == wire.MessageHeader.sizeof() == 4
    assert codec.DELTA_OVERHEAD == 4 + wire.DeltaFields.sizeof() == 16
    assert codec.SNAPSHOT_OVERHEAD == 4 + wire.SnapshotFields.sizeof() == 48
    assert wire.AUTH_TRAILER_SIZE == 20
    assert struct.calcsize(wire.struct_format(wire.Header)) == 36


def test_sequence_numbers_of_deltas_skip_other_kinds() -> None:
    value = Decoded(1, 0, 1, SESSION, 10, 0, [
        Delta(0, 1, 1, 0, b""), Heartbeat(5), UnknownMessage(9, 0, b"zz"),
        Snapshot(1, 0, 0, 0, 1, 1, 11, 0, 0, 0, b""), Delta(0, 1, 2, 0, b""), EndOfSession(),
    ])
    decoded = codec.decode_datagram(codec.encode_with_construct(value))
    assert [m.seq for m in decoded.messages if isinstance(m, Delta)] == [10, 11]


# --------------------------------------------------------------------------- EncodeError


def _builder() -> DatagramBuilder:
    builder = DatagramBuilder(1, SESSION)
    builder.start(1)
    return builder


@pytest.mark.parametrize(("leaf_id", "leaf_seq", "flags"), [
    (-1, 1, 0), (2**32, 1, 0), (1, -1, 0), (1, 2**64, 0), (1, 1, 256), (1, 1, -1),
], ids=["negative_leaf_id", "leaf_id_2_32", "negative_leaf_seq", "leaf_seq_2_64",
        "flags_256", "negative_flags"])
def test_builder_rejects_unrepresentable_delta(leaf_id: int, leaf_seq: int, flags: int) -> None:
    builder = _builder()
    with pytest.raises(EncodeError):
        builder.add_delta(leaf_id, leaf_seq, flags, b"x")
    assert builder.count == 0
    assert builder.room == builder.max_size - codec.HEADER_SIZE


@pytest.mark.parametrize(("leaf_id", "leaf_seq"), [(-1, 1), (1, 2**64)],
                         ids=["negative_leaf_id", "leaf_seq_2_64"])
def test_construct_rejects_unrepresentable_delta(leaf_id: int, leaf_seq: int) -> None:
    with pytest.raises(EncodeError):
        codec.encode_with_construct(
            Decoded(1, 0, 1, SESSION, 1, 0, [Delta(1, leaf_id, leaf_seq, 0, b"")]))


def test_builder_rejects_payload_too_big_for_the_datagram() -> None:
    builder = _builder()
    with pytest.raises(EncodeError, match="cannot fit"):
        builder.add_delta(1, 1, 0, bytes(1400 - codec.HEADER_SIZE - codec.DELTA_OVERHEAD + 1))
    with pytest.raises(EncodeError, match="cannot fit"):
        builder.add_snapshot(Snapshot(1, 0, 0, 0, 1, 1, 1, 2000, 0, 0, bytes(2000)))


def test_construct_rejects_message_body_over_u16() -> None:
    with pytest.raises(EncodeError, match="exceeds"):
        codec.encode_with_construct(
            Decoded(1, 0, 1, SESSION, 1, 0, [Delta(1, 1, 1, 0, bytes(0xFFFF - 11))]))


def test_construct_rejects_datagram_over_udp_maximum() -> None:
    big: list[Message] = [Delta(1, 1, 1, 0, bytes(40_000)), Delta(2, 1, 1, 0, bytes(40_000))]
    with pytest.raises(EncodeError, match="exceeds the UDP maximum"):
        codec.encode_with_construct(Decoded(1, 0, 1, SESSION, 1, 0, big))
    fill = wire.MAX_DATAGRAM_SIZE - codec.HEADER_SIZE - codec.DELTA_OVERHEAD
    ok = codec.encode_with_construct(Decoded(1, 0, 1, SESSION, 1, 0,
                                             [Delta(1, 1, 1, 0, bytes(fill))]))
    assert len(ok) == wire.MAX_DATAGRAM_SIZE
    with pytest.raises(EncodeError):
        codec.encode_with_construct(Decoded(1, 0, 1, SESSION, 1, 0,
                                            [Delta(1, 1, 1, 0, bytes(fill + 1))]))


@pytest.mark.parametrize("max_size", [-1, 0, codec.HEADER_SIZE, codec.HEADER_SIZE
                                      + codec.SNAPSHOT_OVERHEAD, wire.MAX_DATAGRAM_SIZE + 1])
def test_builder_rejects_max_size_out_of_range(max_size: int) -> None:
    with pytest.raises(EncodeError, match="max_size"):
        DatagramBuilder(1, SESSION, max_size)


def test_builder_accepts_max_size_bounds() -> None:
    DatagramBuilder(1, SESSION, codec.HEADER_SIZE + codec.SNAPSHOT_OVERHEAD + 1)
    DatagramBuilder(1, SESSION, wire.MAX_DATAGRAM_SIZE)


@pytest.mark.parametrize(("stream_id", "session_id"), [(-1, 1), (2**32, 1), (1, 0), (1, -1),
                                                       (1, 2**64)])
def test_builder_rejects_bad_ids(stream_id: int, session_id: int) -> None:
    with pytest.raises(EncodeError):
        DatagramBuilder(stream_id, session_id)


def test_builder_refuses_stream_sequences_past_2_64() -> None:
    builder = DatagramBuilder(1, SESSION)
    builder.start(U64)
    assert builder.add_delta(1, 1, 0, b"a")  # stream sequence 2^64 - 1: the last one
    good = bytes(builder.finish(0))
    message = codec.decode_datagram(good).messages[0]
    assert isinstance(message, Delta)
    assert message.seq == U64
    with pytest.raises(EncodeError, match="beyond 2"):
        builder.add_snapshot(Snapshot(3, 0, 1, 0, 1, 1, U64, 1, 0, SnapshotFlag.LAST, b"x"))
    with pytest.raises(EncodeError, match="beyond 2"):
        builder.add_touched(Touched(U64, U64, ()))
    assert builder.add_delta(2, 1, 0, b"b")  # would be 2^64
    with pytest.raises(EncodeError, match="beyond 2"):
        builder.finish(0)


def test_builder_rejects_unrepresentable_header_and_fixed_messages() -> None:
    builder = DatagramBuilder(1, SESSION)
    builder.start(2**64)
    with pytest.raises(EncodeError):
        builder.finish(0)
    builder.start(1)
    with pytest.raises(EncodeError):
        builder.finish(-1)
    with pytest.raises(EncodeError):
        builder.add_heartbeat(2**32)
    with pytest.raises(EncodeError):
        builder.add_snapshot(Snapshot(-1, 0, 0, 0, 1, 1, 1, 0, 0, 0, b""))
    with pytest.raises(EncodeError, match="overruns total_length"):
        builder.add_snapshot(Snapshot(1, 0, 0, 0, 1, 1, 1, 3, 2, 0, b"ab"))
    assert builder.count == 0


@pytest.mark.parametrize("value", [
    Decoded(1, 0, 1, SESSION, 1, 0, [Heartbeat(2**32)]),
    Decoded(1, 0, 2**32, SESSION, 1, 0, []),
    Decoded(1, 0, 1, 2**64, 1, 0, []),
    Decoded(1, 0, 1, SESSION, -1, 0, []),
    Decoded(256, 0, 1, SESSION, 1, 0, []),
    Decoded(1, 1, 1, SESSION, 1, 0, [], AuthTag(1, bytes(15))),
    Decoded(1, 1, 1, SESSION, 1, 0, [], AuthTag(-1, bytes(16))),
    Decoded(1, 0, 1, SESSION, 1, 0, [Snapshot(1, 0, 0, 0, 1, 1, 2**64, 0, 0, 0, b"")]),
    Decoded(1, 0, 1, SESSION, 1, 0, [UnknownMessage(256, 0, b"")]),
    Decoded(1, 0, 1, SESSION, 1, 0, [EndOfSession()] * 65536),
], ids=["heartbeat_interval", "stream_id", "session_id", "sequence", "version",
        "auth_tag_length", "auth_key_id", "as_of_seq", "unknown_kind", "message_count"])
def test_construct_rejects_unrepresentable_values(value: Decoded) -> None:
    with pytest.raises(EncodeError):
        codec.encode_with_construct(value)


def test_decode_error_is_a_value_error_with_field_and_offset() -> None:
    with pytest.raises(ValueError, match="bad magic") as info:
        codec.decode_datagram(b"XXXX" + bytes(40))
    assert isinstance(info.value, DecodeError)
    assert (info.value.field, info.value.offset) == ("magic", 0)


@pytest.mark.parametrize(
    ("leaf_seq", "flags", "payload"),
    [(0, 0, b"x"), (1, DeltaFlag.CREATE | DeltaFlag.DELETE, b""), (1, DeltaFlag.DELETE, b"x")],
    ids=["leaf_seq_0", "create_and_delete", "delete_with_payload"],
)
def test_builder_refuses_deltas_receivers_would_drop(leaf_seq: int, flags: int,
                                                     payload: bytes) -> None:
    builder = DatagramBuilder(1, 1)
    builder.start(1)
    with pytest.raises(EncodeError, match="invalid delta"):
        builder.add_delta(3, leaf_seq, flags, payload)


@pytest.mark.parametrize(
    "changes",
    [{"range_start": 9}, {"cycle_position": 4}, {"as_of_seq": 2},
     {"cycle_count": 0}, {"flags": SnapshotFlag.DELETED},
     {"flags": SnapshotFlag.DELETED, "total_length": 0, "payload": b""},
     {"flags": SnapshotFlag.LAST},
     {"leaf_id": 0, "cycle_count": 0, "total_length": 0, "payload": b"",
      "flags": SnapshotFlag.DELETED | SnapshotFlag.LAST}],
    ids=["range_above_leaf", "position_past_count", "as_of_ahead", "zero_count", "deleted_len",
         "deleted_not_marker", "last_mid_cycle", "marker_leaf_seq"],
)
def test_builder_refuses_snapshots_receivers_would_drop(changes: dict[str, Any]) -> None:
    good = Snapshot(5, 0, 1, 0, 4, 1, 1, 3, 0, 0, b"abc")
    builder = DatagramBuilder(1, 1)
    builder.start(1)
    assert builder.add_snapshot(good)
    with pytest.raises(EncodeError, match="invalid snapshot"):
        builder.add_snapshot(good._replace(**changes))


# --------------------------------------------------------------------------- TOUCHED


def test_touched_is_kind_5_and_the_unknown_kinds_are_0_and_6_to_255() -> None:
    assert int(MessageKind.TOUCHED) == 5 == max(MessageKind)
    assert codec.TOUCHED_OVERHEAD == 4 + wire.TouchedFields.sizeof() == 20
    assert codec.TOUCHED_ENTRY_SIZE == wire.TouchedEntry.sizeof() == 12
    for kind in (0, 6, 200, 255):
        raw = codec.encode_with_construct(
            Decoded(1, 0, 1, SESSION, 1, 0, [UnknownMessage(kind, 0, b"x")]))
        assert isinstance(codec.decode_datagram(raw).messages[0], UnknownMessage)


def test_builder_round_trip_touched() -> None:
    builder = DatagramBuilder(3, SESSION)
    builder.start(100)
    assert builder.add_delta(7, 4, 0, b"a")
    assert builder.add_delta(2, 1, DeltaFlag.CREATE, b"b")
    summary = Touched(95, 102, ((2, 1), (5, 9), (7, 4)))
    assert builder.add_touched(summary)
    assert builder.add_touched(Touched(102, 102, ()))  # empty window: valid on the wire
    assert (builder.count, builder.delta_count) == (4, 2)  # TOUCHED consumes no sequence
    raw = bytes(builder.finish(1))
    assert len(raw) == (codec.HEADER_SIZE + 2 * (codec.DELTA_OVERHEAD + 1)
                        + 2 * codec.TOUCHED_OVERHEAD + 3 * codec.TOUCHED_ENTRY_SIZE)
    decoded = codec.decode_datagram(raw)
    assert decoded.messages[2:] == [summary, Touched(102, 102, ())]
    assert normalise(codec.decode_with_construct(raw)) == normalise(decoded)
    assert codec.encode_with_construct(decoded) == raw
    assert codec.encode_datagram(decoded) == raw
    text = codec.describe_datagram(decoded)
    assert "TOUCHED seq=[95, 102) leaves=3: 2@1 5@9 7@4" in text
    assert "TOUCHED seq=[102, 102) leaves=0" in text


def test_touched_in_a_delta_less_datagram() -> None:
    builder = DatagramBuilder(1, SESSION)
    builder.start(50)
    assert builder.add_touched(Touched(40, 50, ((1, 3),)))
    decoded = codec.decode_datagram(builder.finish(0))
    assert decoded.sequence == 50
    assert decoded.messages == [Touched(40, 50, ((1, 3),))]


def test_describe_abbreviates_long_touched() -> None:
    entries = tuple((i, 1) for i in range(20))
    text = codec.describe_datagram(Decoded(1, 0, 1, SESSION, 5, 0, [Touched(1, 5, entries)]))
    assert "leaves=20: 0@1 1@1 2@1 3@1 4@1 5@1 6@1 7@1 ...(+12)" in text


@pytest.mark.parametrize(
    "summary",
    [Touched(1, 5, ((3, 1), (2, 1))), Touched(1, 5, ((3, 1), (3, 2))),
     Touched(1, 5, ((3, 0),)), Touched(1, 6, ((3, 1),)), Touched(4, 3, ((3, 1),))],
    ids=["descending_ids", "duplicate_id", "leaf_seq_0", "end_seq_ahead", "reversed_range"],
)
def test_builder_refuses_touched_receivers_would_drop(summary: Touched) -> None:
    builder = DatagramBuilder(1, SESSION)
    builder.start(3)
    assert builder.add_delta(1, 1, 0, b"")
    assert builder.add_delta(1, 2, 0, b"")  # the next DELTA would be 5
    before = bytes(builder.finish(0))
    with pytest.raises(EncodeError, match="invalid touched summary"):
        builder.add_touched(summary)
    assert (builder.count, bytes(builder.finish(0))) == (2, before)


def test_builder_touched_end_seq_counts_preceding_deltas_only() -> None:
    builder = DatagramBuilder(1, SESSION)
    builder.start(10)
    with pytest.raises(EncodeError, match="ahead of the stream"):
        builder.add_touched(Touched(10, 11, ((1, 1),)))
    assert builder.add_delta(1, 1, 0, b"")
    assert builder.add_touched(Touched(10, 11, ((1, 1),)))


@pytest.mark.parametrize("summary", [Touched(-1, 1, ()), Touched(0, 1, ((2**32, 1),)),
                                     Touched(0, 1, ((1, 2**64),))],
                         ids=["negative_first_seq", "leaf_id_2_32", "leaf_seq_2_64"])
def test_builder_and_construct_reject_unrepresentable_touched(summary: Touched) -> None:
    builder = DatagramBuilder(1, SESSION)
    builder.start(1)
    with pytest.raises(EncodeError):
        builder.add_touched(summary)
    assert builder.count == 0
    with pytest.raises(EncodeError):
        codec.encode_with_construct(Decoded(1, 0, 1, SESSION, 1, 0, [summary]))


def test_builder_touched_fits_exactly_and_reports_full() -> None:
    per_datagram = ((1400 - codec.HEADER_SIZE - codec.TOUCHED_OVERHEAD)
                    // codec.TOUCHED_ENTRY_SIZE)
    assert per_datagram == 112  # the publisher's flush threshold for 1400-byte datagrams
    entries = tuple((i, 1) for i in range(per_datagram))
    builder = DatagramBuilder(1, SESSION, 1400)
    builder.start(1)
    assert builder.add_touched(Touched(1, 1, entries))
    assert builder.room == 1400 - codec.HEADER_SIZE - codec.TOUCHED_OVERHEAD - 112 * 12 == 0
    assert not builder.add_touched(Touched(1, 1, ()))
    assert not builder.add_end_of_session()
    raw = bytes(builder.finish(0))
    assert len(raw) == 1400
    assert codec.decode_datagram(raw).messages[0] == Touched(1, 1, entries)
    # One more entry cannot fit even an empty datagram.
    builder.start(1)
    with pytest.raises(EncodeError, match="cannot fit"):
        builder.add_touched(Touched(1, 1, tuple((i, 1) for i in range(per_datagram + 1))))
    # Behind a delta, the full summary no longer fits: False, nothing written.
    assert builder.add_delta(1, 1, 0, b"")
    before = bytes(builder.finish(0))
    assert not builder.add_touched(Touched(1, 2, entries))
    assert (builder.count, bytes(builder.finish(0))) == (1, before)
