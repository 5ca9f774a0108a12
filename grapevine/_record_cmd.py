"""``grapevine record FILE [GROUP:PORT]``: write every datagram heard on a group to a pcapng
capture, without tcpdump and without root.

Each datagram is stored with the time it was received and synthesized IPv4/UDP headers
(sender address and port as received, the group and port as destination; link type raw IP),
so tcpdump, tshark, Wireshark and ``grapevine decode`` / ``replay`` / ``play`` read the file.
``-`` writes to stdout (``grapevine record - | tshark -r -``). Stops after ``--count``
datagrams, ``--duration`` seconds, Ctrl-C or SIGTERM, always leaving a whole file.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import threading
from typing import BinaryIO

from . import _live
from ._live import Heard, open_listener, stop_signals
from ._pcapng_writer import PcapngWriter

__all__ = ["add_arguments", "run"]

_FLUSH_EVERY_S = 0.2  # a reader following the file (or a pipe) sees datagrams this soon


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the ``record`` options on ``parser``."""
    parser.description = __doc__.split("\n\n")[1] if __doc__ else None
    parser.add_argument("file", metavar="FILE", help="the pcapng file to write ('-': stdout)")
    _live.add_arguments(parser, endpoint_help="the multicast group and port to record")


def run(args: argparse.Namespace) -> int:
    """Record until stopped; 1 if the group cannot be joined or the file written."""
    with stop_signals() as stop:
        return _run(args, stop)


def _run(args: argparse.Namespace, stop: threading.Event) -> int:
    group, port = args.endpoint
    listener = open_listener(group, port, args.interface)
    if listener is None:
        return 1
    with contextlib.ExitStack() as stack:
        stack.enter_context(listener)
        try:
            stream: BinaryIO = (sys.stdout.buffer if args.file == "-"
                                else stack.enter_context(open(args.file, "wb")))
        except OSError as exc:
            sys.stderr.write(f"error: cannot write {args.file}: {exc.strerror or exc}\n")
            return 1
        writer = PcapngWriter(stream, interface_name=f"grapevine {group}:{port}",
                              description=f"UDP to {group}:{port} received on "
                                          f"{args.interface} by grapevine record")
        writer.flush()
        sys.stderr.write(f"recording {group}:{port} via {args.interface} to {args.file}\n")
        sys.stderr.flush()

        def write(heard: Heard) -> None:
            writer.write_udp(heard.data, heard.time_ns, src=heard.src, src_port=heard.src_port,
                             dst=group, dst_port=port)

        try:
            listener.run(write, stop=stop, count=args.count, duration=args.duration,
                         every=_FLUSH_EVERY_S, on_tick=writer.flush)
            writer.flush()
        except OSError as exc:
            sys.stderr.write(f"error: cannot write {args.file}: {exc.strerror or exc}\n")
            return 1
    sys.stderr.write(f"recorded {writer.packets} datagrams to {args.file}\n")
    return 0
