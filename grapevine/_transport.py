"""Multicast sockets: the only module that sets socket options or joins groups.

Defaults keep traffic on the host: interface 127.0.0.1 and TTL 0. Sending anywhere else is
something a caller asks for by naming an interface address (and a TTL above 0).
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import random
import socket
import struct
import sys

from ._errors import ConfigError, NetworkError

__all__ = [
    "DEFAULT_GROUP",
    "DEFAULT_INTERFACE",
    "DEFAULT_PORT",
    "ReceiveSocket",
    "check_endpoint",
    "free_port",
    "open_receiver",
    "open_sender",
    "open_unicast",
]

log = logging.getLogger("grapevine")

DEFAULT_GROUP = "239.255.71.1"  # administratively scoped (RFC 2365), never routed off-site
DEFAULT_PORT = 47100
DEFAULT_INTERFACE = "127.0.0.1"
DEFAULT_RECEIVE_BUFFER = 4 << 20

# Linux socket options the socket module does not name.
_SO_RXQ_OVFL = getattr(socket, "SO_RXQ_OVFL", 40 if sys.platform.startswith("linux") else None)
# SO_MEMINFO (Linux 4.6+): u32 counters, the first two the bytes queued for reading
# (sk_rmem_alloc) and the receive buffer's size (sk_rcvbuf), in the same units.
_SO_MEMINFO = getattr(socket, "SO_MEMINFO", 55 if sys.platform.startswith("linux") else None)
_MEMINFO_BYTES = 9 * 4
_MEMINFO_HEAD = struct.Struct("=II")
_IP_MULTICAST_ALL = getattr(socket, "IP_MULTICAST_ALL",
                            49 if sys.platform.startswith("linux") else None)
_U32 = struct.Struct("=I")
_TIMEVAL = struct.Struct("@ll")  # struct timeval: (tv_sec, tv_usec), native longs
_DONTWAIT: int = getattr(socket, "MSG_DONTWAIT", 0)


def check_endpoint(group: str, port: int, interface: str) -> None:
    """Raise :class:`ConfigError` unless group is IPv4 multicast, port valid, interface IPv4."""
    try:
        address = ipaddress.IPv4Address(group)
    except ValueError:
        raise ConfigError(f"group {group!r} is not an IPv4 address") from None
    if not address.is_multicast:
        raise ConfigError(f"group {group} is not a multicast address (224.0.0.0/4)")
    if not isinstance(port, int) or not 1 <= port <= 65535:
        raise ConfigError(f"port {port!r} must be an int in 1..65535")
    try:
        ipaddress.IPv4Address(interface)
    except ValueError:
        raise ConfigError(f"interface {interface!r} must be the IPv4 address of a local "
                          "interface (default 127.0.0.1)") from None


def free_port(group: str) -> int:
    """A random UDP port in 40000-60000 that nothing on this host holds for ``group``.

    The probe binds the group address itself (never the wildcard), joins nothing and
    sends nothing: it only asks the kernel whether the port is taken. The port is not
    reserved; a random pick keeps two callers probing at once from choosing the same one.
    """
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(40000, 60000)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            try:
                probe.bind((group, port))
            except OSError:
                continue
        return port
    raise RuntimeError("no free UDP port found in 40000-60000")


def open_sender(group: str, port: int, *, interface: str = DEFAULT_INTERFACE,
                ttl: int = 0, connected: bool = True) -> socket.socket:
    """A UDP socket sending to group:port through ``interface`` with ``ttl``.

    Connected (``send``), unless ``connected=False``: then it is only bound, so it can
    also receive unicast on its address (retransmission requests, SPEC §15), and sends
    with ``sendto``.
    """
    check_endpoint(group, port, interface)
    if not 0 <= ttl <= 255:
        raise ConfigError(f"ttl {ttl} must be in 0..255")
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    try:
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(interface))
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, ttl)
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)
        sock.bind((interface, 0))
        if connected:
            sock.connect((group, port))
    except OSError as exc:
        sock.close()
        raise _network_error(exc, "send to", group, port, interface) from exc
    return sock


def open_unicast(interface: str = DEFAULT_INTERFACE) -> socket.socket:
    """A UDP socket bound to an ephemeral port on ``interface``: the subscriber's end of
    retransmission (requests out, answers in; SPEC §15)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    try:
        sock.bind((interface, 0))
    except OSError as exc:
        sock.close()
        raise _network_error(exc, "bind a unicast socket for retransmission", interface, 0,
                             interface) from exc
    return sock


class ReceiveSocket:
    """A socket joined to one group; reads with ``recvmsg_into`` to get kernel drop counts."""

    def __init__(self, sock: socket.socket, buffer_size: int, drops_supported: bool) -> None:
        self.sock = sock
        self.buffer_size = buffer_size
        self.drops_supported = drops_supported
        self.kernel_drops = 0
        self.last_address: tuple[str, int] | None = None  # the source of the last datagram
        self._ancillary = socket.CMSG_SPACE(_U32.size) if drops_supported else 0
        # SO_RCVTIMEO takes a struct timeval on Linux and the BSDs (Windows: milliseconds;
        # there, and wherever setting it fails, set_wait falls back to Python's timeout).
        self._kernel_timeout = sys.platform.startswith(("linux", "darwin", "freebsd")) \
            and hasattr(socket, "SO_RCVTIMEO") and _DONTWAIT != 0
        self._meminfo = _SO_MEMINFO is not None

    def recv_into(self, buffer: bytearray | memoryview) -> int:
        """Read one datagram into ``buffer``; updates :attr:`kernel_drops`."""
        if not self._ancillary:
            size, self.last_address = self.sock.recvfrom_into(buffer)
            return size
        size, ancdata, _flags, self.last_address = self.sock.recvmsg_into([buffer],
                                                                         self._ancillary)
        for level, kind, data in ancdata:
            if level == socket.SOL_SOCKET and kind == _SO_RXQ_OVFL and len(data) >= 4:
                self.kernel_drops = _U32.unpack_from(data)[0]
        return size

    def receive(self, buffer: bytearray | memoryview, wait: bool = True) -> int:
        """Read one datagram into ``buffer`` like :meth:`recv_into`, but return -1 instead
        of raising when none comes: within the :meth:`set_wait` time if ``wait``, else
        at once (``MSG_DONTWAIT``: the receiver drains what is queued without blocking)."""
        if not wait and not self._kernel_timeout:
            return -1  # with Python's timeout, CPython polls (waits) before any read
        try:
            if not self._ancillary:
                size, self.last_address = self.sock.recvfrom_into(
                    buffer, 0, 0 if wait else _DONTWAIT)
                return size
            size, ancdata, _flags, self.last_address = self.sock.recvmsg_into(
                [buffer], self._ancillary, 0 if wait else _DONTWAIT)
        except (BlockingIOError, TimeoutError):
            return -1
        for level, kind, data in ancdata:
            if level == socket.SOL_SOCKET and kind == _SO_RXQ_OVFL and len(data) >= 4:
                self.kernel_drops = _U32.unpack_from(data)[0]
        return size

    def queue_fill(self) -> float | None:
        """How full the socket's receive queue is, 0 to 1 (queued bytes over the buffer,
        as the kernel counts them): SO_MEMINFO on Linux; None where it is not known."""
        meminfo = self._queued_and_size()
        if meminfo is None:
            return None
        queued, size = meminfo
        return min(queued / size, 1.0) if size else None

    def nothing_queued(self) -> bool:
        """True if the receive queue is known to be empty (no byte queued): asking costs
        about 0.6 us, a read that finds nothing about 1.7 us (the system call and Python's
        BlockingIOError). False where it is not known."""
        meminfo = self._queued_and_size()
        return meminfo is not None and meminfo[0] == 0

    def _queued_and_size(self) -> tuple[int, int] | None:
        """SO_MEMINFO's bytes queued for reading and the buffer's size (None: unknown)."""
        if not self._meminfo or _SO_MEMINFO is None:
            return None
        try:
            queued, size = _MEMINFO_HEAD.unpack_from(
                self.sock.getsockopt(socket.SOL_SOCKET, _SO_MEMINFO, _MEMINFO_BYTES))
        except OSError:
            self._meminfo = False
            return None
        return queued, size

    def set_wait(self, timeout: float) -> None:
        """How long :meth:`receive` waits. Where the OS allows, a kernel receive timeout
        (SO_RCVTIMEO) on a blocking socket: Python's own socket timeout polls the socket
        before every read, one more system call per datagram."""
        if self._kernel_timeout:
            seconds = int(timeout)
            # At least 1 us: a zero timeval would mean "wait for ever".
            micros = max(round((timeout - seconds) * 1e6), 0 if seconds else 1)
            try:
                if self.sock.gettimeout() is not None:
                    self.sock.settimeout(None)  # blocking: the kernel timeout bounds reads
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO,
                                     _TIMEVAL.pack(seconds, micros))
                return
            except OSError:
                self._kernel_timeout = False  # not honoured here: Python's timeout
        self.sock.settimeout(timeout)

    def settimeout(self, timeout: float | None) -> None:
        self.sock.settimeout(timeout)

    def close(self) -> None:
        self.sock.close()


def open_receiver(group: str, port: int, *, interface: str = DEFAULT_INTERFACE,
                  buffer_bytes: int = DEFAULT_RECEIVE_BUFFER) -> ReceiveSocket:
    """A socket bound to group:port and joined on ``interface``.

    SO_REUSEADDR lets several subscribers on one host share the port. The receive buffer
    is set to ``buffer_bytes``; if the OS clamps it (net.core.rmem_max) a warning is logged.
    """
    check_endpoint(group, port, interface)
    if buffer_bytes < 4096:
        raise ConfigError("buffer_bytes must be at least 4096")
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if hasattr(socket, "SO_REUSEPORT") and sys.platform == "darwin":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, buffer_bytes)
        # Linux reports twice the usable size; compare against what we asked for.
        granted = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        if sys.platform.startswith("linux"):
            granted //= 2
        if granted < buffer_bytes:
            log.warning(
                "receive buffer clamped to %d bytes (asked %d): raise net.core.rmem_max to "
                "avoid drops under bursts", granted, buffer_bytes,
            )
        # Bind to the group (not INADDR_ANY) so other groups on this port are not received.
        sock.bind((group, port))
        if _IP_MULTICAST_ALL is not None:
            try:
                sock.setsockopt(socket.IPPROTO_IP, _IP_MULTICAST_ALL, 0)
            except OSError:
                pass  # not Linux after all; binding to the group still filters
        membership = socket.inet_aton(group) + socket.inet_aton(interface)
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, membership)
        drops = False
        if _SO_RXQ_OVFL is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, _SO_RXQ_OVFL, 1)
                drops = True
            except OSError:
                drops = False
    except OSError as exc:
        sock.close()
        raise _network_error(exc, "receive from", group, port, interface) from exc
    return ReceiveSocket(sock, granted, drops)


def _network_error(exc: OSError, what: str, group: str, port: int,
                   interface: str) -> NetworkError:
    """The socket error, naming what was asked for (an interface this host lacks is the
    common case: EADDRNOTAVAIL or ENODEV, which alone name nothing)."""
    hint = ""
    if exc.errno in (errno.EADDRNOTAVAIL, errno.ENODEV):
        hint = f": no interface on this host has the address {interface}"
    return NetworkError(exc.errno, f"cannot {what} {group}:{port} on interface {interface}"
                                   f"{hint} ({exc.strerror or exc})")
