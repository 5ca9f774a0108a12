"""A seeded random market that produces valid :class:`~grapevine.book.BookDelta` streams.

Used by ``grapevine demo`` and the order-book examples. Each instrument (leaf ids ``1..N``)
has an integer mid price that drifts by a random walk; quotes are added, reduced and pulled
on both sides a few ticks around the mid, and trades print now and then. Every delta is
applied to the generator's own copy of the book before it is returned, and the generator
never produces one that :meth:`OrderBook.apply` would reject: before a quote is added at a
price that would cross the other side, the crossed levels trade and are removed first.

Usage::

    market = Market(instruments=50, seed=1)
    with Publisher(OrderBookModel(), initial=market.copy_books()) as pub:
        for leaf_id, delta in market.batch(1000):
            pub.publish(leaf_id, delta)
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping

from .book import BookDelta, Op, OrderBook, Side

__all__ = ["Market"]

_BID, _ASK = Side.BID, Side.ASK


class _Instrument:
    __slots__ = ("book", "leaf_id", "mid")

    def __init__(self, leaf_id: int, mid: int, book: OrderBook) -> None:
        self.leaf_id = leaf_id
        self.mid = mid
        self.book = book


class Market:
    """Random, never-crossing order-book activity on ``instruments`` books.

    Args:
        instruments: number of books (leaf ids ``1..instruments``).
        seed: seed of the generator's RNG (same seed, same sequence of ops and prices).
        levels: how many price levels each side keeps around the mid.
        books: start from these books (e.g. after a publisher restart) instead of fresh
            ones; they are copied. Their mids are taken from the books.
        clock: source of ``time_ns`` for deltas (default :func:`time.time_ns`).
    """

    def __init__(self, instruments: int, seed: int = 0, *, levels: int = 5,
                 books: Mapping[int, OrderBook] | None = None,
                 clock: Callable[[], int] = time.time_ns) -> None:
        if instruments < 1:
            raise ValueError("instruments must be at least 1")
        if levels < 1:
            raise ValueError("levels must be at least 1")
        self.rng = random.Random(seed)
        self.levels = levels
        self.clock = clock
        self.deltas_made = 0
        rng = self.rng
        self._instruments: list[_Instrument] = []
        for leaf_id in range(1, instruments + 1):
            given = books.get(leaf_id) if books is not None else None
            if given is not None:
                book = given.copy()
                mid = book.mid()
                inst = _Instrument(leaf_id, round(mid) if mid is not None
                                   else rng.randrange(1_000, 50_000), book)
            else:
                inst = _Instrument(leaf_id, rng.randrange(1_000, 50_000), OrderBook())
                self._populate(inst)
            self._instruments.append(inst)
        # A few instruments are much busier than the rest, as in real markets.
        self._weights = [1.0 / (rank ** 0.8) for rank in range(1, instruments + 1)]
        rng.shuffle(self._weights)
        self._cum_weights: list[float] = []
        total = 0.0
        for weight in self._weights:
            total += weight
            self._cum_weights.append(total)
        self._pending: list[tuple[int, BookDelta]] = []

    # ------------------------------------------------------------------ reading

    @property
    def books(self) -> dict[int, OrderBook]:
        """The generator's books by leaf id (live objects: do not modify)."""
        return {inst.leaf_id: inst.book for inst in self._instruments}

    def copy_books(self) -> dict[int, OrderBook]:
        """Independent copies of every book, e.g. for ``Publisher(initial=...)``."""
        return {inst.leaf_id: inst.book.copy() for inst in self._instruments}

    # ------------------------------------------------------------------ generating

    def batch(self, count: int) -> list[tuple[int, BookDelta]]:
        """At least ``count`` (leaf_id, delta) pairs, already applied to :attr:`books`.

        A market event (e.g. an order that trades through a level, then rests) can make
        several deltas; a batch always ends with a whole event, so after publishing a batch
        the publisher's books equal :attr:`books`. Returns [] when ``count`` <= 0.
        """
        pending = self._pending
        while len(pending) < count:
            self._event()
        batch = pending
        self._pending = []
        self.deltas_made += len(batch)
        return batch

    def _event(self) -> None:
        rng = self.rng
        inst = rng.choices(self._instruments, cum_weights=self._cum_weights)[0]
        roll = rng.random()
        if roll < 0.10:
            self._drift(inst)
        elif roll < 0.50:
            self._add(inst, _BID if rng.random() < 0.5 else _ASK)
        elif roll < 0.68:
            self._reduce(inst)
        elif roll < 0.92:
            self._remove_order(inst)
        else:
            self._trade(inst)

    def _emit(self, inst: _Instrument, op: Op, side: Side, price: int, qty: int) -> None:
        delta = BookDelta(op, side, price, qty, self.clock())
        inst.book.apply(delta)  # raises if the generator is wrong: never publish it then
        self._pending.append((inst.leaf_id, delta))

    def _populate(self, inst: _Instrument) -> None:
        """Build an initial book directly (not emitted as deltas)."""
        rng = self.rng
        for side in (_BID, _ASK):
            for k in range(1, self.levels + 1):
                price = inst.mid - k if side == _BID else inst.mid + k
                for _ in range(rng.randint(1, 3)):
                    inst.book.apply(BookDelta(Op.ADD, side, price, self._lot(),
                                              self.clock()))

    def _lot(self) -> int:
        return self.rng.choice((1, 1, 2, 3, 5, 10)) * 100

    def _drift(self, inst: _Instrument) -> None:
        """Move the mid one tick, then quote at the new touch on the side it moved from."""
        up = self.rng.random() < 0.5
        inst.mid = max(inst.mid + (1 if up else -1), self.levels + 2)
        # The side the mid moved away from is re-quoted at the new touch; when the mid runs
        # into the other side, those orders trade first (see _add).
        self._add(inst, _BID if up else _ASK, offset=1)
        self._trim(inst)

    def _add(self, inst: _Instrument, side: Side, offset: int | None = None) -> None:
        rng = self.rng
        if offset is None:
            offset = min(1 + int(rng.expovariate(0.6)), self.levels)
        price = inst.mid - offset if side == _BID else inst.mid + offset
        book = inst.book
        other = _ASK if side == _BID else _BID
        # Orders on the other side at or through this price trade against it, then leave.
        while True:
            best = book.best_ask() if side == _BID else book.best_bid()
            if best is None:
                break
            best_price, best_qty = best
            if (side == _BID and best_price > price) or (side == _ASK and best_price < price):
                break
            self._emit(inst, Op.TRADE, other, best_price, best_qty)
            self._emit(inst, Op.REMOVE, other, best_price, best_qty)
        self._emit(inst, Op.ADD, side, price, self._lot())
        if len(book.depth(side, self.levels + 3)) > self.levels + 2:
            self._trim(inst)

    def _trim(self, inst: _Instrument) -> None:
        """Pull the levels furthest from the mid while a side holds too many."""
        book = inst.book
        for side in (_BID, _ASK):
            while True:
                levels = list(book.iter_levels(side))
                if len(levels) <= self.levels + 2:
                    break
                price, qty, _orders, _t = levels[-1]
                self._emit(inst, Op.REMOVE, side, price, qty)

    def _pick_level(self, inst: _Instrument) -> tuple[Side, int, int, int] | None:
        rng = self.rng
        side = _BID if rng.random() < 0.5 else _ASK
        levels = inst.book.depth(side, self.levels + 2)
        if not levels:
            side = _ASK if side == _BID else _BID
            levels = inst.book.depth(side, self.levels + 2)
            if not levels:
                return None
        price, qty, orders = levels[min(int(rng.expovariate(0.7)), len(levels) - 1)]
        return side, price, qty, orders

    def _reduce(self, inst: _Instrument) -> None:
        picked = self._pick_level(inst)
        if picked is None:
            self._add(inst, _BID if self.rng.random() < 0.5 else _ASK)
            return
        side, price, qty, _orders = picked
        if qty < 2:
            self._emit(inst, Op.REMOVE, side, price, qty)
            return
        self._emit(inst, Op.REDUCE, side, price, self.rng.randint(1, qty - 1))

    def _remove_order(self, inst: _Instrument) -> None:
        picked = self._pick_level(inst)
        if picked is None:
            self._add(inst, _BID if self.rng.random() < 0.5 else _ASK)
            return
        side, price, qty, orders = picked
        # One order leaves; the last order takes the level's whole remaining quantity.
        size = qty if orders == 1 else self.rng.randint(1, max(1, qty // orders))
        self._emit(inst, Op.REMOVE, side, price, size)

    def _trade(self, inst: _Instrument) -> None:
        """An aggressive order takes part of the best level on one side."""
        book = inst.book
        side = _BID if self.rng.random() < 0.5 else _ASK
        best = book.best_bid() if side == _BID else book.best_ask()
        if best is None:
            self._add(inst, side)
            return
        price, qty = best
        size = min(qty, self._lot())
        self._emit(inst, Op.TRADE, side, price, size)
        self._emit(inst, Op.REDUCE, side, price, size)
