"""Hands updates from the receiver thread to user callbacks.

The receiver puts one item per datagram (a list of raw update tuples) on a :class:`Handoff`
queue. Who takes them off depends on the subscriber's ``delivery``:

* ``"thread"``: a :class:`Dispatcher` thread calls the callbacks, so a slow or raising
  callback never stalls the socket or the replica;
* ``"pull"``: nothing runs them until the user calls ``Subscriber.handle()`` or iterates
  ``Subscriber.updates()`` on a thread (or event loop) of their own; ``fileno()`` becomes
  readable when there is something to take (:class:`Wakeup`);
* ``"inline"``: no queue at all, the receiver calls the callbacks itself.

If the consumer falls more than ``max_backlog`` updates behind, the receiver stops queueing
individual updates and records only the latest per leaf; the consumer then gets those once,
as ``CONFLATED`` (latest wins), so memory stays bounded. Backlog is two counters, each
written by one thread only, so no lock is needed for it.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable, Iterable
from queue import Empty, SimpleQueue
from typing import Any, TypeAlias

from .events import StatusEvent, Update, UpdateKind
from .model import DeltaT, LeafT

__all__ = ["Callbacks", "Dispatcher", "Handoff", "LeafCallback", "StatusCallback",
           "Subscription", "UpdateCallback", "Wakeup"]

log = logging.getLogger("grapevine")

LeafCallback: TypeAlias = Callable[[int, UpdateKind, LeafT | None, DeltaT | None], object]
"""``callback(leaf_id, kind, leaf, delta)``: the cheapest way to receive updates."""
UpdateCallback: TypeAlias = Callable[[Update[LeafT, DeltaT]], object]
"""``callback(update)``: one :class:`~grapevine.Update`, with its sequence and send time."""
StatusCallback: TypeAlias = Callable[[StatusEvent], object]
"""``callback(event)``: one :class:`~grapevine.StatusEvent`."""

# (leaf_id, kind, leaf, delta, sequence, send_time_ns), as the core produces it.
RawUpdate = tuple[int, UpdateKind, Any, Any, int, int]
# An Update from a raw tuple without NamedTuple's argument handling (it is the same tuple).
_as_update: Callable[[RawUpdate], Update[Any, Any]] = \
    lambda raw: tuple.__new__(Update, raw)  # noqa: E731

CONFLATED_READY = object()
STOP = object()


class Subscription:
    """A registered callback; :meth:`cancel` unregisters it (idempotent). Also a context
    manager that cancels on exit."""

    __slots__ = ("_callback", "_callbacks", "_key", "_leaf_id")

    def __init__(self, callbacks: Callbacks, key: str, callback: Callable[..., object],
                 leaf_id: int | None = None) -> None:
        self._callbacks: Callbacks | None = callbacks
        self._key = key
        self._callback = callback
        self._leaf_id = leaf_id

    @property
    def active(self) -> bool:
        """True until :meth:`cancel`."""
        return self._callbacks is not None

    def cancel(self) -> None:
        """Stop calling the callback. An update already being delivered may still reach it."""
        callbacks, self._callbacks = self._callbacks, None
        if callbacks is not None:
            callbacks.remove(self._key, self._callback, self._leaf_id)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.cancel()

    def __repr__(self) -> str:
        where = f" leaf {self._leaf_id}" if self._leaf_id is not None else ""
        state = "active" if self.active else "cancelled"
        return f"Subscription({self._key}{where}, {self._callback!r}, {state})"


class Callbacks:
    """The registered callbacks and the code that calls them (on whichever thread).

    Registration replaces whole tuples and dicts (copy on write, under a lock), so the
    thread delivering updates reads a consistent set without taking any lock. Callbacks
    that take four arguments and callbacks that take an :class:`Update` are kept apart, so
    an Update is built only when some callback asked for one."""

    def __init__(self) -> None:
        # key -> leaf_id -> callbacks; key is "leaf" (4 arguments) or "leaf_update".
        self.by_leaf: dict[int, tuple[Callable[..., object], ...]] = {}
        self.by_leaf_update: dict[int, tuple[Callable[..., object], ...]] = {}
        self.every: tuple[Callable[..., object], ...] = ()
        self.every_update: tuple[Callable[..., object], ...] = ()
        self.status: tuple[Callable[..., object], ...] = ()
        self.errors = 0
        self._reported: set[str] = set()
        self._lock = threading.Lock()

    def add(self, key: str, callback: Callable[..., object],
            leaf_id: int | None = None) -> Subscription:
        """Register ``callback`` under ``key``: "leaf"/"leaf_update" (with ``leaf_id``),
        "every"/"every_update" or "status"."""
        with self._lock:
            if leaf_id is not None:
                table = dict(getattr(self, _TABLES[key]))
                table[leaf_id] = (*table.get(leaf_id, ()), callback)
                setattr(self, _TABLES[key], table)
            else:
                setattr(self, key, (*getattr(self, key), callback))
        return Subscription(self, key, callback, leaf_id)

    def remove(self, key: str, callback: Callable[..., object], leaf_id: int | None) -> None:
        """Unregister one registration of ``callback`` (the last one, if it was added twice)."""
        with self._lock:
            if leaf_id is not None:
                table = dict(getattr(self, _TABLES[key]))
                left = _without(table.get(leaf_id, ()), callback)
                if left:
                    table[leaf_id] = left
                else:
                    table.pop(leaf_id, None)
                setattr(self, _TABLES[key], table)
            else:
                setattr(self, key, _without(getattr(self, key), callback))

    def deliver_updates(self, updates: Iterable[RawUpdate]) -> None:
        by_leaf, every = self.by_leaf, self.every
        by_leaf_update, every_update = self.by_leaf_update, self.every_update
        for raw in updates:
            leaf_id, kind, leaf, delta = raw[0], raw[1], raw[2], raw[3]
            for callback in every:
                try:
                    callback(leaf_id, kind, leaf, delta)
                except Exception as exc:  # noqa: BLE001 - a user callback must not kill us
                    self._report(callback, exc)
            if by_leaf:
                for callback in by_leaf.get(leaf_id, ()):
                    try:
                        callback(leaf_id, kind, leaf, delta)
                    except Exception as exc:  # noqa: BLE001
                        self._report(callback, exc)
            if every_update or by_leaf_update:
                update = _as_update(raw)
                for callback in (*every_update, *by_leaf_update.get(leaf_id, ())):
                    try:
                        callback(update)
                    except Exception as exc:  # noqa: BLE001
                        self._report(callback, exc)

    def deliver_status(self, event: StatusEvent) -> None:
        for callback in self.status:
            try:
                callback(event)
            except Exception as exc:  # noqa: BLE001
                self._report(callback, exc)

    def _report(self, callback: Callable[..., object], exc: Exception) -> None:
        self.errors += 1
        name = getattr(callback, "__qualname__", repr(callback))
        if name not in self._reported:  # log each failing callback once, with its traceback
            self._reported.add(name)
            log.error("grapevine callback %s raised", name, exc_info=exc)


_TABLES = {"leaf": "by_leaf", "leaf_update": "by_leaf_update"}


def _without(callbacks: tuple[Any, ...], callback: Callable[..., object]) -> tuple[Any, ...]:
    for index in range(len(callbacks) - 1, -1, -1):
        if callbacks[index] is callback:
            return callbacks[:index] + callbacks[index + 1 :]
    return callbacks


class Wakeup:
    """A file descriptor that is readable while a pull-mode consumer has work.

    The receiver writes one byte when the queue goes from "nothing signalled" to "work";
    the consumer drains the byte *before* clearing the flag and taking items, so an item
    queued at any moment is either taken now or signalled again (never stranded)."""

    def __init__(self) -> None:
        self._read, self._write = socket.socketpair()
        self._read.setblocking(False)
        self._write.setblocking(False)
        self._signalled = False
        self._users = 0  # event-loop readers registered on the fd (see updates())
        self._closed = False
        self._lock = threading.Lock()

    def fileno(self) -> int:
        return self._read.fileno()

    def signal(self) -> None:
        if not self._signalled:
            self._signalled = True
            try:
                self._write.send(b"\0")
            except (BlockingIOError, OSError):  # full: already readable; closed: no one left
                pass

    def clear(self) -> None:
        """Consumer side, before taking items."""
        try:
            while self._read.recv(4096):
                pass
        except (BlockingIOError, OSError):
            pass
        self._signalled = False

    def acquire(self) -> None:
        """An event loop starts watching the fd: keep it open until :meth:`release`."""
        with self._lock:
            self._users += 1

    def release(self) -> None:
        with self._lock:
            self._users -= 1
            if self._closed and not self._users:
                self._close_sockets()

    def close(self) -> None:
        """Wake every consumer one last time; the fd closes once no event loop watches it
        (closing it under a loop's selector could lose that last wake-up)."""
        self._signalled = False
        self.signal()
        with self._lock:
            self._closed = True
            if not self._users:
                self._close_sockets()

    def _close_sockets(self) -> None:
        self._read.close()
        self._write.close()


class Handoff:
    """The queue from the receiver thread to one consumer, with conflation."""

    def __init__(self, max_backlog: int, wakeup: Wakeup | None = None) -> None:
        self.max_backlog = max_backlog
        self.conflated = 0  # updates merged away because the consumer was behind
        self._queue: SimpleQueue[object] = SimpleQueue()
        self._queued = 0  # written by the receiver thread only
        self._delivered = 0  # written by the consumer thread only
        self._latest: dict[int, RawUpdate] = {}
        self._latest_lock = threading.Lock()
        self._conflating = False
        self._wakeup = wakeup

    @property
    def backlog(self) -> int:
        """Updates queued and not yet delivered."""
        return self._queued - self._delivered

    def put_updates(self, updates: list[RawUpdate]) -> None:
        """Receiver side: queue one batch of updates (or conflate them). The receiver
        hands over a batch of datagrams at a time, so a batch that would take the backlog
        past ``max_backlog`` is split: what fits is queued, the rest conflated."""
        room = self.max_backlog - (self._queued - self._delivered)
        if not self._conflating and 0 < room < len(updates):
            self._queued += room
            self._put(updates[:room])
            updates = updates[room:]
            room = 0
        if self._conflating or room < len(updates):
            with self._latest_lock:
                first = not self._latest
                latest = self._latest
                for update in updates:
                    if update[0] in latest:
                        self.conflated += 1
                    latest[update[0]] = update
                self._conflating = True
            if first:
                self._put(CONFLATED_READY)
            return
        self._queued += len(updates)
        self._put(updates)

    def put_status(self, event: StatusEvent) -> None:
        """Queue a status change (never conflated)."""
        self._put(event)

    def put_stop(self) -> None:
        self._put(STOP)

    def _put(self, item: object) -> None:
        self._queue.put(item)
        if self._wakeup is not None:
            self._wakeup.signal()

    def get(self, timeout: float | None) -> object:
        """Consumer side: the next item, waiting up to ``timeout`` (None: forever); raises
        ``queue.Empty`` on timeout."""
        if timeout is not None and timeout <= 0:
            return self._queue.get_nowait()
        return self._queue.get(timeout=timeout)

    def get_nowait(self) -> object:
        return self._queue.get_nowait()

    def run(self, item: object, callbacks: Callbacks) -> int:
        """Consumer side: deliver one item to ``callbacks``; the number of updates and
        status events delivered."""
        if isinstance(item, list):
            callbacks.deliver_updates(item)
            self._delivered += len(item)
            return len(item)
        if isinstance(item, StatusEvent):
            callbacks.deliver_status(item)
            return 1
        if item is CONFLATED_READY:
            merged = self.take_conflated()
            callbacks.deliver_updates(merged)
            return len(merged)
        return 0

    def take_conflated(self) -> list[RawUpdate]:
        """The latest update per leaf recorded while conflating, as CONFLATED updates."""
        with self._latest_lock:
            latest, self._latest = self._latest, {}
            # Back to per-update queueing once the backlog has drained.
            self._conflating = self._queued - self._delivered > self.max_backlog // 2
        return [raw if raw[1] == UpdateKind.DELETED
                else (raw[0], UpdateKind.CONFLATED, raw[2], None, raw[4], raw[5])
                for raw in latest.values()]

    def count_delivered(self, count: int) -> None:
        """Consumer side, for items taken apart by hand (pull mode's iterator)."""
        self._delivered += count


class Dispatcher:
    """A named thread that runs callbacks for the items the receiver queues."""

    def __init__(self, callbacks: Callbacks, name: str, max_backlog: int) -> None:
        self.callbacks = callbacks
        self.handoff = Handoff(max_backlog)
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def close(self, timeout: float = 5.0) -> None:
        """Deliver what is queued, then stop the thread. Idempotent."""
        if self._thread.is_alive():
            self.handoff.put_stop()
            if threading.current_thread() is not self._thread:  # close() from a callback
                self._thread.join(timeout)

    def _run(self) -> None:
        handoff = self.handoff
        callbacks = self.callbacks
        while True:
            item = handoff.get(None)
            if item is STOP:
                return
            handoff.run(item, callbacks)


def drain(handoff: Handoff, timeout: float | None) -> list[object]:
    """Pull mode: every queued item, waiting up to ``timeout`` for the first. Stops at (and
    includes) STOP."""
    try:
        items = [handoff.get(timeout)]
    except Empty:
        return []
    while items[-1] is not STOP:
        try:
            items.append(handoff.get_nowait())
        except Empty:
            break
    return items
