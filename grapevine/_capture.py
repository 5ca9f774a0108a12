"""Read packet captures: the UDP datagrams in a pcap or pcapng file, with when and where.

What tcpdump, dumpcap, tshark, editcap and Wireshark write on Linux, macOS and the BSDs:

* **pcap** in either byte order, microsecond or nanosecond timestamps, and the "modified"
  (Kuznetsov) variant whose records are 8 bytes longer;
* **pcapng** in either byte order, several sections, several interfaces (IDBs) with their
  own link types and timestamp resolutions (``if_tsresol``, decimal or binary, and
  ``if_tsoffset``), enhanced (EPB), simple (SPB) and obsolete (PB) packet blocks; every
  other block (name resolution, statistics, secrets, custom...) is skipped;
* link types Ethernet (with 802.1Q/802.1ad VLAN tags), Linux cooked SLL and SLL2, raw IP
  (101, and 12/14 as some BSDs number it), LINKTYPE_IPV4/IPV6, BSD loopback NULL (host byte
  order) and LOOP (network byte order);
* IPv4 and IPv6 (extension headers walked), UDP to any address: multicast or unicast.

Packets that are not complete UDP datagrams (another protocol, an IP fragment, a packet the
capture truncated to its snap length, an unknown link type) are counted by reason in
:class:`SkipCounts`, never an error. A file that is not a capture, or whose structure is
broken, raises :class:`PcapError` after yielding every packet before the damage, so a
capture cut short by a crash still shows what it holds.

Why not a library: dpkt 1.9.8 and python-pcapng 2.1.1 (both last released in 2022) were
compared with this reader on real tcpdump, dumpcap, editcap and text2pcap captures, against
tshark. dpkt reads pcapng with the first interface's link type and resolution only (a
capture of two interfaces comes out half wrong), skips simple packet blocks, lacks BSD
NULL/LOOP and gives float timestamps (nanoseconds lost); python-pcapng reads no pcap at all,
decodes no protocol and gives float timestamps. This reader matched tshark on every file,
to the nanosecond, and was about twice as fast as dpkt and four times python-pcapng (200,000
packets: 0.8 s pcap, 1.3 s pcapng). tests/test_capture.py and test_capture_real.py check it
against tshark.
"""

from __future__ import annotations

import math
import mmap
import socket
import struct
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ._errors import GrapevineError

__all__ = [
    "Capture",
    "Frame",
    "PcapError",
    "Packet",
    "SkipCounts",
    "is_capture",
    "iter_frames",
    "open_capture",
    "read_packets",
    "udp_datagram",
]


class PcapError(GrapevineError, ValueError):
    """The file is not a readable pcap or pcapng capture, or its structure is broken."""


# --------------------------------------------------------------------------- constants

_PCAP_MAGICS: dict[bytes, tuple[str, int, int]] = {
    # magic bytes as stored -> (byte order, ns per timestamp fraction unit, record size)
    b"\xd4\xc3\xb2\xa1": ("<", 1_000, 16),  # microsecond
    b"\xa1\xb2\xc3\xd4": (">", 1_000, 16),
    b"\x4d\x3c\xb2\xa1": ("<", 1, 16),  # nanosecond
    b"\xa1\xb2\x3c\x4d": (">", 1, 16),
    b"\x34\xcd\xb2\xa1": ("<", 1_000, 24),  # modified (Kuznetsov): +ifindex, proto, type
    b"\xa1\xb2\xcd\x34": (">", 1_000, 24),
}
_PCAPNG_SHB = b"\x0a\x0d\x0d\x0a"
_PCAPNG_BYTE_ORDER_MAGIC = 0x1A2B3C4D
_BLOCK_IDB = 0x00000001
_BLOCK_PB = 0x00000002  # obsolete Packet Block
_BLOCK_SPB = 0x00000003
_BLOCK_EPB = 0x00000006
_BLOCK_SHB = 0x0A0D0D0A
# Blocks that are records but not packets: custom (copyable or not), systemd journal export.
_RECORD_BLOCKS = frozenset((0x00000BAD, 0x40000BAD, 0x00000009))
_OPT_END = 0
_OPT_IF_TSRESOL = 9
_OPT_IF_TSOFFSET = 14

LINKTYPE_NOT_A_PACKET = -1  # a pcapng record that holds no packet (custom, journal)
LINKTYPE_NULL = 0
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
LINKTYPE_LOOP = 108
LINKTYPE_LINUX_SLL = 113
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
LINKTYPE_LINUX_SLL2 = 276
_LINKTYPE_RAW_BSD = (12, 14)  # DLT_RAW as OpenBSD and some BSDs number it in files
_ETHERTYPE_IPV4 = 0x0800
_ETHERTYPE_IPV6 = 0x86DD
_ETHERTYPE_VLAN = frozenset((0x8100, 0x88A8, 0x9100))
# BSD loopback address families: AF_INET is 2 everywhere, AF_INET6 differs by OS.
_AF_INET = 2
_AF_INET6 = frozenset((10, 24, 28, 30))  # Linux, NetBSD/OpenBSD, FreeBSD, macOS
_IPPROTO_UDP = 17
# IPv6 extension headers that may precede UDP (RFC 8200 order); fragments handled apart.
_IPV6_EXTENSIONS = frozenset((0, 43, 60, 135, 139, 140))
_IPV6_FRAGMENT = 44
_IPV6_AH = 51

_U16 = struct.Struct(">H")
_UDP = struct.Struct(">HHH")


@dataclass(frozen=True, slots=True)
class Frame:
    """One captured frame, as the capture file holds it."""

    index: int
    """1-based position among all packets of the file (Wireshark's ``frame.number``)."""
    time_ns: int | None
    """Capture time, nanoseconds since the Unix epoch; None where the file records none
    (pcapng simple packet blocks)."""
    digits: int
    """Decimal digits of a second the capture's timestamp resolution warrants (6 for
    microseconds, 9 for nanoseconds): how to print ``time_ns`` without inventing precision."""
    interface: int
    """pcapng interface id (0 for pcap)."""
    linktype: int
    data: bytes
    truncated: bool
    """The capture kept fewer bytes than the packet had (its snap length)."""


@dataclass(frozen=True, slots=True)
class Packet:
    """A UDP datagram found in a capture."""

    index: int
    time_ns: int | None
    digits: int
    src: str
    dst: str
    src_port: int
    dst_port: int
    payload: bytes

    def stamp(self) -> str:
        """The capture time as ``seconds.fraction`` at the capture's precision, or ``-``."""
        if self.time_ns is None:
            return "-"
        seconds, nanos = divmod(self.time_ns, 1_000_000_000)
        if self.digits <= 0:
            return str(seconds)
        return f"{seconds}.{nanos // 10 ** (9 - self.digits):0{self.digits}d}"

    def endpoints(self) -> str:
        """``src:port -> dst:port`` (IPv6 addresses in brackets)."""
        return (f"{_host(self.src)}:{self.src_port} -> {_host(self.dst)}:{self.dst_port}")


def _host(address: str) -> str:
    return f"[{address}]" if ":" in address else address


@dataclass
class SkipCounts:
    """Frames that were not yielded as datagrams, by reason."""

    reasons: Counter[str] = field(default_factory=Counter)

    @property
    def total(self) -> int:
        return sum(self.reasons.values())

    def add(self, reason: str) -> None:
        self.reasons[reason] += 1


# --------------------------------------------------------------------------- files


def is_capture(head: bytes) -> bool:
    """True if ``head`` (a file's first bytes) starts a pcap or pcapng capture."""
    return head[:4] in _PCAP_MAGICS or head[:4] == _PCAPNG_SHB


def read_capture(path: str | Path) -> bytes | mmap.mmap | None:
    """A capture file's bytes for the tools (replay, play), or None after one error line
    on stderr (unreadable, or not a pcap/pcapng capture)."""
    try:
        with open(path, "rb") as handle:
            if not is_capture(handle.read(4)):
                raise PcapError("not a pcap or pcapng capture")
        return open_capture(path)
    except (OSError, PcapError) as exc:
        sys.stderr.write(f"error: cannot read {path}: {exc}\n")
        return None


def open_capture(path: str | Path) -> bytes | mmap.mmap:
    """The file's bytes, memory-mapped when possible (a capture may be larger than memory
    is comfortable with); plain bytes for empty files and what cannot be mapped."""
    with open(path, "rb") as handle:
        try:
            return mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
        except (ValueError, OSError):  # empty file, pipe, special file
            return handle.read()


class Capture:
    """The UDP datagrams of one capture, read lazily: iterate it once.

    ``port``: only datagrams from or to this UDP port. While iterating, ``first_ns`` is the
    first frame's capture time (Wireshark's time reference, whatever that frame holds) and
    ``skipped`` counts the frames not yielded, by reason. Iterating raises
    :class:`PcapError` when the data is not a capture or its structure breaks, after
    yielding the packets before the damage.
    """

    def __init__(self, data: bytes | bytearray | memoryview | mmap.mmap, *,
                 port: int | None = None) -> None:
        self.data = data
        self.port = port
        self.first_ns: int | None = None
        self.frames = 0
        self.skipped = SkipCounts()

    def __iter__(self) -> Iterator[Packet]:
        port = self.port
        skipped = self.skipped
        for frame in iter_frames(self.data):
            self.frames += 1
            if self.first_ns is None and frame.time_ns is not None:
                self.first_ns = frame.time_ns
            found = udp_datagram(frame)
            if isinstance(found, str):
                skipped.add(found)
            elif port is not None and port != found.src_port and port != found.dst_port:
                skipped.add("other port")
            else:
                yield found


def read_packets(data: bytes | bytearray | memoryview | mmap.mmap, *, port: int | None = None,
                 skipped: SkipCounts | None = None) -> Iterator[Packet]:
    """Yield every complete UDP datagram of a capture, in file order (see :class:`Capture`);
    frames not yielded are counted in ``skipped``."""
    capture = Capture(data, port=port)
    if skipped is not None:
        capture.skipped = skipped
    yield from capture


def iter_frames(data: bytes | bytearray | memoryview | mmap.mmap) -> Iterator[Frame]:
    """Yield every frame of a pcap or pcapng capture. Raises :class:`PcapError`."""
    head = bytes(data[:4])
    if head in _PCAP_MAGICS:
        yield from _pcap_frames(data)
    elif head == _PCAPNG_SHB:
        yield from _pcapng_frames(data)
    else:
        raise PcapError("not a pcap or pcapng capture ("
                        + (f"unknown magic {head.hex()})" if head else "an empty file)"))


def _pcap_frames(data: bytes | bytearray | memoryview | mmap.mmap) -> Iterator[Frame]:
    size = len(data)
    if size < 24:
        raise PcapError(f"pcap file header is {size} bytes, not 24")
    order, ns_per_unit, record_size = _PCAP_MAGICS[bytes(data[:4])]
    # The link-type field's upper bits carry FCS information; the type is the low 16 bits.
    # A trailing FCS needs no stripping: the IP length bounds every datagram.
    linktype = struct.unpack_from(order + "I", data, 20)[0] & 0xFFFF
    digits = 6 if ns_per_unit == 1_000 else 9
    record = struct.Struct(order + "IIII")
    offset = 24
    index = 0
    while offset < size:
        if offset + record_size > size:
            raise PcapError(f"truncated record header at byte {offset} (after packet {index})")
        seconds, fraction, caplen, origlen = record.unpack_from(data, offset)
        offset += record_size
        if offset + caplen > size:
            raise PcapError(f"packet {index + 1} at byte {offset} is truncated: the record "
                            f"says {caplen} bytes, the file has {size - offset}")
        index += 1
        yield Frame(index, seconds * 1_000_000_000 + fraction * ns_per_unit, digits, 0,
                    linktype, bytes(data[offset : offset + caplen]), caplen < origlen)
        offset += caplen


@dataclass(slots=True)
class _Interface:
    linktype: int
    snaplen: int
    units_per_s: int  # timestamp units per second (10**6 unless if_tsresol says otherwise)
    offset_ns: int  # if_tsoffset, in nanoseconds
    digits: int


def _pcapng_frames(data: bytes | bytearray | memoryview | mmap.mmap) -> Iterator[Frame]:
    size = len(data)
    offset = 0
    index = 0
    order = "<"
    interfaces: list[_Interface] = []
    u32 = struct.Struct("<I")
    while offset < size:
        if offset + 12 > size:
            raise PcapError(f"truncated block header at byte {offset} (after packet {index})")
        if bytes(data[offset : offset + 4]) == _PCAPNG_SHB:
            # A section header sets the byte order of everything up to the next one.
            magic = bytes(data[offset + 8 : offset + 12])
            if magic == b"\x4d\x3c\x2b\x1a":
                order = "<"
            elif magic == b"\x1a\x2b\x3c\x4d":
                order = ">"
            else:
                raise PcapError(f"section header at byte {offset} has a bad byte-order magic "
                                f"{magic.hex()}")
            u32 = struct.Struct(order + "I")
            interfaces = []  # interface ids are numbered per section
        block_type, length = struct.unpack_from(order + "II", data, offset)
        if length < 12 or length % 4:
            raise PcapError(f"block at byte {offset} has an invalid length {length}")
        end = offset + length
        if end > size:
            raise PcapError(f"block at byte {offset} is truncated: it says {length} bytes, the "
                            f"file has {size - offset}")
        if u32.unpack_from(data, end - 4)[0] != length:
            raise PcapError(f"block at byte {offset}: trailing length differs from its "
                            f"leading length {length}")
        body = offset + 8
        if block_type == _BLOCK_SHB:
            if length < 28:
                raise PcapError(f"section header at byte {offset} is {length} bytes, below 28")
            major = struct.unpack_from(order + "H", data, body + 4)[0]
            if major != 1:
                raise PcapError(f"pcapng section at byte {offset} has version {major}, not 1")
        elif block_type == _BLOCK_IDB:
            interfaces.append(_read_interface(data, body, end - 4, order))
        elif block_type in (_BLOCK_EPB, _BLOCK_PB, _BLOCK_SPB):
            index += 1
            yield _packet_block(data, block_type, body, end - 4, order, interfaces, index,
                                offset)
        elif block_type in _RECORD_BLOCKS:
            # Wireshark numbers these as frames too: count them, so that packet numbers
            # stay Wireshark's frame.number.
            index += 1
            yield Frame(index, None, 0, 0, LINKTYPE_NOT_A_PACKET, b"", False)
        # Every other block type (NRB, ISB, DSB...) is no frame.
        offset = end


def _read_interface(data: bytes | bytearray | memoryview | mmap.mmap, body: int, end: int,
                    order: str) -> _Interface:
    if end - body < 8:
        raise PcapError(f"interface description block at byte {body - 8} is too short")
    linktype, _reserved, snaplen = struct.unpack_from(order + "HHI", data, body)
    units_per_s, digits, offset_ns = 1_000_000, 6, 0
    for code, value in _options(data, body + 8, end, order):
        if code == _OPT_IF_TSRESOL and value:
            exponent = value[0] & 0x7F
            if value[0] & 0x80:  # a negative power of two
                units_per_s = 1 << exponent
                digits = min(9, math.ceil(exponent * math.log10(2)))
            else:
                units_per_s = 10**exponent
                digits = min(9, exponent)
        elif code == _OPT_IF_TSOFFSET and len(value) >= 8:
            offset_ns = struct.unpack_from(order + "q", value, 0)[0] * 1_000_000_000
    if units_per_s == 0 or units_per_s > 10**18:
        raise PcapError(f"interface at byte {body - 8} has an unusable if_tsresol")
    return _Interface(linktype, snaplen, units_per_s, offset_ns, digits)


def _options(data: bytes | bytearray | memoryview | mmap.mmap, offset: int, end: int,
             order: str) -> Iterator[tuple[int, bytes]]:
    header = struct.Struct(order + "HH")
    while offset + 4 <= end:
        code, length = header.unpack_from(data, offset)
        if code == _OPT_END:
            return
        start = offset + 4
        if start + length > end:
            return  # a malformed option list: keep what was read, the packets still count
        yield code, bytes(data[start : start + length])
        offset = start + (length + 3) // 4 * 4


def _packet_block(data: bytes | bytearray | memoryview | mmap.mmap, block_type: int, body: int,
                  end: int, order: str, interfaces: list[_Interface], index: int,
                  at: int) -> Frame:
    if block_type == _BLOCK_SPB:
        if end - body < 4:
            raise PcapError(f"simple packet block at byte {at} is too short")
        origlen = struct.unpack_from(order + "I", data, body)[0]
        interface_id = 0
        start = body + 4
        snaplen = interfaces[0].snaplen if interfaces else 0
        # The SPB stores min(packet length, snap length) bytes, padded: derive that count.
        caplen = min(origlen, end - start)
        if snaplen:
            caplen = min(caplen, snaplen)
        ticks = None
    else:
        if block_type == _BLOCK_EPB:
            if end - body < 20:
                raise PcapError(f"enhanced packet block at byte {at} is too short")
            interface_id, high, low, caplen, origlen = struct.unpack_from(order + "IIIII", data,
                                                                          body)
        else:
            if end - body < 20:
                raise PcapError(f"packet block at byte {at} is too short")
            interface_id, _drops, high, low, caplen, origlen = struct.unpack_from(
                order + "HHIIII", data, body)
        start = body + 20
        ticks = high << 32 | low
        if start + caplen > end:
            raise PcapError(f"packet block at byte {at}: captured length {caplen} overruns "
                            "the block")
    if interface_id >= len(interfaces):
        raise PcapError(f"packet block at byte {at} names interface {interface_id}, but the "
                        f"section describes {len(interfaces)}")
    interface = interfaces[interface_id]
    time_ns = None
    if ticks is not None:
        units = interface.units_per_s
        if units == 1_000_000:
            time_ns = ticks * 1_000
        elif 1_000_000_000 % units == 0:
            time_ns = ticks * (1_000_000_000 // units)
        else:
            time_ns = ticks * 1_000_000_000 // units
        time_ns += interface.offset_ns
    return Frame(index, time_ns, interface.digits, interface_id, interface.linktype,
                 bytes(data[start : start + caplen]), caplen < origlen)


# --------------------------------------------------------------------------- layers


def udp_datagram(frame: Frame) -> Packet | str:
    """The UDP datagram in ``frame``, or why there is none (a short reason)."""
    found = _network_layer(frame.data, frame.linktype)
    if isinstance(found, str):
        return found
    version, start = found
    data = frame.data
    if version == 4:
        return _ipv4_udp(frame, data, start)
    return _ipv6_udp(frame, data, start)


def _network_layer(data: bytes, linktype: int) -> tuple[int, int] | str:
    """(IP version, offset of the IP header) in a frame of ``linktype``, or a reason."""
    if linktype == LINKTYPE_ETHERNET:
        offset = 12
        while True:
            if offset + 2 > len(data):
                return "truncated"
            ethertype = _U16.unpack_from(data, offset)[0]
            if ethertype not in _ETHERTYPE_VLAN:
                break
            offset += 4
        return _by_ethertype(ethertype, offset + 2)
    if linktype == LINKTYPE_LINUX_SLL:
        if len(data) < 16:
            return "truncated"
        return _by_ethertype(_U16.unpack_from(data, 14)[0], 16)
    if linktype == LINKTYPE_LINUX_SLL2:
        if len(data) < 20:
            return "truncated"
        return _by_ethertype(_U16.unpack_from(data, 0)[0], 20)
    if linktype in (LINKTYPE_RAW, LINKTYPE_IPV4, LINKTYPE_IPV6) or linktype in _LINKTYPE_RAW_BSD:
        if not data:
            return "truncated"
        version = data[0] >> 4
        return (version, 0) if version in (4, 6) else "not IP"
    if linktype in (LINKTYPE_NULL, LINKTYPE_LOOP):
        if len(data) < 4:
            return "truncated"
        if linktype == LINKTYPE_LOOP:
            family = struct.unpack_from(">I", data, 0)[0]
        else:
            # NULL stores the family in the capturing host's byte order, which the file
            # does not record: the family is small, so the order that gives a small
            # number is the right one.
            family = struct.unpack_from("<I", data, 0)[0]
            if family > 0xFFFF:
                family = struct.unpack_from(">I", data, 0)[0]
        if family == _AF_INET:
            return (4, 4)
        if family in _AF_INET6:
            return (6, 4)
        return "not IP"
    if linktype == LINKTYPE_NOT_A_PACKET:
        return "not a packet"
    return f"link type {linktype} not supported"


def _by_ethertype(ethertype: int, offset: int) -> tuple[int, int] | str:
    if ethertype == _ETHERTYPE_IPV4:
        return (4, offset)
    if ethertype == _ETHERTYPE_IPV6:
        return (6, offset)
    return "not IP"


def _ipv4_udp(frame: Frame, data: bytes, start: int) -> Packet | str:
    if len(data) < start + 20:
        return "truncated"
    first = data[start]
    if first >> 4 != 4:
        return "not IP"
    ihl = (first & 0x0F) * 4
    total, flags_fragment = struct.unpack_from(">H2xH", data, start + 2)
    if data[start + 9] != _IPPROTO_UDP:
        return "not UDP"
    if flags_fragment & 0x3FFF:  # more fragments, or a fragment offset: no reassembly
        return "IP fragment"
    if ihl < 20 or total < ihl + 8:
        return "bad IP header"
    if start + total > len(data):
        return "truncated"
    src = socket.inet_ntop(socket.AF_INET, data[start + 12 : start + 16])
    dst = socket.inet_ntop(socket.AF_INET, data[start + 16 : start + 20])
    return _udp(frame, data, start + ihl, start + total, src, dst)


def _ipv6_udp(frame: Frame, data: bytes, start: int) -> Packet | str:
    if len(data) < start + 40:
        return "truncated"
    if data[start] >> 4 != 6:
        return "not IP"
    payload_length = _U16.unpack_from(data, start + 4)[0]
    if payload_length == 0:
        return "IPv6 jumbogram"  # a hop-by-hop option gives the length: not on loopback
    end = start + 40 + payload_length
    if end > len(data):
        return "truncated"
    next_header = data[start + 6]
    offset = start + 40
    while next_header != _IPPROTO_UDP:
        if offset + 8 > end:
            return "truncated"
        if next_header in _IPV6_EXTENSIONS:
            length = (data[offset + 1] + 1) * 8
        elif next_header == _IPV6_AH:
            length = (data[offset + 1] + 2) * 4
        elif next_header == _IPV6_FRAGMENT:
            offset_flags = _U16.unpack_from(data, offset + 2)[0]
            if offset_flags & 0xFFF9:  # an offset or more fragments: not a whole datagram
                return "IP fragment"
            length = 8  # an atomic fragment (RFC 6946) holds the whole datagram
        else:
            return "not UDP"
        next_header = data[offset]
        offset += length
    src = socket.inet_ntop(socket.AF_INET6, data[start + 8 : start + 24])
    dst = socket.inet_ntop(socket.AF_INET6, data[start + 24 : start + 40])
    return _udp(frame, data, offset, end, src, dst)


def _udp(frame: Frame, data: bytes, offset: int, end: int, src: str, dst: str) -> Packet | str:
    if offset + 8 > end:
        return "truncated" if frame.truncated else "bad UDP header"
    src_port, dst_port, length = _UDP.unpack_from(data, offset)
    if length < 8 or offset + length > end:
        # IPv6 UDP length 0 means a jumbogram; anything else does not fit its packet.
        return "bad UDP header"
    return Packet(frame.index, frame.time_ns, frame.digits, src, dst, src_port, dst_port,
                  data[offset + 8 : offset + length])
