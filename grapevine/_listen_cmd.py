"""``grapevine listen [GROUP:PORT]``: join a group and print each datagram as it arrives.

The same lines as ``grapevine decode`` (or JSON Lines with ``--json``), through the same
filters, until ``--count`` datagrams, ``--duration`` seconds or Ctrl-C. Joins on loopback
(127.0.0.1) unless ``--interface`` names another local address.
"""

from __future__ import annotations

import argparse
import sys
import threading
from typing import TextIO

from . import _live, _select, _show
from ._capture import Packet
from ._live import Heard, open_listener, stop_signals
from ._output import stop_quietly_on_broken_pipe
from ._show import Datagram, Printer

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the ``listen`` options on ``parser``."""
    parser.description = __doc__.split("\n\n")[1] if __doc__ else None
    _live.add_arguments(parser, endpoint_help="the multicast group and port to join")
    _select.add_arguments(parser, times=False)
    _show.add_arguments(parser, summary=False)


def run(args: argparse.Namespace) -> int:
    """Print what is heard; 1 if the group cannot be joined."""
    with stop_signals() as stop:
        return stop_quietly_on_broken_pipe(lambda: _run(args, sys.stdout, stop))


def _run(args: argparse.Namespace, out: TextIO, stop: threading.Event) -> int:
    group, port = args.endpoint
    listener = open_listener(group, port, args.interface)
    if listener is None:
        return 1
    printer = Printer(args, out)
    # On stderr: stdout carries only what is heard (JSON Lines stay parseable).
    sys.stderr.write(f"listening on {group}:{port} via {args.interface}\n")
    sys.stderr.flush()

    def show(heard: Heard) -> None:
        number = printer.counts.decoded + printer.counts.malformed + printer.counts.not_selected
        packet = Packet(number + 1, heard.time_ns, 9, heard.src, group, heard.src_port, port,
                        heard.data)
        printer.show(number + 1, Datagram(f"t={packet.stamp()} {packet.endpoints()}",
                                          heard.data, packet))
        out.flush()  # a line as soon as its datagram: someone is watching, or a pipe

    with listener:
        listener.run(show, stop=stop, count=args.count, duration=args.duration)
    counts = printer.counts
    if not args.json:
        print(f"heard {counts.decoded + counts.malformed + counts.not_selected} datagrams: "
              f"{counts.decoded} shown, {counts.malformed} malformed, "
              f"{counts.not_selected} not selected", file=out)
    return 0
