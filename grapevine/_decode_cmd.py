"""``grapevine decode``: print captured Grapevine datagrams in readable form.

Each input is a hex string (whitespace, ``:`` and ``-`` allowed), ``-`` for hex lines on
stdin, or a file: a classic libpcap capture (Ethernet, Linux cooked SLL/SLL2, raw IP or BSD
loopback link types; IPv4 UDP), a test vector JSON file, a text file of hex lines (``#``
starts a comment) or any other file, taken as one raw binary datagram. Malformed datagrams
get one line naming the field and offset (DecodeError); the exit status is 0 unless an
input could not be read.
"""

from __future__ import annotations

import argparse
import json
import string
import struct
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from ._errors import DecodeError, GrapevineError
from .codec import decode_datagram, describe_datagram

__all__ = ["PcapError", "add_arguments", "iter_pcap", "main", "run"]

_HEX_DIGITS = frozenset(string.hexdigits)
_PCAP_MAGICS = {
    b"\xd4\xc3\xb2\xa1": ("<", 1_000),  # little-endian, microsecond timestamps
    b"\xa1\xb2\xc3\xd4": (">", 1_000),
    b"\x4d\x3c\xb2\xa1": ("<", 1),  # nanosecond timestamps
    b"\xa1\xb2\x3c\x4d": (">", 1),
}
_LINKTYPE_NULL = 0
_LINKTYPE_ETHERNET = 1
_LINKTYPE_RAW = 101
_LINKTYPE_RAW_ALT = (12, 14)  # DLT_RAW on some BSDs
_LINKTYPE_LINUX_SLL = 113
_LINKTYPE_LINUX_SLL2 = 276
_ETHERTYPE_IPV4 = 0x0800
_ETHERTYPE_VLAN = (0x8100, 0x88A8, 0x9100)


class PcapError(GrapevineError, ValueError):
    """The file is not a readable classic pcap capture."""


@dataclass
class Datagram:
    """One datagram to decode and where it came from."""

    source: str
    data: bytes


@dataclass
class Summary:
    """Counts printed at the end."""

    decoded: int = 0
    malformed: int = 0
    skipped: int = 0
    unreadable: list[str] = field(default_factory=list)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the ``decode`` options on ``parser``."""
    parser.description = __doc__.split("\n\n")[1] if __doc__ else None
    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="hex datagram, '-' (hex lines on stdin), or a pcap / vector JSON "
                             "/ hex-lines / raw binary file")
    parser.add_argument("--port", type=int, default=None,
                        help="pcap: only UDP datagrams to (or from) this port")
    parser.add_argument("--payload-bytes", type=int, default=16, metavar="N",
                        help="payload bytes to show per message (default 16)")
    parser.add_argument("--quiet", "-q", action="store_true",
                        help="print only malformed datagrams and the summary")


def run(args: argparse.Namespace) -> int:
    """Decode every input; 0 unless an input could not be read."""
    return _run(args, sys.stdout, sys.stdin)


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry point (``python tools/decode.py``)."""
    parser = argparse.ArgumentParser(prog="grapevine decode")
    add_arguments(parser)
    return run(parser.parse_args(argv))


def _run(args: argparse.Namespace, out: TextIO, stdin: TextIO) -> int:
    summary = Summary()
    number = 0
    for item in args.inputs:
        try:
            datagrams = list(_read_input(item, args.port, summary, stdin))
        except (OSError, PcapError, ValueError, UnicodeDecodeError) as exc:
            summary.unreadable.append(item)
            print(f"error: cannot read {item}: {exc}", file=out)
            continue
        for datagram in datagrams:
            number += 1
            _print_one(number, datagram, args, summary, out)
    parts = [f"{summary.decoded + summary.malformed} datagrams", f"{summary.decoded} decoded",
             f"{summary.malformed} malformed"]
    if summary.skipped:
        parts.append(f"{summary.skipped} packets skipped")
    if summary.unreadable:
        parts.append(f"{len(summary.unreadable)} inputs unreadable")
    print("summary: " + ", ".join(parts), file=out)
    return 1 if summary.unreadable else 0


def _print_one(number: int, datagram: Datagram, args: argparse.Namespace, summary: Summary,
               out: TextIO) -> None:
    label = f"#{number} {datagram.source} ({len(datagram.data)} bytes)"
    try:
        decoded = decode_datagram(datagram.data)
    except DecodeError as exc:
        summary.malformed += 1
        print(f"{label}: MALFORMED field={exc.field} offset={exc.offset}: {exc.reason}",
              file=out)
        return
    summary.decoded += 1
    if not args.quiet:
        print(f"{label}:", file=out)
        print(describe_datagram(decoded, payload_bytes=args.payload_bytes), file=out)


# --------------------------------------------------------------------------- inputs


def _read_input(item: str, port: int | None, summary: Summary,
                stdin: TextIO) -> Iterator[Datagram]:
    if item == "-":
        yield from _hex_lines(stdin.read(), "stdin")
        return
    path = Path(item)
    try:
        is_file = path.exists()
    except OSError:  # e.g. a long hex string is no valid file name
        is_file = False
    if not is_file:
        if _looks_like_hex(item):
            yield Datagram("argument", _parse_hex(item))
            return
        raise OSError(f"no such file, and not a hex datagram: {item!r}")
    raw = path.read_bytes()
    if raw[:4] in _PCAP_MAGICS:
        for source, data in iter_pcap(raw, port=port, skipped=summary):
            yield Datagram(f"{path.name}:{source}", data)
        return
    if path.suffix == ".json":
        vector = json.loads(raw)
        if not isinstance(vector, dict) or not isinstance(vector.get("hex"), str):
            raise ValueError("a vector JSON file needs a 'hex' string")
        yield Datagram(f"{path.name}:{vector.get('name', '?')}", _parse_hex(vector["hex"]))
        return
    text = _as_text(raw)
    if text is not None and raw.strip() and all(
        _looks_like_hex(line) for line in _content_lines(text)
    ):
        yield from _hex_lines(text, path.name)
        return
    yield Datagram(path.name, raw)


def _as_text(raw: bytes) -> str | None:
    try:
        return raw.decode("ascii")
    except UnicodeDecodeError:
        return None


def _content_lines(text: str) -> list[str]:
    lines = (line.split("#", 1)[0].strip() for line in text.splitlines())
    return [line for line in lines if line]


def _hex_lines(text: str, name: str) -> Iterator[Datagram]:
    for number, line in enumerate(text.splitlines(), 1):
        content = line.split("#", 1)[0].strip()
        if content:
            yield Datagram(f"{name}:{number}", _parse_hex(content))


def _clean_hex(text: str) -> str:
    for sep in (" ", "\t", ":", "-", "\r", "\n"):
        text = text.replace(sep, "")
    return text.removeprefix("0x")


def _looks_like_hex(text: str) -> bool:
    cleaned = _clean_hex(text)
    return bool(cleaned) and len(cleaned) % 2 == 0 and set(cleaned) <= _HEX_DIGITS


def _parse_hex(text: str) -> bytes:
    return bytes.fromhex(_clean_hex(text))


# --------------------------------------------------------------------------- pcap


def iter_pcap(raw: bytes, *, port: int | None = None,
              skipped: Summary | None = None) -> Iterator[tuple[str, bytes]]:
    """Yield ``(description, udp_payload)`` for each IPv4 UDP packet of a classic pcap file.

    Packets that are not IPv4 UDP, do not match ``port``, are IP fragments or were captured
    truncated are counted in ``skipped.skipped`` and not yielded.
    """
    if len(raw) < 24 or raw[:4] not in _PCAP_MAGICS:
        raise PcapError("not a classic libpcap file (pcapng is not supported)")
    order, ns_per_tick = _PCAP_MAGICS[raw[:4]]
    linktype = struct.unpack_from(order + "I", raw, 20)[0] & 0x0FFF_FFFF
    record = struct.Struct(order + "IIII")
    offset = 24
    index = 0
    while offset < len(raw):
        if offset + record.size > len(raw):
            raise PcapError(f"truncated record header at byte {offset}")
        seconds, fraction, caplen, origlen = record.unpack_from(raw, offset)
        offset += record.size
        if offset + caplen > len(raw):
            raise PcapError(f"truncated packet {index + 1} at byte {offset}")
        frame = raw[offset : offset + caplen]
        offset += caplen
        index += 1
        found = _udp_payload(frame, linktype, caplen < origlen)
        if found is None or (port is not None and port not in found[1:3]):
            if skipped is not None:
                skipped.skipped += 1
            continue
        addresses, src_port, dst_port, payload = found
        stamp = f"{seconds}.{fraction:06d}" if ns_per_tick > 1 else f"{seconds}.{fraction:09d}"
        yield (f"packet {index} t={stamp} {addresses[0]}:{src_port} -> "
               f"{addresses[1]}:{dst_port}", payload)


def _udp_payload(frame: bytes, linktype: int,
                 truncated: bool) -> tuple[tuple[str, str], int, int, bytes] | None:
    ip = _ip_packet(frame, linktype)
    if ip is None or truncated or len(ip) < 20 or ip[0] >> 4 != 4:
        return None
    ihl = (ip[0] & 0x0F) * 4
    total = struct.unpack_from(">H", ip, 2)[0]
    flags_fragment = struct.unpack_from(">H", ip, 6)[0]
    if ip[9] != 17 or ihl < 20 or flags_fragment & 0x3FFF or total < ihl + 8:
        return None  # not UDP, or an IP fragment (reassembly is not supported)
    if total > len(ip):
        return None
    udp = ip[ihl:total]
    src_port, dst_port, udp_length = struct.unpack_from(">HHH", udp, 0)
    if not 8 <= udp_length <= len(udp):
        return None
    source = ".".join(str(b) for b in ip[12:16])
    dest = ".".join(str(b) for b in ip[16:20])
    return (source, dest), src_port, dst_port, bytes(udp[8:udp_length])


def _ip_packet(frame: bytes, linktype: int) -> bytes | None:
    if linktype == _LINKTYPE_ETHERNET:
        offset, ethertype = 12, None
        while offset + 2 <= len(frame):
            ethertype = struct.unpack_from(">H", frame, offset)[0]
            if ethertype not in _ETHERTYPE_VLAN:
                break
            offset += 4
        return frame[offset + 2 :] if ethertype == _ETHERTYPE_IPV4 else None
    if linktype == _LINKTYPE_LINUX_SLL:
        if len(frame) < 16 or struct.unpack_from(">H", frame, 14)[0] != _ETHERTYPE_IPV4:
            return None
        return frame[16:]
    if linktype == _LINKTYPE_LINUX_SLL2:
        if len(frame) < 20 or struct.unpack_from(">H", frame, 0)[0] != _ETHERTYPE_IPV4:
            return None
        return frame[20:]
    if linktype == _LINKTYPE_RAW or linktype in _LINKTYPE_RAW_ALT:
        return frame
    if linktype == _LINKTYPE_NULL:
        if len(frame) < 4:
            return None
        family = struct.unpack_from("<I", frame, 0)[0]
        if family != 2 and struct.unpack_from(">I", frame, 0)[0] != 2:
            return None
        return frame[4:]
    return None
