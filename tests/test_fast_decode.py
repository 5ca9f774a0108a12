"""The subscriber's receive-path decoder (codec._decode_datagram_fast) is decode_datagram:
on every golden vector, on mutations of them and on uniform batches built here, it returns
the same values (a DELTA may be a plain tuple of the Delta fields) or raises the same
DecodeError, with the same message, offset and field."""

from __future__ import annotations

import json
import random
import struct
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # the venv may not have grapevine installed
    sys.path.insert(0, str(ROOT))

from grapevine import codec, wire  # noqa: E402
from grapevine._errors import DecodeError  # noqa: E402
from grapevine.codec import DatagramBuilder, Delta  # noqa: E402

VECTOR_FILES = sorted((ROOT / "protocol" / "vectors").glob("*.json"))
VECTORS = {path.stem: bytes.fromhex(json.loads(path.read_text())["hex"])
           for path in VECTOR_FILES}


def outcome(decode: Any, data: Any) -> Any:
    """What a decoder makes of ``data``, in a form that compares by content. Plain
    DELTA tuples count as Delta (same fields, same order), and carry their payload as
    ``bytes`` (struct copies it: cheaper than a memoryview slice for small payloads)."""
    try:
        decoded = decode(data)
    except DecodeError as exc:
        return ("DecodeError", str(exc), exc.reason, exc.offset, exc.field)
    messages = []
    for message in decoded.messages:
        if type(message) is tuple:
            assert len(message) == len(Delta._fields)
            assert type(message[4]) is bytes
            message = Delta(*message)
        messages.append(message)
    return codec.comparable(decoded._replace(messages=messages))


def assert_same(data: Any) -> None:
    assert outcome(codec._decode_datagram_fast, data) == outcome(codec.decode_datagram, data)


def uniform(count: int, payload_size: int, *, sequence: int = 100, flags: int = 0,
            leaf_seq: int = 5) -> bytes:
    builder = DatagramBuilder(3, 9, wire.MAX_DATAGRAM_SIZE)
    builder.start(sequence)
    for index in range(count):
        assert builder.add_delta(index * 7, leaf_seq + index, flags,
                                 bytes([index]) * payload_size)
    return bytes(builder.finish(123))


def with_sequence(data: bytes, sequence: int) -> bytes:
    """The datagram with another header sequence (the builder refuses an overflow)."""
    raw = bytearray(data)
    struct.pack_into("<Q", raw, 20, sequence)
    return bytes(raw)


def mutations(data: bytes, rng: random.Random, count: int) -> list[bytes]:
    out = [data[:cut] for cut in range(0, len(data), max(1, len(data) // 40))]
    out.append(data + b"\0")
    out.append(data + b"\0" * 16)
    for _ in range(count):
        raw = bytearray(data)
        for _ in range(rng.randint(1, 3)):
            if raw:
                raw[rng.randrange(len(raw))] = rng.randrange(256)
        out.append(bytes(raw))
    # Every byte of the header and of the first message header in turn, to edge values.
    for position in range(min(len(data), codec.HEADER_SIZE + codec.DELTA_OVERHEAD)):
        for value in (0, 1, 0xFF):
            raw = bytearray(data)
            raw[position] = value
            out.append(bytes(raw))
    return out


def test_there_are_vectors() -> None:
    assert len(VECTORS) > 50


@pytest.mark.parametrize("name", sorted(VECTORS))
def test_every_vector_decodes_the_same(name: str) -> None:
    data = VECTORS[name]
    assert_same(data)
    assert_same(bytearray(data))
    assert_same(memoryview(data))
    assert_same(memoryview(data * 2)[::2])  # not contiguous: decode_datagram's copy


@pytest.mark.parametrize("name", sorted(VECTORS))
def test_mutated_vectors_decode_the_same(name: str) -> None:
    rng = random.Random(name)
    for data in mutations(VECTORS[name], rng, 150):
        assert_same(data)


@pytest.mark.parametrize(("count", "payload_size"), [(1, 0), (1, 32), (20, 32), (40, 18),
                                                     (3, 1), (200, 1)])
def test_uniform_batches_take_the_fast_path_and_agree(count: int, payload_size: int) -> None:
    data = uniform(count, payload_size)
    decoded = codec._decode_datagram_fast(data)
    assert all(type(message) is tuple for message in decoded.messages)  # the fast path ran
    assert_same(data)
    rng = random.Random(count * 1000 + payload_size)
    for mutated in mutations(data, rng, 300):
        assert_same(mutated)


def test_uniform_batches_with_what_the_fast_path_leaves_to_decode_datagram() -> None:
    for data in (uniform(5, 8, flags=int(wire.DeltaFlag.CREATE)),  # CREATE: checked there
                 uniform(5, 0, flags=int(wire.DeltaFlag.DELETE)),
                 uniform(5, 8, flags=4),  # a reserved flag bit
                 with_sequence(uniform(4, 8), (1 << 64) - 4),  # the last DELTA: 2^64 - 1
                 with_sequence(uniform(4, 8), (1 << 64) - 3)):  # one past it
        assert_same(data)
    # leaf_seq 0 in the middle of a uniform batch
    raw = bytearray(uniform(5, 8))
    offset = codec.HEADER_SIZE + 2 * (codec.DELTA_OVERHEAD + 8) + 8
    struct.pack_into("<Q", raw, offset, 0)
    assert_same(bytes(raw))


def test_signed_uniform_batch_agrees() -> None:
    from grapevine.auth import KeyRing, generate_key, sign
    ring = KeyRing.from_text(generate_key(1))
    data = sign(uniform(10, 16), ring)
    decoded = codec._decode_datagram_fast(data)
    assert decoded.auth is not None
    assert all(type(message) is tuple for message in decoded.messages)
    assert_same(data)
    rng = random.Random(7)
    for mutated in mutations(data, rng, 200):
        assert_same(mutated)


def test_random_uniform_shapes_agree() -> None:
    rng = random.Random(12)
    for _ in range(300):
        count = rng.randint(1, 60)
        size = rng.choice((0, 1, 8, 18, 32, 100))
        data = bytearray(uniform(count, size, sequence=rng.randrange(1 << 64 - count)))
        # Sometimes a message length, kind or flag changed, or the count
        for _ in range(rng.randint(0, 2)):
            index = rng.randrange(count)
            offset = codec.HEADER_SIZE + index * (codec.DELTA_OVERHEAD + size)
            data[offset + rng.randrange(4)] = rng.randrange(256)
        if rng.random() < 0.1:
            data[8] = rng.randrange(256)  # message_count
        assert_same(bytes(data))
