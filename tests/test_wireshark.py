"""The Wireshark dissector tools/wireshark/grapevine.lua, run by tshark, against Grapevine's
own decoders.

Every field tshark prints (``-T json``) must equal what :func:`grapevine.codec.decode_datagram`
gives for the same datagram, under the abbreviation ``grapevine.<kind>.<field>`` made of the
codec named tuple's field names, and what ``grapevine decode --json --model book`` prints
(whose field names are the codec's): header, every message kind, TOUCHED entries, the AUTH
trailer, the DecodeError field and offset of malformed datagrams, and the order-book delta and
book payloads (ORDERBOOK.md) with their checksums. The datagrams are the protocol vectors,
the order-book vectors, mutated datagrams, and real traffic: what a socket received from
running publishers, and a dumpcap capture in a private network namespace. Retransmission
packets (SPEC section 15) are checked against ``grapevine._retransmit.decode_retransmit``.
Only a missing tshark skips these tests.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import random
import re
import shutil
import struct
import subprocess
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # the venv may not have grapevine installed
    sys.path.insert(0, str(ROOT))

from grapevine import codec, wire  # noqa: E402
from grapevine._errors import DecodeError  # noqa: E402
from grapevine._retransmit import RetransmitMessage, decode_retransmit  # noqa: E402
from grapevine.book import (  # noqa: E402
    BookDelta,
    Op,
    OrderBook,
    OrderBookModel,
    Side,
    decode_book,
)
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

TSHARK = shutil.which("tshark")
pytestmark = pytest.mark.skipif(
    TSHARK is None, reason="tshark is not installed (apt-get install tshark; CI installs it)")

LUA = ROOT / "tools" / "wireshark" / "grapevine.lua"
CAPTURE_TOOL = ROOT / "tools" / "wireshark" / "capture_sample.py"
VECTORS = [json.loads(p.read_text())
           for p in sorted((ROOT / "protocol" / "vectors").glob("*.json"))]
BOOK_VECTORS = {p.stem: json.loads(p.read_text())
                for p in sorted((ROOT / "protocol" / "vectors" / "orderbook").glob("*.json"))}
RETRANSMIT_VECTORS = [
    json.loads(p.read_text())
    for p in sorted((ROOT / "protocol" / "vectors" / "retransmit").glob("*.json"))]

PREFIX: dict[Any, str] = {Delta: "delta", Snapshot: "snapshot", Heartbeat: "heartbeat",
                           EndOfSession: "end_of_session", Touched: "touched",
                           UnknownMessage: "unknown"}
KIND_OF_RECORD = {"DELTA": "delta", "SNAPSHOT": "snapshot", "HEARTBEAT": "heartbeat",
                  "END_OF_SESSION": "end_of_session", "TOUCHED": "touched",
                  "UNKNOWN": "unknown"}
WIRE_KIND: dict[type, int] = {Delta: 1, Snapshot: 2, Heartbeat: 3, EndOfSession: 4, Touched: 5}
HEADER_FIELDS = [name for name in Decoded._fields if name not in ("messages", "auth")]
BYTES_FIELDS = ("payload", "body", "tag", "magic", "extra", "undecoded")
LEVEL_FIELDS = ("price_ticks", "quantity", "orders", "time_ns")
BOOK_HEADER = ("version", "flags", "n_bids", "n_asks", "last_trade_price", "last_trade_qty",
               "last_trade_time_ns", "traded_volume")
STREAM_ID, SESSION_ID, SEND_TIME_NS = 7, 0x5EED_CAFE_0000_0001, 1_767_225_600_000_000_000
PORT = 47_100


def load_pcap_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("pcap_file",
                                                  ROOT / "tools" / "wireshark" / "pcap_file.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["pcap_file"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


PCAP = load_pcap_module()


def write_pcap(path: Path, datagrams: Iterable[bytes], *, port: int = PORT,
               ports: Iterable[int] | None = None) -> list[bytes]:
    """The datagrams as a pcap (one frame each, frame n = datagrams[n - 1])."""
    data = list(datagrams)
    chosen = list(ports) if ports is not None else [port] * len(data)
    PCAP.write_pcap(path, (PCAP.Packet(d, SEND_TIME_NS + i, dst_port=p)
                           for i, (d, p) in enumerate(zip(data, chosen, strict=True))))
    return data


# --------------------------------------------------------------------------- tshark


@dataclass
class Frame:
    """What tshark showed of one frame's Grapevine layer, flattened in document order."""

    number: int
    claimed: bool
    header: dict[str, str] = field(default_factory=dict)
    messages: list[list[tuple[str, str]]] = field(default_factory=list)
    top: dict[str, str] = field(default_factory=dict)  # malformed.*, undecoded
    auth: dict[str, str] | None = None
    experts: list[str] = field(default_factory=list)


Pairs = list[tuple[str, Any]]


def flatten(pairs: Pairs, experts: list[str]) -> Iterator[tuple[str, str]]:
    """Every (abbreviation, value) under ``pairs``; subtrees are walked in place."""
    for key, value in pairs:
        if key == "_ws.expert":
            experts.extend(k for k, _ in value if not k.startswith("_ws."))
            continue
        if isinstance(value, list):
            if not key.endswith("_tree"):
                yield key, ""  # a subtree item without a value of its own (FT_NONE)
            yield from flatten(value, experts)
        else:
            yield key, value


def first(pairs: Pairs, key: str) -> Any:
    return next((value for k, value in pairs if k == key), None)


def run_tshark(pcap: Path, prefs: dict[str, str] | None = None, *, two_pass: bool = False,
               extra: Iterable[str] = ()) -> list[Frame]:
    assert TSHARK is not None
    command = [TSHARK, "-n", "-r", str(pcap), "-X", f"lua_script:{LUA}", "-T", "json",
               "-J", "frame grapevine", *extra]
    if two_pass:
        command.append("-2")  # the GUI's way: a first pass, then dissection with visited
    for name, value in (prefs or {}).items():
        command += ["-o", f"grapevine.{name}:{value}"]
    result = subprocess.run(command, capture_output=True, timeout=120, check=False)
    stderr = result.stderr.decode(errors="replace")
    assert result.returncode == 0, stderr
    assert "lua" not in stderr.lower(), stderr
    assert b"Lua Error" not in result.stdout
    # Keep repeated keys (one per message, level, entry) in order: pairs, not dicts.
    packets = json.loads(result.stdout, object_pairs_hook=list)
    frames = []
    for packet in packets:
        layers = first(first(packet, "_source"), "layers")
        number = int(first(first(layers, "frame"), "frame.number"))
        layer = first(layers, "grapevine")
        frame = Frame(number, layer is not None)
        if layer is not None:
            for key, value in layer:
                experts = frame.experts
                if key == "grapevine.header":
                    frame.header = dict(flatten(value, experts))
                elif key in ("grapevine.message", "grapevine.retransmit"):
                    frame.messages.append(list(flatten(value, experts)))
                elif key == "grapevine.auth":
                    frame.auth = dict(flatten(value, experts))
                elif key == "_ws.expert":
                    experts.extend(k for k, _ in value if not k.startswith("_ws."))
                elif isinstance(value, str):
                    frame.top[key] = value
        assert "grapevine.internal_error" not in frame.experts, frame
        frames.append(frame)
    assert [f.number for f in frames] == list(range(1, len(frames) + 1))
    return frames


def parse(key: str, value: str) -> Any:
    if key.rsplit(".", 1)[-1] in BYTES_FIELDS:
        return bytes.fromhex(value.replace(":", ""))
    return int(value, 0)


# --------------------------------------------------------------------------- the codec's view


def codec_header(decoded: Decoded, raw: bytes) -> dict[str, Any]:
    out: dict[str, Any] = {f"grapevine.header.{name}": getattr(decoded, name)
                           for name in HEADER_FIELDS}
    out["grapevine.header.magic"] = raw[:4]
    out["grapevine.header.message_count"] = len(decoded.messages)
    return out


def codec_message(message: codec.Message) -> dict[str, Any]:
    """``grapevine.<kind>.<field>`` for every field of the codec's named tuple."""
    prefix = PREFIX[type(message)]
    out: dict[str, Any] = {}
    value: Any
    for name, value in zip(message._fields, message, strict=True):
        if isinstance(value, memoryview | bytes | bytearray):
            value = bytes(value)
        elif name == "entries":
            value = [tuple(entry) for entry in value]
        out[f"grapevine.{prefix}.{name}"] = value
    return out


def shown_message(flat: list[tuple[str, str]], prefix: str) -> dict[str, Any]:
    """The same view of a message from tshark's fields (kind-specific ones only)."""
    out: dict[str, Any] = {}
    entry_ids = [int(v) for k, v in flat if k == "grapevine.touched.entries.leaf_id"]
    entry_seqs = [int(v) for k, v in flat if k == "grapevine.touched.entries.leaf_seq"]
    for key, value in flat:
        parts = key.split(".")
        if len(parts) != 3 or parts[1] != prefix:
            continue  # flag bits, framing, payload decodings
        assert key not in out, f"{key} shown twice in one message"
        if key == "grapevine.touched.entries":
            assert int(value) == len(entry_ids)
            out[key] = list(zip(entry_ids, entry_seqs, strict=True))
        elif key == "grapevine.end_of_session":
            assert value == ""
        else:
            out[key] = parse(key, value)
    return out


def message_kind(flat: list[tuple[str, str]]) -> int:
    return int(dict(flat)["grapevine.message.kind"])


def assert_frame_matches_codec(frame: Frame, raw: bytes) -> None:
    """tshark's frame equals codec.decode_datagram(raw), or its DecodeError."""
    try:
        decoded = codec.decode_datagram(raw)
    except DecodeError as exc:
        error: DecodeError | None = exc
    else:
        error = None
    if error is not None:
        if not raw:  # tshark hands an empty UDP payload to no dissector at all
            assert not frame.claimed
            return
        assert frame.claimed, f"frame {frame.number}: malformed but not dissected"
        assert (frame.top.get("grapevine.malformed.field"),
                int(frame.top.get("grapevine.malformed.offset", "-1"))) == (
            error.field, error.offset), f"frame {frame.number}: codec says {error}"
        assert frame.top.get("grapevine.malformed.error")
        assert "grapevine.malformed.expert" in frame.experts
        return
    assert frame.claimed, f"frame {frame.number} not dissected"
    assert "grapevine.malformed.field" not in frame.top, (frame.number, frame.top)
    assert "grapevine.malformed.expert" not in frame.experts
    shown_header = {key: parse(key, value) for key, value in frame.header.items()
                    if key.count(".") == 2 and key != "grapevine.header.send_time"}
    assert shown_header == codec_header(decoded, raw), frame.number
    assert len(frame.messages) == len(decoded.messages), frame.number
    for index, (flat, message) in enumerate(zip(frame.messages, decoded.messages,
                                                strict=True)):
        prefix = PREFIX[type(message)]
        assert int(dict(flat)["grapevine.message.index"]) == index
        expected_kind = message.kind if isinstance(message, UnknownMessage) else (
            WIRE_KIND[type(message)])
        assert message_kind(flat) == expected_kind
        assert shown_message(flat, prefix) == codec_message(message), (frame.number, index)
        if isinstance(message, EndOfSession):
            assert "grapevine.end_of_session" in dict(flat)
    if decoded.auth is None:
        assert frame.auth is None
    else:
        assert {k: parse(k, v) for k, v in (frame.auth or {}).items() if k.count(".") == 2} == {
            f"grapevine.auth.{name}": value
            for name, value in zip(AuthTag._fields, decoded.auth, strict=True)}


# --------------------------------------------------------------------------- books


def book_fields(book: OrderBook) -> dict[str, Any]:
    """A decoded book in the order-book vectors' vocabulary, plus its checksum."""
    trade = book.last_trade
    tp, tq, tt = (0, 0, 0) if trade is None else trade
    bids = [dict(zip(LEVEL_FIELDS, lv, strict=True)) for lv in book.iter_levels(Side.BID)]
    asks = [dict(zip(LEVEL_FIELDS, lv, strict=True)) for lv in book.iter_levels(Side.ASK)]
    return {"version": 1, "flags": int(trade is not None), "n_bids": len(bids),
            "n_asks": len(asks), "last_trade_price": tp, "last_trade_qty": tq,
            "last_trade_time_ns": tt, "traded_volume": book.traded_volume, "bids": bids,
            "asks": asks, "checksum": book.checksum()}


def shown_book(flat: list[tuple[str, str]]) -> dict[str, Any] | None:
    """The book tshark shows under a message, or None."""
    values = dict(flat)
    if "grapevine.book.checksum" not in values:
        return None
    out: dict[str, Any] = {name: int(values[f"grapevine.book.{name}"], 0) for name in BOOK_HEADER}
    for side in ("bids", "asks"):
        columns = {name: [int(v, 0) for k, v in flat if k == f"grapevine.book.{side}.{name}"]
                   for name in LEVEL_FIELDS}
        out[side] = [dict(zip(LEVEL_FIELDS, row, strict=True))
                     for row in zip(*columns.values(), strict=True)]
    out["checksum"] = int(values["grapevine.book.checksum"], 16)
    return out


def shown_book_delta(flat: list[tuple[str, str]]) -> BookDelta | None:
    values = dict(flat)
    if "grapevine.book_delta" not in values:
        return None
    return BookDelta(Op(int(values["grapevine.book_delta.op"])),
                     Side(int(values["grapevine.book_delta.side"])),
                     *(int(values[f"grapevine.book_delta.{name}"])
                       for name in BookDelta._fields[2:]))


def shown_payload_error(flat: list[tuple[str, str]]) -> tuple[str, int] | str | None:
    values = dict(flat)
    if "grapevine.payload_error.reason" not in values:
        return None
    if "grapevine.payload_error.field" not in values:
        return values["grapevine.payload_error.reason"]
    return (values["grapevine.payload_error.field"],
            int(values["grapevine.payload_error.offset"]))


def expected_book(payload: bytes, allow_crossed: bool) -> dict[str, Any] | tuple[str, int]:
    try:
        return book_fields(decode_book(payload, allow_crossed=allow_crossed))
    except DecodeError as exc:
        return exc.field, exc.offset


def expected_book_delta(payload: bytes) -> BookDelta | tuple[str, int]:
    try:
        return OrderBookModel().decode_delta(memoryview(payload))
    except DecodeError as exc:
        return exc.field, exc.offset


def snapshot_datagram(payload: bytes, leaf_id: int) -> bytes:
    """``payload`` as the whole leaf encoding of one snapshot."""
    snap = Snapshot(leaf_id, 0, 1, 0, 1, 0, 1, len(payload), 0, int(wire.SnapshotFlag.LAST),
                    payload)
    return codec.encode_datagram(Decoded(1, 0, STREAM_ID, SESSION_ID, 1, SEND_TIME_NS, [snap]))


def delta_datagram(payload: bytes, leaf_id: int) -> bytes:
    delta = Delta(1, leaf_id, 1, int(wire.DeltaFlag.CREATE), payload)
    return codec.encode_datagram(Decoded(1, 0, STREAM_ID, SESSION_ID, 1, SEND_TIME_NS,
                                         [delta]))


# --------------------------------------------------------------------------- grapevine decode


DECODE_CAPTURE_FIELDS = {"source", "capture_index", "capture_time_ns", "src", "src_port", "dst",
                         "dst_port", "length"}
DECODE_DATAGRAM_FIELDS = {"version": "grapevine.header.version",
                          "datagram_flags": "grapevine.header.flags",
                          "stream_id": "grapevine.header.stream_id",
                          "session_id": "grapevine.header.session_id",
                          "sequence": "grapevine.header.sequence",
                          "send_time_ns": "grapevine.header.send_time_ns",
                          "message_count": "grapevine.header.message_count"}
DECODE_ERROR = re.compile(r"\(field '([^']+)' at offset (\d+)\)$")


def decode_json(pcap: Path) -> dict[int, list[dict[str, Any]]]:
    """``grapevine decode --json --model book`` of the capture, by frame number."""
    result = subprocess.run(
        [sys.executable, "-m", "grapevine", "decode", "--json", "--model", "book", str(pcap)],
        capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr
    records: dict[int, list[dict[str, Any]]] = {}
    for line in result.stdout.splitlines():
        record = json.loads(line)
        records.setdefault(record["capture_index"], []).append(record)
    return records


def assert_frame_matches_decode(frame: Frame, records: list[dict[str, Any]]) -> None:
    """tshark (payload_model book, crossed books allowed) equals grapevine decode's records."""
    if records[0]["kind"] == "MALFORMED":
        (record,) = records
        raw = bytes.fromhex(record["data"])
        if not frame.claimed:  # the heuristic leaves other protocols alone
            assert len(raw) < 5 or raw[:4] != wire.MAGIC or raw[4] != wire.VERSION
            return
        assert (frame.top["grapevine.malformed.field"],
                int(frame.top["grapevine.malformed.offset"])) == (record["field"],
                                                                 record["offset"])
        return
    assert frame.claimed
    header = frame.header
    for name, abbreviation in DECODE_DATAGRAM_FIELDS.items():
        assert int(header[abbreviation], 0) == records[0][name], name
    auth = records[0]["auth"]
    if auth is None:
        assert frame.auth is None
    else:
        assert frame.auth is not None
        assert int(frame.auth["grapevine.auth.key_id"]) == auth["key_id"]
        assert parse("tag", frame.auth["grapevine.auth.tag"]).hex() == auth["tag"]
    assert len(records) == len(frame.messages)
    for record, flat in zip(records, frame.messages, strict=True):
        values = dict(flat)
        assert int(values["grapevine.message.index"]) == record["message_index"]
        assert message_kind(flat) == record["wire_kind"]
        prefix = KIND_OF_RECORD[record["kind"]]
        shown = shown_message(flat, prefix)
        named = {key: value for key, value in record.items()
                 if key not in DECODE_CAPTURE_FIELDS | set(DECODE_DATAGRAM_FIELDS)
                 | {"auth", "message_index", "kind", "wire_kind", "decoded", "decode_error"}}
        if prefix == "unknown":  # the record's "kind" is the name; the kind byte is wire_kind
            named["kind"] = record["wire_kind"]
        for key, value in named.items():
            got = shown[f"grapevine.{prefix}.{key}"]
            if isinstance(got, bytes):
                got = got.hex()
            if key == "entries":
                got = [{"leaf_id": i, "leaf_seq": s} for i, s in got]
            assert got == value, (frame.number, key)
        assert sorted(shown) == sorted(f"grapevine.{prefix}.{key}" for key in named)
        assert_payload_matches_decode(frame.number, record, flat)


def assert_payload_matches_decode(number: int, record: dict[str, Any],
                                  flat: list[tuple[str, str]]) -> None:
    decoded, error = record.get("decoded"), record.get("decode_error")
    shown_error = shown_payload_error(flat)
    if error is None:
        assert shown_error is None, (number, shown_error)
    else:
        found = DECODE_ERROR.search(error)
        if found is None:  # not a DecodeError: the reassembly limit
            assert shown_error == error, number
        else:
            assert shown_error == (found.group(1), int(found.group(2))), (number, error)
    if record["kind"] == "DELTA":
        delta = shown_book_delta(flat)
        if decoded is None:
            assert delta is None, number
        else:
            assert delta is not None, number
            assert (delta.op.name, delta.side.name, delta.price_ticks, delta.quantity,
                    delta.time_ns) == (decoded["op"], decoded["side"], decoded["price_ticks"],
                                       decoded["quantity"], decoded["time_ns"])
    elif record["kind"] == "SNAPSHOT":
        book = shown_book(flat)
        if decoded is None:
            assert book is None, number
        else:
            assert book is not None, number
            trade = decoded["last_trade"]
            assert book["bids"] == decoded["bids"]
            assert book["asks"] == decoded["asks"]
            assert book["traded_volume"] == decoded["traded_volume"]
            assert book["checksum"] == decoded["checksum"]
            assert (book["last_trade_price"], book["last_trade_qty"],
                    book["last_trade_time_ns"]) == ((0, 0, 0) if trade is None else (
                trade["price_ticks"], trade["quantity"], trade["time_ns"]))


# --------------------------------------------------------------------------- registration


def test_every_codec_field_is_registered() -> None:
    """``tshark -G fields`` lists grapevine.<kind>.<field> for every codec named tuple field,
    the book payloads' fields, and the heuristic is registered on UDP."""
    assert TSHARK is not None
    listed = subprocess.run([TSHARK, "-G", "fields", "-X", f"lua_script:{LUA}"],
                            capture_output=True, text=True, timeout=60, check=True).stdout
    names = {line.split("\t")[2] for line in listed.splitlines()
             if line.startswith("F\t") and "\tgrapevine" in line}
    expected = {f"grapevine.header.{name}" for name in HEADER_FIELDS}
    expected |= {f"grapevine.auth.{name}" for name in AuthTag._fields}
    for kind, prefix in PREFIX.items():
        expected |= {f"grapevine.{prefix}.{name}" for name in kind._fields}
    expected.add("grapevine.end_of_session")  # its tuple has no fields: the message itself
    expected |= {f"grapevine.book_delta.{name}" for name in BookDelta._fields}
    expected |= {f"grapevine.book.{name}" for name in (*BOOK_HEADER, "checksum")}
    expected |= {f"grapevine.book.{side}.{name}" for side in ("bids", "asks")
                 for name in LEVEL_FIELDS}
    expected |= {f"grapevine.retransmit.{name}" for name in RETRANSMIT_WIRE}
    expected |= {"grapevine.malformed.field", "grapevine.malformed.offset",
                 "grapevine.touched.entries.leaf_id", "grapevine.touched.entries.leaf_seq"}
    assert expected <= names, sorted(expected - names)
    heuristics = subprocess.run([TSHARK, "-G", "heuristic-decodes", "-X", f"lua_script:{LUA}"],
                                capture_output=True, text=True, timeout=60, check=True).stdout
    assert "udp\tgrapevine\tT" in heuristics.splitlines()


# --------------------------------------------------------------------------- protocol vectors


def test_protocol_vectors_on_any_port_match_the_codec(tmp_path: Path) -> None:
    """The heuristic claims every vector with magic GRPV and version 1, on ports nothing
    registers, and shows exactly the codec's fields or DecodeError; it leaves the others."""
    pcap = tmp_path / "vectors.pcap"
    raws = write_pcap(pcap, (bytes.fromhex(v["hex"]) for v in VECTORS),
                      ports=[40_000 + i for i in range(len(VECTORS))])
    frames = run_tshark(pcap)
    assert len(frames) == len(VECTORS)
    kinds: set[type] = set()
    for frame, raw, vector in zip(frames, raws, VECTORS, strict=True):
        if len(raw) < 5 or raw[:4] != wire.MAGIC or raw[4] != wire.VERSION:
            assert not frame.claimed, vector["name"]
            continue
        assert_frame_matches_codec(frame, raw)
        if vector["valid"]:
            kinds |= {type(m) for m in codec.decode_datagram(raw).messages}
        else:
            assert frame.top["grapevine.malformed.field"] == vector["error"]["field"]
            assert int(frame.top["grapevine.malformed.offset"]) == vector["error"]["offset"]
    assert kinds == set(PREFIX)
    assert any(f.auth for f in frames)
    assert sum(not f.claimed for f in frames) >= 3  # bad magic, bad version, empty


def test_protocol_vectors_on_the_configured_port(tmp_path: Path) -> None:
    """With grapevine.udp_port every datagram to that port is Grapevine (bad magic and
    version are malformed, not someone else's), even with the heuristic disabled."""
    pcap = tmp_path / "port.pcap"
    foreign = b"GRPW" + bytes(60)  # another port and another magic: never claimed
    raws = write_pcap(pcap, [*(bytes.fromhex(v["hex"]) for v in VECTORS), foreign],
                      ports=[PORT] * len(VECTORS) + [PORT + 1])
    frames = run_tshark(pcap, {"udp_port": str(PORT)},
                        extra=["--disable-heuristic", "grapevine_udp"])
    for frame, raw in zip(frames[:-1], raws, strict=False):
        assert_frame_matches_codec(frame, raw)
    assert not frames[-1].claimed
    bad_magic = next(i for i, v in enumerate(VECTORS) if v["name"] == "bad_magic")
    assert frames[bad_magic].top["grapevine.malformed.field"] == "magic"


def test_display_filters_use_the_field_names(tmp_path: Path) -> None:
    """The abbreviations work in display filters and ``-T fields``."""
    assert TSHARK is not None
    pcap = tmp_path / "vectors.pcap"
    write_pcap(pcap, (bytes.fromhex(v["hex"]) for v in VECTORS))
    result = subprocess.run(
        [TSHARK, "-n", "-r", str(pcap), "-X", f"lua_script:{LUA}", "-Y",
         "grapevine.delta.leaf_id == 42 && !grapevine.malformed.field", "-T", "fields",
         "-e", "frame.number", "-e", "grapevine.delta.seq", "-e", "grapevine.delta.leaf_seq"],
        capture_output=True, text=True, timeout=60, check=True)
    shown = sorted(tuple(line.split("\t")) for line in result.stdout.splitlines())
    expected = []
    for number, vector in enumerate(VECTORS, 1):
        try:
            decoded = codec.decode_datagram(bytes.fromhex(vector["hex"]))
        except DecodeError:
            continue
        deltas = [m for m in decoded.messages if isinstance(m, Delta)]
        if any(m.leaf_id == 42 for m in deltas):
            expected.append((str(number), ",".join(str(m.seq) for m in deltas),
                             ",".join(str(m.leaf_seq) for m in deltas)))
    assert shown == sorted(expected)
    assert len(expected) >= 3


def test_protocol_vectors_match_grapevine_decode(tmp_path: Path) -> None:
    """Frame by frame and message by message, tshark equals ``grapevine decode --json
    --model book`` (payload_model book), including its order-book decode errors."""
    pcap = tmp_path / "vectors.pcap"
    write_pcap(pcap, (bytes.fromhex(v["hex"]) for v in VECTORS))
    frames = run_tshark(pcap, {"payload_model": "book"})
    records = decode_json(pcap)
    assert set(records) == {frame.number for frame in frames}
    for frame in frames:
        assert_frame_matches_decode(frame, records[frame.number])


# --------------------------------------------------------------------------- order books


def book_vector_pcap(path: Path) -> list[tuple[dict[str, Any], bytes]]:
    """Each order-book payload vector in a datagram: books as snapshots, deltas as DELTAs."""
    carried = []
    for leaf_id, vector in enumerate(BOOK_VECTORS.values(), 1):
        if vector["kind"] not in ("book", "delta"):
            continue
        payload = bytes.fromhex(vector["hex"])
        make = snapshot_datagram if vector["kind"] == "book" else delta_datagram
        carried.append((vector, make(payload, leaf_id)))
    write_pcap(path, (datagram for _, datagram in carried))
    return carried


@pytest.mark.parametrize("allow_crossed", [True, False])
def test_orderbook_vectors_in_book_mode(tmp_path: Path, allow_crossed: bool) -> None:
    """Every book and delta vector shows its fields and checksum, or the error decode_book /
    decode_delta raise, with the vector's own field and offset."""
    pcap = tmp_path / "books.pcap"
    carried = book_vector_pcap(pcap)
    frames = run_tshark(pcap, {"payload_model": "book",
                               "allow_crossed": "TRUE" if allow_crossed else "FALSE"})
    checked = 0
    for frame, (vector, datagram) in zip(frames, carried, strict=True):
        assert_frame_matches_codec(frame, datagram)
        (flat,) = frame.messages
        payload = bytes.fromhex(vector["hex"])
        if not payload:  # an empty payload is never decoded (a DELETE has none)
            assert shown_payload_error(flat) is None
            assert shown_book(flat) is None
            assert shown_book_delta(flat) is None
            continue
        if vector["kind"] == "book":
            expected: Any = expected_book(payload, allow_crossed)
            shown: Any = shown_book(flat) or shown_payload_error(flat)
            # A book that passes every rule but B10 and is crossed gets a warning.
            crossed = isinstance(expected_book(payload, True), dict) and decode_book(
                payload, allow_crossed=True).crossed
            assert ("grapevine.book.crossed.expert" in frame.experts) == crossed
        else:
            expected = expected_book_delta(payload)
            shown = shown_book_delta(flat) or shown_payload_error(flat)
        assert shown == expected, vector["name"]
        # The vector's own outcome, wherever the setting does not change it.
        vector_allows = vector.get("allow_crossed", allow_crossed)
        if vector_allows == allow_crossed or (
                vector["kind"] == "book" and expected == expected_book(payload, vector_allows)):
            if not vector["valid"]:
                assert shown == (vector["error"]["field"], vector["error"]["offset"])
            elif vector["kind"] == "book":
                assert shown == {**vector["fields"], "checksum": vector["checksum"]}
            checked += 1
    # All but the two empty payloads and the crossed ones the setting decides.
    assert checked >= len(carried) - 4


def test_orderbook_vectors_in_auto_and_opaque_mode(tmp_path: Path) -> None:
    """auto decodes what has the shape of a book payload (and reports its later faults);
    opaque decodes nothing."""
    pcap = tmp_path / "books.pcap"
    carried = book_vector_pcap(pcap)
    auto = run_tshark(pcap)  # the default
    opaque = run_tshark(pcap, {"payload_model": "opaque"})
    book = run_tshark(pcap, {"payload_model": "book"})
    shape = {"book.header", "version", "flags", "n_bids", "book_delta", "op", "side"}
    for (vector, _), a, o, b in zip(carried, auto, opaque, book, strict=True):
        (flat_a,), (flat_o,), (flat_b,) = a.messages, o.messages, b.messages
        assert shown_book(flat_o) is None
        assert shown_book_delta(flat_o) is None
        assert shown_payload_error(flat_o) is None
        error = shown_payload_error(flat_b)
        if isinstance(error, tuple) and error[0] in shape:
            assert shown_payload_error(flat_a) is None, vector["name"]
            assert shown_book(flat_a) is None
            assert shown_book_delta(flat_a) is None
        else:
            assert (shown_book(flat_a), shown_book_delta(flat_a), shown_payload_error(flat_a)) \
                == (shown_book(flat_b), shown_book_delta(flat_b), error), vector["name"]
    # Opaque payloads of the protocol vectors are left alone in auto mode.
    pcap = tmp_path / "vectors.pcap"
    write_pcap(pcap, (bytes.fromhex(v["hex"]) for v in VECTORS))
    for frame in run_tshark(pcap):
        for flat in frame.messages:
            assert shown_payload_error(flat) is None
            assert shown_book(flat) is None
            assert shown_book_delta(flat) is None


@pytest.mark.parametrize("two_pass", [False, True], ids=["one-pass", "two-pass"])
def test_orderbook_stream_reassembles_fragmented_books(tmp_path: Path, two_pass: bool) -> None:
    """The stream vector: every DELTA's book delta is its sequence step's; the fragment that
    completes a book shows it with the vector's checksum, the others say more follow."""
    stream = BOOK_VECTORS["stream"]
    steps = {s["step"]: s for s in BOOK_VECTORS["sequence"]["steps"]}
    pcap = tmp_path / "stream.pcap"
    raws = write_pcap(pcap, (bytes.fromhex(d["hex"]) for d in stream["datagrams"]))
    frames = run_tshark(pcap, two_pass=two_pass)
    books = 0
    for frame, raw, datagram in zip(frames, raws, stream["datagrams"], strict=True):
        assert_frame_matches_codec(frame, raw)
        for flat, described in zip(frame.messages, datagram["messages"], strict=True):
            if described["kind"] == "DELTA":
                step = steps[described["step"]]
                delta = shown_book_delta(flat)
                assert delta is not None
                assert delta.op.name == step["delta"]["op_name"]
                assert (delta.price_ticks, delta.quantity) == (
                    step["delta"]["price_ticks"], step["delta"]["quantity"])
                continue
            book = shown_book(flat)
            if described["complete"]:
                assert book is not None
                assert book["checksum"] == described["checksum"]
                whole = bytes.fromhex(stream["final"][str(described["leaf_id"])]["hex"])
                assert book == book_fields(decode_book(whole))
                books += 1
            else:
                assert book is None
                assert dict(flat).get("grapevine.book.incomplete") == "1"
    assert books == 2


def test_out_of_order_fragments_match_grapevine_decode(tmp_path: Path) -> None:
    """Fragments out of order, a lone middle fragment and a stream from its middle: the
    dissector puts together exactly what grapevine decode --model book does."""
    datagrams = [bytes.fromhex(d["hex"]) for d in BOOK_VECTORS["stream"]["datagrams"]]
    order = [6, 5, 7, 0, 1, 5, 6, 7, 6, 7, 2, 3, 4, 5, 7, 6]
    pcap = tmp_path / "shuffled.pcap"
    write_pcap(pcap, (datagrams[i] for i in order))
    frames = run_tshark(pcap, {"payload_model": "book"})
    records = decode_json(pcap)
    for frame in frames:
        assert_frame_matches_decode(frame, records[frame.number])
    shown = [frame.number for frame in frames for flat in frame.messages
             if shown_book(flat) is not None]
    # Leaf 1's book in each of the three copies of datagram 5, and leaf 2's only where its
    # three fragments come in order (5, 6, 7): out-of-order ones drop what was held.
    assert len(shown) == 4


# --------------------------------------------------------------------------- robustness


def mutations(raw: bytes, rng: random.Random) -> Iterator[bytes]:
    """Damaged copies of a datagram: byte flips, cuts, extensions and changed counts."""
    for _ in range(6):
        data = bytearray(raw)
        for _ in range(rng.randrange(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        yield bytes(data)
    yield raw[: rng.randrange(len(raw))]
    yield raw + bytes(rng.randrange(1, 30))
    for offset in (6, 38):  # message_count, the first message's length
        if len(raw) >= offset + 2:
            data = bytearray(raw)
            struct.pack_into("<H", data, offset, rng.randrange(65536))
            yield bytes(data)


@pytest.mark.timeout(120)
def test_mutated_datagrams_match_the_codec(tmp_path: Path) -> None:
    """Hundreds of damaged datagrams: no Lua error, and the dissector reports exactly the
    codec's fields or the codec's DecodeError field and offset."""
    rng = random.Random(20260101)
    sources = [bytes.fromhex(v["hex"]) for v in VECTORS if v["valid"] and v["size"] < 4000]
    sources += [bytes.fromhex(d["hex"]) for d in BOOK_VECTORS["stream"]["datagrams"]]
    raws = [m for raw in sources for m in mutations(raw, rng)]
    # Sequence arithmetic at the edge of 2^64, on datagrams that are otherwise valid.
    for sequence in (2**64 - 3, 2**64 - 2, 2**64 - 1):
        for raw in sources[:20]:
            data = bytearray(raw)
            struct.pack_into("<Q", data, 20, sequence)
            raws.append(bytes(data))
    pcap = tmp_path / "mutated.pcap"
    write_pcap(pcap, raws)
    frames = run_tshark(pcap, {"udp_port": str(PORT), "payload_model": "book"})
    outcomes = {"valid": 0, "malformed": 0}
    for frame, raw in zip(frames, raws, strict=True):
        assert_frame_matches_codec(frame, raw)
        outcomes["malformed" if "grapevine.malformed.field" in frame.top else "valid"] += 1
    assert outcomes["valid"] > 50, outcomes
    assert outcomes["malformed"] > 200, outcomes


@pytest.mark.timeout(120)
def test_mutated_book_payloads_match_the_model(tmp_path: Path) -> None:
    """Damaged book and delta payloads in valid datagrams: the dissector shows what
    decode_book / decode_delta give, fields and checksum or the error's field and offset."""
    rng = random.Random(7)
    payloads = [(v["kind"], bytes.fromhex(v["hex"])) for v in BOOK_VECTORS.values()
                if v["kind"] in ("book", "delta") and v["size"]]
    cases: list[tuple[str, bytes]] = []
    for kind, payload in payloads:
        for _ in range(8):
            data = bytearray(payload)
            for _ in range(rng.randrange(1, 3)):
                data[rng.randrange(len(data))] = rng.choice((0, 1, 2, 0xFF, rng.randrange(256)))
            cases.append((kind, bytes(data)))
        cases.append((kind, payload[: rng.randrange(1, len(payload) + 1)]))
    datagrams = [(snapshot_datagram if kind == "book" else delta_datagram)(payload, i)
                 for i, (kind, payload) in enumerate(cases, 1)]
    pcap = tmp_path / "payloads.pcap"
    write_pcap(pcap, datagrams)
    frames = run_tshark(pcap, {"payload_model": "book", "allow_crossed": "FALSE"})
    decoded = rejected = 0
    for frame, (kind, payload) in zip(frames, cases, strict=True):
        (flat,) = frame.messages
        if kind == "book":
            expected: Any = expected_book(payload, allow_crossed=False)
            shown: Any = shown_book(flat) or shown_payload_error(flat)
        else:
            expected = expected_book_delta(payload)
            shown = shown_book_delta(flat) or shown_payload_error(flat)
        assert shown == expected, (frame.number, kind, payload.hex())
        if isinstance(expected, tuple):
            rejected += 1
        else:
            decoded += 1
    assert decoded > 30, (decoded, rejected)
    assert rejected > 100, (decoded, rejected)


# --------------------------------------------------------------------------- retransmission


RETRANSMIT_WIRE = [sub.name for sub in wire.RetransmitFields.subcons]


def assert_retransmit_matches(frame: Frame, raw: bytes) -> None:
    """A GRPR packet: tshark equals decode_retransmit (fields, trailer or DecodeError)."""
    error: DecodeError | None = None
    try:
        message = decode_retransmit(raw)
    except DecodeError as exc:
        error = exc
    assert frame.claimed, frame.number
    if error is not None:
        assert (frame.top["grapevine.malformed.field"],
                int(frame.top["grapevine.malformed.offset"])) == (error.field, error.offset)
        return
    assert "grapevine.malformed.field" not in frame.top
    (flat,) = frame.messages
    shown = {key: parse(key, value) for key, value in flat if key.count(".") == 2}
    assert shown.pop("grapevine.retransmit.magic") == wire.RETRANSMIT_MAGIC
    assert shown.pop("grapevine.retransmit.version") == wire.VERSION
    assert shown.pop("grapevine.retransmit.reserved") == raw[7]
    assert shown == {f"grapevine.retransmit.{name}": value
                     for name, value in zip(RetransmitMessage._fields, message, strict=True)}
    assert set(RetransmitMessage._fields) | {"magic", "version", "reserved"} == set(
        RETRANSMIT_WIRE)
    if message.flags & wire.HeaderFlag.AUTH:
        assert frame.auth is not None
        assert int(frame.auth["grapevine.auth.key_id"]) == int.from_bytes(raw[60:64], "little")
        assert parse("tag", frame.auth["grapevine.auth.tag"]) == raw[64:]
    else:
        assert frame.auth is None


def test_retransmission_packets_match_decode_retransmit(tmp_path: Path) -> None:
    """The SPEC section 15 vectors and damaged copies of them: GRPR packets show
    decode_retransmit's fields or its DecodeError's field and offset; others are stream
    datagrams (the codec's view) or, to the heuristic, not Grapevine at all."""
    rng = random.Random(15)
    raws = [bytes.fromhex(v["hex"]) for v in RETRANSMIT_VECTORS]
    for raw in list(raws):
        for _ in range(12):
            data = bytearray(raw)
            data[rng.randrange(4, len(data))] = rng.randrange(256)
            raws.append(bytes(data))
        raws.append(raw[: rng.randrange(5, len(raw))])
    assert sum(v["valid"] for v in RETRANSMIT_VECTORS) >= 4
    pcap = tmp_path / "retransmit.pcap"
    write_pcap(pcap, raws, ports=[50_000 + i for i in range(len(raws))])
    on_port = tmp_path / "retransmit_port.pcap"
    write_pcap(on_port, raws)
    heuristic = run_tshark(pcap)
    fixed = run_tshark(on_port, {"udp_port": str(PORT)})
    checked = 0
    for raw, by_heuristic, by_port in zip(raws, heuristic, fixed, strict=True):
        for frame in (by_heuristic, by_port):
            if frame is by_heuristic and (raw[4] != wire.VERSION or raw[:4] not in (
                    wire.MAGIC, wire.RETRANSMIT_MAGIC)):
                assert not frame.claimed
            elif raw[:4] == wire.RETRANSMIT_MAGIC:
                assert_retransmit_matches(frame, raw)
                checked += 1
            else:
                assert_frame_matches_codec(frame, raw)
    for vector, frame in zip(RETRANSMIT_VECTORS, fixed, strict=False):
        if not vector["valid"] and vector["hex"].startswith(wire.RETRANSMIT_MAGIC.hex()):
            assert frame.top["grapevine.malformed.field"] == vector["error"]["field"]
            assert int(frame.top["grapevine.malformed.offset"]) == vector["error"]["offset"]
    assert checked > 150


# --------------------------------------------------------------------------- real traffic


def run_capture_tool(out: Path, *options: str) -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, str(CAPTURE_TOOL), str(out), *options], capture_output=True,
        text=True, timeout=100, check=False, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stdout + result.stderr
    summary: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return summary


def read_pcap(path: Path) -> list[bytes]:
    """The UDP payloads of a pcap of Ethernet frames (IPv4), in order."""
    data = path.read_bytes()
    magic = struct.unpack_from("<I", data, 0)[0]
    assert magic in (0xA1B2C3D4, 0xA1B23C4D)
    assert struct.unpack_from("<I", data, 20)[0] == 1  # LINKTYPE_ETHERNET
    payloads, offset = [], 24
    while offset < len(data):
        captured = struct.unpack_from("<I", data, offset + 8)[0]
        frame = data[offset + 16 : offset + 16 + captured]
        offset += 16 + captured
        assert frame[12:14] == b"\x08\x00"  # IPv4
        assert frame[23] == 17  # UDP
        udp = 14 + (frame[14] & 0x0F) * 4
        length = struct.unpack_from("!H", frame, udp + 4)[0]
        payloads.append(frame[udp + 8 : udp + length])
    return payloads


def check_real_traffic(pcap: Path) -> None:
    """The capture's every frame against the codec and grapevine decode, in both payload
    modes; the traffic holds every message kind, signed datagrams and fragmented books."""
    raws = read_pcap(pcap)
    auto = run_tshark(pcap)
    book = run_tshark(pcap, {"payload_model": "book"})
    records = decode_json(pcap)
    kinds: set[type] = set()
    books = fragments = deltas = 0
    for raw, frame_auto, frame_book in zip(raws, auto, book, strict=True):
        assert_frame_matches_codec(frame_auto, raw)
        assert_frame_matches_decode(frame_book, records[frame_book.number])
        # Real traffic is all order books: auto finds exactly what book mode shows.
        for flat_a, flat_b in zip(frame_auto.messages, frame_book.messages, strict=True):
            assert shown_book(flat_a) == shown_book(flat_b)
            assert shown_book_delta(flat_a) == shown_book_delta(flat_b)
            assert shown_payload_error(flat_b) is None
            books += shown_book(flat_a) is not None
            deltas += shown_book_delta(flat_a) is not None
            fragments += dict(flat_a).get("grapevine.book.incomplete") == "1"
        kinds |= {type(m) for m in codec.decode_datagram(raw).messages}
    assert kinds == set(PREFIX) - {UnknownMessage}
    assert any(frame.auth for frame in auto)
    assert books >= 10, books
    assert deltas >= 300, deltas
    assert fragments >= 6, fragments


@pytest.mark.network
@pytest.mark.timeout(180)
def test_recorded_traffic(tmp_path: Path) -> None:
    """Real traffic on loopback multicast (TTL 0), as a socket received it."""
    pcap = tmp_path / "recorded.pcap"
    summary = run_capture_tool(pcap, "--recorder")
    assert summary["mode"] == "recorder"
    assert len(read_pcap(pcap)) == summary["datagrams"]
    check_real_traffic(pcap)


@pytest.mark.network
@pytest.mark.netns
@pytest.mark.timeout(180)
def test_dumpcap_capture_in_a_private_namespace(tmp_path: Path) -> None:
    """Real traffic captured by dumpcap on lo in a network namespace of its own."""
    pcap = tmp_path / "captured.pcap"
    summary = run_capture_tool(pcap)
    assert summary["mode"] == "dumpcap"
    # dumpcap captured every datagram the watching socket received (and maybe the last
    # END_OF_SESSION copies the socket was no longer reading).
    assert summary["missed"] == 0
    assert summary["captured"] >= summary["datagrams"]
    check_real_traffic(pcap)


def test_checksum_of_the_lua_blake2b_is_hashlib_s(tmp_path: Path) -> None:
    """The dissector's BLAKE2b-64 over books of 42 to 10,038 bytes (1 to 79 blocks of 128
    bytes; a book is 2 mod 4 bytes long, so its last block is always partial) equals
    hashlib's and OrderBook.checksum()."""
    payloads = []
    for n in (0, 1, 2, 3, 4, 5, 9, 10, 14, 15, 100, 200, 357):
        book = OrderBook()
        for i in range(n):
            book.apply(BookDelta(Op.ADD, Side.BID, 1_000 - i, i + 1, i))
        payloads.append((OrderBookModel().encode_leaf(book), book.checksum()))
    assert {-(-len(p) // 128) for p, _ in payloads} >= {1, 2, 3, 4, 79}
    pcap = tmp_path / "sizes.pcap"
    write_pcap(pcap, (snapshot_datagram(p, i) for i, (p, _) in enumerate(payloads, 1)))
    for frame, (payload, checksum) in zip(run_tshark(pcap), payloads, strict=True):
        (flat,) = frame.messages
        shown = shown_book(flat)
        assert shown is not None
        assert shown["checksum"] == checksum == int.from_bytes(
            hashlib.blake2b(payload, digest_size=8).digest(), "little")
