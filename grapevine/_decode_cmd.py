"""``grapevine decode``: print captured Grapevine datagrams in readable form or as JSON Lines.

Each input is a hex string (whitespace, ``:`` and ``-`` allowed), ``-`` for hex lines or a
capture on stdin, or a file: a pcap or pcapng capture (see grapevine/_capture.py for the
variants and link types; IPv4 and IPv6 UDP), a test vector JSON file, a text file of hex
lines (``#`` starts a comment) or any other file, taken as one raw binary datagram.
Malformed datagrams get one line naming the field and offset (DecodeError); the exit status
is 0 unless an input could not be read (a capture broken part way is decoded up to the
damage first).

``--json`` prints one JSON object per message (field names in grapevine/_records.py) and
``--summary`` a report of the traffic instead of the messages.
"""

from __future__ import annotations

import argparse
import json
import string
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from . import _select, _show
from ._capture import Capture, PcapError, SkipCounts, is_capture, open_capture
from ._output import stop_quietly_on_broken_pipe
from ._show import Datagram, Printer
from ._traffic import render_report

__all__ = ["PcapError", "add_arguments", "main", "run"]

_HEX_DIGITS = frozenset(string.hexdigits)


@dataclass
class Summary:
    """What the inputs held beyond the datagrams shown."""

    skipped: SkipCounts = field(default_factory=SkipCounts)
    unreadable: list[str] = field(default_factory=list)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the ``decode`` options on ``parser``."""
    parser.description = __doc__.split("\n\n")[1] if __doc__ else None
    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="hex datagram, '-' (hex lines on stdin), or a pcap / pcapng / "
                             "vector JSON / hex-lines / raw binary file")
    parser.add_argument("--port", type=int, default=None,
                        help="captures: only UDP datagrams to (or from) this port")
    _select.add_arguments(parser)
    _show.add_arguments(parser, summary=True)


def run(args: argparse.Namespace) -> int:
    """Decode every input; 0 unless an input could not be read."""
    return stop_quietly_on_broken_pipe(lambda: _run(args, sys.stdout, sys.stdin))


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry point (``python tools/decode.py``)."""
    parser = argparse.ArgumentParser(prog="grapevine decode")
    add_arguments(parser)
    return run(parser.parse_args(argv))


def _run(args: argparse.Namespace, out: TextIO, stdin: TextIO) -> int:
    summary = Summary()
    printer = Printer(args, out)
    number = 0
    for item in args.inputs:
        datagrams = _read_input(item, args.port, summary, stdin)
        while True:
            # Only reading is guarded: an error writing the output is no unreadable input.
            try:
                datagram = next(datagrams)
            except StopIteration:
                break
            except (OSError, PcapError, ValueError, UnicodeDecodeError) as exc:
                summary.unreadable.append(item)
                # JSON Lines on stdout must stay parseable: the error goes to stderr there.
                print(f"error: cannot read {item}: {exc}",
                      file=sys.stderr if args.json else out)
                break
            number += 1
            printer.show(number, datagram)
    counts = printer.counts
    if args.summary:
        report = printer.traffic.report()
        if args.json:
            report["skipped"] = dict(summary.skipped.reasons)
            report["not_selected"] = counts.not_selected
            report["unreadable"] = list(summary.unreadable)
            print(json.dumps(report), file=out)
        else:
            for line in render_report(report):
                print(line, file=out)
            for reason, count in sorted(summary.skipped.reasons.items()):
                print(f"skipped packets: {count} {reason}", file=out)
    if not args.json:
        parts = [f"{counts.decoded + counts.malformed} datagrams", f"{counts.decoded} decoded",
                 f"{counts.malformed} malformed"]
        if summary.skipped.total:
            parts.append(f"{summary.skipped.total} packets skipped")
        if counts.not_selected:
            parts.append(f"{counts.not_selected} not selected")
        if summary.unreadable:
            parts.append(f"{len(summary.unreadable)} inputs unreadable")
        print("summary: " + ", ".join(parts), file=out)
    return 1 if summary.unreadable else 0


# --------------------------------------------------------------------------- inputs


def _read_input(item: str, port: int | None, summary: Summary,
                stdin: TextIO) -> Iterator[Datagram]:
    if item == "-":
        # A capture piped in (``tshark -r x.pcapng -w - | grapevine decode -``), else hex.
        raw = stdin.buffer.read() if hasattr(stdin, "buffer") else stdin.read().encode()
        if is_capture(raw[:4]):
            yield from _capture_datagrams(Capture(raw, port=port), "stdin", summary)
        else:
            yield from _hex_lines(raw.decode("ascii"), "stdin")
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
    if path.is_dir():
        raise OSError(f"{item} is a directory")
    with open(path, "rb") as handle:
        head = handle.read(4)
    if is_capture(head):
        yield from _capture_datagrams(Capture(open_capture(path), port=port), path.name,
                                      summary)
        return
    raw = path.read_bytes()
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


def _capture_datagrams(capture: Capture, name: str, summary: Summary) -> Iterator[Datagram]:
    capture.skipped = summary.skipped  # one count across every capture
    for packet in capture:
        yield Datagram(f"{name}:packet {packet.index} t={packet.stamp()} {packet.endpoints()}",
                       packet.payload, packet, capture.first_ns)


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
