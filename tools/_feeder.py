"""A market feeder for the tools that drive a live publisher (attack_run, repeat_run)."""

from __future__ import annotations

import threading
import time
from typing import Any

from grapevine import Publisher
from grapevine.testing import Market

__all__ = ["Feeder"]


class Feeder:
    """Publishes the market's deltas at ``rate`` per second from its own thread; pausable
    (``pause`` returns once no batch is being published). ``error`` holds what killed the
    thread, if anything (reported by the tools, never raised there)."""

    def __init__(self, pub: Publisher[Any, Any], market: Market, rate: int, *,
                 paused: bool = False, name: str = "feeder") -> None:
        self.pub, self.market, self.rate = pub, market, rate
        self.sent = 0
        self.error: str | None = None
        self._cond = threading.Condition()
        self._paused = paused
        self._idle = paused
        self._stopping = False
        self._tick = threading.Event()
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            owed, last = 0.0, time.monotonic()
            while True:
                with self._cond:
                    if self._paused or self._stopping:
                        self._idle = True
                        self._cond.notify_all()
                        self._cond.wait_for(lambda: not self._paused or self._stopping)
                        if self._stopping:
                            return
                        self._idle = False
                        last = time.monotonic()
                now = time.monotonic()
                owed += min(now - last, 0.05) * self.rate
                last = now
                if owed >= 1:
                    batch = self.market.batch(int(owed))
                    self.pub.publish_many(batch)
                    self.sent += len(batch)
                    owed -= len(batch)
                self._tick.wait(0.002)  # pacing, not synchronisation
        except Exception as exc:  # noqa: BLE001 - reported in the tool's JSON
            self.error = repr(exc)
            with self._cond:
                self._idle = True
                self._cond.notify_all()

    def pause(self) -> None:
        """Stop publishing; returns once no batch is being published."""
        with self._cond:
            self._paused = True
            self._cond.wait_for(lambda: self._idle or self.error is not None, 10.0)

    def resume(self) -> None:
        with self._cond:
            self._paused = False
            self._cond.notify_all()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._tick.set()
        self.thread.join(10)
