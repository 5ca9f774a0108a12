"""The retransmission vectors (protocol/vectors/retransmit/, SPEC §15) agree with the
construct definition, the fast encoder and decoder, and the authentication code."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from spec_text import load_tool

from grapevine import DecodeError, wire
from grapevine._retransmit import RetransmitMessage, decode_retransmit, encode_retransmit
from grapevine.auth import Key, KeyRing, Verdict, Verifier

ROOT = Path(__file__).resolve().parent.parent
VECTOR_DIR = ROOT / "protocol" / "vectors" / "retransmit"
VECTORS = [json.loads(p.read_text()) for p in sorted(VECTOR_DIR.glob("*.json"))]
VALID = [v for v in VECTORS if v["valid"]]
INVALID = [v for v in VECTORS if not v["valid"]]


def _generator() -> ModuleType:
    return load_tool("make_retransmit_vectors")

def test_the_vectors_on_disk_are_what_the_generator_writes() -> None:
    files = _generator().expected_files()
    assert sorted(files) == sorted(p.name for p in VECTOR_DIR.glob("*.json"))
    for name, text in files.items():
        assert (VECTOR_DIR / name).read_text() == text, f"re-run make_retransmit_vectors: {name}"
    assert len(VALID) >= 5
    assert len(INVALID) >= 5


@pytest.mark.parametrize("vector", VALID, ids=[v["name"] for v in VALID])
def test_valid_vectors_decode_to_their_fields(vector: dict[str, Any]) -> None:
    data = bytes.fromhex(vector["hex"])
    assert len(data) == vector["size"]
    expected = vector["fields"]
    message = decode_retransmit(data)
    for name in RetransmitMessage._fields:
        if name != "kind":
            assert getattr(message, name) == expected[name], name
    assert message.kind == expected["kind"]
    parsed = wire.RetransmitPacket.parse(data).packet
    assert {k: v for k, v in parsed.items() if not k.startswith("_")} == \
        dict(expected, magic=wire.RETRANSMIT_MAGIC)
    if "auth" in vector:
        ring = KeyRing([Key(vector["auth"]["key_id"], bytes.fromhex(vector["auth"]["key_hex"]))])
        assert Verifier(ring).check(data) is Verdict.ACCEPTED
        assert encode_retransmit(message._replace(flags=0), ring) == data
    else:
        assert encode_retransmit(message) == data


@pytest.mark.parametrize("vector", INVALID, ids=[v["name"] for v in INVALID])
def test_invalid_vectors_raise_the_documented_error(vector: dict[str, Any]) -> None:
    with pytest.raises(DecodeError) as caught:
        decode_retransmit(bytes.fromhex(vector["hex"]))
    assert caught.value.field == vector["error"]["field"]
    assert caught.value.offset == vector["error"]["offset"]
