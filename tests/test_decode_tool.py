"""``grapevine decode`` / tools/decode.py on every vector, on hex input and on pcap captures."""

from __future__ import annotations

import argparse
import io
import json
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # the venv may not have grapevine installed
    sys.path.insert(0, str(ROOT))

from grapevine import _decode_cmd, codec  # noqa: E402
from grapevine._capture import read_packets  # noqa: E402

VECTOR_FILES = sorted((ROOT / "protocol" / "vectors").glob("*.json"))
VECTORS = {p.stem: json.loads(p.read_text()) for p in VECTOR_FILES}
PORT = 5000


def run_in_process(argv: list[str], stdin: str = "") -> tuple[int, str]:
    parser = argparse.ArgumentParser()
    _decode_cmd.add_arguments(parser)
    out = io.StringIO()
    code = _decode_cmd._run(parser.parse_args(argv), out, io.StringIO(stdin))
    return code, out.getvalue()


def run_script(argv: list[str], stdin: str = "") -> tuple[int, str]:
    result = subprocess.run([sys.executable, str(ROOT / "tools" / "decode.py"), *argv],
                            capture_output=True, text=True, input=stdin, timeout=60,
                            check=False, cwd="/")
    assert result.stderr == ""
    return result.returncode, result.stdout


def summary(text: str) -> str:
    last = text.strip().splitlines()[-1]
    assert last.startswith("summary: ")
    return last


# --------------------------------------------------------------------------- pcap building


def ipv4_udp(payload: bytes, *, dst_port: int = PORT, src_port: int = 40000,
             proto: int = 17, fragment: int = 0) -> bytes:
    udp = struct.pack(">HHHH", src_port, dst_port, 8 + len(payload), 0) + payload
    total = 20 + len(udp)
    ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, total, 1, fragment, 1, proto, 0,
                     bytes([10, 0, 0, 1]), bytes([239, 1, 2, 3]))
    return ip + udp


def ethernet(ip: bytes, *, vlan: bool = False, ethertype: int = 0x0800) -> bytes:
    macs = bytes.fromhex("01005e010203") + bytes.fromhex("020000000001")
    tag = struct.pack(">HH", 0x8100, 42) if vlan else b""
    return macs + tag + struct.pack(">H", ethertype) + ip


def sll(ip: bytes) -> bytes:
    return struct.pack(">HHH8sH", 0, 1, 6, bytes(8), 0x0800) + ip


def pcap(frames: list[bytes], linktype: int, *, order: str = "<", nanos: bool = False,
         truncate_last: int = 0) -> bytes:
    magic = 0xA1B23C4D if nanos else 0xA1B2C3D4
    out = bytearray(struct.pack(order + "IHHiIII", magic, 2, 4, 0, 0, 65535, linktype))
    for index, frame in enumerate(frames):
        captured = frame
        if truncate_last and index == len(frames) - 1:
            captured = frame[:-truncate_last]
        out += struct.pack(order + "IIII", 1_767_225_600 + index, 500, len(captured),
                           len(frame))
        out += captured
    return bytes(out)


def vector_bytes(name: str) -> bytes:
    return bytes.fromhex(VECTORS[name]["hex"])


GOOD = ["delta", "mixed_batch", "auth_trailer", "max_default_size"]
BAD = ["bad_magic", "truncated_delta_before_leaf_seq"]


def capture_frames(wrap: Any) -> list[bytes]:
    frames = [wrap(ipv4_udp(vector_bytes(n))) for n in GOOD + BAD]
    frames.append(wrap(ipv4_udp(vector_bytes("heartbeat"), dst_port=6000)))  # other port
    frames.append(wrap(ipv4_udp(b"x" * 30, proto=6)))  # TCP: not UDP
    frames.append(wrap(ipv4_udp(vector_bytes("delta"), fragment=0x2000)))  # IP fragment
    return frames


# --------------------------------------------------------------------------- vectors


@pytest.mark.parametrize("path", VECTOR_FILES, ids=[p.stem for p in VECTOR_FILES])
def test_every_vector_in_process(path: Path) -> None:
    vector = VECTORS[path.stem]
    code, text = run_in_process([str(path)])
    assert code == 0
    first = text.splitlines()[0]
    assert first.startswith(f"#1 {path.name}:{vector['name']} ({vector['size']} bytes)")
    if vector["valid"]:
        assert summary(text) == "summary: 1 datagrams, 1 decoded, 0 malformed"
        described = codec.describe_datagram(codec.decode_datagram(bytes.fromhex(vector["hex"])))
        assert described in text
    else:
        error = vector["error"]
        assert f"MALFORMED field={error['field']} offset={error['offset']}:" in first
        assert error["reason_contains"] in first
        assert summary(text) == "summary: 1 datagrams, 0 decoded, 1 malformed"


def test_all_vectors_in_one_subprocess() -> None:
    code, text = run_script([str(p) for p in VECTOR_FILES])
    assert code == 0
    valid = sum(v["valid"] for v in VECTORS.values())
    invalid = len(VECTORS) - valid
    assert summary(text) == (f"summary: {len(VECTORS)} datagrams, {valid} decoded, "
                             f"{invalid} malformed")
    assert text.count("MALFORMED") == invalid


# --------------------------------------------------------------------------- hex and raw


def test_hex_argument_with_separators() -> None:
    spaced = " ".join(VECTORS["heartbeat"]["hex"][i : i + 8]
                      for i in range(0, len(VECTORS["heartbeat"]["hex"]), 8))
    code, text = run_in_process([spaced])
    assert code == 0
    assert "HEARTBEAT interval_ms=1000" in text
    code, text = run_script([VECTORS["end_of_session"]["hex"]])
    assert code == 0
    assert "END_OF_SESSION" in text


def test_hex_lines_file_and_stdin(tmp_path: Path) -> None:
    lines = ["# captured by hand", VECTORS["delta"]["hex"], "",
             VECTORS["bad_magic"]["hex"] + "  # broken", VECTORS["heartbeat"]["hex"]]
    path = tmp_path / "capture.txt"
    path.write_text("\n".join(lines) + "\n")
    for runner in (run_in_process, run_script):
        code, text = runner([str(path)])
        assert code == 0
        assert summary(text) == "summary: 3 datagrams, 2 decoded, 1 malformed"
        assert "capture.txt:4" in text
        assert "MALFORMED field=magic offset=0" in text
        code, text = runner(["-"], "\n".join(lines))
        assert code == 0
        assert summary(text) == "summary: 3 datagrams, 2 decoded, 1 malformed"


def test_raw_binary_file(tmp_path: Path) -> None:
    path = tmp_path / "one.bin"
    path.write_bytes(vector_bytes("snapshot"))
    for runner in (run_in_process, run_script):
        code, text = runner([str(path)])
        assert code == 0
        assert "SNAPSHOT leaf=42 range_start=11" in text
        assert summary(text) == "summary: 1 datagrams, 1 decoded, 0 malformed"


def test_unreadable_input_exits_nonzero(tmp_path: Path) -> None:
    for runner in (run_in_process, run_script):
        code, text = runner([str(tmp_path / "missing.pcap"), VECTORS["delta"]["hex"]])
        assert code == 1
        assert "cannot read" in text
        assert summary(text) == ("summary: 1 datagrams, 1 decoded, 0 malformed, "
                                 "1 inputs unreadable")


def test_broken_pcap_and_bad_json_are_unreadable(tmp_path: Path) -> None:
    broken = tmp_path / "broken.pcap"
    broken.write_bytes(pcap([ethernet(ipv4_udp(vector_bytes("delta")))], 1)[:-5])
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{\"name\": \"x\"}")
    code, text = run_in_process([str(broken), str(bad_json)])
    assert code == 1
    assert text.count("cannot read") == 2


# --------------------------------------------------------------------------- pcap


@pytest.mark.parametrize(("linktype", "wrap", "order", "nanos"), [
    (1, ethernet, "<", False),
    (1, lambda ip: ethernet(ip, vlan=True), ">", False),
    (113, sll, "<", True),
    (101, lambda ip: ip, ">", True),
], ids=["ethernet", "ethernet_vlan_big_endian", "linux_sll_nanos", "raw_ip"])
def test_pcap(tmp_path: Path, linktype: int, wrap: Any, order: str, nanos: bool) -> None:
    path = tmp_path / "capture.pcap"
    path.write_bytes(pcap(capture_frames(wrap), linktype, order=order, nanos=nanos))
    for runner in (run_in_process, run_script):
        code, text = runner([str(path), "--port", str(PORT)])
        assert code == 0, text
        assert summary(text) == ("summary: 6 datagrams, 4 decoded, 2 malformed, "
                                 "3 packets skipped")
        stamp = "1767225600.000000500" if nanos else "1767225600.000500"
        assert f"capture.pcap:packet 1 t={stamp} " in text
        assert "capture.pcap:packet 4 t=1767225603." in text
        assert "10.0.0.1:40000 -> 239.1.2.3:5000" in text
        assert "MALFORMED field=magic offset=0" in text
        assert "auth key_id=1" in text
        # Without --port the datagram to port 6000 is decoded too.
        code, text = runner([str(path)])
        assert code == 0
        assert summary(text) == ("summary: 7 datagrams, 5 decoded, 2 malformed, "
                                 "2 packets skipped")


def test_pcap_truncated_capture_is_skipped(tmp_path: Path) -> None:
    frames = [ethernet(ipv4_udp(vector_bytes("delta"))), ethernet(ipv4_udp(vector_bytes("delta")))]
    path = tmp_path / "snaplen.pcap"
    path.write_bytes(pcap(frames, 1, truncate_last=10))
    code, text = run_in_process([str(path)])
    assert code == 0
    assert summary(text) == "summary: 1 datagrams, 1 decoded, 0 malformed, 1 packets skipped"


def test_read_packets_yields_exact_payloads() -> None:
    raw = pcap([sll(ipv4_udp(vector_bytes(n))) for n in GOOD], 113)
    payloads = [packet.payload for packet in read_packets(raw, port=PORT)]
    assert payloads == [vector_bytes(n) for n in GOOD]
    assert list(read_packets(raw, port=1)) == []


def test_read_packets_rejects_what_is_no_capture() -> None:
    with pytest.raises(_decode_cmd.PcapError):
        list(read_packets(b"\x0a\x0d\x0d\x0a" + bytes(40)))  # a pcapng header with no SHB


# --------------------------------------------------------------------------- streams

from test_replay_cmd import BASE_NS, GROUP, Stream, book_stream, write_pcapng  # noqa: E402

from grapevine.book import decode_book  # noqa: E402


@pytest.fixture(scope="module")
def stream() -> Stream:
    return book_stream(bursts=[(0.05, 200), (0.5, 200)], duration=1.0, leaves=6)


@pytest.fixture(scope="module")
def stream_capture(stream: Stream, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_pcapng(tmp_path_factory.mktemp("decode") / "stream.pcapng", stream.datagrams)


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


CAPTURE_KEYS = {"source", "capture_index", "capture_time_ns", "src", "src_port", "dst",
                "dst_port", "length"}
DATAGRAM_KEYS = {"version", "datagram_flags", "stream_id", "session_id", "sequence",
                 "send_time_ns", "message_count", "auth"}
MESSAGE_TYPES = {"DELTA": codec.Delta, "SNAPSHOT": codec.Snapshot,
                 "HEARTBEAT": codec.Heartbeat, "END_OF_SESSION": codec.EndOfSession,
                 "TOUCHED": codec.Touched, "UNKNOWN": codec.UnknownMessage}


def check_record(record: dict[str, Any], data: bytes) -> None:
    """A JSON record holds exactly the codec's fields of its message, with its values."""
    decoded = codec.decode_datagram(data)
    message = decoded.messages[record["message_index"]]
    kind_type = MESSAGE_TYPES[record["kind"]]
    assert type(message) is kind_type
    fields = set(kind_type._fields) - {"kind"}  # UnknownMessage.kind is wire_kind
    extra = {"decoded", "decode_error"} & set(record)
    assert set(record) == CAPTURE_KEYS | DATAGRAM_KEYS | {"message_index", "kind",
                                                          "wire_kind"} | fields | extra
    assert isinstance(message, tuple)
    for name, value in zip(kind_type._fields, message, strict=True):
        if name == "kind":
            assert record["wire_kind"] == value
        elif isinstance(value, memoryview | bytes):
            assert record[name] == bytes(value).hex()
        elif name == "entries":
            assert record[name] == [{"leaf_id": a, "leaf_seq": b} for a, b in value]
        else:
            assert record[name] == value
            assert type(record[name]) is int
    assert (record["version"], record["datagram_flags"], record["stream_id"],
            record["session_id"], record["sequence"], record["send_time_ns"],
            record["message_count"]) == (decoded.version, decoded.flags, decoded.stream_id,
                                         decoded.session_id, decoded.sequence,
                                         decoded.send_time_ns, len(decoded.messages))
    assert record["length"] == len(data)


def test_pcapng_stream_in_text(stream: Stream, stream_capture: Path) -> None:
    code, text = run_in_process([str(stream_capture)])
    assert code == 0
    count = len(stream.datagrams)
    assert summary(text) == f"summary: {count} datagrams, {count} decoded, 0 malformed"
    assert (f"#1 stream.pcapng:packet 1 t=1767225600.000000000 127.0.0.1:40000 -> "
            f"{GROUP}:47100") in text


def test_json_every_message_every_field(stream: Stream, stream_capture: Path) -> None:
    code, text = run_in_process([str(stream_capture), "--json"])
    assert code == 0
    records = json_lines(text)
    assert len(records) == sum(len(codec.decode_datagram(d).messages)
                               for _, d in stream.datagrams)
    kinds = {record["kind"] for record in records}
    assert kinds == {"DELTA", "SNAPSHOT", "HEARTBEAT", "TOUCHED", "END_OF_SESSION"}
    for record in records:
        time_ns, data = stream.datagrams[record["capture_index"] - 1]
        assert record["capture_time_ns"] == time_ns
        assert (record["src"], record["src_port"], record["dst"], record["dst_port"]) == (
            "127.0.0.1", 40000, GROUP, 47100)
        check_record(record, data)


def test_json_of_every_vector() -> None:
    code, text = run_in_process([str(p) for p in VECTOR_FILES] + ["--json"])
    assert code == 0
    records = json_lines(text)
    by_source: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        by_source.setdefault(record["source"], []).append(record)
    for path in VECTOR_FILES:
        vector = VECTORS[path.stem]
        found = by_source[f"{path.name}:{vector['name']}"]
        if not vector["valid"]:
            (record,) = found
            assert record["kind"] == "MALFORMED"
            assert set(record) == CAPTURE_KEYS | {"kind", "error", "field", "offset", "data"}
            assert (record["field"], record["offset"]) == (vector["error"]["field"],
                                                           vector["error"]["offset"])
            assert vector["error"]["reason_contains"] in record["error"]
            assert record["data"] == vector["hex"]
            assert record["capture_index"] is None
            assert record["src"] is None
            continue
        assert len(found) == len(codec.decode_datagram(bytes.fromhex(vector["hex"])).messages)
        for record in found:
            check_record(record, bytes.fromhex(vector["hex"]))
    signed = by_source["auth_trailer.json:auth_trailer"][0]
    assert signed["auth"]["key_id"] == 1
    assert len(signed["auth"]["tag"]) == 32
    assert signed["datagram_flags"] == 1
    unknown = by_source["unknown_kind.json:unknown_kind"][1]
    assert (unknown["kind"], unknown["wire_kind"]) == ("UNKNOWN", 200)


def test_touched_entries_are_never_elided() -> None:
    entries = tuple((leaf_id, leaf_id * 3 + 1) for leaf_id in range(1, 41))
    datagram = codec.Decoded(1, 0, 0, 99, 100, BASE_NS, [codec.Touched(60, 100, entries)])
    data = codec.encode_datagram(datagram)
    _, text = run_in_process([data.hex()])
    assert "...(+32)" in text  # the text view shortens...
    _, text = run_in_process([data.hex(), "--json"])
    (record,) = json_lines(text)
    assert record["entries"] == [{"leaf_id": a, "leaf_seq": b} for a, b in entries]  # ...JSON not


def test_json_decodes_books(stream: Stream, stream_capture: Path) -> None:
    code, text = run_in_process([str(stream_capture), "--json", "--model", "book"])
    assert code == 0
    records = json_lines(text)
    deltas = [r for r in records if r["kind"] == "DELTA"]
    assert deltas
    assert all(r["decoded"]["op"] in {"ADD", "REDUCE", "REMOVE", "CLEAR_SIDE", "CLEAR_BOOK",
                                      "TRADE"} for r in deltas)
    assert all(set(r["decoded"]) == {"op", "side", "price_ticks", "quantity", "time_ns"}
               for r in deltas)
    snapshots = [r for r in records if r["kind"] == "SNAPSHOT"
                 and len(r["payload"]) // 2 == r["total_length"]]  # whole, not a fragment
    assert snapshots
    for record in snapshots:
        book = decode_book(bytes.fromhex(record["payload"]))
        assert record["decoded"]["checksum"] == book.checksum()
        assert [(lv["price_ticks"], lv["quantity"], lv["orders"])
                for lv in record["decoded"]["bids"]] == book.depth(0, 1000)
    assert all("decoded" in r and "text" not in r for r in records)
    assert [r["decoded"] for r in records if r["kind"] in ("HEARTBEAT", "TOUCHED")] == \
        [None] * sum(r["kind"] in ("HEARTBEAT", "TOUCHED") for r in records)


def test_book_snapshot_fragments_are_put_together(tmp_path: Path) -> None:
    small = book_stream(bursts=[(0.05, 50)], duration=0.5, leaves=3, max_datagram_size=180)
    path = write_pcapng(tmp_path / "fragments.pcapng", small.datagrams)
    code, text = run_in_process([str(path), "--json", "--model", "book", "--kind", "snapshot"])
    assert code == 0
    records = json_lines(text)
    fragmented = [r for r in records if len(bytes.fromhex(r["payload"])) < r["total_length"]]
    assert fragmented
    completed = 0
    for record in fragmented:
        ends = record["fragment_offset"] + len(bytes.fromhex(record["payload"]))
        if ends == record["total_length"]:
            assert record["decoded"] is not None  # the last fragment carries the book
            completed += 1
        else:
            assert record["decoded"] is None
    assert completed >= 3
    code, text = run_in_process([str(path), "--model", "book", "--kind", "snapshot"])
    assert "book " in text
    assert "checksum 0x" in text


def test_filters(stream: Stream, stream_capture: Path) -> None:
    everything = json_lines(run_in_process([str(stream_capture), "--json"])[1])

    def chosen(*argv: str) -> list[dict[str, Any]]:
        code, text = run_in_process([str(stream_capture), "--json", *argv])
        assert code == 0
        return json_lines(text)

    assert chosen("--kind", "delta,heartbeat") == [
        r for r in everything if r["kind"] in ("DELTA", "HEARTBEAT")]
    assert chosen("--kind", "delta", "--kind", "END") == [
        r for r in everything if r["kind"] in ("DELTA", "END_OF_SESSION")]
    leaf = chosen("--leaf", "3")
    assert leaf == [r for r in everything
                    if r.get("leaf_id") == 3
                    or any(e["leaf_id"] == 3 for e in r.get("entries", []))]
    assert {r["kind"] for r in leaf} == {"DELTA", "SNAPSHOT", "TOUCHED"}
    window = chosen("--seq", "100:150", "--kind", "delta")
    assert [r["seq"] for r in window] == list(range(100, 151))
    _DATAGRAMS.update((index, data.hex()) for index, (_, data) in
                      enumerate(stream.datagrams, 1))
    late = chosen("--seq", "390:")
    assert late == [r for r in everything if _position(r) >= 390]
    assert {r["kind"] for r in late} >= {"DELTA", "SNAPSHOT", "END_OF_SESSION"}
    assert chosen("--session", hex(stream.session_id)) == everything
    assert chosen("--session", "12345") == []
    assert chosen("--stream", "0") == everything
    assert chosen("--stream", "1") == []
    # Capture time: relative to the first packet, Unix seconds, ISO 8601 (UTC).
    early = [r for r in everything if r["capture_time_ns"] <= BASE_NS + 300_000_000]
    assert chosen("--time", ":+0.3") == early
    assert chosen("--time", f":{(BASE_NS + 300_000_000) / 1e9:.1f}") == early
    assert chosen("--time", "2026-01-01T00:00:00:2026-01-01T00:00:00.3") == early
    assert chosen("--time", "+0.3:") == [r for r in everything
                                        if r["capture_time_ns"] >= BASE_NS + 300_000_000]
    _, text = run_in_process([str(stream_capture), "--kind", "delta", "--seq", "5:6"])
    assert "(2 of " in text
    assert "messages shown" in text
    assert "not selected" in summary(text)


def _position(record: dict[str, Any]) -> int:
    """The --seq position of a JSON record: a DELTA's seq, else the next DELTA's (the
    header's sequence plus the DELTAs before it in its datagram)."""
    if record["kind"] == "DELTA":
        return int(record["seq"])
    data = codec.decode_datagram(bytes.fromhex(_DATAGRAMS[record["capture_index"]]))
    before = data.messages[: record["message_index"]]
    return int(record["sequence"]) + sum(isinstance(m, codec.Delta) for m in before)


_DATAGRAMS: dict[int, str] = {}


def test_text_with_the_book_model(stream_capture: Path) -> None:
    code, text = run_in_process([str(stream_capture), "--model", "book", "--kind", "delta",
                                 "--seq", "7"])
    assert code == 0
    lines = text.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("  DELTA seq=7 "))
    assert lines[at + 1].split()[0] in {"ADD", "REDUCE", "REMOVE", "CLEAR_SIDE", "CLEAR_BOOK",
                                        "TRADE"}
    assert " x " in lines[at + 1]
    assert "t=" in lines[at + 1]


def test_summary(stream: Stream, tmp_path: Path) -> None:
    other = book_stream(bursts=[(0.1, 50)], duration=0.6, leaves=2, seed=9, stream_id=4)
    lost = {5, 6, 20}  # datagram numbers (1-based) of stream 0 dropped: gaps
    kept = [item for number, item in enumerate(stream.datagrams, 1) if number not in lost]
    lost_deltas = sum(isinstance(m, codec.Delta) for number, (_, d) in
                      enumerate(stream.datagrams, 1) if number in lost
                      for m in codec.decode_datagram(d).messages)
    merged = sorted(kept + other.datagrams, key=lambda item: item[0])
    merged.insert(3, (BASE_NS + 1, vector_bytes("bad_magic")))
    path = write_pcapng(tmp_path / "lossy.pcapng", merged)
    code, text = run_in_process([str(path), "--summary", "--json"])
    assert code == 0
    report = json.loads(text)
    assert report["datagrams"] == len(merged)
    assert report["malformed"] == 1
    assert report["malformed_examples"][0]["field"] == "magic"
    sessions = {s["stream_id"]: s for s in report["sessions"]}
    assert set(sessions) == {0, 4}
    zero, four = sessions[0], sessions[4]
    assert zero["session_id"] == stream.session_id
    assert zero["missing_deltas"] == lost_deltas > 0
    assert zero["gaps"] == len(zero["holes"]) >= 1
    assert zero["messages"]["DELTA"] == stream.bursts[-1][1] - lost_deltas
    assert zero["ended"]
    assert four["ended"]
    assert four["gaps"] == 0
    assert four["messages"]["DELTA"] == other.bursts[0][1]
    assert zero["heartbeat_ms"] == 200
    assert zero["cycle"]["completed"] >= 5
    assert abs(zero["cycle"]["period_s"] - 0.1) < 0.01
    assert zero["deltas_per_s"] > 0
    assert zero["duration_s"] > 0.9
    assert report["messages"]["DELTA"] == zero["messages"]["DELTA"] + four["messages"]["DELTA"]
    code, text = run_in_process([str(path), "--summary"])
    assert code == 0
    assert f"stream 0 session {stream.session_id:#018x}" in text
    assert f"gaps: {zero['gaps']} ({lost_deltas} deltas missing)" in text
    assert "malformed #4 lossy.pcapng:packet 4" in text
    assert summary(text).startswith(f"summary: {len(merged)} datagrams")


def test_broken_capture_is_decoded_up_to_the_damage(stream: Stream,
                                                    stream_capture: Path,
                                                    tmp_path: Path) -> None:
    broken = tmp_path / "broken.pcapng"
    broken.write_bytes(stream_capture.read_bytes()[:-10])
    code, text = run_in_process([str(broken)])
    assert code == 1
    count = len(stream.datagrams) - 1
    assert f"error: cannot read {broken}: block at byte" in text
    assert summary(text) == (f"summary: {count} datagrams, {count} decoded, 0 malformed, "
                             "1 inputs unreadable")


@pytest.mark.parametrize(("argv", "message"), [
    (["--seq", "9:3"], "need 0 <= FROM <= TO"),
    (["--seq", "x"], "is not FROM:TO"),
    (["--kind", "deltas"], "unknown kind 'deltas'"),
    (["--time", "soon:later"], "no way to read FROM:TO"),
    (["--stream", "zero"], "argument --stream"),
])
def test_bad_filters_are_usage_errors(argv: list[str], message: str) -> None:
    result = subprocess.run([sys.executable, str(ROOT / "tools" / "decode.py"),
                             VECTORS["delta"]["hex"], *argv], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_json_errors_go_to_stderr(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, str(ROOT / "tools" / "decode.py"), "--json",
                             str(tmp_path / "missing.pcapng"), VECTORS["delta"]["hex"]],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 1
    assert [json.loads(line)["kind"] for line in result.stdout.splitlines()] == ["DELTA"]
    assert result.stderr.startswith("error: cannot read")


def test_a_closed_pipe_stops_quietly(stream_capture: Path) -> None:
    process = subprocess.Popen([sys.executable, str(ROOT / "tools" / "decode.py"),
                                str(stream_capture), "--json"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    assert process.stdout is not None
    assert process.stderr is not None
    assert json.loads(process.stdout.readline())["capture_index"] == 1
    process.stdout.close()  # like `| head -1`
    _, err = process.communicate(timeout=60)
    assert process.returncode == 0
    assert b"Traceback" not in err
    assert b"BrokenPipe" not in err


def test_a_capture_piped_into_stdin(stream: Stream, stream_capture: Path) -> None:
    result = subprocess.run([sys.executable, str(ROOT / "tools" / "decode.py"), "-", "--quiet"],
                            input=stream_capture.read_bytes(), capture_output=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    count = len(stream.datagrams)
    assert result.stdout.decode().strip() == (f"summary: {count} datagrams, {count} decoded, "
                                              "0 malformed")
