"""``grapevine repeat``: carry multicast streams from network A to network B over a link.

Run ``--send`` on A (it joins the groups and forwards to ``--peer``) and ``--receive`` on B
(it accepts on ``--listen`` and multicasts on B). Both sides name the same ``--group``s;
the receive side may remap one to another group:port on B (``A_GROUP:PORT=B_GROUP:PORT``).
Multicast stays on the host unless ``--interface`` and ``--ttl`` say otherwise.

Output: human-readable log lines on stderr, one with the stats every ``--stats-interval``
seconds; machine-readable JSON lines on stdout: ``{"event": "ready", ...}`` once the
sockets are open (with the link address actually bound), ``{"event": "stats", ...}`` on
SIGUSR1, and ``{"event": "final", ...}`` at exit (SIGTERM, SIGINT or ``--duration``).
Exit status 0, 2 for bad arguments, 1 if the sockets cannot be opened or a repeater
thread failed.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import time
from types import FrameType
from typing import Any, TextIO

from ._errors import ConfigError, NetworkError
from ._transport import DEFAULT_INTERFACE
from .auth import KeyRing
from .repeater import Endpoint, Repeater, RepeaterStats

__all__ = ["add_arguments", "run"]

log = logging.getLogger("grapevine")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the ``repeat`` options on ``parser``."""
    parser.description = __doc__.split("\n\n")[1] if __doc__ else None
    role = parser.add_mutually_exclusive_group(required=True)
    role.add_argument("--send", action="store_true",
                      help="network A's side: join the groups, forward to --peer")
    role.add_argument("--receive", action="store_true",
                      help="network B's side: accept on --listen, multicast on B")
    parser.add_argument("--group", action="append", required=True, metavar="GROUP:PORT",
                        help="a group:port to carry (repeat for several; on --receive, "
                             "GROUP:PORT=B_GROUP:PORT multicasts it to another on B)")
    parser.add_argument("--peer", metavar="HOST:PORT",
                        help="--send: the receive side's link address (required)")
    parser.add_argument("--listen", metavar="ADDR:PORT",
                        help="--receive: where to accept the link (required; port 0: any)")
    parser.add_argument("--udp", action="store_true",
                        help="carry frames in UDP datagrams instead of a TCP connection "
                             "(no connection, no reconnects; link loss is stream loss)")
    parser.add_argument("--interface", default=DEFAULT_INTERFACE, metavar="ADDR",
                        help="local interface address for multicast (default 127.0.0.1)")
    parser.add_argument("--ttl", type=int, default=0,
                        help="--receive: multicast TTL on B (default 0: this host only)")
    parser.add_argument("--validate", choices=("header", "full"), default="header",
                        help="check each datagram's header (default) or decode it whole")
    parser.add_argument("--queue-bytes", type=int, default=4 << 20, metavar="N",
                        help="--send: queue bound in bytes; the oldest go when full")
    parser.add_argument("--link-buffer", type=int, default=256 << 10, metavar="N",
                        help="--send: TCP send buffer in bytes: what a broken link can lose, "
                             "and at least bandwidth x round trip for a fast, long link")
    parser.add_argument("--link-timeout", type=float, default=3.0, metavar="S",
                        help="seconds without progress before a link is dropped as dead")
    parser.add_argument("--retransmit-datagrams", type=int, default=4096, metavar="N",
                        help="--receive: recent delta datagrams kept per stream to answer "
                             "retransmission requests from subscribers on this side "
                             "(SPEC §15; 0: off)")
    parser.add_argument("--keys", metavar="FILE", default=None,
                        help="--receive: a key file (grapevine keygen): answer only signed "
                             "retransmission requests and sign UNAVAILABLE answers")
    parser.add_argument("--stats-interval", type=float, default=10.0, metavar="S",
                        help="seconds between stats log lines (0: none)")
    parser.add_argument("--duration", type=float, default=None, metavar="S",
                        help="stop after this many seconds (default: run until signalled)")


def run(args: argparse.Namespace) -> int:
    """Run one repeater until a signal or ``--duration``; its exit status."""
    if not logging.getLogger().handlers and not log.handlers:
        logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                            format="%(asctime)s %(levelname)s %(message)s")
    try:
        repeater = _make(args)
    except ConfigError as exc:
        sys.stderr.write(f"grapevine repeat: {exc}\n")
        return 2
    except NetworkError as exc:
        sys.stderr.write(f"grapevine repeat: {exc}\n")
        return 1
    with repeater:
        return _serve(repeater, args, sys.stdout)


def _make(args: argparse.Namespace) -> Repeater:
    transport = "udp" if args.udp else "tcp"
    common: dict[str, Any] = {
        "transport": transport, "interface": args.interface, "validation": args.validate,
        "link_timeout_s": args.link_timeout,
        "keepalive_interval_s": min(0.5, args.link_timeout / 4),
    }
    if args.send:
        if args.peer is None:
            raise ConfigError("--send needs --peer HOST:PORT (the receive side's address)")
        if args.listen is not None or args.ttl:
            raise ConfigError("--listen and --ttl are --receive options")
        if any("=" in text for text in args.group):
            raise ConfigError("GROUP:PORT=B_GROUP:PORT remaps on the --receive side only")
        return Repeater("send", args.group, peer=args.peer, max_queue_bytes=args.queue_bytes,
                        link_buffer_bytes=args.link_buffer, **common)
    if args.listen is None:
        raise ConfigError("--receive needs --listen ADDR:PORT (where the link arrives)")
    if args.peer is not None:
        raise ConfigError("--peer is a --send option")
    groups: list[Endpoint] = []
    remap: dict[Endpoint, Endpoint] = {}
    for text in args.group:
        link_side, _, local_side = text.partition("=")
        endpoint = Endpoint.parse(link_side)
        groups.append(endpoint)
        if local_side:
            remap[endpoint] = Endpoint.parse(local_side)
    return Repeater("receive", groups, listen=args.listen, ttl=args.ttl, remap=remap,
                    retransmit_datagrams=args.retransmit_datagrams,
                    keys=KeyRing.from_file(args.keys) if args.keys else None, **common)


def _serve(repeater: Repeater, args: argparse.Namespace, out: TextIO) -> int:
    stop = threading.Event()
    dump = threading.Event()
    wake = threading.Event()
    restore = _install_signals(stop, dump, wake)
    try:
        host, port = repeater.link_address
        _emit(out, {"event": "ready", "role": repeater.role, "transport": repeater.transport,
                    "link": f"{host}:{port}", "groups": [str(g) for g in repeater.groups],
                    "interface": repeater.interface})
        log.info("grapevine repeat: %r", repeater)
        started = time.monotonic()
        interval = args.stats_interval if args.stats_interval > 0 else None
        next_log = started + interval if interval else float("inf")
        end = started + args.duration if args.duration is not None else float("inf")
        previous = repeater.stats()
        while not stop.is_set():
            now = time.monotonic()
            wait = min(next_log, end) - now
            if wait > 0:
                wake.wait(min(wait, 1.0))  # woken at once by a signal
                wake.clear()
            now = time.monotonic()
            if dump.is_set():
                dump.clear()
                _emit(out, {"event": "stats", **repeater.stats().to_dict()})
            if repeater.failure is not None:
                log.error("grapevine repeat: a repeater thread failed; exiting")
                _emit(out, {"event": "final", **repeater.stats().to_dict()})
                return 1
            if now >= next_log:
                current = repeater.stats()
                log.info("grapevine repeat %s", _rate_line(current, previous))
                previous = current
                next_log = now + (interval or float("inf"))
            if now >= end:
                break
        repeater.close()
        final = repeater.stats()
        log.info("grapevine repeat stopped: %s", final.summary())
        _emit(out, {"event": "final", **final.to_dict()})
        return 0
    finally:
        restore()


def _rate_line(now: RepeaterStats, before: RepeaterStats) -> str:
    seconds = max(now.taken_at - before.taken_at, 1e-9)
    rate = (now.forwarded - before.forwarded) / seconds
    return f"{now.summary()}; {rate:.0f} datagrams/s forwarded"


def _emit(out: TextIO, record: dict[str, Any]) -> None:
    out.write(json.dumps(record) + "\n")
    out.flush()


def _install_signals(stop: threading.Event, dump: threading.Event,
                     wake: threading.Event) -> Any:
    """SIGTERM/SIGINT stop, SIGUSR1 dumps stats; returns a function restoring the old
    handlers. Only the main thread may set handlers: elsewhere (a test calling ``run``)
    the command runs until ``--duration``."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def on_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()
        wake.set()

    def on_dump(signum: int, frame: FrameType | None) -> None:
        dump.set()
        wake.set()

    wanted = {signal.SIGTERM: on_stop, signal.SIGINT: on_stop}
    if hasattr(signal, "SIGUSR1"):
        wanted[signal.SIGUSR1] = on_dump
    previous = {signum: signal.signal(signum, handler) for signum, handler in wanted.items()}

    def restore() -> None:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return restore
