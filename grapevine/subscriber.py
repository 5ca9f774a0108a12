"""The subscriber: a live replica of a publisher's state, kept by two named threads.

* ``grapevine-receiver[group:port/stream]`` reads datagrams into one preallocated buffer
  (blocking in the kernel, SO_RCVTIMEO, rather than polling first) and feeds them to
  :class:`~grapevine._subscriber_core.SubscriberCore` under the replica lock: one lock
  round, and one hand-off to the callbacks, per batch of the datagrams already queued;
* ``grapevine-dispatch[...]`` runs user callbacks (see :mod:`grapevine._dispatch`), unless
  ``delivery="inline"`` asks for them on the receiver thread (faster, but a slow callback
  then delays reading the socket) or ``delivery="pull"`` leaves them to the user's own
  thread or event loop (:meth:`Subscriber.handle`, :meth:`Subscriber.fileno`,
  :meth:`Subscriber.updates`).

Usage::

    with Subscriber(model, group="239.255.71.1", port=47100) as sub:
        sub.on_leaf(7, lambda leaf_id, kind, leaf, delta: print(leaf))
        sub.wait_synced(timeout=5)
        with sub.locked() as replica:
            print(replica.get(7))
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Generic, Literal, overload

from . import wire
from ._dispatch import (
    CONFLATED_READY,
    STOP,
    Callbacks,
    Dispatcher,
    Handoff,
    LeafCallback,
    RawUpdate,
    StatusCallback,
    Subscription,
    UpdateCallback,
    Wakeup,
    drain,
)
from ._errors import ClosedError, ConfigError, DecodeError, LeafIdError
from ._retransmit import RetransmitMessage, StreamCache, decode_retransmit, encode_retransmit
from ._stream_id import config_for_stream
from ._subscriber_core import SubscriberConfig, SubscriberCore, SubscriberCounters
from ._transport import (
    DEFAULT_GROUP,
    DEFAULT_INTERFACE,
    DEFAULT_PORT,
    open_receiver,
    open_unicast,
)
from .auth import KeyRing, Verdict, Verifier
from .events import Status, StatusEvent, Update, UpdateKind
from .model import DeltaT, LeafModel, LeafT
from .stats import SubscriberStats

__all__ = ["Delivery", "Replica", "Status", "StatusEvent", "Subscriber", "SubscriberConfig",
           "Update", "UpdateKind"]

Delivery = Literal["thread", "inline", "pull"]
"""Where callbacks run: a dispatcher thread, the receiver thread, or the user's own."""

log = logging.getLogger("grapevine")

DropFilter = Callable[[memoryview], bool]


class Replica(Generic[LeafT]):
    """Read access to the replica while :meth:`Subscriber.locked` holds its lock."""

    def __init__(self, core: SubscriberCore[LeafT, Any]) -> None:
        self._core = core

    def get(self, leaf_id: int) -> LeafT:
        """The leaf's value (KeyError if the replica does not hold it)."""
        value: LeafT = self._core.get(leaf_id)
        return value

    def leaf_ids(self) -> list[int]:
        """Ids of the leaves held, ascending."""
        return list(self._core.values())

    def items(self) -> list[tuple[int, LeafT]]:
        """(leaf_id, value) pairs, ascending by id."""
        return list(self._core.values().items())

    def is_fresh(self, leaf_id: int) -> bool:
        """True if the leaf is known to equal the publisher's (as of the last datagram)."""
        return self._core.is_fresh(leaf_id)

    def stale_leaves(self) -> list[int]:
        """Leaves known to have missed changes (waiting for a repairing snapshot)."""
        return self._core.stale_leaves()

    def suspect_leaves(self) -> list[int]:
        """Leaves a gap may have touched, not yet proven either way (not fresh either)."""
        return self._core.suspect_leaves()

    def __len__(self) -> int:
        return len(self._core.values())


class Subscriber(Generic[LeafT, DeltaT]):
    """Keeps a replica of one stream and reports changes to callbacks.

    Args:
        model: how leaves and deltas are decoded and applied (a :class:`LeafModel`).
        group, port: the multicast group and UDP port (IPv4).
        stream_id: which stream on that group/port to follow. Default: ``config.stream_id``
            (0 without a config). Given with a ``config`` whose ``stream_id`` differs, it
            raises :class:`ConfigError` rather than pick one.
        interface: address of the local interface to join on (default loopback).
        config: timing and limits (:class:`SubscriberConfig`).
        receive_buffer_bytes: SO_RCVBUF to ask for (a warning is logged if clamped).
        delivery: where callbacks run. ``"thread"`` (default): on a dispatcher thread of
            the subscriber's own. ``"inline"``: on the receiver thread (least latency and
            CPU, but a slow callback delays reading the socket). ``"pull"``: on the thread
            that calls :meth:`handle` (select on :meth:`fileno`), or in the event loop that
            iterates :meth:`updates`.
        max_callback_backlog: updates callbacks may fall behind before conflation (not
            with ``delivery="inline"``, where nothing queues).
        drop_filter: fault injection for tests and demos: called with each received
            datagram; True drops it as if the network had lost it.
        on_update, on_status: callbacks registered before the receiver starts (callbacks
            registered later with :meth:`on_update` / :meth:`on_status` miss earlier events).
        on_leaf: per-leaf callbacks registered before the receiver starts, as a mapping
            ``{leaf_id: callback}`` (each as :meth:`on_leaf` would register it).
        retransmit_server: ``(address, port)`` to ask for lost datagrams (SPEC §15): a
            replayer or repeater near this subscriber. Default: the publisher itself, at
            the source address of the stream's datagrams. ``SubscriberConfig(retransmit=
            False)`` turns retransmission off (the snapshot cycle then repairs all loss).
        serve_retransmit_datagrams: make this subscriber a *replayer*: keep this many of
            the recent datagrams it received in order and answer other subscribers'
            retransmission requests at :attr:`retransmit_address` (give them
            ``retransmit_server=sub.retransmit_address``), so they need not all ask the
            publisher. 0 (default): off.
    """

    def __init__(
        self,
        model: LeafModel[LeafT, DeltaT],
        *,
        group: str = DEFAULT_GROUP,
        port: int = DEFAULT_PORT,
        stream_id: int | None = None,
        interface: str = DEFAULT_INTERFACE,
        config: SubscriberConfig | None = None,
        receive_buffer_bytes: int = 4 << 20,
        delivery: Delivery = "thread",
        max_callback_backlog: int = 100_000,
        drop_filter: DropFilter | None = None,
        on_update: LeafCallback[LeafT, DeltaT] | None = None,
        on_status: StatusCallback | None = None,
        on_leaf: Mapping[int, LeafCallback[LeafT, DeltaT]] | None = None,
        retransmit_server: tuple[str, int] | None = None,
        serve_retransmit_datagrams: int = 0,
    ) -> None:
        if not isinstance(model, LeafModel):
            raise ConfigError(f"model {model!r} does not implement grapevine.LeafModel")
        if delivery not in ("thread", "inline", "pull"):
            raise ConfigError(f"delivery must be 'thread', 'inline' or 'pull', not {delivery!r}")
        if serve_retransmit_datagrams < 0:
            raise ConfigError("serve_retransmit_datagrams must be >= 0 (0: off)")
        if serve_retransmit_datagrams and not (config or SubscriberConfig()).retransmit:
            raise ConfigError("serve_retransmit_datagrams needs the retransmission socket: "
                              "SubscriberConfig(retransmit=True)")
        if max_callback_backlog < 1:
            raise ConfigError("max_callback_backlog must be positive")
        # Checked before any socket is opened, so a bad argument leaks nothing.
        leaf_callbacks = dict(on_leaf or {})
        for leaf_id, callback in leaf_callbacks.items():
            _check_leaf_id(leaf_id)
            _callable(callback)
        self.config = config_for_stream(config, stream_id, SubscriberConfig)
        stream_id = self.config.stream_id
        self.group, self.port, self.stream_id = group, port, stream_id
        self._core: SubscriberCore[LeafT, DeltaT] = SubscriberCore(model, self.config)
        self._socket = open_receiver(group, port, interface=interface,
                                     buffer_bytes=receive_buffer_bytes)
        # Retransmission (SPEC §15): requests go out of, and answers come back to, a
        # unicast socket of its own, read by the repair thread.
        self._repair_socket: socket.socket | None = None
        if self.config.retransmit:
            try:
                self._repair_socket = open_unicast(interface)
            except Exception:
                self._socket.close()
                raise
        self._retransmit_server = retransmit_server
        self._cache: StreamCache | None = None
        if serve_retransmit_datagrams:
            self._cache = StreamCache(max_datagrams=serve_retransmit_datagrams,
                                      keys=self.config.keys)
        self._stream_source: tuple[str, int] | None = None  # where in-order datagrams come from
        self.retransmitted_datagrams = 0
        self._request_errors = 0
        # The ring that signs requests and checks UNAVAILABLE answers (set_keys rotates it).
        self._keys = self.config.keys
        self._repair_verifier = Verifier(self._keys) if self._keys is not None else None
        self._lock = threading.Lock()
        self._synced = threading.Condition(self._lock)
        self._callbacks = Callbacks()
        # Callbacks given here are in place before the first datagram is read, so they
        # see every event (SESSION_STARTED, the first SYNCED, every initial install).
        if on_update is not None:
            self._callbacks.add("every", _callable(on_update))
        if on_status is not None:
            self._callbacks.add("status", _callable(on_status))
        for leaf_id, callback in leaf_callbacks.items():
            self._callbacks.add("leaf", callback, leaf_id)
        self._drop_filter = drop_filter
        self.injected_drops = 0
        self.internal_errors = 0
        self._closing = threading.Event()
        self._closed = False
        label = f"{group}:{port}/{stream_id}"
        self.delivery: Delivery = delivery
        self._dispatcher: Dispatcher | None = None
        self._wakeup: Wakeup | None = None
        self._handoff: Handoff | None = None  # None: callbacks run inline
        self._pulling = threading.Lock()  # one pull-mode consumer at a time
        if delivery == "thread":
            self._dispatcher = Dispatcher(self._callbacks, f"grapevine-dispatch[{label}]",
                                          max_callback_backlog)
            self._handoff = self._dispatcher.handoff
        elif delivery == "pull":
            self._wakeup = Wakeup()
            self._handoff = Handoff(max_callback_backlog, self._wakeup)
        self._receiver = threading.Thread(target=self._receive_loop, daemon=True,
                                          name=f"grapevine-receiver[{label}]")
        self._repairer: threading.Thread | None = None
        if self._repair_socket is not None:
            self._repairer = threading.Thread(target=self._repair_loop, daemon=True,
                                              name=f"grapevine-repair[{label}]")
        self._receiver.start()
        if self._repairer is not None:
            self._repairer.start()

    # ------------------------------------------------------------------ callbacks

    @overload
    def on_leaf(self, leaf_id: int, callback: LeafCallback[LeafT, DeltaT]) -> Subscription: ...

    @overload
    def on_leaf(self, leaf_id: int, callback: UpdateCallback[LeafT, DeltaT], *,
                as_update: Literal[True]) -> Subscription: ...

    def on_leaf(self, leaf_id: int, callback: Callable[..., object], *,
                as_update: bool = False) -> Subscription:
        """Call ``callback(leaf_id, kind, leaf, delta)`` for every update of one leaf, or
        ``callback(update)`` with one :class:`Update` (which adds the stream ``sequence``
        and the publisher's ``send_time_ns``) if ``as_update=True``.

        Returns a :class:`Subscription`; its ``cancel()`` unregisters the callback.
        """
        self._check_open()
        _check_leaf_id(leaf_id)
        return self._callbacks.add("leaf_update" if as_update else "leaf", _callable(callback),
                                   leaf_id)

    @overload
    def on_update(self, callback: LeafCallback[LeafT, DeltaT]) -> Subscription: ...

    @overload
    def on_update(self, callback: UpdateCallback[LeafT, DeltaT], *,
                  as_update: Literal[True]) -> Subscription: ...

    def on_update(self, callback: Callable[..., object], *,
                  as_update: bool = False) -> Subscription:
        """Call ``callback(leaf_id, kind, leaf, delta)`` for every update of every leaf (or
        ``callback(update)`` with one :class:`Update` if ``as_update=True``).

        ``kind`` is an :class:`UpdateKind`; ``delta`` is the decoded delta for CHANGED and
        None otherwise; ``leaf`` is None for DELETED. Mutable leaves may change again while
        the callback runs on the dispatcher thread: use :meth:`locked` to read consistently.
        Returns a :class:`Subscription`; its ``cancel()`` unregisters the callback.
        """
        self._check_open()
        return self._callbacks.add("every_update" if as_update else "every",
                                   _callable(callback))

    def on_status(self, callback: StatusCallback) -> Subscription:
        """Call ``callback(event)`` with every :class:`StatusEvent` (synced, gap, ...).
        Returns a :class:`Subscription`; its ``cancel()`` unregisters the callback."""
        self._check_open()
        return self._callbacks.add("status", _callable(callback))

    # ------------------------------------------------------------------ pull mode

    def fileno(self) -> int:
        """A file descriptor that is readable when :meth:`handle` has work (``delivery=
        "pull"``): give it to ``select``, ``selectors`` or an event loop. It may also be
        readable once with nothing to do; :meth:`handle` then returns 0."""
        _handoff, wakeup = self._pull_mode("fileno")
        return wakeup.fileno()

    def handle(self, timeout: float | None = None) -> int:
        """Run the callbacks for everything received so far, on this thread (``delivery=
        "pull"``). Waits up to ``timeout`` seconds (None: until something arrives or the
        subscriber closes; 0: not at all) for the first update or status event. Returns how
        many updates and status events were delivered (0 on timeout)."""
        handoff, wakeup = self._pull_mode("handle")
        with self._pulling:
            wakeup.clear()
            delivered = 0
            for item in drain(handoff, timeout):
                if item is STOP:
                    break
                delivered += handoff.run(item, self._callbacks)
            return delivered

    async def updates(self) -> AsyncIterator[Update[LeafT, DeltaT]]:
        """Iterate updates in an asyncio event loop (``delivery="pull"``)::

            async for update in sub.updates():
                print(update.leaf_id, update.kind, update.sequence)

        Registered callbacks (status callbacks included) run in the loop too, as with
        :meth:`handle`. The iteration ends when the subscriber closes. Use one consumer:
        either this or :meth:`handle`. Updates taken from the queue but not yet yielded when
        the loop breaks out are dropped.
        """
        handoff, wakeup = self._pull_mode("updates")
        loop = asyncio.get_running_loop()
        readable = asyncio.Event()
        callbacks = self._callbacks
        wakeup.acquire()
        try:
            fd = wakeup.fileno()
            loop.add_reader(fd, readable.set)
            try:
                while True:
                    readable.clear()
                    wakeup.clear()
                    items = drain(handoff, 0)
                    if not items:
                        await readable.wait()
                        continue
                    for item in items:
                        if item is STOP:
                            return
                        if isinstance(item, StatusEvent):
                            callbacks.deliver_status(item)
                            continue
                        raws: list[RawUpdate] = (
                            handoff.take_conflated() if item is CONFLATED_READY
                            else item)  # type: ignore[assignment]
                        callbacks.deliver_updates(raws)
                        if item is not CONFLATED_READY:
                            handoff.count_delivered(len(raws))
                        for raw in raws:
                            yield tuple.__new__(Update, raw)
            finally:
                loop.remove_reader(fd)
        finally:
            wakeup.release()

    def _pull_mode(self, method: str) -> tuple[Handoff, Wakeup]:
        self._check_open()
        if self._wakeup is None or self._handoff is None:
            raise ConfigError(f"{method}() needs Subscriber(delivery='pull'); this one has "
                              f"delivery={self.delivery!r}")
        return self._handoff, self._wakeup

    # ------------------------------------------------------------------ reading

    @property
    def synced(self) -> bool:
        """True when every leaf is known and fresh, from a live publisher session."""
        return self._core.synced

    def wait_synced(self, timeout: float | None = None) -> bool:
        """Block until synced (True) or until ``timeout`` seconds pass (False).

        Synced means the replica equals the publisher's state as of the last datagram
        received; a change published a moment ago may still be in flight. To wait for a
        particular change, use :meth:`wait_until_applied` with the sequence ``publish``
        returned.
        """
        with self._synced:
            return self._synced.wait_for(lambda: self._core.synced or self._closed, timeout) \
                and self._core.synced

    def wait_until_applied(self, sequence: int, *, session_id: int | None = None,
                           timeout: float | None = None) -> bool:
        """Block until the replica reflects every delta up to ``sequence`` and is synced.

        Pair it with the sequence :meth:`Publisher.publish` returns (and the publisher's
        ``session_id``) to know that a subscriber has caught up with a given change.
        """
        core = self._core

        def caught_up() -> bool:
            return self._closed or (
                core.synced and core.expected is not None and core.expected > sequence
                and (session_id is None or core.session_id == session_id))

        with self._synced:
            return self._synced.wait_for(caught_up, timeout) and not self._closed

    @property
    def stream_position(self) -> int:
        """The sequence of the last delta the stream has passed in the current session (0:
        none): every delta up to it was applied, or lost in a gap whose leaves are stale or
        repaired. Compare it with what :meth:`Publisher.publish` returned."""
        expected = self._core.expected
        return expected - 1 if expected is not None else 0

    @contextmanager
    def locked(self) -> Iterator[Replica[LeafT]]:
        """Hold the replica still (the receiver waits) and read it consistently."""
        self._check_open()
        with self._lock:
            yield Replica(self._core)

    def get(self, leaf_id: int) -> LeafT:
        """The leaf's current value (KeyError if not held). Safe for immutable leaves."""
        with self._lock:
            value: LeafT = self._core.get(leaf_id)
            return value

    def values(self) -> dict[int, LeafT]:
        """A dict of every leaf held (the values themselves, not copies)."""
        with self._lock:
            return dict(self._core.values())

    def stale_leaves(self) -> list[int]:
        """Leaves known to have missed changes, waiting for repair from a snapshot."""
        with self._lock:
            return self._core.stale_leaves()

    def suspect_leaves(self) -> list[int]:
        """Leaves a gap may have touched that no delta or snapshot has proven yet.

        Neither stale nor suspect leaves are fresh: together they are every leaf that may
        differ from the publisher right now. Both lists are O(number of leaves).
        """
        with self._lock:
            return self._core.suspect_leaves()

    def progress(self) -> tuple[int, int]:
        """(fresh leaves, leaves the publisher announced): sync progress."""
        with self._lock:
            return self._core.progress()

    @property
    def session_id(self) -> int | None:
        """The publisher session being followed."""
        return self._core.session_id

    @property
    def lag_s(self) -> float:
        """How late the last datagram taken in order arrived, in seconds.

        Measured against the promptest datagram of the last 30-60 s (publisher send time
        against this host's clock), so it needs no clock synchronisation: it is the delay
        this subscriber adds by falling behind (slow callbacks, a full socket buffer), not
        the network's one-way delay. ``synced`` is true as of what was received; a large
        ``lag_s`` means that is far behind the publisher. A LAGGING status event reports it
        crossing ``SubscriberConfig.lag_warning_s`` (CAUGHT_UP when under half of it).
        """
        return self._core.lag_s

    @property
    def last_send_time_ns(self) -> int:
        """The publisher's send time (Unix ns) of the last datagram taken in order."""
        return self._core.last_send_time_ns

    @property
    def last_distrust(self) -> StatusEvent | None:
        """The latest LEAF_DIVERGED or RESYNC event: when and why state was distrusted."""
        return self._core.last_distrust

    def resync(self) -> None:
        """Distrust the whole replica and rebuild it from the stream.

        Every leaf is reported DELETED, then installed again from the snapshot cycle; the
        subscriber is synced again after one complete cycle. Counted in ``resyncs``.
        """
        self._check_open()
        with self._lock:
            self._core.resync(time.monotonic(), "requested by the application")
            updates, events = self._core.updates, self._core.events
            self._core.updates, self._core.events = [], []
            self._synced.notify_all()
        self._deliver(updates, events)

    @property
    def retransmit_address(self) -> tuple[str, int] | None:
        """Where this subscriber receives retransmission answers, and (as a replayer,
        ``serve_retransmit_datagrams``) requests; None with retransmission off."""
        sock = self._repair_socket
        return None if sock is None or self._closed else sock.getsockname()[:2]

    def set_keys(self, keys: KeyRing) -> None:
        """Rotate keys (SPEC §9): from now on accept datagrams signed with any key of
        ``keys``. During a rotation give a ring with the old and the new key, switch the
        publisher to the new one, then drop the old one here."""
        self._check_open()
        with self._lock:
            self._core.set_keys(keys)
            self._keys = keys
            if self._repair_verifier is not None:
                self._repair_verifier.ring = keys
            if self._cache is not None:
                self._cache.set_keys(keys)

    def stats(self) -> SubscriberStats:
        """Every counter and gauge, as one frozen :class:`~grapevine.stats.SubscriberStats`.

        O(1): it copies a few dozen integers under the replica lock, whatever the number of
        leaves. Keep the previous value to take rates: ``now.rates(before)``.
        """
        handoff = self._handoff
        with self._lock:
            taken_at = time.monotonic()
            counters = dict(vars(self._core.stats))
            stale = self._core.stale_count
            suspect = self._core.unverified - stale
        return SubscriberStats(
            taken_at=taken_at, **counters,
            kernel_drops=self._socket.kernel_drops, injected_drops=self.injected_drops,
            callback_errors=self._callbacks.errors,
            conflated_updates=handoff.conflated if handoff else 0,
            internal_errors=self.internal_errors,
            retransmitted_datagrams=self.retransmitted_datagrams,
            stale_leaves=stale, suspect_leaves=suspect,
            callback_backlog=handoff.backlog if handoff else 0)

    # ------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        """Stop the threads and close the socket. Idempotent and irreversible."""
        if self._closed:
            return
        self._closing.set()
        current = threading.current_thread()
        for thread in (self._receiver, self._repairer):  # not from an inline callback
            if thread is not None and thread is not current:
                thread.join(timeout=5)
        self._socket.close()
        if self._repair_socket is not None:
            self._repair_socket.close()
        if self._dispatcher is not None:
            self._dispatcher.close()
        elif self._handoff is not None and self._wakeup is not None:
            self._handoff.put_stop()  # a handle() waiting in another thread returns
            self._wakeup.close()
        with self._synced:
            self._closed = True
            self._synced.notify_all()

    def __enter__(self) -> Subscriber[LeafT, DeltaT]:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ------------------------------------------------------------------ receiver thread

    def _receive_loop(self) -> None:
        buffer = bytearray(wire.MAX_DATAGRAM_SIZE + 1)
        view = memoryview(buffer)
        sock = self._socket
        core = self._core
        lock = self._lock
        closing = self._closing
        clock = time.monotonic
        drop = self._drop_filter
        reported = _Reported()
        kernel_drops = sock.kernel_drops
        cache = self._cache
        timeout = 0.05
        sock.set_wait(timeout)
        while not closing.is_set():
            # Wake at least every 50 ms for the timers, every 2 ms while one is close.
            # Setting the wait is a system call, so it is only made when the value changes.
            now = clock()
            until = core.next_poll(now) - now
            wanted = 0.05 if until >= 0.05 else 0.002 if until >= 0.002 else 0.0005
            if wanted != timeout:
                timeout = wanted
                sock.set_wait(timeout)
            try:
                size = sock.receive(buffer)  # -1: nothing came within the wait
            except OSError as exc:
                if closing.is_set():
                    return
                log.warning("grapevine receive error: %s", exc)
                size = -1
            try:
                received = size >= 0
                with lock:
                    # One lock round, one hand-off to the callbacks and one wake-up of
                    # waiters per batch: what the kernel has queued is read without
                    # blocking (up to _MAX_BATCH datagrams) while the lock is held. Each
                    # datagram is processed before the buffer is reused.
                    batch = _MAX_BATCH
                    while True:
                        now = clock()
                        if size < 0:
                            core.poll(now)
                        elif drop is not None and drop(view[:size]):
                            self.injected_drops += 1
                            core.poll(now)
                        elif size > wire.MAX_DATAGRAM_SIZE:
                            core.stats.datagrams += 1
                            core.stats.malformed += 1
                            core.poll(now)
                        else:
                            before = core.expected
                            core.receive(view[:size], now)  # runs the timers too
                            if sock.kernel_drops != kernel_drops:  # we read too slowly:
                                kernel_drops = sock.kernel_drops  # the holes are ours, not
                                core.overloaded(now)  # the network's; ask for no more
                            if core.expected != before:  # taken in order: the source
                                self._stream_source = sock.last_address
                                if cache is not None:
                                    cache.observe(bytes(view[:size]))
                        batch -= 1
                        if size < 0 or not batch:
                            break
                        if batch == _MAX_BATCH - 1 and sock.nothing_queued():
                            break  # a sparse stream's usual case, asked more cheaply
                        try:
                            size = sock.receive(buffer, wait=False)
                        except OSError:
                            break  # the blocking read reports it, if it persists
                        if size < 0:
                            break
                    if not batch:  # a full batch, and more may be queued: how much?
                        fill = sock.queue_fill()
                        if fill is not None:
                            core.backlog(fill, now)  # sheds leaves before the kernel drops
                    updates, events, requests = self._take_outputs()
                    if received:  # waiters check synced state and the applied sequence
                        self._synced.notify_all()
                if events or updates:
                    self._deliver(updates, events)
                if requests:
                    self._send_requests(requests)
                if core.stats.bad_payloads != reported.bad_payloads \
                        or core.stats.malformed != reported.malformed \
                        or _rejected(core.stats) != reported.rejected:
                    self._report_bad_input(reported, now)
            except Exception:  # a bug must not kill the receiver: count and log it
                self.internal_errors += 1
                if self.internal_errors <= _LOGGED_IN_FULL or self.internal_errors % 1000 == 0:
                    log.exception("grapevine internal error in the receive path (%d so far)",
                                  self.internal_errors)

    def _take_outputs(self) -> tuple[list[RawUpdate], list[StatusEvent], list[tuple[int, int]]]:
        """What the core produced (called with the lock held); it starts afresh."""
        core = self._core
        updates, events, requests = core.updates, core.events, core.requests
        if updates:
            core.updates = []
        if events:
            core.events = []
        if requests:
            core.requests = []
        return updates, events, requests

    def _send_requests(self, ranges: list[tuple[int, int]]) -> None:
        """Ask the retransmission server for the datagrams of these ranges (SPEC §15)."""
        sock = self._repair_socket
        server = self._retransmit_server or self._stream_source
        session_id = self._core.session_id
        if sock is None or server is None or session_id is None:
            return
        keys = self._keys
        for first, end in ranges:
            packet = encode_retransmit(RetransmitMessage(
                wire.RetransmitKind.REQUEST, self.stream_id, session_id, first, end,
                send_time_ns=time.time_ns()), keys)
            try:
                sock.sendto(packet, server)
            except OSError as exc:
                self._request_errors += 1
                if self._request_errors == 1 or self._request_errors % 1000 == 0:
                    log.warning("grapevine could not send a retransmission request to %s "
                                "(%d so far): %s", server, self._request_errors, exc)

    def _repair_loop(self) -> None:
        """Read answers to retransmission requests: the original datagrams (fed to the core
        like any other) or UNAVAILABLE (the hole becomes a gap without waiting)."""
        sock = self._repair_socket
        assert sock is not None
        core = self._core
        sock.settimeout(0.1)
        while not self._closing.is_set():
            try:
                data, source = sock.recvfrom(wire.MAX_DATAGRAM_SIZE + 1)
            except TimeoutError:
                continue
            except OSError:
                if self._closing.is_set():
                    return
                continue
            try:
                with self._lock:
                    now = time.monotonic()
                    if data[:4] == wire.RETRANSMIT_MAGIC:
                        self._on_retransmit_packet(data, source, self._repair_verifier, now)
                    else:
                        self.retransmitted_datagrams += 1
                        core.receive(data, now)
                    updates, events, requests = self._take_outputs()
                    self._synced.notify_all()
                if events or updates:
                    self._deliver(updates, events)
                if requests:
                    self._send_requests(requests)
            except Exception:  # a bug must not kill the repair thread: count and log it
                self.internal_errors += 1
                if self.internal_errors <= _LOGGED_IN_FULL or self.internal_errors % 1000 == 0:
                    log.exception("grapevine internal error in the repair path (%d so far)",
                                  self.internal_errors)

    def _on_retransmit_packet(self, data: bytes, source: tuple[str, int],
                              verifier: Verifier | None, now: float) -> None:
        """An UNAVAILABLE answer, or (as a replayer) another subscriber's request."""
        try:
            packet = decode_retransmit(data)
        except DecodeError:
            self._core.stats.retransmit_refused += 1
            return
        if packet.kind == wire.RetransmitKind.REQUEST and self._cache is not None:
            sock = self._repair_socket
            assert sock is not None
            for answer in self._cache.answer(data, source, now, time.time_ns()):
                try:
                    sock.sendto(answer, source)
                except OSError:
                    break
            return
        if packet.kind != wire.RetransmitKind.UNAVAILABLE or packet.stream_id != self.stream_id \
                or (verifier is not None and verifier.check(data) is not Verdict.ACCEPTED):
            # Not for us, or not signed by a key we hold (a relay without keys): ignoring
            # it costs only the wait for retransmit_wait_s.
            self._core.stats.retransmit_refused += 1
            return
        self._core.retransmit_unavailable(packet.session_id, packet.first_seq, packet.end_seq,
                                          now, packet.available_end)

    def _deliver(self, updates: list[RawUpdate], events: list[StatusEvent]) -> None:
        # Updates first: a SYNCED event follows the leaves that completed it.
        handoff = self._handoff
        if handoff is None:
            if updates:
                self._callbacks.deliver_updates(updates)
            for event in events:
                self._callbacks.deliver_status(event)
        else:
            if updates:
                handoff.put_updates(updates)
            for event in events:
                handoff.put_status(event)

    def _report_bad_input(self, reported: _Reported, now: float) -> None:
        """Log bad input from the network: the first few in full, then one summary line
        per interval, so one bad sender cannot flood the log."""
        stats = self._core.stats
        new_bad = stats.bad_payloads - reported.bad_payloads
        new_malformed = stats.malformed - reported.malformed
        rejected = _rejected(stats)
        new_rejected = rejected - reported.rejected
        reported.bad_payloads, reported.malformed = stats.bad_payloads, stats.malformed
        reported.rejected = rejected
        reported.pending += new_bad + new_malformed + new_rejected
        if reported.logged < _LOGGED_IN_FULL:
            reported.logged += 1
            reported.pending = 0
            reported.last_log = now
            if new_bad:
                log.warning("grapevine: the model rejected a payload (%r); the leaf is stale "
                            "until the snapshot cycle repairs it",
                            self._core.last_bad_payload)
            elif new_rejected:
                log.warning("grapevine: datagram dropped by authentication (%s)",
                            _rejection_reason(stats, reported))
            else:
                log.warning("grapevine: malformed datagram dropped: %s", self._core.last_error)
        elif now - reported.last_log >= _LOG_INTERVAL_S:
            log.warning("grapevine: %d more bad datagrams or payloads (%d malformed, %d "
                        "rejected by the model, %d dropped by authentication in all); "
                        "latest: %r", reported.pending, stats.malformed, stats.bad_payloads,
                        rejected,
                        self._core.last_bad_payload if new_bad else self._core.last_error)
            reported.pending = 0
            reported.last_log = now

    def _check_open(self) -> None:
        if self._closed or self._closing.is_set():
            raise ClosedError("this Subscriber is closed")


_LOGGED_IN_FULL = 5  # bad datagrams logged one by one before summaries
# Datagrams read per lock round when the kernel has several queued: enough to amortise the
# lock and the hand-off to the dispatcher, few enough (well under 1 ms of work) that
# callbacks and readers of the replica never wait long.
_MAX_BATCH = 16
_LOG_INTERVAL_S = 10.0


class _Reported:
    """What the receiver has logged of bad input so far."""

    __slots__ = ("auth_counts", "bad_payloads", "last_log", "logged", "malformed", "pending",
                 "rejected")

    def __init__(self) -> None:
        self.bad_payloads = self.malformed = self.logged = self.pending = self.rejected = 0
        self.auth_counts = (0, 0, 0, 0)
        self.last_log = 0.0


def _rejected(stats: SubscriberCounters) -> int:
    """Datagrams authentication dropped, of every kind."""
    return stats.unauthenticated + stats.unknown_keys + stats.bad_tags + stats.replayed


def _rejection_reason(stats: SubscriberCounters, reported: _Reported) -> str:
    """Which kind of authentication failure grew since the last report."""
    counts = (stats.unauthenticated, stats.unknown_keys, stats.bad_tags, stats.replayed)
    names = ("not signed", "unknown key id", "bad tag: forged or corrupted",
             "replayed or too old")
    grown = [name for name, now, before in zip(names, counts, reported.auth_counts,
                                               strict=True) if now > before]
    reported.auth_counts = counts
    return ", ".join(grown) or "unknown"


def _check_leaf_id(leaf_id: Any) -> None:
    if not isinstance(leaf_id, int) or not 0 <= leaf_id <= wire.MAX_LEAF_ID:
        raise LeafIdError(f"leaf_id {leaf_id!r} must be an int in 0..{wire.MAX_LEAF_ID}")


def _callable(callback: Any) -> Any:
    if not callable(callback):
        raise TypeError(f"callback {callback!r} is not callable")
    return callback
