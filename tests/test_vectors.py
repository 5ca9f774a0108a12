"""The golden vectors in protocol/vectors/: both decoders, both encoders, describe(), freshness,
and the authentication verdicts (grapevine.auth and the subscriber core)."""

from __future__ import annotations

import hashlib
import json
import re
import struct
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from spec_text import ids, load_tool

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # the venv may not have grapevine installed
    sys.path.insert(0, str(ROOT))

from grapevine import codec, wire  # noqa: E402
from grapevine._errors import DecodeError  # noqa: E402
from grapevine._subscriber_core import SubscriberConfig, SubscriberCore  # noqa: E402
from grapevine.auth import Key, KeyRing, ReplayGuard, Verdict, Verifier, sign  # noqa: E402
from grapevine.codec import Delta, EndOfSession, Heartbeat, Snapshot, Touched  # noqa: E402
from grapevine.model import BytesModel  # noqa: E402

VECTOR_DIR = ROOT / "protocol" / "vectors"
VECTOR_FILES = sorted(VECTOR_DIR.glob("*.json"))
VECTORS = [json.loads(p.read_text()) for p in VECTOR_FILES]
VALID = [v for v in VECTORS if v["valid"]]
INVALID = [v for v in VECTORS if not v["valid"]]
AUTHENTICATED = [v for v in VECTORS if "auth" in v]  # with a receiver's key and verdict


def load_make_vectors() -> ModuleType:
    return load_tool("make_vectors")



def message_json(msg: codec.Message) -> dict[str, Any]:
    """The decoder's view of a message in the vector files' vocabulary (length excluded)."""
    if isinstance(msg, Delta):
        return {"kind": 1, "kind_name": "DELTA", "flags": msg.flags, "seq": msg.seq,
                "leaf_id": msg.leaf_id, "leaf_seq": msg.leaf_seq,
                "payload": bytes(msg.payload).hex()}
    if isinstance(msg, Snapshot):
        out: dict[str, Any] = {"kind": 2, "kind_name": "SNAPSHOT", "flags": msg.flags}
        for name in [s.name for s in wire.SnapshotFields.subcons]:
            out[name] = getattr(msg, name)
        out["payload"] = bytes(msg.payload).hex()
        return out
    if isinstance(msg, Heartbeat):
        return {"kind": 3, "kind_name": "HEARTBEAT", "flags": 0, "interval_ms": msg.interval_ms}
    if isinstance(msg, EndOfSession):
        return {"kind": 4, "kind_name": "END_OF_SESSION", "flags": 0}
    if isinstance(msg, Touched):
        return {"kind": 5, "kind_name": "TOUCHED", "flags": 0, "first_seq": msg.first_seq,
                "end_seq": msg.end_seq,
                "entries": [{"leaf_id": i, "leaf_seq": s} for i, s in msg.entries]}
    return {"kind": msg.kind, "kind_name": "UNKNOWN", "flags": msg.flags,
            "body": bytes(msg.body).hex()}


def datagram_json(value: codec.Decoded, raw: bytes) -> dict[str, Any]:
    header = dict(zip([s.name for s in wire.Header.subcons],
                      struct.unpack_from(wire.struct_format(wire.Header), raw), strict=True))
    header["magic"] = header["magic"].decode("ascii")
    assert header["version"] == value.version
    assert header["flags"] == value.flags
    assert header["message_count"] == len(value.messages)
    assert (header["stream_id"], header["session_id"], header["sequence"],
            header["send_time_ns"]) == (value.stream_id, value.session_id, value.sequence,
                                        value.send_time_ns)
    auth = ({"key_id": value.auth.key_id, "tag": value.auth.tag.hex()}
            if value.auth is not None else None)
    return {"header": header, "messages": [message_json(m) for m in value.messages],
            "auth": auth}


def message_lengths(raw: bytes, count: int) -> list[int]:
    """Each message's length field, walking the bytes independently of codec."""
    lengths, offset = [], codec.HEADER_SIZE
    for _ in range(count):
        (length,) = struct.unpack_from("<H", raw, offset + 2)
        lengths.append(length)
        offset += 4 + length
    return lengths


MV = load_make_vectors()


def comparable(value: codec.Decoded) -> Any:
    return MV.normalise(value)


def test_there_are_vectors() -> None:
    assert len(VALID) >= 20
    assert len(INVALID) >= 40
    assert [p.stem for p in VECTOR_FILES] == sorted(ids(VECTORS))


@pytest.mark.parametrize("vector", VALID, ids=ids(VALID))
def test_valid_vector_decodes(vector: dict[str, Any]) -> None:
    raw = bytes.fromhex(vector["hex"])
    assert len(raw) == vector["size"]
    fast = codec.decode_datagram(raw)
    slow = codec.decode_with_construct(raw)
    assert comparable(fast) == comparable(slow)
    expected = json.loads(json.dumps(vector["fields"]))
    for msg in expected["messages"]:
        msg.pop("length")
    assert datagram_json(fast, raw) == expected
    lengths = [m["length"] for m in vector["fields"]["messages"]]
    assert message_lengths(raw, len(fast.messages)) == lengths


@pytest.mark.parametrize("vector", VALID, ids=ids(VALID))
def test_valid_vector_reencodes(vector: dict[str, Any]) -> None:
    raw = bytes.fromhex(vector["hex"])
    decoded = codec.decode_datagram(raw)
    rebuilt = codec.encode_with_construct(decoded)
    fast = MV.build_with_builder(decoded)
    if vector.get("reencodes", True):
        assert rebuilt == raw
        if fast is not None:
            assert fast == raw
    else:
        # Forward-compatible extras are dropped: the re-encoding is the canonical form.
        assert len(rebuilt) < len(raw)
        assert comparable(codec.decode_datagram(rebuilt)) == comparable(decoded)


def builder_bytes(vector: dict[str, Any]) -> bytes | None:
    """The vector as DatagramBuilder writes it (then auth.sign, if it is signed), or None."""
    decoded = codec.decode_datagram(bytes.fromhex(vector["hex"]))
    if decoded.auth is None:
        plain: bytes | None = MV.build_with_builder(decoded)
        return plain
    fast: bytes | None = MV.build_with_builder(decoded._replace(
        flags=decoded.flags & ~wire.HeaderFlag.AUTH, auth=None))
    if fast is None or "auth" not in vector:
        return None
    key = Key(decoded.auth.key_id, bytes.fromhex(vector["auth"]["key_hex"]))
    return sign(fast, KeyRing([key]))


def test_builder_covers_most_vectors() -> None:
    covered = [v["name"] for v in VALID if builder_bytes(v) == bytes.fromhex(v["hex"])]
    assert len(covered) >= len(VALID) - 6, sorted(set(ids(VALID)) - set(covered))
    # Every signed vector but the one with a broken tag is what the publisher would send.
    signed = {v["name"] for v in AUTHENTICATED if v["fields"]["auth"] is not None}
    assert signed - set(covered) == {"auth_bad_tag"}


@pytest.mark.parametrize("vector", VALID, ids=ids(VALID))
def test_valid_vector_describes(vector: dict[str, Any]) -> None:
    decoded = codec.decode_datagram(bytes.fromhex(vector["hex"]))
    text = codec.describe_datagram(decoded)
    lines = text.splitlines()
    header = vector["fields"]["header"]
    assert lines[0].startswith(f"grapevine v1 stream={header['stream_id']} ")
    assert f"sequence={header['sequence']}" in lines[0]
    assert f"messages={header['message_count']}" in lines[0]
    assert len(lines) == header["message_count"] + 1 + (decoded.auth is not None)
    for line, msg in zip(lines[1:], vector["fields"]["messages"], strict=False):
        assert line.startswith("  " + msg["kind_name"])
        if "leaf_id" in msg:
            assert f"leaf={msg['leaf_id']} " in line
    assert all(len(line) < 400 and line.isprintable() for line in lines)


@pytest.mark.parametrize("vector", INVALID, ids=ids(INVALID))
def test_invalid_vector_is_rejected(vector: dict[str, Any]) -> None:
    raw = bytes.fromhex(vector["hex"])
    error = vector["error"]
    with pytest.raises(DecodeError) as fast:
        codec.decode_datagram(raw)
    assert fast.value.field == error["field"]
    assert fast.value.offset == error["offset"]
    assert error["reason_contains"] in fast.value.reason
    with pytest.raises(DecodeError) as slow:
        codec.decode_with_construct(raw)
    assert slow.value.field == error["construct_field"]
    if not slow.value.field.startswith("(parsing)"):
        # A semantic check (not a construct parse failure): both paths name the same field.
        assert slow.value.field == error["field"]


def test_every_semantic_check_has_a_vector() -> None:
    fields = {v["error"]["field"].split(".")[-1] for v in INVALID}
    assert {"magic", "version", "session_id", "auth", "length", "flags", "payload",
            "leaf_seq", "range_start", "cycle_count", "cycle_position", "as_of_seq",
            "fragment_offset", "total_length", "messages", "header", "end_seq",
            "entries", "datagram", "sequence", "leaf_id"} <= fields


# --------------------------------------------------------------------------- offset convention


def _offsets(definition: Any, start: int) -> tuple[dict[str, int], int]:
    """Each field's offset in a flat construct Struct placed at ``start``, and its end."""
    out, offset = {}, start
    for sub in definition.subcons:
        out[sub.name] = offset
        offset += sub.sizeof()
    return out, offset


HEADER_FIELDS, _ = _offsets(wire.Header, 0)
BODIES = {int(wire.MessageKind.DELTA): wire.DeltaFields,
          int(wire.MessageKind.SNAPSHOT): wire.SnapshotFields,
          int(wire.MessageKind.HEARTBEAT): wire.HeartbeatFields,
          int(wire.MessageKind.TOUCHED): wire.TouchedFields}


def convention_offset(raw: bytes, field: str) -> int:
    """The offset SPEC section 10's convention gives an error naming ``field`` in ``raw``.

    Computed from the bytes and wire.py alone (not with codec), asserting on the way that
    the error is of the kind the field name says.
    """
    if field == "header":  # too short: the first missing byte
        assert len(raw) < codec.HEADER_SIZE
        return len(raw)
    if field == "datagram":  # too long: the first byte past the limit
        assert len(raw) > wire.MAX_DATAGRAM_SIZE
        return wire.MAX_DATAGRAM_SIZE
    if field in HEADER_FIELDS:  # a header field: its own offset
        return HEADER_FIELDS[field]
    if field == "auth":  # no room for the trailer: where the message area begins
        return codec.HEADER_SIZE
    flags, count = struct.unpack_from("<BH", raw, 5)
    end = len(raw) - (wire.AUTH_TRAILER_SIZE if flags & wire.HeaderFlag.AUTH else 0)
    starts, offset = [], codec.HEADER_SIZE
    for _ in range(count):
        starts.append(offset)
        if offset + codec.MESSAGE_HEADER_SIZE > end:
            break
        offset += codec.MESSAGE_HEADER_SIZE + struct.unpack_from("<H", raw, offset + 2)[0]
    if field == "messages":  # trailing bytes: the first one after the last message
        assert offset < end
        return offset
    match = re.fullmatch(r"messages\[(\d+)\](?:\.(\w+))?", field)
    assert match is not None, field
    start = starts[int(match.group(1))]
    name = match.group(2)
    if name is None:  # message i does not fit: where it starts
        assert start + codec.MESSAGE_HEADER_SIZE > end
        return start
    message_header, body = _offsets(wire.MessageHeader, start)
    if name in message_header:
        return message_header[name]
    fixed, after = _offsets(BODIES[raw[start]], body)
    if name in fixed:
        return fixed[name]
    if name == "payload":  # the payload's first byte
        return after
    assert name == "entries", field  # the first entry that breaks the rule
    stop = body + struct.unpack_from("<H", raw, message_header["length"])[0]
    previous = -1
    for at in range(after, stop, wire.TouchedEntry.sizeof()):
        leaf_id, leaf_seq = struct.unpack_from("<IQ", raw, at)
        if leaf_id <= previous or leaf_seq == 0:
            return at
        previous = leaf_id
    raise AssertionError(f"no entry of {field} breaks the rule")


@pytest.mark.parametrize("vector", INVALID, ids=ids(INVALID))
def test_invalid_vector_offset_follows_the_convention(vector: dict[str, Any]) -> None:
    raw = bytes.fromhex(vector["hex"])
    error = vector["error"]
    assert error["offset"] == convention_offset(raw, error["field"])


def test_vectors_on_disk_are_up_to_date() -> None:
    files = load_make_vectors().expected_files()
    on_disk = {p.name: p.read_text() for p in VECTOR_FILES}
    assert sorted(files) == sorted(on_disk)
    for name, text in files.items():
        assert on_disk[name] == text, f"{name} differs: re-run tools/make_vectors.py"


def test_generator_is_deterministic() -> None:
    first = load_make_vectors().expected_files()
    second = load_make_vectors().expected_files()
    assert first == second


def test_required_vectors_exist() -> None:
    names = set(ids(VECTORS))
    required = {
        "delta", "delta_create", "delta_delete", "snapshot", "snapshot_fragment_1_of_3",
        "snapshot_fragment_2_of_3", "snapshot_fragment_3_of_3", "snapshot_empty_cycle",
        "heartbeat", "end_of_session", "batch_deltas", "mixed_batch", "empty_payload",
        "max_default_size", "max_field_values", "max_datagram_size", "unknown_kind",
        "reserved_flags", "auth_trailer", "bad_magic", "unsupported_version",
        "session_id_zero", "message_length_overrun", "message_count_too_high",
        "message_count_too_low", "trailing_bytes", "delta_too_short",
        "snapshot_fragment_overrun", "snapshot_as_of_seq_ahead",
        "snapshot_position_not_below_count", "delta_create_and_delete",
        "delta_delete_with_payload", "delta_leaf_seq_zero", "touched", "touched_empty",
        "touched_only", "touched_too_short", "touched_partial_entry", "touched_ids_descending",
        "touched_duplicate_id", "touched_leaf_seq_zero", "touched_range_reversed",
        "touched_end_seq_ahead", "datagram_too_large", "snapshot_last_not_at_end",
        "snapshot_deleted_not_marker", "snapshot_deleted_with_length",
        "snapshot_empty_cycle_without_last", "snapshot_empty_cycle_leaf_id",
        "snapshot_empty_cycle_leaf_seq", "delta_sequence_overflow",
        "snapshot_as_of_seq_bound_overflow", "touched_end_seq_bound_overflow",
        "auth_valid", "auth_bad_tag", "auth_unknown_key", "auth_unsigned", "auth_replayed",
    }
    assert required <= names, required - names
    by_name = {v["name"]: v for v in VECTORS}
    assert by_name["max_default_size"]["size"] == wire.DEFAULT_DATAGRAM_SIZE
    assert by_name["max_datagram_size"]["size"] == wire.MAX_DATAGRAM_SIZE
    assert by_name["datagram_too_large"]["size"] == wire.MAX_DATAGRAM_SIZE + 1
    truncated = [n for n in names if n.startswith("truncated_")]
    assert len(truncated) >= 9 + 6 + 13


def test_fragments_reassemble() -> None:
    by_name = {v["name"]: v for v in VECTORS}
    parts = [codec.decode_datagram(bytes.fromhex(by_name[f"snapshot_fragment_{i}_of_3"]["hex"]))
             .messages[0] for i in (1, 2, 3)]
    assert all(isinstance(p, Snapshot) for p in parts)
    whole = bytearray(parts[0].total_length)  # type: ignore[union-attr]
    covered = 0
    for part in parts:
        assert isinstance(part, Snapshot)
        assert (part.leaf_id, part.leaf_seq, part.as_of_seq) == (7, 12, 2000)
        whole[part.fragment_offset : part.fragment_offset + len(part.payload)] = part.payload
        covered += len(part.payload)
    assert covered == len(whole) == 3000
    for i in (1, 2, 3):
        assert by_name[f"snapshot_fragment_{i}_of_3"]["size"] <= wire.DEFAULT_DATAGRAM_SIZE


def test_unknown_kind_vector_uses_a_kind_that_is_still_unknown() -> None:
    by_name = {v["name"]: v for v in VECTORS}
    kinds = [m["kind"] for m in by_name["unknown_kind"]["fields"]["messages"]
             if m["kind_name"] == "UNKNOWN"]
    assert kinds == [200]
    assert all(k not in {int(m) for m in wire.MessageKind} for k in kinds)


def test_touched_vectors() -> None:
    by_name = {v["name"]: v for v in VECTORS}
    summary = codec.decode_datagram(bytes.fromhex(by_name["touched"]["hex"]))
    deltas = [m for m in summary.messages if isinstance(m, Delta)]
    last = summary.messages[-1]
    assert isinstance(last, Touched)
    # It sits behind the last DELTA it covers: end_seq is the next DELTA's sequence, and
    # every leaf those DELTAs changed is listed with its leaf_seq after them.
    assert last.end_seq == deltas[-1].seq + 1
    assert last.first_seq <= deltas[0].seq
    listed = dict(last.entries)
    assert all(listed[d.leaf_id] >= d.leaf_seq for d in deltas)
    assert {d.leaf_id: d.leaf_seq for d in deltas}.items() <= listed.items()
    empty = codec.decode_datagram(bytes.fromhex(by_name["touched_empty"]["hex"])).messages
    assert empty == [Touched(empty[0].first_seq, empty[0].first_seq, ())]  # type: ignore[union-attr]
    only = codec.decode_datagram(bytes.fromhex(by_name["touched_only"]["hex"]))
    assert len(only.messages) == 1
    assert isinstance(only.messages[0], Touched)
    assert only.messages[0].end_seq == only.sequence


# --------------------------------------------------------------------------- authentication


def receiver_ring(vector: dict[str, Any]) -> KeyRing:
    """The keys the vector's receiver holds (SPEC section 9's test key)."""
    check = vector["auth"]
    return KeyRing([Key(check["key_id"], bytes.fromhex(check["key_hex"]))])


def arrivals(vector: dict[str, Any]) -> list[dict[str, Any]]:
    """The datagrams a vector's receiver gets, in order, with what it must decide."""
    check = vector["auth"]
    steps: list[dict[str, Any]] = check.get("sequence", [
        {"hex": vector["hex"], "verdict": check["verdict"], "replay": "ACCEPTED"}])
    return steps


def test_auth_vectors_cover_every_verdict() -> None:
    by_name = {v["name"]: v for v in AUTHENTICATED}
    assert {"auth_trailer", "auth_valid", "auth_bad_tag", "auth_unknown_key", "auth_unsigned",
            "auth_replayed"} <= set(by_name)
    assert {v["auth"]["verdict"] for v in AUTHENTICATED} == {verdict.name for verdict in Verdict}
    steps = by_name["auth_replayed"]["auth"]["sequence"]
    assert {step["replay"] for step in steps} == {"ACCEPTED", "DUPLICATE", "TOO_OLD"}
    # SPEC section 9's published test key: key id 1, the bytes 00 01 ... 1f.
    for vector in AUTHENTICATED:
        assert vector["auth"]["key_id"] == 1
        assert bytes.fromhex(vector["auth"]["key_hex"]) == bytes(range(32))
    # The verdict vectors are one datagram (the delta vector) and its variants.
    plain = bytes.fromhex(by_name["auth_unsigned"]["hex"])
    assert plain == bytes.fromhex(next(v["hex"] for v in VECTORS if v["name"] == "delta"))
    good = bytes.fromhex(by_name["auth_valid"]["hex"])
    assert good[:5] + good[6:len(plain)] == plain[:5] + plain[6:]
    bad = bytes.fromhex(by_name["auth_bad_tag"]["hex"])
    assert [i for i in range(len(good)) if good[i] != bad[i]] == [len(good) - 16]
    other = bytes.fromhex(by_name["auth_unknown_key"]["hex"])
    assert other[-20:-16] == (2).to_bytes(4, "little")
    assert other[:-20] == good[:-20]
    assert bytes.fromhex(by_name["auth_replayed"]["hex"]) == good == bytes.fromhex(
        steps[0]["hex"])


@pytest.mark.parametrize("vector", AUTHENTICATED, ids=ids(AUTHENTICATED))
def test_auth_vector_tags_are_keyed_blake2b(vector: dict[str, Any]) -> None:
    """SPEC section 9's construction, computed with hashlib alone."""
    secret = bytes.fromhex(vector["auth"]["key_hex"])
    for step in arrivals(vector):
        raw = bytes.fromhex(step["hex"])
        if not raw[5] & wire.HeaderFlag.AUTH:
            assert step["verdict"] == "UNAUTHENTICATED"
            continue
        assert len(raw) >= codec.HEADER_SIZE + wire.AUTH_TRAILER_SIZE
        tag = hashlib.blake2b(raw[:-16], key=secret, digest_size=16).digest()
        key_id = int.from_bytes(raw[-20:-16], "little")
        if key_id == vector["auth"]["key_id"]:
            assert (tag == raw[-16:]) == (step["verdict"] == "ACCEPTED")
        else:  # signed with the same secret under another id, which the receiver lacks
            assert step["verdict"] == "UNKNOWN_KEY"
            assert tag == raw[-16:]


@pytest.mark.parametrize("vector", AUTHENTICATED, ids=ids(AUTHENTICATED))
def test_auth_vector_verdicts_are_the_verifier_and_replay_guard(
        vector: dict[str, Any]) -> None:
    verifier = Verifier(receiver_ring(vector))
    assert verifier.check(bytes.fromhex(vector["hex"])) is Verdict[vector["auth"]["verdict"]]
    guard = ReplayGuard(vector["auth"].get("window_ns", 2_000_000_000))
    for step in arrivals(vector):
        raw = bytes.fromhex(step["hex"])
        verdict = Verifier(receiver_ring(vector)).check(raw)
        assert verdict is Verdict[step["verdict"]]
        if verdict is not Verdict.ACCEPTED:
            continue
        decoded = codec.decode_datagram(raw)
        assert decoded.auth is not None
        before = (guard.replayed_duplicate, guard.replayed_old)
        accepted = guard.accept(decoded.session_id, decoded.send_time_ns, decoded.auth.tag)
        guard._check()
        outcome = {(True, 0, 0): "ACCEPTED", (False, 1, 0): "DUPLICATE",
                   (False, 0, 1): "TOO_OLD"}[
            (accepted, guard.replayed_duplicate - before[0], guard.replayed_old - before[1])]
        assert outcome == step["replay"], step.get("note")


@pytest.mark.parametrize("vector", AUTHENTICATED, ids=ids(AUTHENTICATED))
def test_auth_vectors_through_a_subscriber_with_keys(vector: dict[str, Any]) -> None:
    """A subscriber with the test key counts each rejection as the vector says, and one
    without keys reads every datagram."""
    config = SubscriberConfig(stream_id=7, keys=receiver_ring(vector),
                              replay_window_s=vector["auth"].get("window_ns", 2e9) / 1e9)
    core = SubscriberCore(BytesModel(), config)
    plain = SubscriberCore(BytesModel(), SubscriberConfig(stream_id=7))
    steps = arrivals(vector)
    for index, step in enumerate(steps):
        core.receive(bytes.fromhex(step["hex"]), now=index * 0.001)
        plain.receive(bytes.fromhex(step["hex"]), now=index * 0.001)
    stats = core.stats
    expected = {
        "unauthenticated": sum(s["verdict"] == "UNAUTHENTICATED" for s in steps),
        "unknown_keys": sum(s["verdict"] == "UNKNOWN_KEY" for s in steps),
        "bad_tags": sum(s["verdict"] == "BAD_TAG" for s in steps),
        "replayed": sum(s["verdict"] == "ACCEPTED" and s["replay"] != "ACCEPTED"
                        for s in steps),
    }
    assert {name: getattr(stats, name) for name in expected} == expected
    assert stats.malformed == plain.stats.malformed == 0
    assert (plain.stats.unauthenticated, plain.stats.unknown_keys, plain.stats.bad_tags,
            plain.stats.replayed) == (0, 0, 0, 0)
