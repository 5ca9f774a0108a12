"""The capture reader (grapevine/_capture.py) and writer (grapevine/_pcapng_writer.py) on
files built byte by byte: every pcap and pcapng variant, link type, IP version and damage.

Where tshark is installed the same files are read by it too and must give the same packets,
times and addresses: the files are then known to be what the format says, not only what
this reader expects. Real captures of tcpdump and dumpcap are in test_capture_real.py.
"""

from __future__ import annotations

import itertools
import json
import random
import shutil
import socket
import struct
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from grapevine import PcapError, _decode_cmd
from grapevine._capture import Capture, Packet, SkipCounts, iter_frames, read_packets
from grapevine._pcapng_writer import PcapngWriter, ipv4_udp_packet

BASE_NS = 1_767_225_600_000_000_000  # 2026-01-01T00:00:00Z
TSHARK = shutil.which("tshark")
needs_tshark = pytest.mark.skipif(TSHARK is None, reason="tshark is not installed (apt-get "
                                                         "install tshark; .ci/run does)")

# --------------------------------------------------------------------------- packets


def ipv4(payload: bytes, *, src: str = "10.0.0.1", dst: str = "239.1.2.3", sport: int = 40000,
         dport: int = 5000, proto: int = 17, fragment: int = 0, options: bytes = b"") -> bytes:
    udp = struct.pack(">HHHH", sport, dport, 8 + len(payload), 0) + payload
    ihl = 5 + len(options) // 4
    header = struct.pack(">BBHHHBBH4s4s", 0x40 | ihl, 0, ihl * 4 + len(udp), 7, fragment, 1,
                         proto, 0, socket.inet_aton(src), socket.inet_aton(dst)) + options
    total = sum(struct.unpack(f">{len(header) // 2}H", header))
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    header = header[:10] + struct.pack(">H", ~total & 0xFFFF) + header[12:]
    return header + udp


def ipv6(payload: bytes, *, src: str = "fd00::1", dst: str = "ff15::4756", sport: int = 40000,
         dport: int = 5000, extensions: list[tuple[int, bytes]] | None = None,
         last: int = 17) -> bytes:
    """An IPv6 packet; ``extensions`` are (header type, header bytes after its first two)."""
    body = struct.pack(">HHHH", sport, dport, 8 + len(payload), 0) + payload
    chain = [*(extensions or []), (last, b"")]
    headers = b""
    for (kind, rest), (next_kind, _) in itertools.pairwise(chain):
        if kind == 44:  # fragment header: next header, reserved, then 6 bytes given
            headers += bytes([next_kind, 0]) + rest
        elif kind == 51:  # AH: length in 4-byte units minus 2
            headers += bytes([next_kind, (len(rest) + 2) // 4 - 2]) + rest
        else:
            headers += bytes([next_kind, (len(rest) + 2) // 8 - 1]) + rest
    first = chain[0][0]
    return (struct.pack(">IHBB", 6 << 28, len(headers) + len(body), first, 64)
            + socket.inet_pton(socket.AF_INET6, src) + socket.inet_pton(socket.AF_INET6, dst)
            + headers + body)


def ethernet(ip: bytes, *, tags: tuple[int, ...] = (), ethertype: int | None = None) -> bytes:
    kind = ethertype if ethertype is not None else (0x86DD if ip[0] >> 4 == 6 else 0x0800)
    tagged = b"".join(struct.pack(">HH", tpid, 42) for tpid in tags)
    frame = bytes.fromhex("01005e010203020000000001") + tagged + struct.pack(">H", kind) + ip
    return frame + bytes(max(0, 60 - len(frame)))  # Ethernet pads short frames


def sll(ip: bytes) -> bytes:
    kind = 0x86DD if ip[0] >> 4 == 6 else 0x0800
    return struct.pack(">HHH8sH", 0, 772, 6, bytes(8), kind) + ip


def sll2(ip: bytes) -> bytes:
    kind = 0x86DD if ip[0] >> 4 == 6 else 0x0800
    return struct.pack(">HHIHBB8s", kind, 0, 1, 772, 0, 6, bytes(8)) + ip


def null(ip: bytes, order: str = "<", v6_family: int = 30) -> bytes:
    return struct.pack(order + "I", 2 if ip[0] >> 4 == 4 else v6_family) + ip


def loop(ip: bytes) -> bytes:
    return struct.pack(">I", 2 if ip[0] >> 4 == 4 else 24) + ip


# --------------------------------------------------------------------------- files


def pcap(frames: list[tuple[int, bytes]], linktype: int, *, order: str = "<",
         nanos: bool = False, modified: bool = False, snaplen: int = 65535,
         cut: dict[int, int] | None = None) -> bytes:
    """A pcap file of ``(time_ns, frame)``; ``cut`` keeps only some bytes of a frame."""
    magic = 0xA1B2CD34 if modified else (0xA1B23C4D if nanos else 0xA1B2C3D4)
    out = bytearray(struct.pack(order + "IHHiIII", magic, 2, 4, 0, 0, snaplen, linktype))
    for index, (time_ns, frame) in enumerate(frames):
        kept = frame[: (cut or {}).get(index, len(frame))]
        seconds, nanos_part = divmod(time_ns, 1_000_000_000)
        fraction = nanos_part if nanos else nanos_part // 1000
        out += struct.pack(order + "IIII", seconds, fraction, len(kept), len(frame))
        if modified:
            out += struct.pack(order + "IHBx", 1, 0x0800, 0)
        out += kept
    return bytes(out)


def _options(order: str, options: list[tuple[int, bytes]]) -> bytes:
    if not options:
        return b""
    out = b""
    for code, value in options:
        out += struct.pack(order + "HH", code, len(value)) + value + bytes(-len(value) % 4)
    return out + struct.pack(order + "HH", 0, 0)


def block(order: str, kind: int, body: bytes) -> bytes:
    length = 12 + len(body) + (-len(body) % 4)
    return (struct.pack(order + "II", kind, length) + body + bytes(-len(body) % 4)
            + struct.pack(order + "I", length))


def shb(order: str, options: list[tuple[int, bytes]] | None = None) -> bytes:
    return block(order, 0x0A0D0D0A, struct.pack(order + "IHHq", 0x1A2B3C4D, 1, 0, -1)
                 + _options(order, options or []))


def idb(order: str, linktype: int, *, snaplen: int = 0, tsresol: int | None = None,
        tsoffset: int | None = None, name: str = "") -> bytes:
    options = []
    if name:
        options.append((2, name.encode()))
    if tsresol is not None:
        options.append((9, bytes([tsresol])))
    if tsoffset is not None:
        options.append((14, struct.pack(order + "q", tsoffset)))
    return block(order, 1, struct.pack(order + "HHI", linktype, 0, snaplen)
                 + _options(order, options))


def epb(order: str, interface: int, ticks: int, frame: bytes, *, origlen: int | None = None,
        comment: str = "") -> bytes:
    options = [(1, comment.encode())] if comment else []
    return block(order, 6, struct.pack(order + "IIIII", interface, ticks >> 32,
                                       ticks & 0xFFFFFFFF, len(frame),
                                       len(frame) if origlen is None else origlen)
                 + frame + bytes(-len(frame) % 4) + _options(order, options))


def spb(order: str, frame: bytes) -> bytes:
    return block(order, 3, struct.pack(order + "I", len(frame)) + frame)


def obsolete_pb(order: str, interface: int, ticks: int, frame: bytes) -> bytes:
    return block(order, 2, struct.pack(order + "HHIIII", interface, 0, ticks >> 32,
                                       ticks & 0xFFFFFFFF, len(frame), len(frame)) + frame)


def payload(number: int) -> bytes:
    return b"GRPV" + number.to_bytes(4, "little") * 3


def expect(packets: list[Packet]) -> list[tuple[object, ...]]:
    return [(p.index, p.time_ns, p.src, p.dst, p.src_port, p.dst_port, p.payload)
            for p in packets]


# --------------------------------------------------------------------------- pcap


WRAPS: dict[str, tuple[int, Callable[[bytes], bytes]]] = {
    "ethernet": (1, ethernet),
    "ethernet_vlan_qinq": (1, lambda ip: ethernet(ip, tags=(0x88A8, 0x8100))),
    "linux_sll": (113, sll),
    "linux_sll2": (276, sll2),
    "raw": (101, lambda ip: ip),
    "raw_openbsd": (14, lambda ip: ip),
    "linktype_ipv4": (228, lambda ip: ip),
    "bsd_null_little_endian": (0, null),
    "bsd_null_big_endian": (0, lambda ip: null(ip, ">", 28)),
    "bsd_loop": (108, loop),
}


@pytest.mark.parametrize("link", sorted(WRAPS))
@pytest.mark.parametrize(("order", "nanos", "modified"), [
    ("<", False, False), (">", False, False), ("<", True, False), (">", True, False),
    ("<", False, True),
], ids=["le_us", "be_us", "le_ns", "be_ns", "modified"])
def test_pcap_variants(tmp_path: Path, link: str, order: str, nanos: bool,
                       modified: bool) -> None:
    linktype, wrap = WRAPS[link]
    frames = [
        (BASE_NS + 123_456_789, wrap(ipv4(payload(1)))),
        (BASE_NS + 2_000_000_001, wrap(ipv6(payload(2), dst="ff15::4756"))),
        (BASE_NS + 3_000_000_000, wrap(ipv4(payload(3), dst="127.0.0.1", sport=1, dport=2))),
        (BASE_NS + 4_000_000_000, wrap(ipv6(payload(4), src="::1", dst="::1"))),
    ]
    raw = pcap(frames, linktype, order=order, nanos=nanos, modified=modified)
    packets = list(read_packets(raw))
    resolution = 1 if nanos else 1000
    assert expect(packets) == [
        (1, (BASE_NS + 123_456_789) // resolution * resolution, "10.0.0.1", "239.1.2.3", 40000,
         5000, payload(1)),
        (2, (BASE_NS + 2_000_000_001) // resolution * resolution, "fd00::1", "ff15::4756",
         40000, 5000, payload(2)),
        (3, BASE_NS + 3_000_000_000, "10.0.0.1", "127.0.0.1", 1, 2, payload(3)),
        (4, BASE_NS + 4_000_000_000, "::1", "::1", 40000, 5000, payload(4)),
    ]
    assert packets[0].stamp() == ("1767225600.123456789" if nanos else "1767225600.123456")
    assert packets[1].endpoints() == "[fd00::1]:40000 -> [ff15::4756]:5000"
    if TSHARK is not None and not modified and link != "linktype_ipv4":
        path = tmp_path / "capture.pcap"
        path.write_bytes(raw)
        assert tshark_packets(path) == expect(packets)


def test_pcap_port_filter_and_skip_reasons() -> None:
    frames = [
        (BASE_NS, ethernet(ipv4(payload(1)))),
        (BASE_NS, ethernet(ipv4(payload(2), dport=6000))),  # other port
        (BASE_NS, ethernet(ipv4(b"x" * 20, proto=6))),  # TCP
        (BASE_NS, ethernet(ipv4(payload(3), fragment=0x2000))),  # more fragments follow
        (BASE_NS, ethernet(ipv4(payload(3), fragment=0x0010))),  # a later fragment
        (BASE_NS, ethernet(b"\x00" * 28, ethertype=0x0806)),  # ARP
        (BASE_NS, ethernet(ipv4(payload(4)))),  # cut to the snap length below
        (BASE_NS, ethernet(ipv4(payload(5), options=b"\x01\x01\x01\x00"))),  # IP options
    ]
    skipped = SkipCounts()
    raw = pcap(frames, 1, cut={6: 40})
    packets = list(read_packets(raw, port=5000, skipped=skipped))
    assert [p.payload for p in packets] == [payload(1), payload(5)]
    assert [p.index for p in packets] == [1, 8]  # frame numbers count every packet
    assert dict(skipped.reasons) == {"other port": 1, "not UDP": 1, "IP fragment": 2,
                                     "not IP": 1, "truncated": 1}
    assert skipped.total == 6
    # An unknown link type skips every packet with the reason, without failing.
    skipped = SkipCounts()
    assert list(read_packets(pcap(frames[:2], 147), skipped=skipped)) == []
    assert dict(skipped.reasons) == {"link type 147 not supported": 2}


def test_ipv6_extension_headers_fragments_and_non_udp() -> None:
    hop_by_hop = (0, bytes(6))
    destination = (60, bytes(14))
    routing = (43, bytes([0, 0]) + bytes(4))
    atomic_fragment = (44, struct.pack(">HI", 0, 99))
    first_fragment = (44, struct.pack(">HI", 1, 99))  # offset 0, more fragments
    auth = (51, bytes(14))
    frames = [
        ipv6(payload(1), extensions=[hop_by_hop, routing, destination]),
        ipv6(payload(2), extensions=[atomic_fragment]),
        ipv6(payload(3), extensions=[auth]),
        ipv6(payload(4), extensions=[first_fragment]),
        ipv6(payload(5), extensions=[hop_by_hop], last=58),  # ICMPv6 after the options
    ]
    skipped = SkipCounts()
    packets = list(read_packets(pcap([(BASE_NS, f) for f in frames], 101), skipped=skipped))
    assert [p.payload for p in packets] == [payload(1), payload(2), payload(3)]
    assert dict(skipped.reasons) == {"IP fragment": 1, "not UDP": 1}


def test_bad_udp_and_ip_lengths_are_skipped_not_errors() -> None:
    good = ipv4(payload(1))
    long_udp = good[:24] + struct.pack(">H", 500) + good[26:]  # UDP length past the packet
    short_total = good[:2] + struct.pack(">H", 24) + good[4:]  # IP total cuts the UDP header
    long_total = good[:2] + struct.pack(">H", 900) + good[4:]  # IP total past the frame
    frames = [(BASE_NS, f) for f in (long_udp, short_total, long_total, b"\x45", b"")]
    skipped = SkipCounts()
    assert list(read_packets(pcap(frames, 101), skipped=skipped)) == []
    assert dict(skipped.reasons) == {"bad UDP header": 1, "bad IP header": 1, "truncated": 3}


# --------------------------------------------------------------------------- pcapng


def pcapng_everything() -> tuple[bytes, list[tuple[object, ...]]]:
    """Two sections (little- then big-endian), five interfaces of five link types and
    timestamp resolutions, EPB, SPB and obsolete PB, and blocks a reader must skip."""
    le, be = "<", ">"
    second = BASE_NS // 1_000_000_000
    parts = [
        shb(le, [(4, b"a test"), (3, b"Linux")]),
        idb(le, 1, name="lo"),  # 0: Ethernet, microseconds (no if_tsresol)
        idb(le, 276, tsresol=9, name="any"),  # 1: SLL2, nanoseconds
        idb(le, 101, tsresol=0x80 | 10, tsoffset=-100),  # 2: raw IP, 2^-10 s, offset
        block(le, 4, struct.pack(le + "HH", 1, 9) + socket.inet_aton("10.0.0.1") + b"host\0"
              + bytes(3) + struct.pack(le + "HH", 0, 0)),  # NRB
        epb(le, 0, second * 1_000_000 + 250_000, ethernet(ipv4(payload(1))), comment="hi"),
        epb(le, 1, BASE_NS + 7, sll2(ipv6(payload(2)))),
        idb(le, 0, tsresol=3),  # 3: BSD NULL, milliseconds (an IDB after packets)
        epb(le, 2, (second + 100) * 1024 + 512, ipv4(payload(3))),
        block(le, 0x00000BAD, struct.pack(le + "I", 32473) + b"custom data"),  # custom block
        spb(le, ethernet(ipv4(payload(4)))),  # interface 0, no timestamp
        obsolete_pb(le, 3, second * 1000 + 5, null(ipv4(payload(5)))),
        block(le, 5, struct.pack(le + "III", 0, 0, 0)),  # ISB
        block(le, 0x0000000A, struct.pack(le + "II", 0x544C534B, 0)),  # DSB
        block(le, 0x00000009, b"__CURSOR=s\nMESSAGE=hello\n"),  # journal export: a record
        shb(be),  # a new section: interfaces start again, big-endian
        idb(be, 108, tsresol=6),
        epb(be, 0, second * 1_000_000 + 1, loop(ipv6(payload(6), src="::1", dst="::1"))),
    ]
    expected: list[tuple[object, ...]] = [
        (1, BASE_NS + 250_000_000, "10.0.0.1", "239.1.2.3", 40000, 5000, payload(1)),
        (2, BASE_NS + 7, "fd00::1", "ff15::4756", 40000, 5000, payload(2)),
        (3, BASE_NS + 500_000_000, "10.0.0.1", "239.1.2.3", 40000, 5000, payload(3)),
        # Frame 4 is the custom block and 7 the journal entry: records, no packets.
        (5, None, "10.0.0.1", "239.1.2.3", 40000, 5000, payload(4)),
        (6, BASE_NS + 5_000_000, "10.0.0.1", "239.1.2.3", 40000, 5000, payload(5)),
        (8, BASE_NS + 1_000, "::1", "::1", 40000, 5000, payload(6)),
    ]
    return b"".join(parts), expected


def test_pcapng_sections_interfaces_resolutions_and_blocks(tmp_path: Path) -> None:
    raw, expected = pcapng_everything()
    packets = list(read_packets(raw))
    assert expect(packets) == expected
    assert [p.stamp() for p in packets] == [
        "1767225600.250000", "1767225600.000000007", "1767225600.5000", "-",
        "1767225600.005", "1767225600.000001"]
    frames = list(iter_frames(raw))
    assert [(f.interface, f.linktype) for f in frames] == [
        (0, 1), (1, 276), (2, 101), (0, -1), (0, 1), (3, 0), (0, -1), (0, 108)]
    skipped = SkipCounts()
    list(read_packets(raw, skipped=skipped))
    assert dict(skipped.reasons) == {"not a packet": 2}


@needs_tshark
def test_tshark_reads_the_same_pcapng(tmp_path: Path) -> None:
    raw, expected = pcapng_everything()
    path = tmp_path / "everything.pcapng"
    path.write_bytes(raw)
    assert tshark_packets(path) == expected


def test_pcapng_snap_length_and_simple_packet_block_length() -> None:
    le = "<"
    frame = ethernet(ipv4(payload(1)))
    raw = b"".join([shb(le), idb(le, 1, snaplen=40), spb(le, frame[:40]),
                    epb(le, 0, 1, frame[:40], origlen=len(frame))])
    skipped = SkipCounts()
    assert list(read_packets(raw, skipped=skipped)) == []
    assert dict(skipped.reasons) == {"truncated": 2}


TWO_PACKETS = b"".join([shb("<"), idb("<", 101), epb("<", 0, 1, ipv4(payload(1))),
                        epb("<", 0, 2, ipv4(payload(2)))])
LAST = len(TWO_PACKETS) - len(epb("<", 0, 2, ipv4(payload(2))))  # where the last block starts


@pytest.mark.parametrize(("damage", "message"), [
    (lambda raw: raw[:-3], "truncated"),
    (lambda raw: raw[:LAST + 4] + struct.pack("<I", 99) + raw[LAST + 8 :], "invalid length"),
    (lambda raw: raw[:LAST + 4] + struct.pack("<I", 8) + raw[LAST + 8 :], "invalid length"),
    (lambda raw: raw[:-4] + struct.pack("<I", 64), "trailing length"),
], ids=["cut_short", "length_not_multiple_of_4", "length_below_12", "trailing_length"])
def test_broken_pcapng_yields_what_it_can_then_raises(damage: Callable[[bytes], bytes],
                                                      message: str) -> None:
    packets: list[Packet] = []
    with pytest.raises(PcapError, match=message):
        packets.extend(read_packets(damage(TWO_PACKETS)))
    assert [p.payload for p in packets] == [payload(1)]


@pytest.mark.parametrize(("raw", "message"), [
    (b"", "an empty file"),
    (b"not a capture at all", "unknown magic"),
    (b"\xd4\xc3\xb2\xa1" + bytes(10), "pcap file header"),
    (shb("<")[:8] + b"\x00\x00\x00\x00" + shb("<")[12:], "byte-order magic"),
    (shb("<") + epb("<", 0, 1, ipv4(payload(1))), "names interface 0"),
    (block("<", 0x0A0D0D0A, b"\x4d\x3c\x2b\x1a"), "below 28"),
    (shb("<")[:12] + b"\x02\x00" + shb("<")[14:], "version 2"),
], ids=["empty", "text", "short_pcap_header", "bad_byte_order", "no_interface",
        "short_section_header", "version"])
def test_not_a_capture_raises_pcap_error(raw: bytes, message: str) -> None:
    with pytest.raises(PcapError, match=message):
        list(read_packets(raw))


def test_broken_pcap_yields_the_packets_before_the_damage() -> None:
    raw = pcap([(BASE_NS, ipv4(payload(1))), (BASE_NS, ipv4(payload(2)))], 101)
    packets: list[Packet] = []
    with pytest.raises(PcapError, match="packet 2"):
        packets.extend(read_packets(raw[:-5]))
    assert [p.payload for p in packets] == [payload(1)]
    with pytest.raises(PcapError, match="record header"):
        list(read_packets(raw + b"\x00\x01"))


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_mutated_captures_raise_only_pcap_error(data: st.DataObject) -> None:
    """Whatever bytes a damaged capture holds, reading it yields packets or PcapError."""
    raw, _ = pcapng_everything()
    seed = random.Random(data.draw(st.integers(0, 2**32)))
    for source in (bytearray(raw), bytearray(pcap([(BASE_NS, ethernet(ipv4(payload(1))))] * 3,
                                                  1))):
        for _ in range(data.draw(st.integers(1, 8))):
            source[seed.randrange(len(source))] = seed.randrange(256)
        cut = data.draw(st.integers(0, len(source)))
        try:
            for packet in read_packets(bytes(source[:cut])):
                assert isinstance(packet.payload, bytes)
        except PcapError:
            pass


def test_decode_cmd_and_grapevine_still_export_pcap_error() -> None:
    import grapevine

    assert grapevine.PcapError is PcapError is _decode_cmd.PcapError


# --------------------------------------------------------------------------- writer


def write_capture(path: Path, datagrams: list[tuple[int, bytes]]) -> None:
    with open(path, "wb") as stream:
        writer = PcapngWriter(stream, interface_name="grapevine test", description="a test")
        for time_ns, data in datagrams:
            writer.write_udp(data, time_ns, src="127.0.0.1", src_port=40001,
                             dst="239.255.72.9", dst_port=47100)


def test_writer_round_trip(tmp_path: Path) -> None:
    datagrams = [(BASE_NS + i * 1_000_001, payload(i) * (1 + i * 50)) for i in range(20)]
    datagrams.append((BASE_NS + 10**9, bytes(65507)))  # the largest UDP payload over IPv4
    path = tmp_path / "recorded.pcapng"
    write_capture(path, datagrams)
    capture = Capture(path.read_bytes())
    packets = list(capture)
    assert [(p.time_ns, p.payload) for p in packets] == datagrams
    assert {(p.src, p.src_port, p.dst, p.dst_port) for p in packets} == {
        ("127.0.0.1", 40001, "239.255.72.9", 47100)}
    assert packets[0].stamp() == "1767225600.000000000"
    assert capture.skipped.total == 0
    with pytest.raises(ValueError, match="does not fit"):
        ipv4_udp_packet(bytes(65508), src="127.0.0.1", src_port=1, dst="127.0.0.1", dst_port=2)


@needs_tshark
def test_tshark_reads_the_writer_with_good_ip_checksums(tmp_path: Path) -> None:
    datagrams = [(BASE_NS + i * 999, payload(i) * (i + 1)) for i in range(10)]
    path = tmp_path / "recorded.pcapng"
    write_capture(path, datagrams)
    assert [(row[1], row[6]) for row in tshark_packets(path)] == datagrams
    statuses = tshark_fields(path, ["ip.checksum.status", "frame.interface_name"],
                             "-o", "ip.check_checksum:TRUE")
    assert statuses == [["1", "grapevine test"]] * 10  # 1: Good


@pytest.mark.skipif(shutil.which("tcpdump") is None,
                    reason="tcpdump is not installed (apt-get install tcpdump; .ci/run does)")
def test_tcpdump_reads_the_writer(tmp_path: Path) -> None:
    path = tmp_path / "recorded.pcapng"
    write_capture(path, [(BASE_NS + i, payload(i)) for i in range(3)])
    result = subprocess.run(["tcpdump", "-nn", "-r", str(path)], capture_output=True, text=True,
                            timeout=30, check=True)
    lines = result.stdout.splitlines()
    assert len(lines) == 3
    assert all("IP 127.0.0.1.40001 > 239.255.72.9.47100: UDP, length 16" in line
               for line in lines)
    assert "link-type RAW" in result.stderr


# --------------------------------------------------------------------------- tshark


def tshark_fields(path: Path, fields: list[str], *extra: str) -> list[list[str]]:
    assert TSHARK is not None
    command = [TSHARK, "-n", "-r", str(path), *extra, "-T", "fields", "-E", "occurrence=l"]
    for name in fields:
        command += ["-e", name]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=True)
    return [line.split("\t") for line in result.stdout.splitlines()]


def tshark_packets(path: Path) -> list[tuple[object, ...]]:
    """(frame number, time ns, src, dst, src port, dst port, payload) of every UDP packet,
    as tshark reads them (the innermost IP header, as this reader takes)."""
    rows = tshark_fields(path, ["frame.number", "frame.time_epoch", "ip.src", "ipv6.src",
                                "ip.dst", "ipv6.dst", "udp.srcport", "udp.dstport",
                                "udp.payload"], "-Y", "udp")
    packets: list[tuple[object, ...]] = []
    for number, epoch, src4, src6, dst4, dst6, sport, dport, data in rows:
        time_ns = None  # a simple packet block has no time
        if epoch:
            seconds, _, fraction = epoch.partition(".")
            time_ns = int(seconds) * 1_000_000_000 + int(fraction.ljust(9, "0")[:9])
        packets.append((int(number), time_ns, src6 or src4, dst6 or dst4, int(sport),
                        int(dport), bytes.fromhex(data)))
    return packets


# --------------------------------------------------------------------------- committed


DATA = Path(__file__).resolve().parent / "data"


@pytest.mark.parametrize("name", ["dumpcap_lo_any.pcapng", "tcpdump_any_sll2.pcap"])
def test_committed_real_captures(name: str) -> None:
    """Small real captures kept in tests/data, read as tshark read them when they were made.

    Made from test_capture_real.py's captures (dumpcap on lo and any: two interfaces, pcapng;
    tcpdump on any: Linux cooked SLL2, pcap) with ``editcap -r FILE OUT 25-55 404-415`` (and
    ``1-30 198-209``), so that the reader is checked on real files where tcpdump and tshark
    are not installed; ``NAME.tshark.json`` is tshark's view of the UDP packets (frame,
    time, addresses, ports, payload), ICMP errors quoting a UDP header left out.
    """
    path = DATA / name
    expected = [(*row[:6], bytes.fromhex(row[6]))
                for row in json.loads((DATA / f"{name}.tshark.json").read_text())]
    skipped = SkipCounts()
    packets = list(read_packets(path.read_bytes(), skipped=skipped))
    assert expect(packets) == expected
    assert set(skipped.reasons) <= {"not UDP"}  # ICMPv6 port unreachable
    assert {p.dst for p in packets} >= {"::1", "239.255.72.200"}  # IPv6 and IPv4
    if TSHARK is not None:
        inner = {row[0] for row in tshark_packets(path)} - {row[0] for row in expected}
        assert [row for row in tshark_packets(path) if row[0] not in inner] == expected
