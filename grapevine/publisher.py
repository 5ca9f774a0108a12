"""The publisher: owns the source-of-truth state and multicasts it from a sender thread.

``publish`` applies a change to the state, sequences it and queues it; it never waits on the
network. The ``grapevine-sender[group:port/stream]`` thread packs queued deltas into
datagrams (a datagram leaves when full or as soon as nothing more is queued, so batches grow
by themselves under load), interleaves the paced snapshot cycle, and sends heartbeats when
idle.

Latency against batching: by default a datagram leaves as soon as the sender finds the
queue; ``PublisherConfig(linger_s=...)`` holds a datagram that is not yet full for up to
that long after the first delta of a burst, so deltas published one at a time share
datagrams. ``flush()`` and ``close()`` cut a linger short.

Queue policy: at most ``max_queued_deltas`` deltas wait for the sender. When the queue is
full, ``publish`` waits up to ``block_timeout_s`` for room (``on_full="block"``, default)
or fails at once (``on_full="error"``); either way a change that cannot be queued raises
:class:`QueueFullError` and is *not* applied, so the state never runs ahead of the stream.

Usage::

    with Publisher(model, group="239.255.71.1", port=47100) as pub:
        pub.publish(7, delta)
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, replace
from typing import Any, Generic, Literal

from ._errors import ClosedError, ConfigError
from ._publisher_core import PublisherConfig, PublisherCore, QueueFullError
from ._transport import DEFAULT_GROUP, DEFAULT_INTERFACE, DEFAULT_PORT, open_sender
from .model import DeltaT, LeafModel, LeafT

__all__ = ["Publisher", "PublisherConfig", "QueueFullError"]

log = logging.getLogger("grapevine")

_END_OF_SESSION_COPIES = 3


class Publisher(Generic[LeafT, DeltaT]):
    """Publishes one stream of leaves to a multicast group.

    Args:
        model: how leaves and deltas are applied and encoded (a :class:`LeafModel`).
        group, port: the multicast group and UDP port (IPv4).
        stream_id: this stream's id (several streams may share a group and port).
        interface: address of the local interface to send from (default loopback).
        ttl: multicast TTL (default 0: the datagrams never leave this host).
        initial: leaves the state starts with (sent by the snapshot cycle). The publisher
            takes ownership: mutable leaves passed here are changed by later deltas.
        config: pacing and limits (:class:`PublisherConfig`); ``stream_id`` overrides it.
        on_full: "block" (wait up to ``block_timeout_s``) or "error" when the queue is full.
    """

    def __init__(
        self,
        model: LeafModel[LeafT, DeltaT],
        *,
        group: str = DEFAULT_GROUP,
        port: int = DEFAULT_PORT,
        stream_id: int = 0,
        interface: str = DEFAULT_INTERFACE,
        ttl: int = 0,
        initial: Mapping[int, LeafT] | None = None,
        config: PublisherConfig | None = None,
        on_full: Literal["block", "error"] = "block",
        block_timeout_s: float = 5.0,
    ) -> None:
        if on_full not in ("block", "error"):
            raise ConfigError(f"on_full must be 'block' or 'error', not {on_full!r}")
        self.config = replace(config or PublisherConfig(), stream_id=stream_id)
        self._core: PublisherCore[LeafT, DeltaT] = PublisherCore(
            model, self.config, initial=initial, now=time.monotonic()
        )
        self._socket = open_sender(group, port, interface=interface, ttl=ttl)
        self.group, self.port, self.stream_id = group, port, stream_id
        self._on_full = on_full
        self._block_timeout_s = block_timeout_s
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)  # publish -> sender
        self._room = threading.Condition(self._lock)  # sender -> blocked publish / flush
        self._sender_waiting = False
        self._linger_s = self.config.linger_s
        self._burst_started_at = 0.0
        self._flushing = 0  # flush() calls waiting: they cut a linger short
        self._stopping = False
        self._closed = False
        self.send_errors = 0
        self._thread = threading.Thread(
            target=self._send_loop, daemon=True,
            name=f"grapevine-sender[{group}:{port}/{stream_id}]",
        )
        self._thread.start()

    # ------------------------------------------------------------------ user side

    def publish(self, leaf_id: int, delta: DeltaT) -> int:
        """Apply ``delta`` to leaf ``leaf_id`` (creating it) and queue it; returns its seq."""
        with self._lock:
            self._check_open()
            core = self._core
            if core.queued_deltas >= self.config.max_queued_deltas:
                self._wait_for_room()
            if self._linger_s and not core.queued_deltas:
                self._burst_started_at = time.monotonic()
            seq = core.publish(leaf_id, delta)
            if self._sender_waiting:
                self._sender_waiting = False
                self._wake.notify()
            return seq

    def delete(self, leaf_id: int) -> int:
        """Remove leaf ``leaf_id`` (KeyError if absent) and queue the DELETE; returns its seq."""
        with self._lock:
            self._check_open()
            if self._core.queued_deltas >= self.config.max_queued_deltas:
                self._wait_for_room()
            seq = self._core.delete(leaf_id)
            if self._sender_waiting:
                self._sender_waiting = False
                self._wake.notify()
            return seq

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every published delta has been sent; False on timeout."""
        with self._lock:
            self._flushing += 1
            self._wake.notify()
            try:
                return self._room.wait_for(
                    lambda: self._core.queued_deltas == 0 or self._closed, timeout)
            finally:
                self._flushing -= 1

    def get(self, leaf_id: int) -> LeafT:
        """The current value of a leaf (KeyError if absent)."""
        with self._lock:
            value: LeafT = self._core.leaves[leaf_id]
            return value

    def values(self) -> dict[int, LeafT]:
        """A dict of every leaf (the values themselves, not copies)."""
        with self._lock:
            return dict(self._core.leaves.items())

    @contextmanager
    def locked(self) -> Iterator[Mapping[int, LeafT]]:
        """Hold the state still (publish and the sender wait) and read it consistently."""
        with self._lock:
            yield self._core.leaves

    @property
    def last_sequence(self) -> int:
        """The stream sequence of the last delta published (0: none yet)."""
        return self._core.next_seq - 1

    @property
    def session_id(self) -> int:
        """This publisher's random session id (new at every start)."""
        return self._core.session_id

    def stats(self) -> dict[str, Any]:
        """Counters: deltas, datagrams, snapshots, cycles, bytes, heartbeats, queue depth."""
        with self._lock:
            values = asdict(self._core.stats)
            values["queued_deltas"] = self._core.queued_deltas
            values["leaves"] = len(self._core.leaves)
            values["cycle_id"] = self._core.cycle_id
        values["send_errors"] = self.send_errors
        return values

    # ------------------------------------------------------------------ lifecycle

    def close(self, timeout: float = 5.0) -> None:
        """Send what is queued, tell subscribers the session ended, stop. Idempotent."""
        with self._lock:
            if self._closed or self._stopping:
                return
            self._stopping = True
            self._wake.notify()
        self._thread.join(timeout)
        with self._lock:
            self._closed = True
            self._room.notify_all()
        self._socket.close()

    def __enter__(self) -> Publisher[LeafT, DeltaT]:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ------------------------------------------------------------------ internals

    def _check_open(self) -> None:
        if self._closed or self._stopping:
            raise ClosedError("this Publisher is closed")

    def _wait_for_room(self) -> None:
        """Called with the lock held and the queue full: apply the queue policy."""
        limit = self.config.max_queued_deltas
        if self._on_full == "block":
            self._wake.notify()
            if self._room.wait_for(lambda: self._core.queued_deltas < limit or self._stopping,
                                   self._block_timeout_s):
                self._check_open()
                return
        raise QueueFullError(f"{self._core.queued_deltas} deltas are queued for sending "
                             f"(max_queued_deltas={limit}); the change was not applied")

    def _send_loop(self) -> None:
        core = self._core
        sock = self._socket
        clock = time.monotonic
        lock = self._lock
        while True:
            with lock:
                now = clock()
                linger_until = self._burst_started_at + self._linger_s
                if (self._linger_s and now < linger_until and core.queued_deltas
                        and not (self._flushing or self._stopping
                                 or core.queue_fills_a_datagram)):
                    # Let the datagram fill: publish() wakes us for every new delta.
                    self._sender_waiting = True
                    self._wake.wait(linger_until - now)
                    self._sender_waiting = False
                    continue
                datagram = core.next_datagram(now, time.time_ns())
                if datagram is None:
                    self._room.notify_all()  # the queue is empty: flush() and publishers
                    if self._stopping:
                        break
                    self._sender_waiting = True
                    self._wake.wait(max(core.next_wakeup(now) - now, 0.0005))
                    self._sender_waiting = False
                    continue
                if core.queued_deltas < self.config.max_queued_deltas:
                    self._room.notify_all()
            try:
                sock.send(datagram)
            except OSError as exc:
                self.send_errors += 1
                if self.send_errors == 1 or self.send_errors % 1000 == 0:
                    log.warning("grapevine send failed (%d so far): %s", self.send_errors, exc)
        with lock:
            final = bytes(core.end_of_session(clock(), time.time_ns()))
        for _ in range(_END_OF_SESSION_COPIES):
            try:
                sock.send(final)
            except OSError as exc:
                self.send_errors += 1
                log.warning("grapevine end-of-session send failed: %s", exc)
