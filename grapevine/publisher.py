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
full, ``publish`` waits up to ``publish_timeout`` for room (``on_full="block"``, default)
or fails at once (``on_full="error"``); either way a change that cannot be queued raises
:class:`QueueFullError` and is *not* applied, so the state never runs ahead of the stream.

Failures on the sender thread:

* a socket send error (``OSError``: EPERM from a firewall, ENOBUFS...) loses that datagram,
  as the network may, and is counted in ``stats().send_errors`` (and logged); receivers
  repair the loss;
* a leaf the model cannot encode (``encode_leaf`` raises) is skipped by the snapshot cycle
  and retried in the next one; every other leaf, and every delta, keeps flowing. It is
  logged (once each time a leaf starts failing), counted in ``stats().snapshot_errors``
  and listed by :meth:`Publisher.snapshot_failures`. Receivers that need that leaf's
  snapshot stay unsynced for it: they never report it fresh;
* anything else stops the sender thread for good. The error is logged, END_OF_SESSION is
  still sent if possible (subscribers then know at once that the session is over), and
  :class:`PublisherFailedError`, chained to the error, is raised by ``publish``,
  ``delete`` and ``flush`` (which then never waits) and by ``close`` (see there).

Usage::

    with Publisher(model, group="239.255.71.1", port=47100) as pub:
        pub.publish(7, delta)
"""

from __future__ import annotations

import logging
import select
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Generic, Literal, NoReturn

from . import wire
from ._errors import (
    ClosedError,
    ConfigError,
    PublisherFailedError,
    QueueFullError,
    UnknownLeafError,
)
from ._publisher_core import PublisherConfig, PublisherCore
from ._stream_id import config_for_stream
from ._transport import DEFAULT_GROUP, DEFAULT_INTERFACE, DEFAULT_PORT, open_sender
from .auth import KeyRing
from .model import DeltaT, LeafModel, LeafT
from .stats import PublisherStats

__all__ = ["Publisher", "PublisherConfig", "PublisherFailedError", "QueueFullError"]

log = logging.getLogger("grapevine")

_END_OF_SESSION_COPIES = 3


class Publisher(Generic[LeafT, DeltaT]):
    """Publishes one stream of leaves to a multicast group.

    Args:
        model: how leaves and deltas are applied and encoded (a :class:`LeafModel`).
        group, port: the multicast group and UDP port (IPv4).
        stream_id: this stream's id (several streams may share a group and port). Default:
            ``config.stream_id`` (0 without a config). Given with a ``config`` whose
            ``stream_id`` differs, it raises :class:`ConfigError` rather than pick one.
        interface: address of the local interface to send from (default loopback).
        ttl: multicast TTL (default 0: the datagrams never leave this host).
        initial: leaves the state starts with (sent by the snapshot cycle). The publisher
            takes ownership: mutable leaves passed here are changed by later deltas.
        config: pacing and limits (:class:`PublisherConfig`).
        on_full: "block" (wait up to ``publish_timeout``) or "error" when the queue is full.
    """

    def __init__(
        self,
        model: LeafModel[LeafT, DeltaT],
        *,
        group: str = DEFAULT_GROUP,
        port: int = DEFAULT_PORT,
        stream_id: int | None = None,
        interface: str = DEFAULT_INTERFACE,
        ttl: int = 0,
        initial: Mapping[int, LeafT] | None = None,
        config: PublisherConfig | None = None,
        on_full: Literal["block", "error"] = "block",
        publish_timeout: float = 5.0,
    ) -> None:
        if on_full not in ("block", "error"):
            raise ConfigError(f"on_full must be 'block' or 'error', not {on_full!r}")
        self.config = config_for_stream(config, stream_id, PublisherConfig)
        stream_id = self.config.stream_id
        self._core: PublisherCore[LeafT, DeltaT] = PublisherCore(
            model, self.config, initial=initial, now=time.monotonic()
        )
        # With retransmission the socket is not connected: it also receives the requests,
        # at the address subscribers see as the stream's source (SPEC §15).
        serving = self._core.retransmit_server is not None
        self._socket = open_sender(group, port, interface=interface, ttl=ttl,
                                   connected=not serving)
        destination = (group, port)
        sock = self._socket
        self._send: Callable[[bytes | memoryview], object] = (
            (lambda data: sock.sendto(data, destination)) if serving else sock.send)
        self.group, self.port, self.stream_id = group, port, stream_id
        self._on_full = on_full
        self._max_queued = self.config.max_queued_deltas
        self._publish_timeout = publish_timeout
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
        self._failure: BaseException | None = None  # what stopped the sender thread
        self._failure_raised = False  # PublisherFailedError reached the user at least once
        self._thread = threading.Thread(
            target=self._send_loop, daemon=True,
            name=f"grapevine-sender[{group}:{port}/{stream_id}]",
        )
        self._retransmitter: threading.Thread | None = None
        if serving:
            self._retransmitter = threading.Thread(
                target=self._answer_loop, daemon=True,
                name=f"grapevine-retransmit[{group}:{port}/{stream_id}]")
        self._thread.start()
        if self._retransmitter is not None:
            self._retransmitter.start()

    # ------------------------------------------------------------------ user side

    def publish(self, leaf_id: int, delta: DeltaT) -> int:
        """Apply ``delta`` to leaf ``leaf_id`` (creating it) and queue it; returns its seq."""
        with self._lock:
            if self._stopping or self._closed or self._failure is not None:
                self._check_open()  # raises
            core = self._core
            if core.queued_deltas >= self._max_queued:
                self._wait_for_room()
            if self._linger_s and not core.queued_deltas:
                self._burst_started_at = time.monotonic()
            seq = core.publish(leaf_id, delta)
            if self._sender_waiting:
                self._hand_over()
            return seq

    def publish_many(self, changes: Iterable[tuple[int, DeltaT]]) -> int:
        """Publish ``(leaf_id, delta)`` changes in order, as :meth:`publish` would one by
        one, under one acquisition of the lock and one wake-up of the sender: cheaper per
        delta when changes come in batches (a market data tick, a database transaction).

        Returns the sequence of the last change (the publisher's last sequence if there
        were none). A full queue blocks (or raises :class:`QueueFullError` with
        ``on_full="error"``) between two changes, never in the middle of one; the changes
        before it stay published, and the error's ``published`` attribute says how many.
        """
        published = 0
        with self._lock:
            self._check_open()
            core = self._core
            limit = self.config.max_queued_deltas
            if self._linger_s and not core.queued_deltas:
                self._burst_started_at = time.monotonic()
            seq = core.next_seq - 1
            publish = core.publish
            try:
                for leaf_id, delta in changes:
                    if core.queued_deltas >= limit:
                        self._wake.notify()  # let the sender drain what this batch queued
                        self._wait_for_room()
                    seq = publish(leaf_id, delta)
                    published += 1
            except QueueFullError as exc:
                exc.published = published
                raise
            finally:
                if published and self._sender_waiting:
                    self._hand_over()
            return seq

    def delete(self, leaf_id: int) -> int:
        """Remove leaf ``leaf_id`` and queue the DELETE; returns its seq.
        :class:`UnknownLeafError` (a KeyError) if the leaf does not exist."""
        with self._lock:
            self._check_open()
            if self._core.queued_deltas >= self.config.max_queued_deltas:
                self._wait_for_room()
            seq = self._core.delete(leaf_id)
            if self._sender_waiting:
                self._hand_over()
            return seq

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every published delta has been sent; False on timeout.

        Raises :class:`PublisherFailedError` (at once, or as soon as it happens while
        waiting) if the sender thread has failed: then some deltas may never be sent.
        """
        with self._lock:
            if self._failure is not None:
                self._raise_failure()
            self._flushing += 1
            self._wake.notify()
            try:
                done = self._room.wait_for(
                    lambda: (self._core.queued_deltas == 0 or self._closed
                             or self._failure is not None), timeout)
            finally:
                self._flushing -= 1
            if self._failure is not None:
                self._raise_failure()
            return done

    def get(self, leaf_id: int) -> LeafT:
        """The current value of a leaf; :class:`UnknownLeafError` (a KeyError) if absent."""
        with self._lock:
            value: LeafT | None = self._core.leaves.get(leaf_id)
            if value is None and leaf_id not in self._core.leaves:
                raise UnknownLeafError(f"leaf {leaf_id} does not exist")
            return value  # type: ignore[return-value]

    def values(self) -> dict[int, LeafT]:
        """A dict of every leaf (the values themselves, not copies)."""
        with self._lock:
            return dict(self._core.leaves.items())

    @contextmanager
    def locked(self) -> Iterator[Mapping[int, LeafT]]:
        """Hold the state still (publish and the sender wait) and read it consistently."""
        with self._lock:
            yield self._core.leaves

    def set_keys(self, keys: KeyRing) -> None:
        """Rotate keys (SPEC §9): datagrams from now on are signed with ``keys``' signing
        key. Subscribers must already accept it (a ring holding the old and the new key)."""
        with self._lock:
            self._core.set_keys(keys)

    @property
    def last_sequence(self) -> int:
        """The stream sequence of the last delta published (0: none yet)."""
        return self._core.next_seq - 1

    @property
    def session_id(self) -> int:
        """This publisher's random session id (new at every start)."""
        return self._core.session_id

    def stats(self) -> PublisherStats:
        """Every counter and gauge, as one frozen :class:`~grapevine.stats.PublisherStats`
        (deltas, datagrams, snapshots, cycles, bytes, heartbeats, queue depth, and the
        failures: ``send_errors``, ``snapshot_errors``, ``snapshot_failing_leaves``).

        O(1). Keep the previous value to take rates: ``now.rates(before)``.
        """
        with self._lock:
            taken_at = time.monotonic()
            counters = dict(vars(self._core.stats))
            queued = self._core.queued_deltas
            leaves = len(self._core.leaves)
            cycle_id = self._core.cycle_id
            failing = len(self._core.snapshot_failures)
            server = self._core.retransmit_server
            retransmit = ((server.requests, server.datagrams_sent, server.unavailable,
                           server.refused) if server is not None else (0, 0, 0, 0))
        return PublisherStats(taken_at=taken_at, **counters, send_errors=self.send_errors,
                              retransmit_requests=retransmit[0],
                              retransmitted_datagrams=retransmit[1],
                              retransmit_unavailable=retransmit[2],
                              retransmit_refused=retransmit[3],
                              queued_deltas=queued, leaves=leaves, cycle_id=cycle_id,
                              snapshot_failing_leaves=failing)

    def snapshot_failures(self) -> dict[int, Exception]:
        """Leaves the snapshot cycle cannot carry: leaf id -> what ``encode_leaf`` raised.

        A leaf is listed from its first failed encoding until one succeeds (or it is
        deleted). Subscribers that need such a leaf's snapshot (late joiners, repair after
        a loss) do not sync it, so this should stay empty.
        """
        with self._lock:
            return dict(self._core.snapshot_failures)

    @property
    def failure(self) -> BaseException | None:
        """The exception that stopped the sender thread, or None while it runs normally."""
        return self._failure

    # ------------------------------------------------------------------ lifecycle

    def close(self, timeout: float = 5.0) -> None:
        """Send what is queued, tell subscribers the session ended, stop. Idempotent.

        Always stops the sender thread (waiting up to ``timeout`` for it) and closes the
        socket. If the sender thread had failed and no earlier ``publish``, ``delete`` or
        ``flush`` raised :class:`PublisherFailedError` for it, ``close`` raises it (after
        cleaning up), so a failure always reaches the caller once without being raised a
        second time on top of itself, for instance from a ``finally`` or ``with`` block
        that is already handling it. A second ``close`` is a no-op and never raises.
        """
        with self._lock:
            if self._closed or self._stopping:
                return
            self._stopping = True
            self._wake.notify()
        self._thread.join(timeout)
        with self._lock:
            self._closed = True
            self._room.notify_all()
            unreported = self._failure is not None and not self._failure_raised
        if self._thread.is_alive():
            # It could not send what was queued in time: it stops at its next datagram
            # rather than send on a closed socket (subscribers see the session fall silent).
            log.warning("grapevine publisher closed with %d deltas unsent after %.1f s",
                        self._core.queued_deltas, timeout)
        if self._retransmitter is not None:
            self._retransmitter.join(timeout)
        self._socket.close()
        if unreported:
            with self._lock:
                self._raise_failure()

    def __enter__(self) -> Publisher[LeafT, DeltaT]:
        return self

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        if exc is None:
            self.close()
            return
        try:
            self.close()
        except PublisherFailedError as failure:
            # The block is already raising: let its exception through, noting this one.
            exc.add_note(f"Also, on closing the Publisher: {failure}")

    # ------------------------------------------------------------------ internals

    def _check_open(self) -> None:
        """Called with the lock held: raise if the publisher cannot take a change."""
        if self._closed or self._stopping:
            raise ClosedError("this Publisher is closed")
        if self._failure is not None:
            self._raise_failure()

    def _raise_failure(self) -> NoReturn:
        """Called with the lock held once the sender thread has failed."""
        failure = self._failure
        assert failure is not None
        self._failure_raised = True
        raise PublisherFailedError(
            f"the publisher's sender thread failed with {type(failure).__name__}: "
            f"{failure}; nothing more is sent in session {self.session_id:#018x} "
            "(close it and start a new Publisher)") from failure

    def _hand_over(self) -> None:
        """Called with the lock held, after a change, when the sender thread is idle: wake
        it. (Sending the change from the publishing thread instead was measured twice,
        issue 12. First: one datagram per change at 20k changes/s cost every subscriber
        more CPU and raised p99 latency, for no better p50. Again, with the snapshot cycle
        spread out: p50 to a raw receiver 15-30 us against 36-42 us in one hour, 36 us
        against 29 us in the next on the same machine, depending on how fast the
        hypervisor wakes an idle virtual CPU; held back after bursts, so that they stay
        batched, it was indistinguishable. The sender batches what comes meanwhile.)
        """
        self._sender_waiting = False
        self._wake.notify()

    def _send_counted(self, datagram: bytes | memoryview) -> None:
        """Send; a socket error loses the datagram, as the network may (counted, logged)."""
        try:
            self._send(datagram)
        except OSError as exc:
            self.send_errors += 1
            if self.send_errors == 1 or self.send_errors % 1000 == 0:
                log.warning("grapevine send failed (%d so far): %s", self.send_errors, exc)

    def _wait_for_room(self) -> None:
        """Called with the lock held and the queue full: apply the queue policy."""
        limit = self.config.max_queued_deltas
        if self._on_full == "block":
            self._wake.notify()
            if self._room.wait_for(lambda: (self._core.queued_deltas < limit or self._stopping
                                            or self._failure is not None),
                                   self._publish_timeout):
                self._check_open()
                return
        raise QueueFullError(f"{self._core.queued_deltas} deltas are queued for sending "
                             f"(max_queued_deltas={limit}); the change was not applied")

    def _send_loop(self) -> None:
        try:
            self._run_sender()
        except BaseException as exc:  # noqa: BLE001 - recorded, logged and raised to the user
            self._sender_failed(exc)

    def _sender_failed(self, exc: BaseException) -> None:
        """The sender thread stops for good: record why, wake every waiter, end the session.

        Reached only by errors that are not the network's (counted in ``send_errors``) nor
        the model's ``encode_leaf`` (the core skips that leaf): a bug, or an unexpected
        exception from the socket layer. The session cannot go on, so it ends visibly:
        ``publish``, ``delete``, ``flush`` and ``close`` raise :class:`PublisherFailedError`.
        """
        log.error("grapevine sender thread failed; publisher session %#018x stops sending",
                  self.session_id, exc_info=exc)  # before any caller can see the failure
        with self._lock:
            self._failure = exc
            self._room.notify_all()  # publish() waiting for room and flush() waiting
        # Subscribers learn at once that this session is over (deltas still queued are
        # lost; they see those as a gap) instead of after the silence timeout, and follow
        # a restarted publisher at once. Best effort: the error may prevent it.
        try:
            self._send_end_of_session()
        except Exception:
            log.exception("grapevine could not send END_OF_SESSION after the failure")

    def _run_sender(self) -> None:
        core = self._core
        clock = time.monotonic
        lock = self._lock
        while True:
            stop = False
            news: list[tuple[int, Exception]] = []
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
                if self._stopping and not core.queued_deltas:
                    # Every delta is out: stop now. Waiting for next_datagram() to run dry
                    # could take forever when the snapshot cycle is CPU-bound (it then
                    # always has another snapshot due).
                    self._room.notify_all()
                    break
                datagram = core.next_datagram(now, time.time_ns())
                if core.new_snapshot_failures:  # leaves that just started failing to encode
                    news = list(core.new_snapshot_failures)
                    core.new_snapshot_failures.clear()
                if datagram is None:
                    self._room.notify_all()  # the queue is empty: flush() and publishers
                    if self._stopping:
                        stop = True
                    else:
                        self._sender_waiting = True
                        self._wake.wait(max(core.next_wakeup(now) - now, 0.0005))
                        self._sender_waiting = False
                elif core.queued_deltas < self.config.max_queued_deltas:
                    self._room.notify_all()
            for leaf_id, exc in news:  # logged outside the lock
                log.error("grapevine encode_leaf failed for leaf %d: its snapshot is skipped "
                          "until it encodes again, so subscribers that need it cannot sync "
                          "it: %r", leaf_id, exc, exc_info=exc)
            if stop:
                break
            if self._closed:  # close() gave up waiting: the socket is gone
                return
            if datagram is None:
                continue
            self._send_counted(datagram)
        self._send_end_of_session()

    def _answer_loop(self) -> None:
        """Answer retransmission requests (SPEC §15) until the publisher closes."""
        sock = self._socket
        core = self._core
        # The sender thread shares this socket, so it stays blocking (a socket timeout
        # would apply to its sends too): select() bounds the wait instead.
        while self._serving():
            try:
                readable, _, _ = select.select([sock], [], [], 0.1)
                if not readable:
                    continue
                request, requester = sock.recvfrom(wire.MAX_DATAGRAM_SIZE + 1)
            except (OSError, ValueError):  # ValueError: select on a socket closed meanwhile
                if not self._serving():
                    return
                continue
            try:
                with self._lock:
                    answers = core.answer(request, requester, time.monotonic(), time.time_ns())
                for packet in answers:
                    sock.sendto(packet, requester)
            except OSError as exc:
                self.send_errors += 1
                log.warning("grapevine could not answer a retransmission request from %s: %s",
                            requester, exc)
            except Exception:  # a bug must not end retransmission: log it and go on
                log.exception("grapevine internal error answering a retransmission request")

    def _serving(self) -> bool:
        return not (self._stopping or self._closed)

    def _send_end_of_session(self) -> None:
        with self._lock:
            if self._core.ended:
                return
            stamp = time.time_ns()
            copies = [bytes(self._core.end_of_session(time.monotonic(), stamp))]
            copies += [bytes(self._core.end_of_session_copy(time.monotonic(), stamp + copy))
                       for copy in range(1, _END_OF_SESSION_COPIES)]
        for final in copies:
            try:
                self._send(final)
            except OSError as exc:
                self.send_errors += 1
                log.warning("grapevine end-of-session send failed: %s", exc)
