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


def test_iter_pcap_yields_exact_payloads() -> None:
    raw = pcap([sll(ipv4_udp(vector_bytes(n))) for n in GOOD], 113)
    payloads = [data for _, data in _decode_cmd.iter_pcap(raw, port=PORT)]
    assert payloads == [vector_bytes(n) for n in GOOD]
    assert list(_decode_cmd.iter_pcap(raw, port=1)) == []


def test_iter_pcap_rejects_pcapng() -> None:
    with pytest.raises(_decode_cmd.PcapError):
        list(_decode_cmd.iter_pcap(b"\x0a\x0d\x0d\x0a" + bytes(40)))
