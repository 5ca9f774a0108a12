"""Stream repeaters: carry multicast streams between networks that do not route multicast.

A pair of repeaters joins a multicast network A to a network B over one unicast link:

* the **send** side, on A, joins the configured groups, checks each datagram's header
  cheaply, frames it with its group:port and writes it to the link (TCP by default, with
  reconnection and a bounded queue; or UDP);
* the **receive** side, on B, reads frames from the link, checks them again (the link is a
  trust boundary: anyone who can reach its port can write to it) and multicasts each
  datagram, byte for byte, to its group:port on B, or to the group:port it is remapped to.

Datagrams are never decoded and re-encoded: stream, session, sequence, send time and the
authentication trailer pass unchanged, so a signed stream stays verifiable end to end, and
a datagram a repeater drops is an ordinary gap that subscribers on B repair from the
snapshot cycle. Where the network can route multicast (a static multicast route, PIM),
that is the better engine; repeaters are for the links that cannot.

Link framing (both transports). A TCP connection starts with an 8-byte hello from the
connecting (send) side: ``b"GRPL"``, version 1 (u8), flags 0 (u8), reserved 0 (u16). Then
frames follow back to back; over UDP each UDP datagram holds exactly one frame and there is
no hello. A frame is ``kind`` (u8), ``flags`` (u8, 0), ``length`` (u16, little-endian: the
body bytes that follow). Kind 1, DATAGRAM: the body is the group (4 bytes, the IPv4 address
in network order), the port (u16, little-endian) and the Grapevine datagram, exactly as
received. Kind 2, KEEPALIVE: empty body, sent by an idle sender so that both ends notice a
dead link. Other kinds are skipped by their length (room for a retransmission channel).

Policies, each counted in :meth:`Repeater.stats` (``dropped`` by reason):

* the send side's queue holds at most ``max_queue_bytes`` of frames; when it is full the
  *oldest* frames are dropped (``queue_full``): after an outage the link carries the most
  recent stretch of the stream, which subscribers need first;
* a datagram that fails the header check is dropped on either side (``malformed``,
  ``too_large``); a frame for a group the receive side was not given, ``unknown_group``;
* a byte-identical copy of a datagram seen among the last ``dedupe_window`` ones is
  dropped (``duplicate``). A publisher never sends two identical datagrams (SPEC §9), so a
  copy is a network duplicate, a second link carrying the same stream, or a repeater loop,
  which this cuts after one lap;
* frames a TCP connection was carrying when it broke are counted ``link_lost``: on the send
  side those not written yet or not acknowledged by the peer's kernel, on the receive side
  a frame cut short; a multicast or UDP send that fails, ``send_error``.

Threads (daemon, named, joined by :meth:`Repeater.close`): the send side runs
``grapevine-repeat-in[groups]`` (reads the groups, fills the queue) and
``grapevine-repeat-link[peer]`` (connects, reconnects with exponential backoff, drains
the queue); the receive side runs ``grapevine-repeat-out[listen]`` (accepts, reads frames,
multicasts). A retransmission server attaches to the receive side through ``on_forward``:
it is called with every datagram as it is multicast on B.

Defaults keep multicast on the host (interface 127.0.0.1, TTL 0); the link's peer or listen
address has no default and must be named.
"""

from __future__ import annotations

import errno
import fcntl
import ipaddress
import logging
import random
import selectors
import socket
import struct
import termios
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, fields
from typing import Any, Literal, NamedTuple

from . import wire
from ._errors import ConfigError, DecodeError, GrapevineError, NetworkError
from ._retransmit import StreamCache
from ._transport import (
    DEFAULT_INTERFACE,
    ReceiveSocket,
    check_endpoint,
    open_receiver,
    open_sender,
)
from .auth import KeyRing
from .codec import HEADER_SIZE, decode_datagram

__all__ = [
    "DROP_REASONS",
    "FRAME_DATAGRAM",
    "FRAME_KEEPALIVE",
    "FRAME_OVERHEAD",
    "LINK_MAGIC",
    "LINK_VERSION",
    "Endpoint",
    "FrameReader",
    "LinkError",
    "Repeater",
    "RepeaterStats",
    "datagram_problem",
    "encode_frame",
    "hello",
]

log = logging.getLogger("grapevine")

Role = Literal["send", "receive"]
Transport = Literal["tcp", "udp"]
Validation = Literal["header", "full"]
ForwardTap = Callable[["Endpoint", bytes], None]

# ----------------------------------------------------------------------------- link format

# Derived from the construct definitions in grapevine.wire (the one definition, SPEC §16).
LINK_MAGIC = wire.LINK_MAGIC
LINK_VERSION = 1
FRAME_DATAGRAM = int(wire.RepeaterFrameKind.DATAGRAM)
FRAME_KEEPALIVE = int(wire.RepeaterFrameKind.KEEPALIVE)
_HELLO = struct.Struct(wire.struct_format(wire.RepeaterHello))  # magic, version, flags, reserved
_FRAME = struct.Struct(wire.struct_format(wire.RepeaterFrameHeader))  # kind, flags, length
_ADDRESS_SIZE = wire.RepeaterAddress.sizeof()  # group (4 bytes, network order) + port (u16)
_DATAGRAM_FRAME = struct.Struct(  # a DATAGRAM frame's header and address
    wire.struct_format(wire.RepeaterFrameHeader) + wire.struct_format(wire.RepeaterAddress)[1:])
FRAME_OVERHEAD = _DATAGRAM_FRAME.size  # 10 bytes in front of every datagram on the link
_MAX_BODY = 0xFFFF
_UDP_MAX_PAYLOAD = wire.MAX_DATAGRAM_SIZE  # largest UDP payload over IPv4
_KEEPALIVE_FRAME = _FRAME.pack(FRAME_KEEPALIVE, 0, 0)

DROP_REASONS = ("malformed", "too_large", "duplicate", "queue_full", "link_lost",
                "unknown_group", "send_error", "bad_frame")

_HEADER = struct.Struct(wire.struct_format(wire.Header))
_AUTH = int(wire.HeaderFlag.AUTH)


class LinkError(GrapevineError, ValueError):
    """The bytes a link connection started with are not a Grapevine repeater hello."""


class Endpoint(NamedTuple):
    """A multicast group and UDP port (IPv4)."""

    group: str
    port: int

    @classmethod
    def parse(cls, text: str | tuple[str, int] | Endpoint) -> Endpoint:
        """``"239.255.71.1:47100"`` (or a ``(group, port)`` pair); :class:`ConfigError`
        unless the group is IPv4 multicast and the port valid."""
        if isinstance(text, str):
            group, sep, port_text = text.strip().rpartition(":")
            if not sep or not port_text.isdigit():
                raise ConfigError(f"{text!r} is not GROUP:PORT")
            endpoint = cls(group, int(port_text))
        else:
            endpoint = cls(*text)
        check_endpoint(endpoint.group, endpoint.port, DEFAULT_INTERFACE)
        return endpoint

    @property
    def key(self) -> bytes:
        """The 6 bytes that name this endpoint in a DATAGRAM frame."""
        return socket.inet_aton(self.group) + self.port.to_bytes(2, "little")

    @classmethod
    def from_key(cls, key: bytes) -> Endpoint:
        """The endpoint a DATAGRAM frame's 6 address bytes name."""
        return cls(socket.inet_ntoa(key[:4]), int.from_bytes(key[4:6], "little"))

    def __str__(self) -> str:
        return f"{self.group}:{self.port}"


def hello() -> bytes:
    """The 8 bytes a TCP link connection starts with."""
    return _HELLO.pack(LINK_MAGIC, LINK_VERSION, 0, 0)


def encode_frame(endpoint_key: bytes, datagram: bytes | bytearray | memoryview) -> bytes:
    """One DATAGRAM frame: ``datagram`` tagged with its group:port (``Endpoint.key``)."""
    size = len(datagram)
    if size + _ADDRESS_SIZE > _MAX_BODY:
        raise ValueError(f"a {size}-byte datagram does not fit in a link frame")
    return _DATAGRAM_FRAME.pack(FRAME_DATAGRAM, 0, size + _ADDRESS_SIZE, endpoint_key[:4],
                                int.from_bytes(endpoint_key[4:6], "little")) + bytes(datagram)


class FrameReader:
    """Splits a link's bytes into DATAGRAM frames (sans-I/O).

    :meth:`feed` takes whatever the socket returned and gives back ``(endpoint_key,
    datagram)`` pairs for every complete DATAGRAM frame, keeping a partial frame for the
    next call. KEEPALIVE frames and unknown kinds are counted and skipped; a DATAGRAM frame
    too short to hold its address is counted in ``bad_frames``. With ``hello`` the stream
    must start with the link hello, or :class:`LinkError` is raised (the connection is not
    a repeater's and must be closed). The length field makes every other byte sequence
    parseable, so nothing after a good hello can desynchronise the reader.
    """

    def __init__(self, *, hello: bool = True) -> None:
        self._buffer = bytearray()
        self._need_hello = hello
        self.keepalives = 0
        self.unknown_frames = 0
        self.bad_frames = 0

    @property
    def buffered(self) -> int:
        """Bytes held of an incomplete frame (or hello)."""
        return len(self._buffer)

    @property
    def mid_frame(self) -> bool:
        """True if the bytes so far end inside a frame (after the hello)."""
        return bool(self._buffer) and not self._need_hello

    def reset(self) -> None:
        """Forget a partial frame (UDP: each datagram must be exactly one frame)."""
        self._buffer.clear()

    def feed(self, data: bytes | bytearray | memoryview) -> list[tuple[bytes, bytes]]:
        """The DATAGRAM frames ``data`` completes, as ``(endpoint_key, datagram)``."""
        buf = self._buffer
        buf += data
        size = len(buf)
        pos = 0
        if self._need_hello:
            if size < _HELLO.size:
                return []
            magic, version, _flags, _reserved = _HELLO.unpack_from(buf, 0)
            if magic != LINK_MAGIC or version != LINK_VERSION:
                raise LinkError(f"not a Grapevine repeater link: hello {bytes(buf[:8])!r}")
            self._need_hello = False
            pos = _HELLO.size
        frames: list[tuple[bytes, bytes]] = []
        unpack = _FRAME.unpack_from
        while size - pos >= _FRAME.size:
            kind, _flags, length = unpack(buf, pos)
            end = pos + _FRAME.size + length
            if end > size:
                break
            if kind == FRAME_DATAGRAM:
                if length < _ADDRESS_SIZE:
                    self.bad_frames += 1
                else:
                    body = pos + _FRAME.size
                    frames.append((bytes(buf[body:body + _ADDRESS_SIZE]),
                                   bytes(buf[body + _ADDRESS_SIZE:end])))
            elif kind == FRAME_KEEPALIVE:
                self.keepalives += 1
            else:
                self.unknown_frames += 1
            pos = end
        if pos:
            del buf[:pos]
        return frames


def datagram_problem(datagram: bytes | bytearray | memoryview, *, full: bool = False) -> str | None:
    """Why ``datagram`` is not worth forwarding, or None.

    The default check reads only the 36-byte header (SPEC §5 and §10 rules 1 to 3: size,
    magic, version, a non-zero session, room for the trailer a set AUTH flag announces): it
    keeps garbage and other protocols off the link at the cost of one ``struct`` call.
    ``full`` runs the whole decoder (every rule of SPEC §10), as a subscriber would.
    """
    size = len(datagram)
    if size > wire.MAX_DATAGRAM_SIZE:
        return f"{size} bytes, more than {wire.MAX_DATAGRAM_SIZE}"
    if full:
        try:
            decode_datagram(datagram)
        except DecodeError as exc:
            return str(exc)
        return None
    if size < HEADER_SIZE:
        return f"{size} bytes, shorter than the {HEADER_SIZE}-byte header"
    magic, version, flags, _count, _stream, session_id, _seq, _sent = _HEADER.unpack_from(
        datagram, 0)
    if magic != wire.MAGIC:
        return f"bad magic {bytes(magic)!r}"
    if version != wire.VERSION:
        return f"unsupported version {version}"
    if session_id == 0:
        return "session_id 0"
    if flags & _AUTH and size < HEADER_SIZE + wire.AUTH_TRAILER_SIZE:
        return "AUTH set but no room for the trailer"
    return None


# ----------------------------------------------------------------------------- stats


@dataclass(frozen=True, slots=True)
class RepeaterStats:
    """A snapshot of one repeater's counters (``received`` ... ``tap_errors``) and gauges
    (``connected``, ``queue_datagrams``, ``queue_bytes``).

    ``received``: datagrams read from the groups (send side) or from the link (receive).
    ``forwarded``: datagrams written to the link (send) or multicast on B (receive).
    ``dropped``: datagrams dropped, by reason (every reason of :data:`DROP_REASONS`).
    ``connects``: link connections made (send) or accepted (receive); ``reconnects``: those
    made after the first (send). ``link_errors``: connections that broke (reset, stalled
    for ``link_timeout_s``, bad hello). ``connected``: 1 while the send side has a link
    (TCP), or how many connections the receive side holds. ``kernel_drops``: datagrams
    the kernel dropped at the send side's group sockets because it read too slowly.
    ``groups``: datagrams per group: queued for the link (send) or multicast (receive).
    """

    role: str
    transport: str
    taken_at: float
    received: int
    received_bytes: int
    forwarded: int
    forwarded_bytes: int
    dropped: dict[str, int]
    connects: int
    reconnects: int
    connect_failures: int
    link_errors: int
    refused_connections: int
    keepalives: int
    unknown_frames: int
    kernel_drops: int
    tap_errors: int
    internal_errors: int
    connected: int
    queue_datagrams: int
    queue_bytes: int
    queue_high_water_bytes: int
    groups: dict[str, int]
    retransmit: dict[str, int]
    """Receive side: retransmission requests from B answered from the cache (SPEC §15):
    ``requests``, ``datagrams_sent``, ``unavailable``, ``refused``."""

    @property
    def total_dropped(self) -> int:
        """Datagrams dropped for any reason."""
        return sum(self.dropped.values())

    def to_dict(self) -> dict[str, Any]:
        """Every field by name, for JSON and logs."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def summary(self) -> str:
        """One human-readable line."""
        drops = ", ".join(f"{k} {v}" for k, v in self.dropped.items() if v) or "none"
        return (f"{self.role}/{self.transport}: received {self.received}, forwarded "
                f"{self.forwarded} ({self.forwarded_bytes} B), dropped {drops}, connected "
                f"{self.connected}, connects {self.connects} (reconnects {self.reconnects}, "
                f"failures {self.connect_failures}, link errors {self.link_errors}), queue "
                f"{self.queue_datagrams} datagrams / {self.queue_bytes} B (high water "
                f"{self.queue_high_water_bytes} B), kernel drops {self.kernel_drops}")


class _Counters:
    """The counters one side's threads update (each field by one thread only, except
    ``dropped``, where each reason belongs to one thread)."""

    def __init__(self, groups: Iterable[Endpoint]) -> None:
        self.received = self.received_bytes = 0
        self.forwarded = self.forwarded_bytes = 0
        self.dropped = dict.fromkeys(DROP_REASONS, 0)
        self.connects = self.reconnects = self.connect_failures = self.link_errors = 0
        self.refused_connections = self.keepalives = self.unknown_frames = 0
        self.tap_errors = self.internal_errors = 0
        self.groups = {str(g): 0 for g in groups}


class _Recent:
    """The last ``capacity`` datagrams seen, by hash: a byte-identical copy is a duplicate.

    Python's ``hash`` of bytes is keyed per process (SipHash), so a remote party cannot
    choose collisions; an accidental one costs one datagram, an ordinary gap.
    """

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._seen: set[int] = set()
        self._order: deque[int] = deque()

    def seen_before(self, datagram: bytes) -> bool:
        if not self._capacity:
            return False
        digest = hash(datagram)
        if digest in self._seen:
            return True
        self._seen.add(digest)
        self._order.append(digest)
        if len(self._order) > self._capacity:
            self._seen.discard(self._order.popleft())
        return False


class _FrameQueue:
    """The send side's bounded queue of frames; drops the oldest when full.

    Not thread-safe: the repeater holds its lock around every call.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.frames: deque[bytes] = deque()
        self.bytes = 0
        self.high_water = 0

    def push(self, frame: bytes) -> int:
        """Queue ``frame``; returns how many older frames were dropped to make room."""
        dropped = 0
        frames = self.frames
        while frames and self.bytes + len(frame) > self.max_bytes:
            self.bytes -= len(frames.popleft())
            dropped += 1
        frames.append(frame)
        self.bytes += len(frame)
        if self.bytes > self.high_water:
            self.high_water = self.bytes
        return dropped

    def pop_batch(self, max_bytes: int) -> list[bytes]:
        """The oldest frames, at least one if any, up to ``max_bytes`` in all."""
        batch: list[bytes] = []
        taken = 0
        frames = self.frames
        while frames and (not batch or taken + len(frames[0]) <= max_bytes):
            frame = frames.popleft()
            batch.append(frame)
            taken += len(frame)
        self.bytes -= taken
        return batch


class _RateLimitedLog:
    """Logs the first few events of a kind, then one summary per interval: a bad peer
    or a flapping link cannot flood the log."""

    def __init__(self, first: int = 5, interval_s: float = 10.0) -> None:
        self._first, self._interval = first, interval_s
        self._counts: dict[str, int] = {}
        self._last: dict[str, float] = {}

    def warning(self, kind: str, message: str, *args: object) -> None:
        count = self._counts[kind] = self._counts.get(kind, 0) + 1
        now = time.monotonic()
        if count <= self._first or now - self._last.get(kind, 0.0) >= self._interval:
            self._last[kind] = now
            suffix = f" ({count} so far)" if count > self._first else ""
            log.warning("grapevine repeater: " + message + suffix, *args)


# ----------------------------------------------------------------------------- the repeater


def _host_port(value: str | tuple[str, int], what: str) -> tuple[str, int]:
    if isinstance(value, str):
        host, sep, port_text = value.strip().rpartition(":")
        if not sep or not host or not port_text.isdigit():
            raise ConfigError(f"{what} {value!r} is not HOST:PORT")
        value = (host, int(port_text))
    host, port = value
    if not isinstance(port, int) or not 0 <= port <= 65535:
        raise ConfigError(f"{what} port {port!r} must be in 0..65535")
    return str(host), port


class Repeater:
    """One end of a repeater link: ``role="send"`` on network A, ``"receive"`` on B.

    Args:
        role: "send" (join ``groups`` on A, forward to ``peer``) or "receive" (accept on
            ``listen``, multicast on B).
        groups: the group:port endpoints carried (``"239.255.71.1:47100"`` or pairs). The
            send side joins them; the receive side multicasts only frames for them and
            drops (``unknown_group``) the rest.
        peer: send side only, required: the receive side's ``HOST:PORT``.
        listen: receive side only, required: the ``ADDR:PORT`` to accept the link on
            (port 0: the kernel picks one; see :attr:`link_address`).
        transport: "tcp" (default: ordered, reconnecting, queued) or "udp" (one frame per
            UDP datagram, no connection; loss on the link is loss on the stream).
        interface: the local interface address to join on (send) or multicast from
            (receive); default 127.0.0.1.
        ttl: receive side: the multicast TTL on B (default 0: the host only).
        remap: receive side: link endpoint -> endpoint to multicast to on B instead.
        validation: "header" (cheap checks of the 36-byte header) or "full" (the whole
            decoder, SPEC §10), on both sides.
        max_queue_bytes: send side: the queue's bound; the oldest frames go when full.
        link_timeout_s: a connection that makes no progress (send) or delivers nothing,
            not even a keepalive (receive), for this long is closed as dead; also the
            connect timeout.
        keepalive_interval_s: send side: how long the link may idle before a KEEPALIVE.
        reconnect_min_s, reconnect_max_s: send side: the reconnection backoff (doubling,
            with jitter).
        dedupe_window: datagrams remembered to drop byte-identical copies (0: off).
        max_connections: receive side: connections held at once; more are refused.
        receive_buffer_bytes: SO_RCVBUF of the group sockets and the link sockets.
        link_buffer_bytes: SO_SNDBUF of the send side's TCP link (Linux doubles it): what
            the kernel may hold unacknowledged, so what a broken connection loses, and
            the most that can be in flight (raise it for long, fast links: bandwidth x
            round trip).
        on_forward: receive side: called on the repeater's thread with ``(endpoint,
            datagram)`` for each datagram once it is multicast on B. Exceptions are
            counted in ``tap_errors`` and logged.
        retransmit_datagrams: receive side: recent delta datagrams kept per stream to
            answer retransmission requests from subscribers on B (SPEC §15), which send
            them to the source address of the datagrams: this repeater's. They never cross
            the link. 0: off (subscribers then repair from the snapshot cycle).
        keys: receive side: with a ring, only signed requests are answered and
            UNAVAILABLE answers are signed. The stream itself passes unchanged either way.
    """

    def __init__(
        self,
        role: Role,
        groups: Iterable[str | tuple[str, int] | Endpoint],
        *,
        peer: str | tuple[str, int] | None = None,
        listen: str | tuple[str, int] | None = None,
        transport: Transport = "tcp",
        interface: str = DEFAULT_INTERFACE,
        ttl: int = 0,
        remap: Mapping[str, str] | Mapping[Endpoint, Endpoint] | None = None,
        validation: Validation = "header",
        max_queue_bytes: int = 4 << 20,
        link_timeout_s: float = 3.0,
        keepalive_interval_s: float = 0.5,
        reconnect_min_s: float = 0.1,
        reconnect_max_s: float = 2.0,
        dedupe_window: int = 16384,
        max_connections: int = 8,
        receive_buffer_bytes: int = 4 << 20,
        link_buffer_bytes: int = 256 << 10,
        on_forward: ForwardTap | None = None,
        retransmit_datagrams: int = 4096,
        keys: KeyRing | None = None,
    ) -> None:
        if role not in ("send", "receive"):
            raise ConfigError(f"role must be 'send' or 'receive', not {role!r}")
        if transport not in ("tcp", "udp"):
            raise ConfigError(f"transport must be 'tcp' or 'udp', not {transport!r}")
        if validation not in ("header", "full"):
            raise ConfigError(f"validation must be 'header' or 'full', not {validation!r}")
        endpoints = tuple(dict.fromkeys(Endpoint.parse(g) for g in groups))
        if not endpoints:
            raise ConfigError("a repeater needs at least one group:port to carry")
        if role == "send":
            if peer is None:
                raise ConfigError("the send side needs peer='HOST:PORT' (the receive side)")
            if listen is not None or remap or on_forward is not None or ttl:
                raise ConfigError("listen, remap, on_forward and ttl are receive-side options")
            address = _host_port(peer, "peer")
            if address[1] == 0:
                raise ConfigError("peer port must not be 0")
        else:
            if listen is None:
                raise ConfigError("the receive side needs listen='ADDR:PORT'")
            if peer is not None:
                raise ConfigError("peer is a send-side option")
            address = _host_port(listen, "listen")
        try:
            ipaddress.IPv4Address(interface)
        except ValueError:
            raise ConfigError(f"interface {interface!r} must be a local IPv4 address") from None
        if not 0 <= ttl <= 255:
            raise ConfigError(f"ttl {ttl} must be in 0..255")
        if max_queue_bytes < 2 * (wire.MAX_DATAGRAM_SIZE + FRAME_OVERHEAD):
            raise ConfigError("max_queue_bytes must hold at least two of the largest frames "
                              f"({2 * (wire.MAX_DATAGRAM_SIZE + FRAME_OVERHEAD)} bytes)")
        for name, value in (("link_timeout_s", link_timeout_s),
                            ("keepalive_interval_s", keepalive_interval_s),
                            ("reconnect_min_s", reconnect_min_s)):
            if not value > 0:
                raise ConfigError(f"{name} must be positive")
        if keepalive_interval_s >= link_timeout_s:
            raise ConfigError("keepalive_interval_s must be below link_timeout_s")
        if reconnect_max_s < reconnect_min_s:
            raise ConfigError("reconnect_max_s must be at least reconnect_min_s")
        if dedupe_window < 0 or max_connections < 1:
            raise ConfigError("dedupe_window must be >= 0 and max_connections >= 1")
        self.role: Role = role
        self.transport: Transport = transport
        self.groups = endpoints
        self.interface = interface
        self._address = address
        self._full = validation == "full"
        self._link_timeout = link_timeout_s
        self._keepalive = keepalive_interval_s
        self._backoff = (reconnect_min_s, reconnect_max_s)
        self._max_connections = max_connections
        self._receive_buffer = receive_buffer_bytes
        self._link_buffer = link_buffer_bytes
        self._tap = on_forward
        if retransmit_datagrams < 0:
            raise ConfigError("retransmit_datagrams must be >= 0 (0: off)")
        self._cache: StreamCache | None = None
        if role == "receive" and retransmit_datagrams:
            self._cache = StreamCache(max_datagrams=retransmit_datagrams, keys=keys)
        self._counters = _Counters(endpoints)
        self._recent = _Recent(dedupe_window)
        self._warn = _RateLimitedLog()
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._queue = _FrameQueue(max_queue_bytes)
        self._writer_waiting = False
        self._connected = 0
        self._closing = threading.Event()
        self._closed = False
        self._failure: BaseException | None = None
        self._flush_deadline = 0.0  # set by close(): the send side's last writes end then
        self._unsent = 0  # bytes of the link thread's current write not yet written
        # A socket pair wakes every select() at once when close() writes to it.
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._group_sockets: list[tuple[ReceiveSocket, Endpoint, bytes]] = []
        self._routes: dict[bytes, tuple[Endpoint, Endpoint, socket.socket]] = {}
        self._listener: socket.socket | None = None
        self._threads: list[threading.Thread] = []
        try:
            if role == "send":
                self._open_send_side()
            else:
                self._open_receive_side(remap or {}, ttl)
        except BaseException:
            self._close_sockets()
            raise
        for thread in self._threads:
            thread.start()

    # ------------------------------------------------------------------ public

    @property
    def link_address(self) -> tuple[str, int]:
        """The peer (send side) or the bound listen address (receive side)."""
        return self._address

    @property
    def connected(self) -> bool:
        """True while the send side has a TCP link up (always, once started, over UDP),
        or while the receive side holds at least one connection (TCP) or is bound (UDP)."""
        return self._connected > 0

    def wait_connected(self, timeout: float | None = None) -> bool:
        """Wait until :attr:`connected`; False on timeout or once closed."""
        with self._cond:
            return self._cond.wait_for(lambda: self._connected > 0 or self._closed, timeout) \
                and not self._closed

    @property
    def failure(self) -> BaseException | None:
        """What stopped one of the repeater's threads (a bug), or None while all run.
        A repeater with a failure no longer forwards: close it and start another."""
        return self._failure

    def stats(self) -> RepeaterStats:
        """Every counter and gauge as one frozen :class:`RepeaterStats`."""
        c = self._counters
        with self._lock:
            queued, queue_bytes, high = (len(self._queue.frames), self._queue.bytes,
                                         self._queue.high_water)
            connected = self._connected
        kernel_drops = sum(rs.kernel_drops for rs, _, _ in self._group_sockets)
        return RepeaterStats(
            role=self.role, transport=self.transport, taken_at=time.monotonic(),
            received=c.received, received_bytes=c.received_bytes, forwarded=c.forwarded,
            forwarded_bytes=c.forwarded_bytes, dropped=dict(c.dropped), connects=c.connects,
            reconnects=c.reconnects, connect_failures=c.connect_failures,
            link_errors=c.link_errors, refused_connections=c.refused_connections,
            keepalives=c.keepalives, unknown_frames=c.unknown_frames,
            kernel_drops=kernel_drops, tap_errors=c.tap_errors,
            internal_errors=c.internal_errors, connected=connected,
            queue_datagrams=queued, queue_bytes=queue_bytes, queue_high_water_bytes=high,
            groups=dict(c.groups),
            retransmit=self._cache.counts() if self._cache is not None else {})

    def close(self, timeout: float = 2.0) -> None:
        """Stop the threads (the send side first writes what is queued, for at most
        ``timeout`` seconds if the link is up) and close every socket. Idempotent."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._flush_deadline = time.monotonic() + timeout
            self._closing.set()
            self._cond.notify_all()  # the link thread, waiting for frames, and waiters
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass  # the pair is ours; a full buffer still leaves it readable
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(timeout + self._link_timeout)
        self._close_sockets()

    def __enter__(self) -> Repeater:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        groups = ",".join(map(str, self.groups))
        host, port = self._address
        return f"<Repeater {self.role} {self.transport} {groups} link {host}:{port}>"

    # ------------------------------------------------------------------ setup

    def _open_send_side(self) -> None:
        for endpoint in self.groups:
            rs = open_receiver(endpoint.group, endpoint.port, interface=self.interface,
                               buffer_bytes=self._receive_buffer)
            rs.sock.setblocking(False)
            self._group_sockets.append((rs, endpoint, endpoint.key))
        if self.transport == "udp":
            self._connected = 1  # nothing to connect: each frame is sent on its own
        groups = ",".join(map(str, self.groups))
        host, port = self._address
        self._threads = [
            threading.Thread(target=self._guarded, args=(self._read_groups,), daemon=True,
                             name=f"grapevine-repeat-in[{groups}]"),
            threading.Thread(target=self._guarded, args=(self._run_link,), daemon=True,
                             name=f"grapevine-repeat-link[{host}:{port}]"),
        ]

    def _open_receive_side(self, remap: Mapping[str, str] | Mapping[Endpoint, Endpoint],
                           ttl: int) -> None:
        outputs = {Endpoint.parse(k): Endpoint.parse(v) for k, v in remap.items()}
        unknown = set(outputs) - set(self.groups)
        if unknown:
            raise ConfigError(f"remap names endpoints not in groups: {sorted(map(str, unknown))}")
        senders: dict[Endpoint, socket.socket] = {}
        for endpoint in self.groups:
            out = outputs.get(endpoint, endpoint)
            if out not in senders:
                # Not connected: the same socket reads retransmission requests, sent to
                # the source address subscribers on B see (SPEC §15).
                senders[out] = open_sender(out.group, out.port, interface=self.interface,
                                           ttl=ttl, connected=False)
            self._routes[endpoint.key] = (endpoint, out, senders[out])
        kind = socket.SOCK_STREAM if self.transport == "tcp" else socket.SOCK_DGRAM
        listener = socket.socket(socket.AF_INET, kind)
        self._listener = listener
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self._receive_buffer)
            listener.bind(self._address)
            if self.transport == "tcp":
                listener.listen(16)
            else:
                self._connected = 1
        except OSError as exc:
            host, port = self._address
            raise NetworkError(exc.errno, f"cannot listen for the repeater link on "
                                          f"{host}:{port} ({exc.strerror or exc})") from exc
        listener.setblocking(False)
        self._address = listener.getsockname()[:2]
        host, port = self._address
        self._threads = [threading.Thread(target=self._guarded, args=(self._serve,),
                                          daemon=True,
                                          name=f"grapevine-repeat-out[{host}:{port}]")]

    def _close_sockets(self) -> None:
        for rs, _, _ in self._group_sockets:
            rs.close()
        for _, _, sender in self._routes.values():
            sender.close()
        if self._listener is not None:
            self._listener.close()
        self._wake_r.close()
        self._wake_w.close()

    def _guarded(self, loop: Callable[[], None]) -> None:
        """Run a thread's loop. Bad input is counted where it is read; whatever still
        escapes is a bug: logged and kept in :attr:`failure`, never swallowed."""
        try:
            loop()
        except _Closing:
            pass
        except Exception as exc:
            if not self._closing.is_set():
                self._failure = exc
                log.exception("grapevine repeater thread %s failed: the repeater no longer "
                              "forwards", threading.current_thread().name)

    def _accept(self, datagram: bytes, endpoint_name: str) -> bool:
        """The checks both sides run on each datagram: header, duplicates. Counts drops."""
        problem = datagram_problem(datagram, full=self._full)
        dropped = self._counters.dropped
        if problem is not None:
            reason = "too_large" if len(datagram) > wire.MAX_DATAGRAM_SIZE else "malformed"
            dropped[reason] += 1
            self._warn.warning(reason, "dropped a datagram for %s: %s", endpoint_name, problem)
            return False
        if self._recent.seen_before(datagram):
            dropped["duplicate"] += 1
            return False
        return True

    # ------------------------------------------------------------------ send side

    def _read_groups(self) -> None:
        """Read every joined group and queue framed datagrams for the link."""
        selector = selectors.DefaultSelector()
        for entry in self._group_sockets:
            selector.register(entry[0].sock, selectors.EVENT_READ, entry)
        selector.register(self._wake_r, selectors.EVENT_READ, None)
        buffer = bytearray(wire.MAX_DATAGRAM_SIZE + 1)
        view = memoryview(buffer)
        counters = self._counters
        limit = wire.MAX_DATAGRAM_SIZE
        if self.transport == "udp":  # a frame must fit in one UDP datagram
            limit = _UDP_MAX_PAYLOAD - FRAME_OVERHEAD
        try:
            while not self._closing.is_set():
                for key, _ in selector.select():
                    if key.data is None:
                        return
                    rs, endpoint, endpoint_key = key.data
                    name = str(endpoint)
                    frames: list[bytes] = []
                    count = volume = 0
                    for _ in range(256):  # then let the other groups have a turn
                        try:
                            size = rs.recv_into(buffer)
                        except BlockingIOError:
                            break
                        except OSError as exc:
                            self._warn.warning("receive", "receive error on %s: %s", name, exc)
                            break
                        count += 1
                        volume += size
                        datagram = bytes(view[:size])
                        if size > limit:
                            counters.dropped["too_large"] += 1
                            self._warn.warning("too_large", "dropped a %d-byte datagram for "
                                               "%s: too large for the link", size, name)
                            continue
                        if not self._accept(datagram, name):
                            continue
                        frames.append(encode_frame(endpoint_key, datagram))
                    if frames:
                        counters.groups[name] += len(frames)
                        self._enqueue(frames)
                    # Counted once queued, so that a reader of stats() who sees a datagram
                    # received also sees it queued or dropped.
                    counters.received += count
                    counters.received_bytes += volume
        finally:
            selector.close()

    def _enqueue(self, frames: list[bytes]) -> None:
        with self._cond:
            push = self._queue.push
            dropped = 0
            for frame in frames:
                dropped += push(frame)
            if dropped:
                self._counters.dropped["queue_full"] += dropped
            if self._writer_waiting:
                self._writer_waiting = False
                self._cond.notify()
        if dropped:
            self._warn.warning("queue_full", "queue full (%d bytes): dropped the %d oldest "
                               "datagrams", self._queue.max_bytes, dropped)

    def _take_batch(self, wait_s: float) -> list[bytes] | None:
        """Frames to write (waiting up to ``wait_s`` for some): [] if none came, None when
        closing and nothing is left."""
        with self._cond:
            if not self._queue.frames and not self._closing.is_set():
                self._writer_waiting = True
                self._cond.wait(wait_s)
                self._writer_waiting = False
            if self._queue.frames:
                return self._queue.pop_batch(256 << 10)
            return None if self._closing.is_set() else []

    def _run_link(self) -> None:
        if self.transport == "udp":
            self._run_udp_link()
            return
        delay = self._backoff[0]
        while not self._closing.is_set():
            sock = self._connect()
            if sock is None:
                if self._closing.is_set():
                    return
                self._counters.connect_failures += 1
                # Full jitter: repeaters restarted together do not reconnect in lockstep.
                self._closing.wait(random.uniform(delay / 2, delay))
                delay = min(delay * 2, self._backoff[1])
                continue
            delay = self._backoff[0]
            counters = self._counters
            counters.connects += 1
            if counters.connects > 1:
                counters.reconnects += 1
            with self._cond:
                self._connected = 1
                self._cond.notify_all()
            try:
                self._pump(sock)
            except _Closing:
                return
            except OSError as exc:
                counters.link_errors += 1
                self._warn.warning("link", "link to %s:%d lost: %s", *self._address, exc)
            finally:
                with self._cond:
                    self._connected = 0
                sock.close()

    def _connect(self) -> socket.socket | None:
        """A connected TCP socket that has sent the hello, or None (failed or closing)."""
        host, port = self._address
        try:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        except OSError as exc:
            self._warn.warning("connect", "cannot make a socket: %s", exc)
            return None
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # we batch ourselves
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self._link_buffer)
            sock.setblocking(False)
            code = sock.connect_ex((host, port))
            if code not in (0, errno.EINPROGRESS):
                raise OSError(code, errno.errorcode.get(code, str(code)))
            if code:
                self._wait_writable(sock, "connect")
                code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if code:
                    raise OSError(code, errno.errorcode.get(code, str(code)))
            self._send_all(sock, hello())
        except (OSError, _Closing) as exc:
            sock.close()
            if not isinstance(exc, _Closing):
                self._warn.warning("connect", "cannot connect to %s:%d: %s", host, port, exc)
            return None
        log.info("grapevine repeater: link to %s:%d up", host, port)
        return sock

    def _pump(self, sock: socket.socket) -> None:
        """Write queued frames (and keepalives when idle) until the link breaks or the
        repeater closes.

        A frame is counted ``forwarded`` once written to the socket. When the connection
        breaks, the frames its kernel still held unacknowledged (SIOCOUTQ) and those not
        yet written are counted ``link_lost``: the peer never got them.
        """
        counters = self._counters
        # Sizes of what this connection wrote, newest last (keepalives negative), kept for
        # as many bytes as its kernel can hold unacknowledged.
        written: deque[int] = deque()
        held = 0
        keep = 4 * self._link_buffer + (256 << 10)
        batch: list[bytes] = []
        try:
            while True:
                taken = self._take_batch(self._keepalive)
                if taken is None:
                    return
                batch = taken
                if not batch:
                    written.append(-len(_KEEPALIVE_FRAME))
                    held += len(_KEEPALIVE_FRAME)
                    self._send_all(sock, _KEEPALIVE_FRAME)
                    counters.keepalives += 1
                    continue
                data = b"".join(batch)
                written.extend(len(frame) for frame in batch)
                held += len(data)
                self._send_all(sock, data)
                counters.forwarded += len(batch)
                counters.forwarded_bytes += len(data) - FRAME_OVERHEAD * len(batch)
                batch = []
                while written and held - abs(written[0]) > keep:
                    held -= abs(written.popleft())
        except (OSError, _Closing):
            lost = _undelivered_frames(sock, written, self._unsent)
            in_batch = min(lost, len(batch))
            counters.forwarded += len(batch) - in_batch  # written and acknowledged
            counters.dropped["link_lost"] += lost
            if self._closing.is_set():
                return
            raise

    def _send_all(self, sock: socket.socket, data: bytes) -> None:
        """``sendall`` on a non-blocking socket that gives up when the link makes no
        progress for ``link_timeout_s`` (:class:`TimeoutError`) or the repeater closes
        (:class:`_Closing`, after the flush deadline). ``_unsent`` says how much of
        ``data`` was not written when it raised."""
        view = memoryview(data)
        self._unsent = len(view)
        while view:
            try:
                sent = sock.send(view)
            except BlockingIOError:
                self._wait_writable(sock, "send")
                continue
            view = view[sent:]
            self._unsent = len(view)

    def _wait_writable(self, sock: socket.socket, what: str) -> None:
        closing = self._closing.is_set()
        timeout = self._link_timeout
        if closing:
            timeout = min(timeout, max(self._flush_deadline - time.monotonic(), 0.0))
        with selectors.DefaultSelector() as selector:
            selector.register(sock, selectors.EVENT_WRITE)
            if not closing:
                selector.register(self._wake_r, selectors.EVENT_READ)
            events = selector.select(timeout)
        if not events:
            if closing:
                raise _Closing
            raise TimeoutError(f"link stalled: no {what} progress for {timeout:.1f} s")
        # Woken by close(): a connect is abandoned; a write goes on until the flush
        # deadline (the next wait no longer listens for the wake-up).
        woken = any(key.fileobj is self._wake_r for key, _ in events)
        if woken and (what == "connect" or self._flush_deadline <= time.monotonic()):
            raise _Closing

    def _run_udp_link(self) -> None:
        counters = self._counters
        host, port = self._address
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self._link_buffer)
            try:
                sock.connect((host, port))
            except OSError as exc:
                self._warn.warning("connect", "cannot address %s:%d: %s", host, port, exc)
            while True:
                batch = self._take_batch(1.0)
                if batch is None:
                    return
                for frame in batch:
                    try:
                        sock.sendto(frame, (host, port))
                    except OSError as exc:
                        # ECONNREFUSED reports an earlier datagram refused; this one is
                        # not sent either. Counted, and the link goes on.
                        counters.dropped["send_error"] += 1
                        self._warn.warning("send", "UDP link send to %s:%d failed: %s", host,
                                           port, exc)
                        continue
                    counters.forwarded += 1
                    counters.forwarded_bytes += len(frame) - FRAME_OVERHEAD
        finally:
            sock.close()

    # ------------------------------------------------------------------ receive side

    def _serve(self) -> None:
        """Accept link connections (TCP) or frames (UDP) and multicast what they carry."""
        listener = self._listener
        assert listener is not None
        selector = selectors.DefaultSelector()
        selector.register(self._wake_r, selectors.EVENT_READ, None)
        selector.register(listener, selectors.EVENT_READ, "listener")
        if self._cache is not None:
            for sender in {id(s): s for _, _, s in self._routes.values()}.values():
                selector.register(sender, selectors.EVENT_READ, ("requests", sender))
        connections: dict[socket.socket, _Connection] = {}
        scratch = bytearray(max(256 << 10, wire.MAX_DATAGRAM_SIZE + 1))
        view = memoryview(scratch)
        udp_reader = FrameReader(hello=False)
        try:
            while True:
                timeout = None
                if connections:
                    oldest = min(c.last_heard for c in connections.values())
                    timeout = max(oldest + self._link_timeout - time.monotonic(), 0.0) + 0.01
                for key, _ in selector.select(timeout):
                    if key.data is None:
                        return
                    if isinstance(key.data, tuple):
                        self._answer_requests(key.data[1])
                    elif key.data == "listener":
                        if self.transport == "udp":
                            self._read_udp(listener, view, udp_reader)
                        else:
                            self._accept_connection(listener, selector, connections)
                    else:
                        self._read_connection(key.data, view, selector, connections)
                now = time.monotonic()
                for conn in [c for c in connections.values()
                             if now - c.last_heard > self._link_timeout]:
                    self._counters.link_errors += 1
                    self._warn.warning("timeout", "link from %s silent for %.1f s: closed",
                                       conn.name, self._link_timeout)
                    self._drop_connection(conn, selector, connections)
        finally:
            for conn in list(connections.values()):
                self._drop_connection(conn, selector, connections)
            selector.close()

    def _answer_requests(self, sock: socket.socket) -> None:
        """A retransmission request from a subscriber on B: answer from the cache."""
        cache = self._cache
        assert cache is not None
        try:
            request, requester = sock.recvfrom(wire.MAX_DATAGRAM_SIZE + 1)
        except OSError:
            return
        for packet in cache.answer(request, requester, time.monotonic(), time.time_ns()):
            try:
                sock.sendto(packet, requester)
            except OSError as exc:
                self._warn.warning("retransmit", "answer to %s failed: %s", requester, exc)
                return

    def _accept_connection(self, listener: socket.socket, selector: selectors.BaseSelector,
                           connections: dict[socket.socket, _Connection]) -> None:
        try:
            sock, (host, port) = listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:  # EMFILE, ECONNABORTED...: the listener carries on
            self._warn.warning("accept", "accept failed: %s", exc)
            return
        if len(connections) >= self._max_connections:
            self._counters.refused_connections += 1
            self._warn.warning("refused", "refused a link connection from %s:%d: already "
                               "%d open", host, port, len(connections))
            sock.close()
            return
        sock.setblocking(False)
        conn = _Connection(sock, f"{host}:{port}", time.monotonic())
        connections[sock] = conn
        selector.register(sock, selectors.EVENT_READ, conn)
        self._counters.connects += 1
        with self._cond:
            self._connected = len(connections)
            self._cond.notify_all()
        log.info("grapevine repeater: link connection from %s:%d", host, port)

    def _drop_connection(self, conn: _Connection, selector: selectors.BaseSelector,
                         connections: dict[socket.socket, _Connection]) -> None:
        selector.unregister(conn.sock)
        del connections[conn.sock]
        conn.sock.close()
        self._absorb(conn.reader)
        if conn.reader.mid_frame:  # the connection ended inside a datagram's frame
            self._counters.dropped["link_lost"] += 1
        with self._cond:
            self._connected = len(connections)

    def _read_connection(self, conn: _Connection, view: memoryview,
                         selector: selectors.BaseSelector,
                         connections: dict[socket.socket, _Connection]) -> None:
        for _ in range(16):  # then serve the other connections
            try:
                size = conn.sock.recv_into(view)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self._counters.link_errors += 1
                self._warn.warning("link", "link from %s broke: %s", conn.name, exc)
                self._drop_connection(conn, selector, connections)
                return
            if size == 0:  # the sender closed the connection
                log.info("grapevine repeater: link from %s closed", conn.name)
                self._drop_connection(conn, selector, connections)
                return
            conn.last_heard = time.monotonic()
            try:
                frames = conn.reader.feed(view[:size])
            except LinkError as exc:
                self._counters.link_errors += 1
                self._warn.warning("hello", "closed the connection from %s: %s", conn.name, exc)
                self._drop_connection(conn, selector, connections)
                return
            for endpoint_key, datagram in frames:
                self._multicast(endpoint_key, datagram)
            self._absorb(conn.reader)
            if size < len(view):
                return  # drained what the kernel had

    def _read_udp(self, sock: socket.socket, view: memoryview, reader: FrameReader) -> None:
        for _ in range(256):
            try:
                size = sock.recv_into(view)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:  # ICMP errors surface here on some kernels
                self._warn.warning("receive", "UDP link receive error: %s", exc)
                break
            # Exactly one whole frame per UDP datagram: anything else was truncated on the
            # way or is not ours, and none of it is used.
            if size < _FRAME.size or _FRAME.unpack_from(view)[2] != size - _FRAME.size:
                self._counters.dropped["bad_frame"] += 1
                continue
            for endpoint_key, datagram in reader.feed(view[:size]):
                self._multicast(endpoint_key, datagram)
        self._absorb(reader)

    def _absorb(self, reader: FrameReader) -> None:
        """Move a frame reader's counts into the repeater's (once per read round)."""
        counters = self._counters
        counters.keepalives += reader.keepalives
        counters.unknown_frames += reader.unknown_frames
        counters.dropped["bad_frame"] += reader.bad_frames
        reader.keepalives = reader.unknown_frames = reader.bad_frames = 0

    def _multicast(self, endpoint_key: bytes, datagram: bytes) -> None:
        try:
            self._multicast_one(endpoint_key, datagram)
        except Exception:  # a bug: one datagram is lost, counted, and the link goes on
            self._counters.internal_errors += 1
            if self._counters.internal_errors <= 5:
                log.exception("grapevine repeater: internal error forwarding a datagram")

    def _multicast_one(self, endpoint_key: bytes, datagram: bytes) -> None:
        counters = self._counters
        counters.received += 1
        counters.received_bytes += len(datagram)
        route = self._routes.get(endpoint_key)
        if route is None:
            counters.dropped["unknown_group"] += 1
            self._warn.warning("unknown_group", "dropped a datagram for %s: not a configured "
                               "group", Endpoint.from_key(endpoint_key))
            return
        endpoint, out, sender = route
        name = str(endpoint)
        if not self._accept(datagram, name):
            return
        try:
            sender.sendto(datagram, (out.group, out.port))
        except OSError as exc:
            counters.dropped["send_error"] += 1
            self._warn.warning("send", "multicast to %s failed: %s", out, exc)
            return
        counters.forwarded += 1
        counters.forwarded_bytes += len(datagram)
        counters.groups[name] += 1
        if self._cache is not None:
            self._cache.observe(datagram)
        if self._tap is not None:
            try:
                self._tap(out, datagram)
            except Exception:  # the tap is the user's: it must not stop the repeater
                counters.tap_errors += 1
                if counters.tap_errors <= 5:
                    log.exception("grapevine repeater: on_forward raised")


def _undelivered_frames(sock: socket.socket, written: deque[int], unsent: int) -> int:
    """How many of the frames ``written`` (sizes, newest last; keepalives negative) the
    peer never received: the last ``unsent`` bytes were never written and the kernel still
    held SIOCOUTQ bytes unacknowledged. A frame partly acknowledged counts as lost (the
    receive side drops a partial frame)."""
    missing = unsent
    try:
        raw = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
        missing += struct.unpack("i", raw)[0]
    except (OSError, ValueError):
        pass  # the socket is gone: count what was never written only
    lost = 0
    for size in reversed(written):
        if missing <= 0:
            break
        missing -= abs(size)
        lost += size > 0
    return lost


class _Connection:
    """One accepted link connection on the receive side."""

    __slots__ = ("last_heard", "name", "reader", "sock")

    def __init__(self, sock: socket.socket, name: str, now: float) -> None:
        self.sock, self.name, self.last_heard = sock, name, now
        self.reader = FrameReader(hello=True)


class _Closing(Exception):
    """Raised inside the link thread when the repeater closes mid-write."""
