"""``grapevine play FILE [GROUP:PORT]``: multicast a capture's Grapevine datagrams again.

Every UDP payload of the capture (pcap or pcapng) that starts with the Grapevine magic is
sent, malformed ones too (so receivers see what they saw), in capture order and at the
recorded pace, ``--speed`` times faster, or ``--as-fast-as-possible``. They go to the group
given (default 239.255.71.1:47100), through 127.0.0.1 with TTL 0 unless ``--interface`` and
``--ttl`` say otherwise: never to the addresses in the capture, which may be anywhere.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections.abc import Iterator

from . import _live
from ._capture import Capture, Packet, PcapError, read_capture
from ._errors import NetworkError
from ._live import stop_signals
from ._select import Selection, id_argument
from ._transport import open_sender
from .wire import MAGIC

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the ``play`` options on ``parser``."""
    parser.description = __doc__.split("\n\n")[1] if __doc__ else None
    parser.add_argument("file", metavar="FILE", help="a pcap or pcapng capture")
    _live.add_arguments(parser, stop=False, endpoint_help="the multicast group and port to "
                                                          "send to")
    parser.add_argument("--ttl", type=int, default=0,
                        help="multicast TTL (default 0: the datagrams never leave this host)")
    pace = parser.add_mutually_exclusive_group()
    pace.add_argument("--speed", type=float, default=1.0, metavar="X",
                      help="play X times faster than recorded (default 1)")
    pace.add_argument("--as-fast-as-possible", action="store_true",
                      help="send without waiting between datagrams")
    parser.add_argument("--port", type=int, default=None,
                        help="only the capture's datagrams to (or from) this UDP port")
    parser.add_argument("--stream", type=id_argument, default=None, metavar="ID",
                        help="only datagrams of this stream_id")
    parser.add_argument("--session", type=id_argument, default=None, metavar="ID",
                        help="only datagrams of this session_id (decimal or 0x hex)")


def _grapevine_packets(capture: Capture, selection: Selection) -> Iterator[Packet]:
    for packet in capture:
        data = packet.payload
        if data[:4] != MAGIC:
            continue
        if len(data) >= 20:  # the header's ids are readable even if the rest is broken
            stream_id = int.from_bytes(data[8:12], "little")
            session_id = int.from_bytes(data[12:20], "little")
            if not selection.malformed_passes(stream_id, session_id):
                continue
        yield packet


def run(args: argparse.Namespace) -> int:
    """Play the capture; 1 if it cannot be read or the group cannot be sent to."""
    with stop_signals() as stop:
        return _run(args, stop)


def _run(args: argparse.Namespace, stop: threading.Event) -> int:
    if not args.speed > 0:
        sys.stderr.write("error: --speed must be positive\n")
        return 1
    group, port = args.endpoint
    data = read_capture(args.file)
    if data is None:
        return 1
    try:
        sender = open_sender(group, port, interface=args.interface, ttl=args.ttl)
    except (NetworkError, ValueError) as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 1
    selection = Selection(stream=args.stream, session=args.session)
    capture = Capture(data, port=args.port)
    sent = 0
    started = time.monotonic()
    first_ns: int | None = None
    status = 0
    try:
        for packet in _grapevine_packets(capture, selection):
            if stop.is_set():
                break
            if not args.as_fast_as_possible and packet.time_ns is not None:
                if first_ns is None:
                    first_ns = packet.time_ns
                due = started + (packet.time_ns - first_ns) / 1e9 / args.speed
                delay = due - time.monotonic()
                # Pacing: the recorded gaps between datagrams (a stop signal cuts it short).
                if delay > 0 and stop.wait(delay):
                    break
            try:
                sender.send(packet.payload)
                sent += 1
            except OSError as exc:  # e.g. ENOBUFS under a burst: counted, not fatal
                sys.stderr.write(f"warning: datagram of packet {packet.index} not sent: "
                                 f"{exc.strerror or exc}\n")
    except PcapError as exc:
        sys.stderr.write(f"error: cannot read {args.file} past packet {capture.frames}: "
                         f"{exc}\n")
        status = 1
    finally:
        sender.close()
    seconds = time.monotonic() - started
    sys.stdout.write(f"played {sent} datagrams to {group}:{port} via {args.interface} in "
                     f"{seconds:.3f} s\n")
    return status
