"""``grapevine stats [GROUP:PORT]``: a live view of the traffic on a group.

Per stream and session: datagrams, messages by kind and their rates over the last interval,
gaps (holes in the datagram sequence), the snapshot cycle's progress and period, heartbeat
interval, latency from the publisher's send time and its rise (lag); malformed datagrams
and the socket's kernel drops. Plain text refreshed every second (``--every``) until
Ctrl-C; ``--once SECONDS`` listens that long, prints one report and exits. ``--json``
prints each report as one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from typing import Any, TextIO

from . import _live
from ._errors import DecodeError
from ._live import Heard, Listener, open_listener, stop_signals
from ._output import stop_quietly_on_broken_pipe
from ._traffic import Traffic, render_report
from .codec import decode_datagram

__all__ = ["add_arguments", "run"]

_CLEAR = "\x1b[H\x1b[2J"  # cursor home, clear screen: a terminal shows one report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the ``stats`` options on ``parser``."""
    parser.description = __doc__.split("\n\n")[1] if __doc__ else None
    _live.add_arguments(parser, stop=False, endpoint_help="the multicast group and port to join")
    parser.add_argument("--once", type=float, default=None, metavar="SECONDS",
                        help="listen this long, print one report and exit")
    parser.add_argument("--every", type=float, default=1.0, metavar="SECONDS",
                        help="refresh interval of the live view (default 1)")
    parser.add_argument("--json", action="store_true", help="each report as one JSON object")


def run(args: argparse.Namespace) -> int:
    """Report until interrupted (or once); 1 if the group cannot be joined."""
    with stop_signals() as stop:
        return stop_quietly_on_broken_pipe(lambda: _run(args, sys.stdout, stop))


class _Live:
    """The traffic heard so far and the counts of the last report, for recent rates."""

    def __init__(self, args: argparse.Namespace, listener: Listener, out: TextIO) -> None:
        self.args = args
        self.listener = listener
        self.out = out
        self.traffic = Traffic()
        self.started = time.monotonic()
        self._last: tuple[float, dict[tuple[int, int], tuple[int, int, int]]] | None = None
        self._clear = not args.json and args.once is None and out.isatty()

    def heard(self, heard: Heard) -> None:
        try:
            decoded = decode_datagram(heard.data)
        except DecodeError as exc:
            self.traffic.add_malformed(exc, len(heard.data), heard.time_ns,
                                       f"from {heard.src}:{heard.src_port}")
            return
        self.traffic.add(decoded, len(heard.data), heard.time_ns)

    def report(self) -> None:
        now = time.monotonic()
        report = self.traffic.report()
        counts = {(s["stream_id"], s["session_id"]):
                  (s["datagrams"], s["messages"].get("DELTA", 0), s["bytes"])
                  for s in report["sessions"]}
        rates: dict[tuple[int, int], dict[str, float]] = {}
        if self._last is not None and now > self._last[0]:
            seconds = now - self._last[0]
            for key, (datagrams, deltas, size) in counts.items():
                before = self._last[1].get(key, (0, 0, 0))
                rates[key] = {"seconds": seconds, "datagrams": (datagrams - before[0]) / seconds,
                              "deltas": (deltas - before[1]) / seconds,
                              "bytes": (size - before[2]) / seconds}
        self._last = (now, counts)
        group, port = self.args.endpoint
        header: dict[str, Any] = {"group": group, "port": port,
                                  "interface": self.args.interface,
                                  "seconds": round(now - self.started, 3),
                                  "kernel_drops": self.listener.kernel_drops}
        if self.args.json:
            report["recent_rates"] = [{"stream_id": key[0], "session_id": key[1], **value}
                                      for key, value in sorted(rates.items())]
            print(json.dumps({**header, **report}), file=self.out, flush=True)
            return
        lines = [f"grapevine stats {group}:{port} via {self.args.interface}: "
                 f"{header['seconds']:.1f} s, kernel drops {header['kernel_drops']}"]
        lines += render_report(report, rates or None)
        text = "\n".join(lines)
        print(_CLEAR + text if self._clear else text + "\n", file=self.out, flush=True)


def _run(args: argparse.Namespace, out: TextIO, stop: threading.Event) -> int:
    group, port = args.endpoint
    listener = open_listener(group, port, args.interface)
    if listener is None:
        return 1
    sys.stderr.write(f"listening on {group}:{port} via {args.interface}\n")
    sys.stderr.flush()
    with listener:
        live = _Live(args, listener, out)
        if args.once is not None:
            listener.run(live.heard, stop=stop, duration=args.once)
        else:
            listener.run(live.heard, stop=stop, every=args.every, on_tick=live.report)
        live.report()  # the last word: what was heard up to the stop
    return 0
