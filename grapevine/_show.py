"""Print decoded datagrams, as text or JSON Lines, through the filters: what ``decode`` and
``listen`` show for each datagram they read or hear.

Text is :func:`~grapevine.codec.describe_datagram` (only the selected messages, and each
decoded order-book payload under its message with ``--model book``); JSON is one object
per message with the fields described in grapevine/_records.py plus where the datagram
came from: ``source``, ``capture_index`` (the packet's number in its capture, counting
every packet, as Wireshark's ``frame.number``), ``capture_time_ns``, ``src``, ``src_port``,
``dst``, ``dst_port`` (null where unknown) and ``length`` (the datagram's bytes).
"""

from __future__ import annotations

import argparse
import json
import struct
from dataclasses import dataclass
from typing import Any, TextIO

from ._capture import Packet
from ._errors import DecodeError
from ._records import (
    BookPayloads,
    book_fields,
    book_text,
    datagram_fields,
    delta_text,
    malformed_fields,
    message_fields,
)
from ._select import Selection
from ._traffic import Traffic
from .codec import Decoded, Delta, Message, Snapshot, decode_datagram, describe_datagram

__all__ = ["Counts", "Datagram", "Printer", "add_arguments"]

_HEADER_IDS = struct.Struct("<4s4xIQ")  # magic, then stream_id and session_id


@dataclass
class Datagram:
    """One datagram to show and where it came from."""

    source: str
    data: bytes
    packet: Packet | None = None
    first_ns: int | None = None  # the capture's first frame time (for relative --time)


@dataclass
class Counts:
    """What the filters let through."""

    decoded: int = 0
    malformed: int = 0
    not_selected: int = 0


def add_arguments(parser: argparse.ArgumentParser, *, summary: bool) -> None:
    """Register the output options (``--summary`` where the tool has one)."""
    output = parser.add_argument_group("output")
    output.add_argument("--json", action="store_true",
                        help="JSON Lines: one object per message, every field")
    if summary:
        output.add_argument("--summary", action="store_true",
                            help="a report instead of the messages: kinds, sessions, gaps, "
                                 "rates, malformed datagrams (one JSON object with --json)")
    output.add_argument("--model", choices=["book"], default=None,
                        help="also decode payloads with this leaf model (book: the order book)")
    output.add_argument("--payload-bytes", type=int, default=16, metavar="N",
                        help="payload bytes to show per message (default 16)")
    output.add_argument("--quiet", "-q", action="store_true",
                        help="print only malformed datagrams (and the closing summary line)")


class Printer:
    """Applies the filters to each datagram and prints it (text or JSON), or adds it to
    :attr:`traffic` with ``--summary``."""

    def __init__(self, args: argparse.Namespace, out: TextIO) -> None:
        self.args = args
        self.summary = bool(getattr(args, "summary", False))
        self.out = out
        self.counts = Counts()
        self.selection = Selection.from_args(args)
        self.book = BookPayloads() if args.model == "book" else None
        self.traffic = Traffic()

    def show(self, number: int, datagram: Datagram) -> None:
        packet = datagram.packet
        time_ns = packet.time_ns if packet is not None else None
        if not self.selection.time_passes(time_ns, datagram.first_ns):
            self.counts.not_selected += 1
            return
        try:
            decoded = decode_datagram(datagram.data)
        except DecodeError as exc:
            self._malformed(number, datagram, exc)
            return
        if not self.selection.datagram_passes(decoded):
            self.counts.not_selected += 1
            return
        selected = self.selection.messages(decoded)
        if self.selection.filters_messages and not selected:
            self.counts.not_selected += 1
            return
        self.counts.decoded += 1
        books = (self._decode_payloads(decoded)
                 if self.book is not None and not self.summary else {})
        if self.summary:
            self.traffic.add(decoded, len(datagram.data), time_ns)
        elif self.args.json:
            base = {**_capture_fields(datagram), **datagram_fields(decoded)}
            for index, _position, message in selected:
                record = {**base, **message_fields(index, message)}
                if self.book is not None:
                    payload = books.get(index, {"decoded": None})
                    record.update((key, value) for key, value in payload.items()
                                  if key != "text")
                print(json.dumps(record), file=self.out)
        elif not self.args.quiet:
            self._print_text(number, datagram, decoded, selected, books)

    def _malformed(self, number: int, datagram: Datagram, exc: DecodeError) -> None:
        stream_id, session_id = _header_ids(datagram.data)
        if not self.selection.malformed_passes(stream_id, session_id):
            self.counts.not_selected += 1
            return
        self.counts.malformed += 1
        packet = datagram.packet
        if self.summary:
            self.traffic.add_malformed(exc, len(datagram.data),
                                       None if packet is None else packet.time_ns,
                                       f"#{number} {datagram.source}")
        elif self.args.json:
            record = {**_capture_fields(datagram), **malformed_fields(exc, datagram.data)}
            print(json.dumps(record), file=self.out)
        else:
            print(f"{_label(number, datagram)}: MALFORMED field={exc.field} "
                  f"offset={exc.offset}: {exc.reason}", file=self.out)

    def _decode_payloads(self, decoded: Decoded) -> dict[int, dict[str, Any]]:
        """``{message index: {"decoded": ..., ["decode_error": ...]}}`` for the book model.

        Every snapshot of the datagram is seen, shown or not, so that fragments add up."""
        assert self.book is not None
        found: dict[int, dict[str, Any]] = {}
        for index, message in enumerate(decoded.messages):
            result: dict[str, Any]
            if isinstance(message, Delta):
                delta, error = self.book.delta(message)
                result = {"decoded": None if delta is None else {
                    "op": delta.op.name, "side": delta.side.name,
                    "price_ticks": delta.price_ticks, "quantity": delta.quantity,
                    "time_ns": delta.time_ns}}
                if delta is not None:
                    result["text"] = delta_text(delta)
            elif isinstance(message, Snapshot):
                book, error = self.book.snapshot(decoded, message)
                result = {"decoded": None if book is None else book_fields(book)}
                if book is not None:
                    result["text"] = book_text(book)
            else:
                continue
            if error is not None:
                result["decode_error"] = error
            found[index] = result
        return found

    def _print_text(self, number: int, datagram: Datagram, decoded: Decoded,
                    selected: list[tuple[int, int, Message]],
                    books: dict[int, dict[str, Any]]) -> None:
        shown = decoded._replace(messages=[message for _, _, message in selected])
        note = ""
        if len(selected) != len(decoded.messages):
            note = f" ({len(selected)} of {len(decoded.messages)} messages shown)"
        print(f"{_label(number, datagram)}:{note}", file=self.out)
        lines = describe_datagram(shown, payload_bytes=self.args.payload_bytes).splitlines()
        if books and len(lines) >= 1 + len(selected):
            # One line per message after the header line: each decoded payload goes under
            # its message.
            merged = lines[:1]
            for (index, _, _), line in zip(selected, lines[1 : 1 + len(selected)], strict=True):
                merged.append(line)
                book = books.get(index)
                if book is not None and "text" in book:
                    merged.append(f"    {book['text']}")
                elif book is not None and "decode_error" in book:
                    merged.append(f"    book: cannot decode: {book['decode_error']}")
            lines = merged + lines[1 + len(selected) :]
        print("\n".join(lines), file=self.out)


def _label(number: int, datagram: Datagram) -> str:
    return f"#{number} {datagram.source} ({len(datagram.data)} bytes)"


def _capture_fields(datagram: Datagram) -> dict[str, Any]:
    packet = datagram.packet
    if packet is None:
        return {"source": datagram.source, "capture_index": None, "capture_time_ns": None,
                "src": None, "src_port": None, "dst": None, "dst_port": None,
                "length": len(datagram.data)}
    return {"source": datagram.source, "capture_index": packet.index,
            "capture_time_ns": packet.time_ns, "src": packet.src, "src_port": packet.src_port,
            "dst": packet.dst, "dst_port": packet.dst_port, "length": len(datagram.data)}


def _header_ids(data: bytes) -> tuple[int | None, int | None]:
    """(stream_id, session_id) of a malformed datagram whose header is still readable."""
    if len(data) < _HEADER_IDS.size:
        return None, None
    magic, stream_id, session_id = _HEADER_IDS.unpack_from(data)
    return (stream_id, session_id) if magic == b"GRPV" else (None, None)
