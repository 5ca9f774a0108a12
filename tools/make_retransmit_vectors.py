#!/usr/bin/env python3
"""Generate the retransmission test vectors (SPEC §15) in ``protocol/vectors/retransmit/``.

Valid vectors are built with the construct definition (``grapevine.wire.RetransmitPacket``)
from hand-written fields and cross-checked against :func:`grapevine._retransmit.
encode_retransmit`; signed ones carry a tag computed here with ``hashlib.blake2b`` (SPEC
§9's construction, with the published test key) and checked against
:func:`grapevine.auth.sign`. Invalid vectors are a valid packet with one thing broken and
record the ``field`` and ``offset`` the reference decoder reports. Deterministic: re-running
reproduces the files byte for byte (``tests/test_retransmit_vectors.py`` checks it).

Usage: ``python tools/make_retransmit_vectors.py [--check]``.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# The shared command line lives beside this script (also when a test loads it by path).
if str(ROOT / "tools") not in sys.path:
    sys.path.insert(0, str(ROOT / "tools"))
from _vector_files import render, write_or_check  # noqa: E402

from grapevine import auth, wire  # noqa: E402
from grapevine._retransmit import RetransmitMessage, encode_retransmit  # noqa: E402

VECTOR_DIR = ROOT / "protocol" / "vectors" / "retransmit"
STREAM_ID = 7
SESSION_ID = 0x5EED_CAFE_0000_0001
SEND_TIME_NS = 1_767_225_600_000_000_000  # 2026-01-01T00:00:00Z
TEST_KEY_ID = 1
TEST_KEY = bytes(range(32))  # SPEC §9's published test key


def fields(kind: int, first: int, end: int, available: tuple[int, int] = (0, 0),
           flags: int = 0) -> dict[str, Any]:
    return {"magic": wire.RETRANSMIT_MAGIC.decode(), "version": wire.VERSION, "flags": flags,
            "kind": kind, "reserved": 0, "stream_id": STREAM_ID, "session_id": SESSION_ID,
            "first_seq": first, "end_seq": end, "available_first": available[0],
            "available_end": available[1], "send_time_ns": SEND_TIME_NS}


def build(packet: dict[str, Any], signed: bool) -> bytes:
    values = dict(packet, magic=wire.RETRANSMIT_MAGIC)
    if not signed:
        data: bytes = wire.RetransmitPacket.build({"packet": values, "auth": None})
    else:
        values["flags"] |= int(wire.HeaderFlag.AUTH)
        covered = wire.RetransmitFields.build(values) + TEST_KEY_ID.to_bytes(4, "little")
        tag = hashlib.blake2b(covered, key=TEST_KEY, digest_size=auth.TAG_SIZE).digest()
        data = covered + tag
    message = RetransmitMessage(packet["kind"], STREAM_ID, SESSION_ID, packet["first_seq"],
                                packet["end_seq"], packet["available_first"],
                                packet["available_end"], SEND_TIME_NS)
    keys = auth.KeyRing([auth.Key(TEST_KEY_ID, TEST_KEY)]) if signed else None
    if encode_retransmit(message, keys) != data:
        raise AssertionError("encode_retransmit disagrees with the construct definition")
    return data


def vectors() -> list[dict[str, Any]]:
    request, unavailable = int(wire.RetransmitKind.REQUEST), int(wire.RetransmitKind.UNAVAILABLE)
    out: list[dict[str, Any]] = []

    def valid(name: str, description: str, packet: dict[str, Any], signed: bool = False) -> bytes:
        data = build(packet, signed)
        item: dict[str, Any] = {"name": name, "description": description, "valid": True,
                                "size": len(data), "hex": data.hex(),
                                "fields": dict(packet, flags=packet["flags"]
                                               | (int(wire.HeaderFlag.AUTH) if signed else 0))}
        if signed:
            item["auth"] = {"key_id": TEST_KEY_ID, "key_hex": TEST_KEY.hex(),
                            "verdict": "ACCEPTED"}
        out.append(item)
        return data

    def invalid(name: str, description: str, data: bytes, field: str, offset: int) -> None:
        out.append({"name": name, "description": description, "valid": False,
                    "size": len(data), "hex": data.hex(),
                    "error": {"field": field, "offset": offset}})

    plain = valid("request", "A receiver asks for the DELTAs 1000 <= seq < 1040 of session "
                  "0x5EEDCAFE00000001, stream 7.", fields(request, 1000, 1040))
    valid("request_signed", "The request signed with the test key (key id 1): flag AUTH and "
          "the 20-byte trailer, as a stream datagram (SPEC §9).",
          fields(request, 1000, 1040), signed=True)
    valid("unavailable", "The server no longer holds 1000..1039: it holds DELTAs "
          "5000 <= seq < 9096 of that session.", fields(unavailable, 1000, 1040, (5000, 9096)))
    valid("unavailable_nothing", "The server holds nothing of the session asked for "
          "(another session, or retransmission off).", fields(unavailable, 1000, 1040))
    valid("unavailable_signed", "The unavailable vector signed with the test key.",
          fields(unavailable, 1000, 1040, (5000, 9096)), signed=True)
    invalid("truncated", "The request without its last byte: the data ends inside "
            "send_time_ns.", plain[:-1], "send_time_ns", 59)
    invalid("bad_magic", "A stream datagram's magic (GRPV) instead of GRPR.",
            b"GRPV" + plain[4:], "magic", 0)
    invalid("bad_version", "Version 2.", plain[:4] + b"\x02" + plain[5:], "version", 4)
    invalid("unknown_kind", "Kind 3, which version 1 does not define.",
            plain[:6] + b"\x03" + plain[7:], "kind", 6)
    invalid("empty_range", "end_seq equal to first_seq: an empty range.",
            plain[:28] + (1000).to_bytes(8, "little") + plain[36:], "end_seq", 28)
    invalid("auth_without_trailer", "Flag AUTH set, but no trailer follows.",
            plain[:5] + b"\x01" + plain[6:], "flags", 60)
    invalid("trailing_byte", "One byte after the packet (no AUTH flag).", plain + b"\x00",
            "flags", 60)
    return out


def expected_files() -> dict[str, str]:
    return {f"{item['name']}.json": render(item) for item in vectors()}


def main(argv: list[str] | None = None) -> int:
    return write_or_check(__doc__.split("\n\n")[0], VECTOR_DIR, expected_files, argv)


if __name__ == "__main__":
    sys.exit(main())
