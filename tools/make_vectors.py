#!/usr/bin/env python3
"""Generate the Grapevine v1 test vectors in ``protocol/vectors/`` (one JSON file each).

Valid vectors are built from hand-written values with the construct definitions
(:func:`grapevine.codec.encode_with_construct`) and cross-checked against the fast
:class:`~grapevine.codec.DatagramBuilder` wherever it can express the datagram. Their
``fields`` come from the values the vector was built from, not from a decoder. Invalid
vectors are valid encodings with one thing broken; their ``error`` records what the fast
decoder must report (``field``, ``offset``, ``reason_contains``) and the field the construct
decoder reports (``construct_field``).

Authentication vectors (``auth_*``) also record what a receiver holding the published test
key (SPEC section 9) decides: ``auth`` gives that key (``key_id``, ``key_hex``) and the
``verdict`` of :meth:`grapevine.auth.Verifier.check`; ``auth_replayed`` adds the replay
window and a ``sequence`` of datagrams with each one's verdict and replay outcome. Tags
are computed here with ``hashlib.blake2b`` directly and checked against
:func:`grapevine.auth.sign` and :class:`~grapevine.auth.Verifier` as the vectors are built.

Everything is deterministic (fixed ids, times and payloads): re-running this script
reproduces the files byte for byte (``tests/test_vectors.py`` checks it).

Usage: ``python tools/make_vectors.py [--check]`` from a checkout.
"""

from __future__ import annotations

import hashlib
import struct
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# The shared command line lives beside this script (also when a test loads it by path).
if str(ROOT / "tools") not in sys.path:
    sys.path.insert(0, str(ROOT / "tools"))
from _vector_files import render, write_or_check  # noqa: E402

from grapevine import auth, codec, wire  # noqa: E402
from grapevine._errors import DecodeError, EncodeError  # noqa: E402
from grapevine.codec import (  # noqa: E402
    AuthTag,
    Decoded,
    Delta,
    EndOfSession,
    Heartbeat,
    Snapshot,
    Touched,
    UnknownMessage,
)
from grapevine.wire import DeltaFlag, HeaderFlag, MessageKind, SnapshotFlag  # noqa: E402

VECTOR_DIR = ROOT / "protocol" / "vectors"

STREAM_ID = 7
SESSION_ID = 0x5EED_CAFE_0000_0001
SEND_TIME_NS = 1_767_225_600_000_000_000  # 2026-01-01T00:00:00Z
# The published test key (SPEC section 9 and 14.6): key id 1, the 32 bytes 00 01 02 ... 1f.
AUTH_TEST_KEY_ID = 1
AUTH_TEST_KEY = bytes(range(32))
AUTH_WINDOW_NS = auth.DEFAULT_REPLAY_WINDOW_NS

U32 = 0xFFFF_FFFF
U64 = 0xFFFF_FFFF_FFFF_FFFF

HEADER_FIELDS = [sub.name for sub in wire.Header.subcons]


def payload(seed: int, size: int) -> bytes:
    """Deterministic payload bytes."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(f"{seed}:{counter}".encode()).digest()
        counter += 1
    return bytes(out[:size])


def datagram(messages: Sequence[Any], sequence: int, *, flags: int = 0,
             auth: AuthTag | None = None, stream_id: int = STREAM_ID,
             session_id: int = SESSION_ID, version: int = wire.VERSION,
             send_time_ns: int = SEND_TIME_NS) -> Decoded:
    """A Decoded value whose deltas get their implicit stream sequence numbers."""
    numbered: list[codec.Message] = []
    seq = sequence
    for msg in messages:
        if isinstance(msg, Delta):
            msg = msg._replace(seq=seq)
            seq += 1
        numbered.append(msg)
    return Decoded(version, flags, stream_id, session_id, sequence, send_time_ns, numbered,
                   auth)


def delta(leaf_id: int, leaf_seq: int, data: bytes = b"", flags: int = 0) -> Delta:
    return Delta(0, leaf_id, leaf_seq, flags, data)


def snapshot(leaf_id: int, *, range_start: int, cycle_id: int, position: int, count: int,
             leaf_seq: int, as_of_seq: int, data: bytes = b"", total_length: int | None = None,
             fragment_offset: int = 0, flags: int = 0) -> Snapshot:
    total = len(data) if total_length is None else total_length
    return Snapshot(leaf_id, range_start, cycle_id, position, count, leaf_seq, as_of_seq, total,
                    fragment_offset, flags, data)


# --------------------------------------------------------------------------- JSON fields


def message_fields(msg: codec.Message) -> dict[str, Any]:
    """The JSON description of one message (as built, before encoding)."""
    if isinstance(msg, Delta):
        return {
            "kind": int(MessageKind.DELTA), "kind_name": "DELTA", "flags": msg.flags,
            "length": 12 + len(msg.payload), "seq": msg.seq, "leaf_id": msg.leaf_id,
            "leaf_seq": msg.leaf_seq, "payload": bytes(msg.payload).hex(),
        }
    if isinstance(msg, Snapshot):
        out: dict[str, Any] = {
            "kind": int(MessageKind.SNAPSHOT), "kind_name": "SNAPSHOT", "flags": msg.flags,
            "length": 44 + len(msg.payload),
        }
        out.update(zip(Snapshot._fields[:9], msg[:9], strict=True))
        out["payload"] = bytes(msg.payload).hex()
        return out
    if isinstance(msg, Heartbeat):
        return {"kind": int(MessageKind.HEARTBEAT), "kind_name": "HEARTBEAT", "flags": 0,
                "length": 4, "interval_ms": msg.interval_ms}
    if isinstance(msg, EndOfSession):
        return {"kind": int(MessageKind.END_OF_SESSION), "kind_name": "END_OF_SESSION",
                "flags": 0, "length": 0}
    if isinstance(msg, Touched):
        return {"kind": int(MessageKind.TOUCHED), "kind_name": "TOUCHED", "flags": 0,
                "length": 16 + 12 * len(msg.entries), "first_seq": msg.first_seq,
                "end_seq": msg.end_seq,
                "entries": [{"leaf_id": leaf_id, "leaf_seq": leaf_seq}
                            for leaf_id, leaf_seq in msg.entries]}
    return {"kind": msg.kind, "kind_name": "UNKNOWN", "flags": msg.flags,
            "length": len(msg.body), "body": bytes(msg.body).hex()}


def datagram_fields(value: Decoded) -> dict[str, Any]:
    header = {
        "magic": wire.MAGIC.decode("ascii"), "version": value.version, "flags": value.flags,
        "message_count": len(value.messages), "stream_id": value.stream_id,
        "session_id": value.session_id, "sequence": value.sequence,
        "send_time_ns": value.send_time_ns,
    }
    assert list(header) == HEADER_FIELDS
    auth = ({"key_id": value.auth.key_id, "tag": value.auth.tag.hex()}
            if value.auth is not None else None)
    return {"header": header, "messages": [message_fields(m) for m in value.messages],
            "auth": auth}


# --------------------------------------------------------------------------- fast path


def build_with_builder(value: Decoded) -> bytes | None:
    """Encode ``value`` with DatagramBuilder, or None if the builder cannot express it."""
    try:
        return codec.encode_datagram(value)
    except EncodeError:
        return None


# --------------------------------------------------------------------------- vectors


def _same(a: Decoded, b: Decoded) -> bool:
    same: bool = normalise(a) == normalise(b)
    return same


normalise = codec.comparable


class Vectors:
    """Collects vectors in order and checks each one as it is added."""

    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []

    def valid(self, name: str, description: str, value: Decoded, *,
              raw: bytes | None = None, fields: dict[str, Any] | None = None,
              reencodes: bool = True, auth_check: dict[str, Any] | None = None) -> bytes:
        data = codec.encode_with_construct(value) if raw is None else raw
        fast = build_with_builder(value)
        if raw is None and fast is not None and fast != data:
            raise AssertionError(f"{name}: DatagramBuilder and construct disagree")
        for decoder in (codec.decode_datagram, codec.decode_with_construct):
            got = decoder(data)
            if not _same(got, value):
                raise AssertionError(f"{name}: {decoder.__name__} gives {got}")
        item: dict[str, Any] = {"name": name, "description": description, "valid": True,
                                "size": len(data), "hex": data.hex()}
        if not reencodes:
            item["reencodes"] = False
        item["fields"] = datagram_fields(value) if fields is None else fields
        if auth_check is not None:
            _check_auth(name, data, auth_check)
            item["auth"] = auth_check
        self._add(item)
        return data

    def invalid(self, name: str, description: str, data: bytes, *, field: str, offset: int,
                reason: str) -> None:
        try:
            codec.decode_datagram(data)
        except DecodeError as exc:
            if (exc.field, exc.offset) != (field, offset) or reason not in exc.reason:
                raise AssertionError(f"{name}: fast path says {exc.field!r}@{exc.offset}: "
                                     f"{exc.reason}") from None
        else:
            raise AssertionError(f"{name}: fast path accepted it")
        try:
            codec.decode_with_construct(data)
        except DecodeError as exc:
            construct_field = exc.field
        else:
            raise AssertionError(f"{name}: construct path accepted it")
        self._add({"name": name, "description": description, "valid": False,
                   "size": len(data), "hex": data.hex(),
                   "error": {"field": field, "offset": offset, "reason_contains": reason,
                             "construct_field": construct_field}})

    def _add(self, item: dict[str, Any]) -> None:
        if any(i["name"] == item["name"] for i in self.items):
            raise AssertionError(f"duplicate vector {item['name']}")
        self.items.append(item)


# --------------------------------------------------------------------------- authentication


def _blake2b_tag(covered: bytes, secret: bytes) -> bytes:
    """SPEC section 9's tag, computed here without grapevine.auth."""
    return hashlib.blake2b(covered, key=secret, digest_size=auth.TAG_SIZE).digest()


def signed(value: Decoded, key_id: int = AUTH_TEST_KEY_ID,
           secret: bytes = AUTH_TEST_KEY) -> Decoded:
    """``value`` (without AUTH) signed: flag AUTH set, trailer ``key_id`` and the tag."""
    assert value.auth is None
    assert not value.flags & HeaderFlag.AUTH
    with_flag = value._replace(flags=value.flags | int(HeaderFlag.AUTH))
    covered = codec.encode_with_construct(
        with_flag._replace(auth=codec.AuthTag(key_id, bytes(auth.TAG_SIZE))))[: -auth.TAG_SIZE]
    tag = _blake2b_tag(covered, secret)
    reference = auth.sign(codec.encode_with_construct(value),
                          auth.KeyRing([auth.Key(key_id, secret)]))
    if reference != covered + tag:
        raise AssertionError("grapevine.auth.sign disagrees with SPEC section 9's tag")
    return with_flag._replace(auth=codec.AuthTag(key_id, tag))


def receiver_key(verdict: str, **extra: Any) -> dict[str, Any]:
    """The ``auth`` entry of a vector: the receiver holds the test key only."""
    return {"key_id": AUTH_TEST_KEY_ID, "key_hex": AUTH_TEST_KEY.hex(), "verdict": verdict,
            **extra}


def _check_auth(name: str, data: bytes, check: dict[str, Any]) -> None:
    """The verdicts a vector records are grapevine.auth's."""
    ring = auth.KeyRing([auth.Key(check["key_id"], bytes.fromhex(check["key_hex"]))])
    verifier = auth.Verifier(ring)
    got = verifier.check(data)
    if got is not auth.Verdict[check["verdict"]]:
        raise AssertionError(f"{name}: Verifier says {got.name}, not {check['verdict']}")
    if "sequence" not in check:
        return
    guard = auth.ReplayGuard(check["window_ns"])
    for index, step in enumerate(check["sequence"]):
        raw = bytes.fromhex(step["hex"])
        verdict = verifier.check(raw)
        if verdict is not auth.Verdict[step["verdict"]]:
            raise AssertionError(f"{name}[{index}]: Verifier says {verdict.name}")
        decoded = codec.decode_datagram(raw)
        assert decoded.auth is not None
        before = (guard.replayed_duplicate, guard.replayed_old)
        accepted = guard.accept(decoded.session_id, decoded.send_time_ns, decoded.auth.tag)
        outcome = ("ACCEPTED" if accepted else
                   "DUPLICATE" if guard.replayed_duplicate > before[0] else "TOO_OLD")
        if outcome != step["replay"]:
            raise AssertionError(f"{name}[{index}]: ReplayGuard says {outcome}, not "
                                 f"{step['replay']}")


def _patch(data: bytes, offset: int, fmt: str, *values: int) -> bytes:
    out = bytearray(data)
    struct.pack_into(fmt, out, offset, *values)
    return bytes(out)


def _raw_message(kind: int, flags: int, body: bytes, length: int | None = None) -> bytes:
    return struct.pack("<BBH", kind, flags, len(body) if length is None else length) + body


def _with_messages(header_source: bytes, count: int, *messages: bytes) -> bytes:
    """A datagram with the header of ``header_source``, message_count ``count``."""
    return _patch(header_source[: codec.HEADER_SIZE], 6, "<H", count) + b"".join(messages)


def build() -> list[dict[str, Any]]:
    """Every vector, in a fixed order."""
    v = Vectors()
    create, delete = int(DeltaFlag.CREATE), int(DeltaFlag.DELETE)
    deleted, last = int(SnapshotFlag.DELETED), int(SnapshotFlag.LAST)

    # ---------------------------------------------------------------- valid, one kind each
    one_delta = v.valid(
        "delta", "One DELTA: leaf 42 changes from leaf_seq 2 to 3; it is stream sequence 1000.",
        datagram([delta(42, 3, payload(1, 8))], 1000))
    v.valid("delta_create", "A DELTA with CREATE: leaf 43 starts existing (leaf_seq 1); the "
            "payload is applied to an empty leaf.",
            datagram([delta(43, 1, payload(2, 6), create)], 1001))
    v.valid("delta_delete", "A DELTA with DELETE: leaf 42 stops existing; empty payload.",
            datagram([delta(42, 4, b"", delete)], 1002))
    one_snapshot = v.valid(
        "snapshot", "One SNAPSHOT of leaf 42 (position 1 of 3 in cycle 5); asserts no leaf "
        "exists with 11 <= id < 42; as_of_seq is the header sequence (no deltas in the "
        "datagram).",
        datagram([snapshot(42, range_start=11, cycle_id=5, position=1, count=3, leaf_seq=3,
                           as_of_seq=1003, data=payload(3, 10))], 1003))
    big = payload(4, 3000)
    room = wire.DEFAULT_DATAGRAM_SIZE - codec.HEADER_SIZE - codec.SNAPSHOT_OVERHEAD
    starts = list(range(0, len(big), room))
    for index, start in enumerate(starts):
        piece = big[start : start + room]
        v.valid(
            f"snapshot_fragment_{index + 1}_of_{len(starts)}",
            f"Fragment {index + 1} of {len(starts)} of a 3000-byte leaf encoding (leaf 7, "
            f"position 2 of 3, LAST), one fragment per 1400-byte datagram; fragment_offset "
            f"{start}, {len(piece)} bytes.",
            datagram([snapshot(7, range_start=5, cycle_id=9, position=2, count=3, leaf_seq=12,
                               as_of_seq=2000, data=piece, total_length=len(big),
                               fragment_offset=start, flags=last)], 2000 + index))
    v.valid("snapshot_empty_cycle",
            "The empty-cycle marker: no leaf exists. leaf_id 0, range_start 0, cycle_count 0, "
            "cycle_position 0, flags DELETED|LAST, total_length 0.",
            datagram([snapshot(0, range_start=0, cycle_id=17, position=0, count=0,
                               leaf_seq=0, as_of_seq=1, flags=deleted | last)], 1))
    v.valid("heartbeat", "A HEARTBEAT (interval 1000 ms); the header sequence is the next "
            "sequence number the publisher will assign.",
            datagram([Heartbeat(1000)], 1004))
    v.valid("end_of_session", "END_OF_SESSION; the header sequence is one past the last delta.",
            datagram([EndOfSession()], 1005))

    # ---------------------------------------------------------------- batches
    batch = [delta(100 + i, 1 + i % 5, payload(100 + i, 18)) for i in range(40)]
    v.valid("batch_deltas", "40 DELTAs with 18-byte payloads in one 1396-byte datagram; "
            "they are stream sequences 5000..5039.", datagram(batch, 5000))
    v.valid("mixed_batch", "Three DELTAs (sequences 6000..6002), a SNAPSHOT taken after them "
            "(as_of_seq 6003) and a HEARTBEAT.",
            datagram([delta(1, 8, payload(11, 4)), delta(2, 1, payload(12, 4), create),
                      delta(1, 9, payload(13, 4)),
                      snapshot(3, range_start=3, cycle_id=2, position=2, count=4, leaf_seq=6,
                               as_of_seq=6003, data=payload(14, 5)),
                      Heartbeat(250)], 6000))
    v.valid("empty_payload", "A DELTA whose payload is empty (length 12).",
            datagram([delta(9, 2)], 7000))

    # ---------------------------------------------------------------- limits
    fill = wire.DEFAULT_DATAGRAM_SIZE - codec.HEADER_SIZE - codec.DELTA_OVERHEAD
    v.valid("max_default_size", f"A datagram of exactly {wire.DEFAULT_DATAGRAM_SIZE} bytes "
            f"(the default sender limit): one DELTA with a {fill}-byte payload.",
            datagram([delta(1, 1, payload(20, fill))], 8000))
    v.valid("max_field_values", "Every integer field at its largest legal value: u32/u64 "
            "maxima (the snapshot comes first so as_of_seq may equal sequence).",
            datagram([snapshot(U32, range_start=U32, cycle_id=U32, position=U32 - 1,
                               count=U32, leaf_seq=U64, as_of_seq=U64, data=b"\xff",
                               total_length=U32, fragment_offset=U32 - 1, flags=last),
                      delta(U32, U64, b"\xff"), Heartbeat(U32)],
                     U64, stream_id=U32, session_id=U64, send_time_ns=U64))
    fill = wire.MAX_DATAGRAM_SIZE - codec.HEADER_SIZE - codec.DELTA_OVERHEAD
    largest = v.valid("max_datagram_size", f"The largest datagram a receiver must accept: "
                      f"{wire.MAX_DATAGRAM_SIZE} bytes, one DELTA with a {fill}-byte payload.",
                      datagram([delta(2, 1, payload(21, fill))], 8001))

    # ---------------------------------------------------------------- forward compatibility
    v.valid("unknown_kind", "A message of unknown kind 200 between two DELTAs: receivers skip "
            "it by its length; it does not consume a sequence number (the DELTAs are 9000 "
            "and 9001).",
            datagram([delta(5, 1, payload(30, 3), create), UnknownMessage(200, 0x5A,
                                                                          payload(31, 7)),
                      delta(5, 2, payload(32, 3))], 9000))
    v.valid("reserved_flags", "Reserved flag bits set in the header (0xFE), a DELTA (0xFC) and "
            "a SNAPSHOT (0xFC): receivers ignore them.",
            datagram([delta(5, 3, payload(33, 2), 0xFC),
                      snapshot(5, range_start=0, cycle_id=1, position=0, count=1, leaf_seq=3,
                               as_of_seq=9003, data=payload(34, 2), flags=0xFC | last)],
                     9002, flags=0xFE))
    hb = codec.encode_with_construct(datagram([Heartbeat(1000)], 9100))
    hb_value = datagram([Heartbeat(1000)], 9100)
    hb_fields = datagram_fields(hb_value)
    hb_fields["messages"][0]["length"] = 8
    v.valid("heartbeat_extra_body", "A HEARTBEAT whose body is 8 bytes: a later version "
            "appended a field; receivers read interval_ms and ignore the rest.",
            hb_value, raw=hb[:-8] + _raw_message(3, 0, hb[-4:] + b"\x01\x02\x03\x04"),
            fields=hb_fields, reencodes=False)
    eos_value = datagram([EndOfSession()], 9101)
    eos = codec.encode_with_construct(eos_value)
    eos_fields = datagram_fields(eos_value)
    eos_fields["messages"][0]["length"] = 2
    v.valid("end_of_session_extra_body", "An END_OF_SESSION with a 2-byte body: receivers "
            "ignore it.", eos_value, raw=eos[:-4] + _raw_message(4, 0, b"\xaa\xbb"),
            fields=eos_fields, reencodes=False)
    v.valid("auth_trailer", "AUTH header flag with the 20-byte trailer: key_id 1 and the "
            "tag BLAKE2b(key=the test key, digest_size=16) over every preceding byte (the "
            "header with AUTH set, the DELTA and key_id). The test key is key id 1, the 32 "
            "bytes 00 01 02 ... 1f (key_hex in auth); a receiver holding it accepts the "
            "datagram, and a receiver without keys ignores the trailer.",
            signed(datagram([delta(6, 1, payload(40, 5), create)], 9200)),
            auth_check=receiver_key("ACCEPTED"))

    # ---------------------------------------------------------------- authentication verdicts
    # The delta vector (leaf 42, stream sequence 1000) signed with the test key, and what a
    # receiver holding only the test key (key id 1) does with it and its variants.
    plain = datagram([delta(42, 3, payload(1, 8))], 1000)
    good = signed(plain)
    valid_auth = v.valid(
        "auth_valid", "The delta vector signed with the test key (key id 1): header flag AUTH "
        "set, trailer key_id 1 and the BLAKE2b-16 tag over the 64 bytes before it (the "
        "60-byte DELTA datagram with AUTH set, and key_id). A receiver holding the test key "
        "as key 1 accepts it (verdict ACCEPTED).",
        good, auth_check=receiver_key("ACCEPTED"))
    tag_start = len(valid_auth) - auth.TAG_SIZE
    flipped = bytearray(valid_auth)
    flipped[tag_start] ^= 0x01
    assert good.auth is not None
    v.valid("auth_bad_tag", "auth_valid with the first tag byte's lowest bit flipped "
            f"({valid_auth[tag_start]:02x} -> {flipped[tag_start]:02x}): well formed, but "
            "the tag does not verify: a receiver with keys drops it before decoding "
            "(verdict BAD_TAG, counted in bad_tags).",
            good._replace(auth=good.auth._replace(tag=bytes(flipped[tag_start:]))),
            auth_check=receiver_key("BAD_TAG"))
    v.valid("auth_unknown_key", "The delta vector signed with the test key's secret under "
            "key id 2: the tag is right for key 2, but the receiver holds only key 1, so it "
            "drops it unverified (verdict UNKNOWN_KEY, counted in unknown_keys).",
            signed(plain, key_id=2), auth_check=receiver_key("UNKNOWN_KEY"))
    v.valid("auth_unsigned", "The delta vector as it is, without AUTH and trailer: a receiver "
            "with keys drops it (verdict UNAUTHENTICATED, counted in unauthenticated); one "
            "without keys accepts it.", plain, auth_check=receiver_key("UNAUTHENTICATED"))
    second = 1_000_000_000
    edge = signed(datagram([Heartbeat(1000)], 1001, send_time_ns=SEND_TIME_NS - 2 * second))
    stale_eos = signed(datagram([EndOfSession()], 1001,
                                send_time_ns=SEND_TIME_NS - 2 * second - 1))
    other = SESSION_ID + 1
    old_session = signed(datagram([Heartbeat(1000)], 1, session_id=other,
                                  send_time_ns=SEND_TIME_NS - 2 * second - 1))
    new_session = signed(datagram([Heartbeat(1000)], 1, session_id=other,
                                  send_time_ns=SEND_TIME_NS - second))
    steps = [
        (good, "ACCEPTED", "auth_valid: the first datagram the receiver accepts; the newest "
                           "send time of session 0x5EEDCAFE00000001 is now T"),
        (good, "DUPLICATE", "auth_valid again (a replay, or a network duplicate): its tag "
                            "was accepted in this session within the window"),
        (edge, "ACCEPTED", "a HEARTBEAT of the same session sent exactly 2 s before T: "
                           "within the window"),
        (stale_eos, "TOO_OLD", "an END_OF_SESSION of the same session sent 2 s + 1 ns "
                               "before T: older than the newest of its session by more "
                               "than the window"),
        (old_session, "TOO_OLD", "a HEARTBEAT of a session not seen before, sent 2 s + 1 ns "
                                 "before T: a replayed old session"),
        (new_session, "ACCEPTED", "a HEARTBEAT of that session sent 1 s before T: a new "
                                  "session within the window of the newest accepted"),
    ]
    sequence = [{"hex": codec.encode_with_construct(value).hex(), "verdict": "ACCEPTED",
                 "replay": outcome, "note": note} for value, outcome, note in steps]
    v.valid("auth_replayed", "Replay protection with the test key and the default 2 s "
            "window: auth.sequence lists datagrams in arrival order, each with the tag "
            "verdict and the replay outcome (ACCEPTED, DUPLICATE, TOO_OLD). This vector's "
            "own datagram is the first of them (auth_valid). T = 1767225600000000000.",
            good, auth_check=receiver_key("ACCEPTED", window_ns=AUTH_WINDOW_NS,
                                          sequence=sequence))

    # ---------------------------------------------------------------- TOUCHED summaries
    v.valid(
        "touched", "Three DELTAs (sequences 10000..10002: leaf 3 twice, leaf 8 created) and "
        "behind them the TOUCHED summary of the window [9998, 10003): the DELTAs 9998 and "
        "9999 of the previous datagram changed leaves 1 and 3; the five DELTAs changed "
        "exactly leaves 1, 3 and 8, whose leaf_seq after them is 7, 6 and 1. end_seq 10003 "
        "is the sequence the next DELTA will get.",
        datagram([delta(3, 5, payload(50, 4)), delta(8, 1, payload(51, 4), create),
                  delta(3, 6, payload(52, 4)),
                  Touched(9998, 10003, ((1, 7), (3, 6), (8, 1)))], 10000))
    v.valid("touched_empty", "A TOUCHED with no entries and first_seq == end_seq (10003): "
            "an empty window, valid on the wire (the reference publisher does not send "
            "windows without DELTAs).",
            datagram([Touched(10003, 10003, ())], 10003))
    v.valid("touched_only", "A datagram without DELTAs holding one TOUCHED: the window "
            "[10003, 10010) changed leaves 2, 3 and 4000000000; end_seq equals the header "
            "sequence (the next DELTA will be 10010).",
            datagram([Touched(10003, 10010, ((2, 1), (3, 9), (4_000_000_000, 12)))], 10010))

    # ---------------------------------------------------------------- invalid: truncation
    header_boundaries = [(0, "magic")]
    offset = 0
    for sub in wire.Header.subcons:
        header_boundaries.append((offset, sub.name))
        offset += sub.sizeof()
    for cut, name in dict(header_boundaries).items():
        v.invalid(f"truncated_header_before_{name}",
                  f"The datagram ends at byte {cut}, before the header field {name}.",
                  one_delta[:cut], field="header", offset=cut, reason="shorter than the")
    v.invalid("truncated_header_before_end", "The datagram ends one byte before the end of "
              "the header.", one_delta[: codec.HEADER_SIZE - 1], field="header",
              offset=codec.HEADER_SIZE - 1, reason="shorter than the")

    def truncations(kind: str, data: bytes, fields: Sequence[Any]) -> None:
        start = codec.HEADER_SIZE
        cuts = [(start, "kind"), (start + 1, "flags"), (start + 2, "length")]
        offset = start + codec.MESSAGE_HEADER_SIZE
        for sub in fields:
            cuts.append((offset, sub.name))
            offset += sub.sizeof()
        cuts.append((offset, "payload"))
        cuts.append((len(data) - 1, "payload_end"))
        for cut, name in cuts:
            if cut < start + codec.MESSAGE_HEADER_SIZE:
                field, at, reason = "messages[0]", start, "missing or truncated"
            else:
                field, at, reason = "messages[0].length", start + 2, "overruns the datagram"
            what = ("the last payload byte" if name == "payload_end"
                    else f"the {kind} field {name}")
            v.invalid(f"truncated_{kind}_before_{name}",
                      f"A one-{kind} datagram cut at byte {cut}, before {what}.",
                      data[:cut], field=field, offset=at, reason=reason)

    truncations("delta", one_delta, wire.DeltaFields.subcons)
    truncations("snapshot", one_snapshot, wire.SnapshotFields.subcons)

    # ---------------------------------------------------------------- invalid: header
    v.invalid("bad_magic", "The magic is b'GRPW'.", _patch(one_delta, 3, "<B", ord("W")),
              field="magic", offset=0, reason="bad magic")
    v.invalid("unsupported_version", "version 2: a v1 receiver drops and counts it.",
              codec.encode_with_construct(datagram([delta(42, 3, payload(1, 8))], 1000,
                                                   version=2)),
              field="version", offset=4, reason="unsupported version 2")
    v.invalid("session_id_zero", "session_id 0 is reserved.",
              codec.encode_with_construct(datagram([Heartbeat(1000)], 1, session_id=0)),
              field="session_id", offset=12, reason="must not be 0")
    v.invalid("auth_trailer_missing", "AUTH is set but the datagram has no room for the "
              "20-byte trailer.", _patch(codec.encode_with_construct(
                  datagram([], 1)), 5, "<B", int(HeaderFlag.AUTH)),
              field="auth", offset=codec.HEADER_SIZE, reason="auth trailer")
    # max_datagram_size with one more payload byte (payload() is prefix-stable): well formed
    # in every other respect. The offset is the first byte past the limit.
    v.invalid("datagram_too_large", f"A datagram of {wire.MAX_DATAGRAM_SIZE + 1} bytes, one "
              f"more than MAX_DATAGRAM_SIZE, otherwise well formed (one DELTA with a "
              f"{fill + 1}-byte payload). It cannot arrive in an IPv4 UDP datagram but can "
              "over IPv6 or another transport: receivers drop and count it.",
              _patch(largest, codec.HEADER_SIZE + 2, "<H", 12 + fill + 1)
              + payload(21, fill + 1)[-1:], field="datagram", offset=wire.MAX_DATAGRAM_SIZE,
              reason="exceeds MAX_DATAGRAM_SIZE")

    # ---------------------------------------------------------------- invalid: framing
    v.invalid("message_length_overrun", "The DELTA's length says 30 but only 20 body bytes "
              "follow.", _patch(one_delta, codec.HEADER_SIZE + 2, "<H", 30),
              field="messages[0].length", offset=codec.HEADER_SIZE + 2,
              reason="overruns the datagram")
    two = codec.encode_with_construct(datagram([delta(1, 1, b"a"), delta(2, 1, b"b")], 10))
    v.invalid("message_count_too_high", "message_count says 3; only 2 messages follow.",
              _patch(two, 6, "<H", 3), field="messages[2]", offset=len(two),
              reason="message_count says 3")
    v.invalid("message_count_too_low", "message_count says 1; a second message follows and "
              "counts as trailing bytes.", _patch(two, 6, "<H", 1), field="messages",
              offset=codec.HEADER_SIZE + codec.DELTA_OVERHEAD + 1, reason="17 trailing bytes")
    v.invalid("trailing_bytes", "Three stray bytes after the last message.",
              one_delta + b"\x00\x00\x00", field="messages", offset=len(one_delta),
              reason="3 trailing bytes")
    v.invalid("auth_trailer_misplaced", "AUTH is set but the messages run into the 20 bytes "
              "the trailer occupies.", _patch(one_delta + bytes(12), 5, "<B",
                                              int(HeaderFlag.AUTH)),
              field="messages[0].length", offset=codec.HEADER_SIZE + 2,
              reason="overruns the datagram")
    v.invalid("delta_too_short", "A DELTA message of length 5 (the minimum is 12).",
              _with_messages(one_delta, 1, _raw_message(1, 0, b"\x2a\x00\x00\x00\x03")),
              field="messages[0].length", offset=codec.HEADER_SIZE + 2,
              reason="below the minimum 12")
    v.invalid("snapshot_too_short", "A SNAPSHOT message of length 40 (the minimum is 44).",
              _with_messages(one_delta, 1, _raw_message(2, 0, bytes(40))),
              field="messages[0].length", offset=codec.HEADER_SIZE + 2,
              reason="below the minimum 44")
    v.invalid("heartbeat_too_short", "A HEARTBEAT message of length 2 (the minimum is 4).",
              _with_messages(one_delta, 1, _raw_message(3, 0, b"\xe8\x03")),
              field="messages[0].length", offset=codec.HEADER_SIZE + 2,
              reason="below the minimum 4")

    # ---------------------------------------------------------------- invalid: DELTA rules
    second = codec.HEADER_SIZE + codec.DELTA_OVERHEAD + 1  # offset of message 1 below

    def two_deltas(bad: Delta) -> bytes:
        return codec.encode_with_construct(datagram([delta(1, 5, b"x"), bad], 20))

    v.invalid("delta_create_and_delete", "A DELTA with both CREATE and DELETE.",
              two_deltas(delta(2, 1, b"", create | delete)), field="messages[1].flags",
              offset=second + 1, reason="exclusive")
    v.invalid("delta_delete_with_payload", "A DELETE DELTA with a 3-byte payload.",
              two_deltas(delta(2, 4, b"abc", delete)), field="messages[1].payload",
              offset=second + 16, reason="empty payload")
    v.invalid("delta_leaf_seq_zero", "A DELTA with leaf_seq 0 (leaf sequences start at 1).",
              two_deltas(delta(2, 0, b"abc")), field="messages[1].leaf_seq",
              offset=second + 8, reason="at least 1")

    # ---------------------------------------------------------------- invalid: SNAPSHOT rules
    body = codec.HEADER_SIZE + codec.MESSAGE_HEADER_SIZE

    def one_snap(**kw: Any) -> bytes:
        base: dict[str, Any] = {"range_start": 11, "cycle_id": 5, "position": 1, "count": 3,
                                "leaf_seq": 3, "as_of_seq": 1003, "data": payload(3, 10)}
        base.update(kw)
        return codec.encode_with_construct(datagram([snapshot(42, **base)], 1003))

    v.invalid("snapshot_fragment_overrun", "fragment_offset 95 + 10 payload bytes overrun "
              "total_length 100.", one_snap(total_length=100, fragment_offset=95),
              field="messages[0].fragment_offset", offset=body + 40, reason="overruns")
    v.invalid("snapshot_as_of_seq_ahead", "as_of_seq 1004 but the stream is only at 1003 "
              "(the header sequence; the datagram has no deltas).", one_snap(as_of_seq=1004),
              field="messages[0].as_of_seq", offset=body + 28, reason="ahead of the stream")
    v.invalid("snapshot_position_not_below_count", "cycle_position 3 with cycle_count 3.",
              one_snap(position=3), field="messages[0].cycle_position", offset=body + 12,
              reason="not below cycle_count")
    v.invalid("snapshot_range_start_above_leaf_id", "range_start 43 is above leaf_id 42.",
              one_snap(range_start=43), field="messages[0].range_start", offset=body + 4,
              reason="above leaf_id")
    v.invalid("snapshot_count_zero_not_marker", "cycle_count 0 without DELETED|LAST.",
              one_snap(position=0, count=0), field="messages[0].cycle_count",
              offset=body + 16, reason="only valid for the DELETED|LAST marker")
    def marker(**kw: Any) -> bytes:
        """The empty-cycle marker of vector snapshot_empty_cycle, with ``kw`` changed."""
        base: dict[str, Any] = {"range_start": 0, "cycle_id": 17, "position": 0, "count": 0,
                                "leaf_seq": 0, "as_of_seq": 1, "flags": deleted | last}
        leaf_id = kw.pop("leaf_id", 0)
        base.update(kw)
        return codec.encode_with_construct(datagram([snapshot(leaf_id, **base)], 1))

    v.invalid("snapshot_deleted_with_length", "The empty-cycle marker (DELETED|LAST) with "
              "total_length 10: a DELETED snapshot has total_length 0 (and so no payload).",
              marker(total_length=10), field="messages[0].total_length", offset=body + 36,
              reason="total_length 0")
    v.invalid("snapshot_deleted_not_marker", "A DELETED tombstone for leaf 42 (position 1 of "
              "3, total_length 0): DELETED is valid only in the empty-cycle marker "
              "(cycle_count 0). The reference publisher sends no other tombstones.",
              one_snap(flags=deleted, data=b""), field="messages[0].flags",
              offset=codec.HEADER_SIZE + 1, reason="only valid in the empty-cycle marker")
    v.invalid("snapshot_last_not_at_end", "The snapshot vector (leaf 42, position 1 of 3) "
              "with LAST set: LAST requires cycle_position = cycle_count - 1. Accepted, it "
              "would assert that no leaf above 42 exists and wipe them from a replica.",
              one_snap(flags=last), field="messages[0].flags", offset=codec.HEADER_SIZE + 1,
              reason="LAST is set but cycle_position 1")
    v.invalid("snapshot_empty_cycle_without_last", "The empty-cycle marker with DELETED but "
              "not LAST: cycle_count 0 requires both.", marker(flags=deleted),
              field="messages[0].cycle_count", offset=body + 16,
              reason="only valid for the DELETED|LAST marker")
    v.invalid("snapshot_empty_cycle_leaf_id", "The empty-cycle marker with leaf_id 5 "
              "(range_start 0): the marker's leaf_id is 0.", marker(leaf_id=5),
              field="messages[0].leaf_id", offset=body, reason="has leaf_id 5, not 0")
    v.invalid("snapshot_empty_cycle_leaf_seq", "The empty-cycle marker with leaf_seq 4: the "
              "marker's leaf_seq is 0.", marker(leaf_seq=4), field="messages[0].leaf_seq",
              offset=body + 20, reason="has leaf_seq 4, not 0")

    # ---------------------------------------------------------------- invalid: TOUCHED rules
    tbody = codec.HEADER_SIZE + codec.MESSAGE_HEADER_SIZE  # a lone TOUCHED's body

    def lone_touched(first_seq: int, end_seq: int, entries: tuple[tuple[int, int], ...],
                     sequence: int = 10010) -> bytes:
        return codec.encode_with_construct(
            datagram([Touched(first_seq, end_seq, entries)], sequence))

    v.invalid("touched_too_short", "A TOUCHED message of length 15 (the minimum is 16).",
              _with_messages(one_delta, 1, _raw_message(5, 0, bytes(15))),
              field="messages[0].length", offset=codec.HEADER_SIZE + 2,
              reason="has length 15: it must be 16 plus a multiple of 12")
    v.invalid("touched_partial_entry", "A TOUCHED of length 27 = 16 + 11: the entries are "
              "not a whole number of 12-byte records.",
              _with_messages(one_delta, 1, _raw_message(
                  5, 0, struct.pack("<QQ", 999, 1000) + payload(53, 11))),
              field="messages[0].length", offset=codec.HEADER_SIZE + 2,
              reason="has length 27: it must be 16 plus a multiple of 12")
    v.invalid("touched_ids_descending", "TOUCHED entries for leaves 5 then 4: leaf ids must "
              "be strictly ascending.", lone_touched(10003, 10010, ((5, 1), (4, 1))),
              field="messages[0].entries", offset=tbody + 16 + 12,
              reason="breaks ascending leaf ids")
    v.invalid("touched_duplicate_id", "Two TOUCHED entries for leaf 5.",
              lone_touched(10003, 10010, ((5, 1), (5, 2))),
              field="messages[0].entries", offset=tbody + 16 + 12,
              reason="breaks ascending leaf ids")
    v.invalid("touched_leaf_seq_zero", "A TOUCHED entry with leaf_seq 0 (a listed leaf was "
              "changed, so its leaf_seq is at least 1).",
              lone_touched(10003, 10010, ((2, 1), (3, 0))),
              field="messages[0].entries", offset=tbody + 16 + 12, reason="has leaf_seq 0")
    v.invalid("touched_range_reversed", "A TOUCHED with first_seq 10005 above end_seq 10004.",
              lone_touched(10005, 10004, ((2, 1),)),
              field="messages[0].end_seq", offset=tbody + 8, reason="is reversed")
    v.invalid("touched_end_seq_ahead", "A TOUCHED whose end_seq 10004 is ahead of the "
              "stream: after two DELTAs from sequence 10001, the next DELTA is 10003.",
              codec.encode_with_construct(datagram(
                  [delta(2, 1, b"", create), delta(3, 9, payload(54, 2)),
                   Touched(10001, 10004, ((2, 1), (3, 9)))], 10001)),
              field="messages[2].end_seq",
              offset=codec.HEADER_SIZE + 2 * codec.DELTA_OVERHEAD + 2 + codec.MESSAGE_HEADER_SIZE
              + 8, reason="ahead of the stream (10003)")

    # ---------------------------------------------------------------- invalid: sequence overflow
    sequence_at = 20  # the header field every overflow error names
    v.invalid("delta_sequence_overflow", "Header sequence 2^64 - 1 and two DELTAs: the second "
              "would be stream sequence 2^64, which does not exist (sequences never wrap).",
              codec.encode_with_construct(datagram([delta(1, 1, b"a"), delta(2, 1, b"b")],
                                                   U64)),
              field="sequence", offset=sequence_at, reason="beyond 2^64 - 1")
    v.invalid("snapshot_as_of_seq_bound_overflow", "A SNAPSHOT behind DELTA 2^64 - 1: the "
              "bound for its as_of_seq (header sequence + 1 DELTA before it) is 2^64, beyond "
              "2^64 - 1, so the datagram is invalid whatever as_of_seq says.",
              codec.encode_with_construct(datagram(
                  [delta(1, 1, b"a"),
                   snapshot(3, range_start=0, cycle_id=1, position=0, count=1, leaf_seq=2,
                            as_of_seq=U64, data=b"c", flags=last)], U64)),
              field="sequence", offset=sequence_at, reason="as_of_seq bound 18446744073709551616")
    v.invalid("touched_end_seq_bound_overflow", "A TOUCHED behind DELTA 2^64 - 1: the bound "
              "for its end_seq (header sequence + 1 DELTA before it) is 2^64, beyond 2^64 - 1.",
              codec.encode_with_construct(datagram(
                  [delta(1, 1, b"a"), Touched(U64 - 1, U64, ((3, 2),))], U64)),
              field="sequence", offset=sequence_at, reason="end_seq bound 18446744073709551616")
    return v.items


# --------------------------------------------------------------------------- files



def expected_files() -> dict[str, str]:
    """File name -> content, for every vector."""
    return {f"{item['name']}.json": render(item) for item in build()}


def main(argv: list[str] | None = None) -> int:
    return write_or_check(__doc__.split("\n\n")[0], VECTOR_DIR, expected_files, argv)


if __name__ == "__main__":
    sys.exit(main())
