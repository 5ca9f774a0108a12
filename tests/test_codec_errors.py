"""Malformed datagrams: one named test per case, and fuzzing that only DecodeError escapes.

The contract (as in h11): decoding remote bytes either returns a value or raises
DecodeError, nothing else, and the fast and construct paths agree on accept/reject and on
the value when they accept.
"""

from __future__ import annotations

import json
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
from grapevine._errors import DecodeError  # noqa: E402
from grapevine.codec import Decoded, Delta, Heartbeat, Snapshot, Touched  # noqa: E402

H = codec.HEADER_SIZE
SESSION = 0xABCD
VECTORS = {p.stem: bytes.fromhex(json.loads(p.read_text())["hex"])
           for p in sorted((ROOT / "protocol" / "vectors").glob("*.json"))}


normalise = codec.comparable


def header(count: int, *, sequence: int = 100, flags: int = 0, version: int = 1,
           session_id: int = SESSION, magic: bytes = wire.MAGIC) -> bytes:
    return struct.pack("<4sBBHIQQQ", magic, version, flags, count, 1, session_id, sequence, 0)


def message(kind: int, body: bytes, *, flags: int = 0, length: int | None = None) -> bytes:
    return struct.pack("<BBH", kind, flags, len(body) if length is None else length) + body


def delta_body(leaf_id: int = 1, leaf_seq: int = 1, data: bytes = b"") -> bytes:
    return struct.pack("<IQ", leaf_id, leaf_seq) + data


def snapshot_body(*, leaf_id: int = 10, range_start: int = 5, cycle_id: int = 1,
                  position: int = 0, count: int = 2, leaf_seq: int = 1, as_of_seq: int = 100,
                  total_length: int | None = None, fragment_offset: int = 0,
                  data: bytes = b"abc") -> bytes:
    total = len(data) if total_length is None else total_length
    return struct.pack("<IIIIIQQII", leaf_id, range_start, cycle_id, position, count, leaf_seq,
                       as_of_seq, total, fragment_offset) + data


def touched_body(first_seq: int = 90, end_seq: int = 100,
                 entries: tuple[tuple[int, int], ...] = ((3, 1), (8, 2))) -> bytes:
    return struct.pack("<QQ", first_seq, end_seq) + b"".join(
        struct.pack("<IQ", leaf_id, leaf_seq) for leaf_id, leaf_seq in entries)


def outcome(decoder: Any, data: bytes) -> Any:
    """('ok', value) or ('error',): any other exception propagates and fails the test."""
    try:
        return ("ok", normalise(decoder(data)))
    except DecodeError:
        return ("error",)


def check_agreement(data: bytes) -> None:
    assert outcome(codec.decode_datagram, data) == outcome(codec.decode_with_construct, data)


def reject(data: bytes, field: str, offset: int, reason: str = "", *,
           same_on_construct: bool = False) -> DecodeError:
    with pytest.raises(DecodeError) as fast:
        codec.decode_datagram(data)
    assert (fast.value.field, fast.value.offset) == (field, offset), fast.value
    assert reason in fast.value.reason
    with pytest.raises(DecodeError) as slow:
        codec.decode_with_construct(data)
    if same_on_construct:  # a semantic check both paths make after parsing
        assert (slow.value.field, slow.value.offset) == (field, offset), slow.value
        assert reason in slow.value.reason
    return fast.value


def accept(data: bytes) -> Decoded:
    fast = codec.decode_datagram(data)
    assert normalise(codec.decode_with_construct(data)) == normalise(fast)
    return fast


# --------------------------------------------------------------------------- header


def test_empty_datagram() -> None:
    reject(b"", "header", 0, "shorter than")


@pytest.mark.parametrize("size", [1, 4, 6, 12, 20, 28, H - 1])
def test_truncated_header(size: int) -> None:
    reject(header(0)[:size], "header", size, "shorter than")


def test_bad_magic() -> None:
    reject(header(0, magic=b"LC02"), "magic", 0, "bad magic")


@pytest.mark.parametrize("version", [0, 2, 255])
def test_unsupported_version(version: int) -> None:
    reject(header(0, version=version), "version", 4, f"unsupported version {version}")


def test_session_id_zero() -> None:
    reject(header(0, session_id=0), "session_id", 12, "must not be 0")


def test_auth_flag_without_room_for_trailer() -> None:
    reject(header(0, flags=1) + bytes(19), "auth", H, "auth trailer")


def test_auth_trailer_overlapping_messages() -> None:
    data = header(1, flags=1) + message(1, delta_body(data=b"abcdefgh")) + bytes(10)
    reject(data, "messages[0].length", H + 2, "overruns")


def test_zero_messages_is_valid() -> None:
    assert accept(header(0)).messages == []


# --------------------------------------------------------------------------- framing


def test_message_count_too_high() -> None:
    data = header(2) + message(1, delta_body())
    reject(data, "messages[1]", len(data), "message_count says 2")


def test_message_count_too_low_leaves_trailing_bytes() -> None:
    data = header(1) + message(1, delta_body()) + message(3, b"\x01\x00\x00\x00")
    reject(data, "messages", H + 16, "8 trailing bytes")


def test_trailing_bytes() -> None:
    data = header(1) + message(3, b"\x01\x00\x00\x00") + b"\x00"
    reject(data, "messages", H + 8, "1 trailing bytes")


def test_partial_message_header() -> None:
    reject(header(1) + b"\x01\x00\x0c", "messages[0]", H, "missing or truncated")


def test_length_overruns_datagram() -> None:
    reject(header(1) + message(1, delta_body(), length=13), "messages[0].length", H + 2,
           "overruns")


def test_unknown_kind_length_overruns_datagram() -> None:
    reject(header(1) + message(99, b"abc", length=4), "messages[0].length", H + 2, "overruns")


def test_error_names_the_failing_message() -> None:
    data = header(3) + message(3, b"\x01\x00\x00\x00") + message(4, b"") + message(1, b"abc")
    reject(data, "messages[2].length", H + 8 + 4 + 2, "below the minimum 12")


def test_delta_shorter_than_12_bytes() -> None:
    reject(header(1) + message(1, delta_body()[:11]), "messages[0].length", H + 2,
           "below the minimum 12")


def test_snapshot_shorter_than_44_bytes() -> None:
    reject(header(1) + message(2, snapshot_body(data=b"")[:43]), "messages[0].length", H + 2,
           "below the minimum 44")


def test_heartbeat_shorter_than_4_bytes() -> None:
    reject(header(1) + message(3, b"\x01\x00\x00"), "messages[0].length", H + 2,
           "below the minimum 4")


# --------------------------------------------------------------------------- DELTA rules


def test_delta_create_and_delete_together() -> None:
    reject(header(1) + message(1, delta_body(), flags=3), "messages[0].flags", H + 1,
           "exclusive")


def test_delta_delete_with_payload() -> None:
    reject(header(1) + message(1, delta_body(data=b"x"), flags=2), "messages[0].payload",
           H + 16, "empty payload")


def test_delta_leaf_seq_zero() -> None:
    reject(header(1) + message(1, delta_body(leaf_seq=0)), "messages[0].leaf_seq", H + 8,
           "at least 1")


def test_delta_reserved_flags_are_ignored() -> None:
    decoded = accept(header(1) + message(1, delta_body(data=b"x"), flags=0xF4))
    assert decoded.messages[0].flags == 0xF4  # type: ignore[union-attr]


# --------------------------------------------------------------------------- SNAPSHOT rules

S = H + 4  # snapshot body offset when it is the first message


def test_snapshot_range_start_above_leaf_id() -> None:
    reject(header(1) + message(2, snapshot_body(leaf_id=4, range_start=5)),
           "messages[0].range_start", S + 4, "above leaf_id")


def test_snapshot_cycle_position_equal_to_count() -> None:
    reject(header(1) + message(2, snapshot_body(position=2, count=2)),
           "messages[0].cycle_position", S + 12, "not below cycle_count")


def test_snapshot_cycle_count_zero_without_marker_flags() -> None:
    body = snapshot_body(leaf_id=0, range_start=0, position=0, count=0, total_length=0,
                         data=b"")
    reject(header(1) + message(2, body, flags=1), "messages[0].cycle_count", S + 16,
           "DELETED|LAST")


def test_snapshot_cycle_count_zero_with_position() -> None:
    body = snapshot_body(leaf_id=0, range_start=0, position=1, count=0, total_length=0,
                         data=b"")
    reject(header(1) + message(2, body, flags=3), "messages[0].cycle_count", S + 16)


def marker_body(**changes: Any) -> bytes:
    """The empty-cycle marker's body (every field fixed but cycle_id and as_of_seq)."""
    fields: dict[str, Any] = {"leaf_id": 0, "range_start": 0, "position": 0, "count": 0,
                              "leaf_seq": 0, "total_length": 0, "data": b""}
    fields.update(changes)
    return snapshot_body(**fields)


def test_snapshot_empty_cycle_marker_is_valid() -> None:
    snap = accept(header(1) + message(2, marker_body(), flags=3)).messages[0]
    assert isinstance(snap, Snapshot)
    assert (snap.cycle_count, snap.flags) == (0, 3)
    assert accept(header(1) + message(2, marker_body(), flags=0xFF)).messages[0].flags == 0xFF  # type: ignore[union-attr]


@pytest.mark.parametrize(("changes", "field", "at"), [
    ({"leaf_id": 7}, "leaf_id", S),
    ({"leaf_id": 7, "range_start": 7}, "leaf_id", S),
    ({"range_start": 1}, "range_start", S + 4),
    ({"leaf_seq": 1}, "leaf_seq", S + 20),
    ({"leaf_seq": 2**64 - 1}, "leaf_seq", S + 20),
    ({"total_length": 4}, "total_length", S + 36),
    ({"total_length": 4, "data": b"abcd"}, "total_length", S + 36),
    ({"fragment_offset": 1}, "fragment_offset", S + 40),
    ({"data": b"x"}, "fragment_offset", S + 40),
], ids=["leaf_id", "leaf_id_and_range", "range_start", "leaf_seq", "leaf_seq_max",
        "total_length", "total_length_and_payload", "fragment_offset", "payload"])
def test_empty_cycle_marker_fields_are_fixed(changes: dict[str, Any], field: str,
                                             at: int) -> None:
    reject(header(1) + message(2, marker_body(**changes), flags=3), f"messages[0].{field}", at,
           same_on_construct=True)


def test_snapshot_deleted_only_in_the_empty_cycle_marker() -> None:
    # A DELETED tombstone for a real leaf: the reference publisher never sends one.
    tombstone = snapshot_body(position=1, count=2, total_length=0, data=b"")
    for flags in (1, 3):
        reject(header(1) + message(2, tombstone, flags=flags), "messages[0].flags", H + 1,
               "only valid in the empty-cycle marker", same_on_construct=True)


def test_snapshot_last_requires_the_last_cycle_position() -> None:
    # A mid-cycle snapshot with LAST would assert no leaf above it exists: a receiver must
    # drop it rather than wipe those leaves.
    reject(header(1) + message(2, snapshot_body(position=0, count=2), flags=2),
           "messages[0].flags", H + 1, "LAST is set but cycle_position 0",
           same_on_construct=True)
    reject(header(1) + message(2, snapshot_body(position=0, count=2**32 - 1), flags=0xFE),
           "messages[0].flags", H + 1, "cycle_count - 1", same_on_construct=True)
    last = accept(header(1) + message(2, snapshot_body(position=1, count=2), flags=2))
    assert last.messages[0].flags == 2  # type: ignore[union-attr]
    # The converse is not checked: the last position without LAST asserts less, safely.
    assert accept(header(1) + message(2, snapshot_body(position=1, count=2))).messages


def test_snapshot_as_of_seq_ahead_of_header_sequence() -> None:
    reject(header(1, sequence=100) + message(2, snapshot_body(as_of_seq=101)),
           "messages[0].as_of_seq", S + 28, "ahead of the stream")


def test_snapshot_as_of_seq_counts_preceding_deltas() -> None:
    deltas = message(1, delta_body()) + message(1, delta_body(leaf_seq=2))
    ok = header(3, sequence=100) + deltas + message(2, snapshot_body(as_of_seq=102))
    assert accept(ok).messages[2].as_of_seq == 102  # type: ignore[union-attr]
    bad = header(3, sequence=100) + deltas + message(2, snapshot_body(as_of_seq=103))
    reject(bad, "messages[2].as_of_seq", H + 32 + 4 + 28, "ahead of the stream")


def test_snapshot_as_of_seq_does_not_count_following_deltas() -> None:
    data = header(2, sequence=100) + message(2, snapshot_body(as_of_seq=101)) + message(
        1, delta_body())
    reject(data, "messages[0].as_of_seq", S + 28, "ahead of the stream")


def test_snapshot_fragment_overruns_total_length() -> None:
    reject(header(1) + message(2, snapshot_body(total_length=5, fragment_offset=3)),
           "messages[0].fragment_offset", S + 40, "overruns total_length")


def test_snapshot_fragment_offset_near_u32_max() -> None:
    body = snapshot_body(total_length=2**32 - 1, fragment_offset=2**32 - 2)
    reject(header(1) + message(2, body), "messages[0].fragment_offset", S + 40)


def test_snapshot_deleted_with_total_length() -> None:
    reject(header(1) + message(2, marker_body(total_length=3), flags=3),
           "messages[0].total_length", S + 36, "total_length 0", same_on_construct=True)


# --------------------------------------------------------------------------- sequence overflow

U64 = 2**64 - 1


def test_last_delta_at_2_64_minus_1_is_valid() -> None:
    decoded = accept(header(2, sequence=U64) + message(1, delta_body()) + message(3, bytes(4)))
    assert [m.seq for m in decoded.messages if isinstance(m, Delta)] == [U64]


@pytest.mark.parametrize(("sequence", "deltas"), [(U64, 2), (U64 - 1, 3), (U64 - 4, 40)])
def test_delta_sequence_past_2_64_minus_1(sequence: int, deltas: int) -> None:
    data = header(deltas, sequence=sequence) + message(1, delta_body()) * deltas
    reject(data, "sequence", 20, "beyond 2^64 - 1", same_on_construct=True)


def test_delta_sequence_overflow_is_checked_after_the_messages() -> None:
    # Rule 8 comes after the per-message rules and the trailing-bytes rule.
    bad_delta = message(1, delta_body(leaf_seq=0))
    reject(header(3, sequence=U64) + message(1, delta_body()) * 2 + bad_delta,
           "messages[2].leaf_seq", H + 32 + 8)
    reject(header(2, sequence=U64) + message(1, delta_body()) * 2 + b"\x00",
           "messages", H + 32, "1 trailing bytes")


@pytest.mark.parametrize("kind", ["snapshot", "touched"])
def test_bound_past_2_64_minus_1(kind: str) -> None:
    body = (snapshot_body(as_of_seq=U64) if kind == "snapshot"
            else touched_body(first_seq=U64, end_seq=U64, entries=()))
    follower = message(2 if kind == "snapshot" else 5, body)
    # Before the DELTA, the bound is 2^64 - 1: valid.
    accept(header(2, sequence=U64) + follower + message(1, delta_body()))
    # Behind DELTA 2^64 - 1 the bound would be 2^64: invalid whatever the message says.
    reject(header(2, sequence=U64) + message(1, delta_body()) + follower, "sequence", 20,
           f"{'as_of_seq' if kind == 'snapshot' else 'end_seq'} bound 18446744073709551616",
           same_on_construct=True)


# --------------------------------------------------------------------------- datagram size

M = wire.MAX_DATAGRAM_SIZE


def test_datagram_of_max_size_is_valid() -> None:
    data = header(1) + message(1, delta_body(data=bytes(M - H - 16)))
    assert len(data) == M
    accept(data)


@pytest.mark.parametrize("size", [M + 1, M + 20, 65_535, 100_000])
def test_datagram_larger_than_max_size(size: int) -> None:
    # Rule 1 comes first: whatever the bytes hold (here a well-formed one-DELTA datagram
    # with a too-long payload, or junk), a datagram over MAX_DATAGRAM_SIZE is dropped.
    well_formed = header(1) + message(1, delta_body(data=bytes(size - H - 16)),
                                      length=min(size - H - 4, 0xFFFF))
    for data in (well_formed, b"junk" * (size // 4) + b"j" * (size % 4)):
        assert len(data) == size
        reject(data, "datagram", M, f"datagram of {size} bytes exceeds MAX_DATAGRAM_SIZE",
               same_on_construct=True)


# --------------------------------------------------------------------------- TOUCHED rules

T = H + 4  # TOUCHED body offset when it is the first message


def test_touched_shorter_than_16_bytes() -> None:
    # The construct path fails inside its parse (a "(parsing) ..." field), as for a short DELTA.
    error = reject(header(1) + message(5, touched_body(entries=())[:15]),
                   "messages[0].length", H + 2, "16 plus a multiple of 12")
    assert "length 15" in error.reason


def test_touched_entries_not_a_multiple_of_12() -> None:
    reject(header(1) + message(5, touched_body(entries=()) + bytes(11)),
           "messages[0].length", H + 2, "16 plus a multiple of 12", same_on_construct=True)


@pytest.mark.parametrize("extra", [1, 12 + 5, 24 + 11])
def test_touched_partial_entry(extra: int) -> None:
    reject(header(1) + message(5, touched_body(entries=()) + bytes(extra)),
           "messages[0].length", H + 2, "multiple of 12", same_on_construct=True)


def test_touched_descending_leaf_ids() -> None:
    reject(header(1) + message(5, touched_body(entries=((8, 1), (3, 1)))),
           "messages[0].entries", T + 16 + 12, "ascending", same_on_construct=True)


def test_touched_duplicate_leaf_id() -> None:
    reject(header(1) + message(5, touched_body(entries=((3, 1), (3, 2)))),
           "messages[0].entries", T + 16 + 12, "ascending", same_on_construct=True)


def test_touched_leaf_seq_zero() -> None:
    reject(header(1) + message(5, touched_body(entries=((3, 1), (8, 0), (9, 1)))),
           "messages[0].entries", T + 16 + 12, "leaf_seq 0", same_on_construct=True)


def test_touched_end_before_first() -> None:
    reject(header(1) + message(5, touched_body(first_seq=50, end_seq=49)),
           "messages[0].end_seq", T + 8, "reversed", same_on_construct=True)


def test_touched_end_ahead_of_the_stream() -> None:
    reject(header(1, sequence=100) + message(5, touched_body(end_seq=101)),
           "messages[0].end_seq", T + 8, "ahead of the stream (100)", same_on_construct=True)


def test_touched_end_seq_counts_preceding_deltas() -> None:
    deltas = message(1, delta_body()) + message(1, delta_body(leaf_seq=2))
    ok = header(3, sequence=100) + deltas + message(5, touched_body(end_seq=102))
    assert accept(ok).messages[2] == Touched(90, 102, ((3, 1), (8, 2)))
    bad = header(3, sequence=100) + deltas + message(5, touched_body(end_seq=103))
    reject(bad, "messages[2].end_seq", H + 32 + 4 + 8, "ahead of the stream (102)",
           same_on_construct=True)


def test_touched_end_seq_does_not_count_following_deltas() -> None:
    data = header(2, sequence=100) + message(5, touched_body(end_seq=101)) + message(
        1, delta_body())
    reject(data, "messages[0].end_seq", T + 8, "ahead of the stream", same_on_construct=True)


def test_touched_edge_values_are_valid() -> None:
    empty = accept(header(1, sequence=7) + message(5, touched_body(7, 7, ())))
    assert empty.messages == [Touched(7, 7, ())]
    top = accept(header(1, sequence=2**64 - 1) + message(
        5, touched_body(0, 2**64 - 1, ((0, 1), (2**32 - 1, 2**64 - 1)))))
    assert top.messages == [Touched(0, 2**64 - 1, ((0, 1), (2**32 - 1, 2**64 - 1)))]


def test_touched_reserved_flags_are_ignored() -> None:
    assert accept(header(1) + message(5, touched_body(), flags=0xFF)).messages == [
        Touched(90, 100, ((3, 1), (8, 2)))]


def test_touched_consumes_no_sequence() -> None:
    data = (header(3, sequence=7) + message(1, delta_body()) + message(5, touched_body(7, 8))
            + message(1, delta_body(leaf_seq=2)))
    assert [m.seq for m in accept(data).messages if isinstance(m, Delta)] == [7, 8]


# --------------------------------------------------------------------------- forward compatibility


@pytest.mark.parametrize("kind", [0, 6, 77, 255])
def test_unknown_kinds_are_0_and_6_to_255(kind: int) -> None:
    decoded = accept(header(1) + message(kind, b"future"))
    assert decoded.messages[0].kind == kind  # type: ignore[union-attr]


def test_unknown_kind_is_skipped_and_consumes_no_sequence() -> None:
    data = (header(3, sequence=7) + message(1, delta_body()) + message(77, b"future")
            + message(1, delta_body(leaf_seq=2)))
    decoded = accept(data)
    assert [m.seq for m in decoded.messages if isinstance(m, Delta)] == [7, 8]
    assert bytes(decoded.messages[1].body) == b"future"  # type: ignore[union-attr]


def test_heartbeat_extra_body_is_ignored() -> None:
    decoded = accept(header(1) + message(3, b"\xe8\x03\x00\x00extra"))
    assert decoded.messages == [Heartbeat(1000)]


def test_end_of_session_extra_body_is_ignored() -> None:
    assert len(accept(header(1) + message(4, b"\x01\x02")).messages) == 1


def test_reserved_header_flags_are_ignored() -> None:
    assert accept(header(0, flags=0xFE)).flags == 0xFE


# --------------------------------------------------------------------------- fuzzing

FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SMALL_VECTORS = sorted(v for v in VECTORS.values() if len(v) <= 4000)


@FUZZ
@given(st.binary(max_size=200))
def test_fuzz_random_bytes(data: bytes) -> None:
    check_agreement(data)


@FUZZ
@given(st.integers(0, 12), st.integers(0, 255), st.integers(0, 2**64 - 1),
       st.binary(max_size=200))
def test_fuzz_valid_header_random_body(count: int, flags: int, sequence: int,
                                       body: bytes) -> None:
    check_agreement(header(count, flags=flags, sequence=sequence) + body)


@st.composite
def touched_datagrams(draw: st.DrawFn) -> bytes:
    """Datagrams around a TOUCHED with random (often invalid) numbers and entry bytes."""
    sequence = draw(st.integers(0, 2**64 - 1))
    deltas = draw(st.integers(0, 3))
    first, end = draw(st.integers(0, 2**64 - 1)), draw(
        st.sampled_from([sequence, sequence + deltas, sequence + deltas + 1])
        | st.integers(0, 2**64 - 1))
    end = min(end, 2**64 - 1)
    first = draw(st.sampled_from([first, end, max(end - 1, 0)]))
    entries = b"".join(struct.pack("<IQ", i, s) for i, s in draw(st.lists(
        st.tuples(st.integers(0, 20), st.integers(0, 3)), max_size=5)))
    body = struct.pack("<QQ", first, end) + entries + draw(st.binary(max_size=13))
    body = body[: draw(st.integers(0, len(body)))] if draw(st.booleans()) else body
    messages = [message(1, delta_body(leaf_seq=1 + i)) for i in range(deltas)]
    messages.insert(draw(st.integers(0, deltas)), message(5, body))
    return header(deltas + 1, sequence=sequence) + b"".join(messages)


@FUZZ
@given(touched_datagrams())
def test_fuzz_touched(data: bytes) -> None:
    check_agreement(data)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SMALL_VECTORS)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "insert", "delete", "set"]))
        if op == "insert" or not data:
            data.insert(draw(st.integers(0, len(data))), draw(st.integers(0, 255)))
            continue
        at = draw(st.integers(0, len(data) - 1))
        if op == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "delete":
            del data[at]
        else:
            data[at] = draw(st.integers(0, 255))
    return bytes(data)


@FUZZ
@given(mutated())
def test_fuzz_mutated_vectors(data: bytes) -> None:
    check_agreement(data)


@pytest.mark.parametrize("name", sorted(VECTORS))
def test_every_truncation_of_every_vector(name: str) -> None:
    data = VECTORS[name]
    cuts: range | list[int] = range(len(data))
    if len(data) > wire.MAX_DATAGRAM_SIZE:
        # datagram_too_large: every cut up to the limit is a cut of max_datagram_size but for
        # the length field; a sample of them (and every cut near the limit) is enough.
        cuts = [*range(0, len(data), 997), *range(wire.MAX_DATAGRAM_SIZE - 64, len(data))]
    for cut in cuts:
        check_agreement(data[:cut])
    check_agreement(data)


def test_truncations_of_valid_vectors_are_rejected() -> None:
    """Every proper prefix of a valid vector is invalid (framing is exact)."""
    for data in VECTORS.values():
        if len(data) > 4000:
            continue
        try:
            codec.decode_datagram(data)
        except DecodeError:
            continue
        for cut in range(len(data)):
            with pytest.raises(DecodeError):
                codec.decode_datagram(data[:cut])
