"""Write UDP datagrams into a classic pcap file (Ethernet, IPv4 or IPv6, UDP), for Wireshark.

Used by ``capture_sample.py --recorder`` and ``tests/test_wireshark.py``: datagrams a socket
received, or test vectors, become packets tshark dissects like captured ones. Checksums are
filled in (so Wireshark reports none as bad). A datagram too large for IPv4 (more than
65507 bytes: vector ``datagram_too_large``) goes into an IPv6 packet, as it could only
arrive over IPv6.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Packet", "write_pcap"]

_PCAP_HEADER = struct.Struct("<IHHiIII")
_RECORD_HEADER = struct.Struct("<IIII")
_NANOSECOND_MAGIC = 0xA1B23C4D  # pcap with nanosecond time stamps
_LINKTYPE_ETHERNET = 1
_SNAPLEN = 262_144
_IPV4_MAX_PAYLOAD = 65_535 - 20 - 8


@dataclass(frozen=True)
class Packet:
    """One UDP datagram and where it went."""

    payload: bytes
    time_ns: int = 1_767_225_600_000_000_000  # 2026-01-01T00:00:00Z, as the vectors
    src: str = "127.0.0.1"
    dst: str = "239.255.71.1"
    src_port: int = 40_000
    dst_port: int = 47_100


def _fold(total: int) -> int:
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def _sum16(data: bytes) -> int:
    if len(data) % 2:
        data += b"\x00"
    return sum(struct.unpack(f"!{len(data) // 2}H", data))


def _udp(pseudo: bytes, packet: Packet) -> bytes:
    length = 8 + len(packet.payload)
    header = struct.pack("!HHHH", packet.src_port, packet.dst_port, length & 0xFFFF, 0)
    checksum = (~_fold(_sum16(pseudo) + _sum16(header + packet.payload))) & 0xFFFF
    return header[:6] + struct.pack("!H", checksum or 0xFFFF) + packet.payload


def _multicast_mac(dst: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bytes:
    raw = dst.packed
    if dst.version == 4:
        return b"\x01\x00\x5e" + bytes([raw[1] & 0x7F]) + raw[2:]
    return b"\x33\x33" + raw[-4:]


def frame(packet: Packet) -> bytes:
    """The Ethernet frame carrying ``packet``."""
    udp_length = 8 + len(packet.payload)
    if len(packet.payload) <= _IPV4_MAX_PAYLOAD:
        src4, dst4 = ipaddress.IPv4Address(packet.src), ipaddress.IPv4Address(packet.dst)
        pseudo = src4.packed + dst4.packed + struct.pack("!BBH", 0, 17, udp_length)
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + udp_length, 0, 0x4000, 1, 17, 0,
                         src4.packed, dst4.packed)
        ip = ip[:10] + struct.pack("!H", (~_fold(_sum16(ip))) & 0xFFFF) + ip[12:]
        mac, ethertype = _multicast_mac(dst4), 0x0800
    else:
        # IPv6 hosts the datagram IPv4 cannot; loopback addresses of the same shape.
        src6 = ipaddress.IPv6Address("::1")
        dst6 = ipaddress.IPv6Address("ff02::1")
        pseudo = src6.packed + dst6.packed + struct.pack("!I3xB", udp_length, 17)
        ip = struct.pack("!IHBB16s16s", 6 << 28, udp_length, 17, 1, src6.packed, dst6.packed)
        mac, ethertype = _multicast_mac(dst6), 0x86DD
    ethernet = mac + b"\x02\x00\x00\x00\x00\x01" + struct.pack("!H", ethertype)
    return ethernet + ip + _udp(pseudo, packet)


def write_pcap(path: Path, packets: Iterable[Packet]) -> int:
    """Write ``packets`` to ``path`` as one pcap file; returns how many were written."""
    count = 0
    with open(path, "wb") as out:
        out.write(_PCAP_HEADER.pack(_NANOSECOND_MAGIC, 2, 4, 0, 0, _SNAPLEN,
                                    _LINKTYPE_ETHERNET))
        for packet in packets:
            data = frame(packet)
            seconds, nanoseconds = divmod(packet.time_ns, 1_000_000_000)
            out.write(_RECORD_HEADER.pack(seconds, nanoseconds, len(data), len(data)))
            out.write(data)
            count += 1
    return count
