"""What the live tools (``listen``, ``stats``, ``record``, ``play``) share: the ``GROUP:PORT``
argument, a receiver that says when and from where each datagram came, and a stop on a
count, a duration, Ctrl-C or SIGTERM that leaves their output whole.

Like the library, they default to loopback: interface 127.0.0.1, where nothing sent by a
publisher with TTL 0 ever leaves the host. Another interface is something one names.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import FrameType

from ._errors import NetworkError
from ._transport import (
    DEFAULT_GROUP,
    DEFAULT_INTERFACE,
    DEFAULT_PORT,
    ReceiveSocket,
    check_endpoint,
    open_receiver,
)
from .wire import MAX_DATAGRAM_SIZE

__all__ = ["Heard", "Listener", "add_arguments", "parse_endpoint", "stop_signals"]

_STOP_LATENCY_S = 0.1  # the longest a receive waits before it looks at the stop event


def parse_endpoint(text: str) -> tuple[str, int]:
    """``GROUP:PORT``, ``GROUP`` (the default port) or ``:PORT`` (the default group)."""
    group, colon, port_text = text.rpartition(":")
    if not colon:
        group, port_text = text, ""
    group = group or DEFAULT_GROUP
    try:
        port = int(port_text) if port_text else DEFAULT_PORT
        check_endpoint(group, port, DEFAULT_INTERFACE)
    except ValueError as exc:  # ConfigError is a ValueError
        raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from None
    return group, port


def add_arguments(parser: argparse.ArgumentParser, *, stop: bool = True,
                  endpoint_help: str = "the multicast group and port") -> None:
    """``[GROUP:PORT]``, ``--interface`` and (with ``stop``) ``--count`` / ``--duration``."""
    parser.add_argument("endpoint", nargs="?", type=parse_endpoint,
                        default=(DEFAULT_GROUP, DEFAULT_PORT), metavar="GROUP:PORT",
                        help=f"{endpoint_help} (default {DEFAULT_GROUP}:{DEFAULT_PORT})")
    parser.add_argument("--interface", default=DEFAULT_INTERFACE, metavar="ADDRESS",
                        help=f"IPv4 address of the local interface to join on (default "
                             f"{DEFAULT_INTERFACE}: this host only)")
    if stop:
        parser.add_argument("--count", type=int, default=None, metavar="N",
                            help="stop after N datagrams")
        parser.add_argument("--duration", type=float, default=None, metavar="SECONDS",
                            help="stop after this many seconds")


@dataclass(frozen=True, slots=True)
class Heard:
    """One datagram as received."""

    data: bytes
    time_ns: int  # wall clock (Unix ns) when the receiver got it
    src: str
    src_port: int


class Listener:
    """A socket joined to ``group:port`` on ``interface`` (see grapevine/_transport.py)."""

    def __init__(self, group: str, port: int, interface: str = DEFAULT_INTERFACE) -> None:
        self.group, self.port, self.interface = group, port, interface
        self._socket: ReceiveSocket = open_receiver(group, port, interface=interface)
        self._buffer = bytearray(MAX_DATAGRAM_SIZE + 1)

    def receive(self, timeout: float) -> Heard | None:
        """The next datagram, or None if none came within ``timeout`` seconds."""
        sock = self._socket.sock
        sock.settimeout(max(timeout, 0.0))
        try:
            size, address = sock.recvfrom_into(self._buffer)
        except (TimeoutError, BlockingIOError):
            return None
        return Heard(bytes(self._buffer[:size]), time.time_ns(), address[0], address[1])

    @property
    def kernel_drops(self) -> int:
        return self._socket.kernel_drops

    def close(self) -> None:
        self._socket.close()

    def __enter__(self) -> Listener:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def run(self, on_datagram: Callable[[Heard], None], *, stop: threading.Event,
            count: int | None = None, duration: float | None = None,
            every: float | None = None, on_tick: Callable[[], None] | None = None) -> int:
        """Receive until ``count`` datagrams, ``duration`` seconds or ``stop`` is set (see
        :func:`stop_signals`); ``on_tick`` runs every ``every`` seconds. Returns the number
        of datagrams heard."""
        heard = 0
        start = time.monotonic()
        deadline = None if duration is None else start + duration
        next_tick = None if every is None else start + every
        while (count is None or heard < count) and not stop.is_set():
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                break
            if next_tick is not None and now >= next_tick:
                if on_tick is not None:
                    on_tick()
                assert every is not None
                next_tick += every * max(1, int((now - next_tick) / every) + 1)
            wait = _STOP_LATENCY_S
            for moment in (deadline, next_tick):
                if moment is not None:
                    wait = min(wait, moment - now)
            datagram = self.receive(wait)
            if datagram is not None:
                heard += 1
                on_datagram(datagram)
        # What the kernel already holds arrived before the stop: take it too (for at most
        # half a second, should a flood keep coming).
        drain_until = time.monotonic() + 0.5
        while (count is None or heard < count) and time.monotonic() < drain_until:
            datagram = self.receive(0.0)
            if datagram is None:
                break
            heard += 1
            on_datagram(datagram)
        return heard


def open_listener(group: str, port: int, interface: str) -> Listener | None:
    """The listener the live tools read from, or None after one error line on stderr
    (an interface this host lacks, a port that cannot be joined)."""
    try:
        return Listener(group, port, interface)
    except NetworkError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return None


@contextlib.contextmanager
def stop_signals() -> Iterator[threading.Event]:
    """Within the block, SIGINT (Ctrl-C) and SIGTERM (``kill``, ``timeout``) set the event
    it gives instead of raising wherever the program is: a tool stops at its next wake-up
    (within 0.1 s) with its output whole, whenever the signal came. Only the main thread
    can set handlers; elsewhere the event is the caller's to set."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def request_stop(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    previous = {number: signal.signal(number, request_stop)
                for number in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
