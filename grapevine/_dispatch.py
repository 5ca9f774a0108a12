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

__all__ = ["Callbacks", "Dispatcher", "LeafCallback", "StatusCallback"]

log = logging.getLogger("grapevine")

LeafCallback = Callable[[int, UpdateKind, Any, Any], object]
StatusCallback = Callable[[StatusEvent], object]
Update = tuple[int, UpdateKind, Any, Any]

_CONFLATED_READY = object()
_STOP = object()


class Callbacks:
    """The registered callbacks and the code that calls them (on whichever thread)."""

    def __init__(self) -> None:
        self.by_leaf: dict[int, list[LeafCallback]] = {}
        self.every_leaf: list[LeafCallback] = []
        self.status: list[StatusCallback] = []
        self.errors = 0
        self._reported: set[str] = set()

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
