"""Hands updates from the receiver thread to user callbacks on a thread of their own.

The receiver puts one item per datagram (a list of update tuples) on a ``SimpleQueue``; the
dispatcher thread calls the callbacks. A slow or raising callback therefore never stalls
the socket or the replica. If callbacks fall more than ``max_backlog`` updates behind, the
receiver stops queueing individual updates and records only the latest per leaf; the
dispatcher then delivers those once, as ``CONFLATED`` (latest wins), so memory stays bounded.

Backlog is two counters, each written by one thread only, so no lock is needed for it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from queue import SimpleQueue
from typing import Any

from .events import StatusEvent, UpdateKind

__all__ = ["Callbacks", "Dispatcher", "LeafCallback", "StatusCallback", "Subscription"]

log = logging.getLogger("grapevine")

LeafCallback = Callable[[int, UpdateKind, Any, Any], object]
StatusCallback = Callable[[StatusEvent], object]
Update = tuple[int, UpdateKind, Any, Any]

_CONFLATED_READY = object()
_STOP = object()


class Subscription:
    """A registered callback; :meth:`cancel` unregisters it (idempotent). Also a context
    manager that cancels on exit."""

    __slots__ = ("_callback", "_callbacks", "_leaf_id", "_what")

    def __init__(self, callbacks: Callbacks, what: str, callback: Callable[..., object],
                 leaf_id: int | None = None) -> None:
        self._callbacks: Callbacks | None = callbacks
        self._what = what
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
            callbacks.remove(self._what, self._callback, self._leaf_id)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.cancel()

    def __repr__(self) -> str:
        where = f" leaf {self._leaf_id}" if self._leaf_id is not None else ""
        state = "active" if self.active else "cancelled"
        return f"Subscription({self._what}{where}, {self._callback!r}, {state})"


class Callbacks:
    """The registered callbacks and the code that calls them (on whichever thread).

    Registration replaces whole tuples and dicts (copy on write, under a lock), so the
    thread delivering updates reads a consistent set without taking any lock."""

    def __init__(self) -> None:
        self.by_leaf: dict[int, tuple[LeafCallback, ...]] = {}
        self.every_leaf: tuple[LeafCallback, ...] = ()
        self.status: tuple[StatusCallback, ...] = ()
        self.errors = 0
        self._reported: set[str] = set()
        self._lock = threading.Lock()

    def add_leaf(self, leaf_id: int, callback: LeafCallback) -> Subscription:
        with self._lock:
            by_leaf = dict(self.by_leaf)
            by_leaf[leaf_id] = (*by_leaf.get(leaf_id, ()), callback)
            self.by_leaf = by_leaf
        return Subscription(self, "leaf", callback, leaf_id)

    def add_update(self, callback: LeafCallback) -> Subscription:
        with self._lock:
            self.every_leaf = (*self.every_leaf, callback)
        return Subscription(self, "update", callback)

    def add_status(self, callback: StatusCallback) -> Subscription:
        with self._lock:
            self.status = (*self.status, callback)
        return Subscription(self, "status", callback)

    def remove(self, what: str, callback: Callable[..., object], leaf_id: int | None) -> None:
        """Unregister one registration of ``callback`` (the last one, if it was added twice)."""
        with self._lock:
            if what == "leaf":
                assert leaf_id is not None
                by_leaf = dict(self.by_leaf)
                left = _without(by_leaf.get(leaf_id, ()), callback)
                if left:
                    by_leaf[leaf_id] = left
                else:
                    by_leaf.pop(leaf_id, None)
                self.by_leaf = by_leaf
            elif what == "update":
                self.every_leaf = _without(self.every_leaf, callback)
            else:
                self.status = _without(self.status, callback)

    def deliver_updates(self, updates: list[Update]) -> None:
        by_leaf = self.by_leaf
        every = self.every_leaf
        for update in updates:
            for callback in every:
                try:
                    callback(*update)
                except Exception as exc:  # noqa: BLE001 - a user callback must not kill us
                    self._report(callback, exc)
            if by_leaf:
                for callback in by_leaf.get(update[0], ()):
                    try:
                        callback(*update)
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


def _without(callbacks: tuple[Any, ...], callback: Callable[..., object]) -> tuple[Any, ...]:
    for index in range(len(callbacks) - 1, -1, -1):
        if callbacks[index] is callback:
            return callbacks[:index] + callbacks[index + 1 :]
    return callbacks


class Dispatcher:
    """A named thread that runs callbacks for the items the receiver queues."""

    def __init__(self, callbacks: Callbacks, name: str, max_backlog: int) -> None:
        self.callbacks = callbacks
        self.max_backlog = max_backlog
        self.conflated = 0  # updates merged away because callbacks were behind
        self._queue: SimpleQueue[object] = SimpleQueue()
        self._queued = 0  # written by the receiver thread only
        self._delivered = 0  # written by the dispatcher thread only
        self._latest: dict[int, Update] = {}
        self._latest_lock = threading.Lock()
        self._conflating = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    @property
    def backlog(self) -> int:
        """Updates queued and not yet delivered."""
        return self._queued - self._delivered

    def put_updates(self, updates: list[Update]) -> None:
        """Receiver side: queue one datagram's updates (or conflate them)."""
        if self._conflating or self._queued - self._delivered > self.max_backlog:
            with self._latest_lock:
                first = not self._latest
                latest = self._latest
                for update in updates:
                    if update[0] in latest:
                        self.conflated += 1
                    latest[update[0]] = update
                self._conflating = True
            if first:
                self._queue.put(_CONFLATED_READY)
            return
        self._queued += len(updates)
        self._queue.put(updates)

    def put_status(self, event: StatusEvent) -> None:
        """Receiver side: queue a status change (never conflated)."""
        self._queue.put(event)

    def close(self, timeout: float = 5.0) -> None:
        """Deliver what is queued, then stop the thread. Idempotent."""
        if self._thread.is_alive():
            self._queue.put(_STOP)
            if threading.current_thread() is not self._thread:  # close() from a callback
                self._thread.join(timeout)

    def _run(self) -> None:
        queue = self._queue
        callbacks = self.callbacks
        while True:
            item = queue.get()
            if item is _STOP:
                return
            if isinstance(item, list):
                callbacks.deliver_updates(item)
                self._delivered += len(item)
            elif item is _CONFLATED_READY:
                self._deliver_conflated()
            elif isinstance(item, StatusEvent):
                callbacks.deliver_status(item)

    def _deliver_conflated(self) -> None:
        with self._latest_lock:
            latest, self._latest = self._latest, {}
            # Back to per-update queueing once the backlog has drained.
            self._conflating = self._queued - self._delivered > self.max_backlog // 2
        merged = [
            update if update[1] == UpdateKind.DELETED
            else (update[0], UpdateKind.CONFLATED, update[2], None)
            for update in latest.values()
        ]
        self.callbacks.deliver_updates(merged)
