"""Write UDP datagrams heard on a socket as a pcapng capture (``grapevine record``).

A socket gives the payload, the sender's address and the group it was sent to, not the
packet: each datagram is written with synthesized IPv4 and UDP headers under link type
RAW (101, "raw IP"), which tcpdump, tshark, Wireshark and :mod:`grapevine._capture` all
read. The IPv4 header checksum is computed; the UDP checksum is 0 ("not computed", valid
for IPv4), so no tool flags it as wrong. Timestamps are nanoseconds (``if_tsresol`` 9).
"""

from __future__ import annotations

import socket
import struct
from typing import BinaryIO

__all__ = ["LINKTYPE_RAW", "PcapngWriter", "ipv4_udp_packet"]

LINKTYPE_RAW = 101
_BYTE_ORDER_MAGIC = 0x1A2B3C4D
_SHB = 0x0A0D0D0A
_IDB = 0x00000001
_EPB = 0x00000006
_OPT_COMMENT = 1
_OPT_SHB_USERAPPL = 4
_OPT_IF_NAME = 2
_OPT_IF_DESCRIPTION = 3
_OPT_IF_TSRESOL = 9
_IPV4_HEADER = struct.Struct(">BBHHHBBH4s4s")
_UDP_HEADER = struct.Struct(">HHHH")
_EPB_HEAD = struct.Struct("<IIIII")  # interface, time high, time low, caplen, length
_MAX_IPV4_PAYLOAD = 0xFFFF - _IPV4_HEADER.size - _UDP_HEADER.size


def _option(code: int, value: bytes) -> bytes:
    return struct.pack("<HH", code, len(value)) + value + bytes(-len(value) % 4)


def _block(block_type: int, body: bytes) -> bytes:
    length = 12 + len(body)
    return struct.pack("<II", block_type, length) + body + struct.pack("<I", length)


def _checksum(header: bytes) -> int:
    total: int = sum(struct.unpack(f">{len(header) // 2}H", header))
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ipv4_udp_packet(payload: bytes, *, src: str, src_port: int, dst: str, dst_port: int,
                    ttl: int = 1, identification: int = 0) -> bytes:
    """An IPv4 packet carrying ``payload`` in UDP (``ValueError`` if it cannot fit)."""
    if len(payload) > _MAX_IPV4_PAYLOAD:
        raise ValueError(f"a {len(payload)}-byte datagram does not fit an IPv4 packet")
    udp_length = _UDP_HEADER.size + len(payload)
    total = _IPV4_HEADER.size + udp_length
    addresses = socket.inet_aton(src), socket.inet_aton(dst)
    header = _IPV4_HEADER.pack(0x45, 0, total, identification & 0xFFFF, 0x4000, ttl, 17, 0,
                               *addresses)
    header = header[:10] + struct.pack(">H", _checksum(header)) + header[12:]
    return header + _UDP_HEADER.pack(src_port, dst_port, udp_length, 0) + payload


class PcapngWriter:
    """A little-endian pcapng file with one RAW interface, written as packets come.

    Each block is written whole with one ``write`` call, so a file cut short (the recorder
    killed) holds every block before the cut and readers stop cleanly there.
    """

    def __init__(self, stream: BinaryIO, *, interface_name: str, description: str = "",
                 application: str = "grapevine record") -> None:
        self.stream = stream
        self.packets = 0
        self._identification = 0
        shb_options = _option(_OPT_SHB_USERAPPL, application.encode()) + _option(0, b"")
        stream.write(_block(_SHB, struct.pack("<IHHq", _BYTE_ORDER_MAGIC, 1, 0, -1)
                            + shb_options))
        idb_options = _option(_OPT_IF_NAME, interface_name.encode())
        if description:
            idb_options += _option(_OPT_IF_DESCRIPTION, description.encode())
        idb_options += _option(_OPT_IF_TSRESOL, bytes([9])) + _option(0, b"")
        stream.write(_block(_IDB, struct.pack("<HHI", LINKTYPE_RAW, 0, 0) + idb_options))

    def write_packet(self, packet: bytes, time_ns: int, comment: str = "") -> None:
        """One raw IP packet captured at ``time_ns`` (Unix nanoseconds)."""
        body = bytearray(_EPB_HEAD.pack(0, time_ns >> 32, time_ns & 0xFFFF_FFFF, len(packet),
                                        len(packet)))
        body += packet
        body += bytes(-len(packet) % 4)
        if comment:
            body += _option(_OPT_COMMENT, comment.encode()) + _option(0, b"")
        self.stream.write(_block(_EPB, bytes(body)))
        self.packets += 1

    def write_udp(self, payload: bytes, time_ns: int, *, src: str, src_port: int, dst: str,
                  dst_port: int) -> None:
        """One UDP datagram from ``src:src_port`` to ``dst:dst_port`` (IPv4 addresses)."""
        self._identification += 1
        self.write_packet(ipv4_udp_packet(payload, src=src, src_port=src_port, dst=dst,
                                          dst_port=dst_port,
                                          identification=self._identification), time_ns)

    def flush(self) -> None:
        self.stream.flush()
