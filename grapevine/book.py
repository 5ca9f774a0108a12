"""A price-level order book: Grapevine's flagship leaf type.

A leaf is an :class:`OrderBook` (aggregated by price level, like most market-data feeds)
and a delta is a :class:`BookDelta`. :class:`OrderBookModel` plugs both into a stream.

Prices are integer *ticks* (never floats) and quantities are integers. Every delta is
validated by :meth:`OrderBook.apply` *before* anything changes, and rejected with
:class:`ValueError`; publisher and subscribers run the same ``apply`` on the same state, so
a delta the publisher accepted is accepted by every replica. Both ends must use the same
``allow_crossed`` setting.

Delta wire format (the payload of a DELTA message), 26 bytes, little-endian ``<BBqqQ``::

    offset size field
    0      1    op           u8  Op: 1 ADD, 2 REDUCE, 3 REMOVE, 4 CLEAR_SIDE, 5 CLEAR_BOOK, 6 TRADE
    1      1    side         u8  Side: 0 BID, 1 ASK
    2      8    price_ticks  i64
    10     8    quantity     i64
    18     8    time_ns      u64

Snapshot wire format (the leaf payload of a SNAPSHOT message; the engine fragments it),
little-endian, a 42-byte header ``<BBIIqqQQ`` then ``n_bids + n_asks`` levels of 28 bytes
``<qqIQ``::

    offset size field
    0      1    version            u8   always 1
    1      1    flags              u8   bit 0: a trade has been recorded; other bits 0
    2      4    n_bids             u32
    6      4    n_asks             u32
    10     8    last_trade_price   i64  } all four are 0 when flags bit 0 is clear;
    18     8    last_trade_qty     i64  } otherwise 1 <= last_trade_qty <= traded_volume
    26     8    last_trade_time_ns u64  }
    34     8    traded_volume      u64  }
    42     28*n levels: bids best (highest) first, then asks best (lowest) first, each
           price_ticks i64, quantity i64 (>= 1), orders u32 (>= 1), time_ns u64

Prices are strictly monotonic within a side, the book is not crossed unless the decoding
model allows it, and the total length is exactly ``42 + 28 * (n_bids + n_asks)``. The
encoding is canonical: equal books encode to equal bytes, and a payload that decodes
re-encodes to itself. :meth:`OrderBook.checksum` hashes it.

Implementation: each side is a plain ``dict`` mapping a key to the level's wire row, an
immutable ``(price_ticks, qty, orders, time_ns)`` tuple, beside a sorted sequence of the keys.
Asks are keyed by price and bids by *negative* price, so both sides iterate best first in
natural ascending order with the same code. A change to an existing level is a dict lookup
and the store of a new tuple; only creating or deleting a level touches the sorted keys
(O(log n)). The keys are a plain ``list`` (``bisect``) while a side has at most
``_FLAT_MAX_LEVELS`` levels, and a :class:`sortedcontainers.SortedList` beyond: a SortedList
keeps up to its load factor (1,000) keys in one flat list anyway, so below that a plain list
does the same work without the Python-level wrapper and its four GC-tracked lists.

Why tuples and not a mutable object per level (issue 12): a late-joining subscriber decodes
every leaf at once, and each long-lived GC-tracked object costs the cyclic garbage collector
work over and over as the heap grows. A tuple of ints is untracked by the collector the first
time it survives a collection, and the tuples :func:`decode_book` stores are the very ones
``struct.iter_unpack`` made, so a decoded book of up to 1,000 levels a side holds 5 tracked
objects (the book, two dicts, two key lists) whatever its depth, against ~85 for 40 levels
held as :class:`Level` objects in ``SortedDict`` (which also caches 14 bound methods per
instance). ``tools/bench_join.py`` measures the difference.
"""


import struct
from bisect import bisect_left, bisect_right, insort
from collections.abc import Iterator
from enum import IntEnum
from hashlib import blake2b
from operator import lt, neg
from typing import NamedTuple, TypeAlias

from sortedcontainers import SortedList

from ._errors import DecodeError, EncodeError

__all__ = [
    "BOOK_DELTA_SIZE",
    "BookDelta",
    "Level",
    "Op",
    "OrderBook",
    "OrderBookModel",
    "Side",
    "decode_book",
    "encode_book",
]

_I64_MIN = -(1 << 63)
_I64_MAX = (1 << 63) - 1
_U32_MAX = (1 << 32) - 1
_U64_MAX = (1 << 64) - 1


class Side(IntEnum):
    """Which side of the book."""

    BID = 0
    ASK = 1


class Op(IntEnum):
    """What a :class:`BookDelta` does. 0 is deliberately unused (zeroed bytes are invalid)."""

    ADD = 1  #: a new order at the level: qty += q, orders += 1 (creates the level)
    REDUCE = 2  #: partial fill or modify down: qty -= q, orders unchanged
    REMOVE = 3  #: an order leaves: qty -= q, orders -= 1
    CLEAR_SIDE = 4  #: remove every level of ``side``
    CLEAR_BOOK = 5  #: remove every level of both sides (trade state is kept)
    TRADE = 6  #: a trade print: last trade price/qty/time, traded volume += q


_ADD = int(Op.ADD)
_REDUCE = int(Op.REDUCE)
_REMOVE = int(Op.REMOVE)
_CLEAR_SIDE = int(Op.CLEAR_SIDE)
_CLEAR_BOOK = int(Op.CLEAR_BOOK)
_TRADE = int(Op.TRADE)
_OP_BY_VALUE: dict[int, Op] = {int(o): o for o in Op}
_SIDE_BY_VALUE: dict[int, Side] = {int(s): s for s in Side}


class BookDelta(NamedTuple):
    """One change to a book. Unused fields (e.g. price of CLEAR_BOOK) should be 0."""

    op: Op
    side: Side
    price_ticks: int
    quantity: int
    time_ns: int


_DELTA = struct.Struct("<BBqqQ")
_HEADER = struct.Struct("<BBIIqqQQ")
_LEVEL = struct.Struct("<qqIQ")
BOOK_DELTA_SIZE = _DELTA.size  # 26
_HEADER_SIZE = _HEADER.size  # 42
_LEVEL_SIZE = _LEVEL.size  # 28
_SNAPSHOT_VERSION = 1
_FLAG_TRADE = 0x01


_Row: TypeAlias = tuple[int, int, int, int]  # one level as on the wire: price, qty, orders, time
_Side: TypeAlias = dict[int, _Row]  # key (price for asks, -price for bids) -> level
_Keys: TypeAlias = "list[int] | SortedList[int]"  # a side's keys, ascending
# Sides with more levels keep their keys in a SortedList, whose inserts and deletes move at
# most ~its load factor of keys; up to this, a plain list moves no more (see the docstring).
_FLAT_MAX_LEVELS = 1000


class Level:
    """One price level: aggregate quantity, order count, time_ns of its last change.

    A mutable value class for code that builds levels itself. :class:`OrderBook` does not
    store or return it: it keeps each level as an immutable tuple (see the module
    docstring, "Implementation") and its reads return tuples.
    """

    __slots__ = ("orders", "qty", "time_ns")

    def __init__(self, qty: int, orders: int, time_ns: int) -> None:
        self.qty = qty
        self.orders = orders
        self.time_ns = time_ns

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Level):
            return NotImplemented
        return (
            self.qty == other.qty and self.orders == other.orders and self.time_ns == other.time_ns
        )

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        return f"Level(qty={self.qty}, orders={self.orders}, time_ns={self.time_ns})"


def _side_name(side: int) -> str:
    return "BID" if side == 0 else "ASK"


class OrderBook:
    """A price-level order book with last-trade state.

    ``allow_crossed=False`` (the default) makes :meth:`apply` reject any delta that would
    leave best bid >= best ask. Equality, :meth:`checksum` and :func:`encode_book` cover content
    only (levels and trade state), not the ``allow_crossed`` setting.
    """

    __slots__ = (
        "_allow_crossed",
        "_ask_keys",
        "_asks",
        "_bid_keys",
        "_bids",
        "_last_trade",
        "_volume",
    )

    def __init__(self, *, allow_crossed: bool = False) -> None:
        self._allow_crossed = allow_crossed
        # Bids are keyed by -price and asks by price: index 0 is the best level on both.
        self._bids: _Side = {}
        self._asks: _Side = {}
        self._bid_keys: _Keys = []
        self._ask_keys: _Keys = []
        self._last_trade: tuple[int, int, int] | None = None
        self._volume = 0

    # ----------------------------------------------------------------------- mutation

    def apply(self, delta: BookDelta) -> None:
        """Apply one delta in place, or raise ValueError without changing anything.

        Runtime complexity: O(1) for a change to an existing level, O(log n) when a level
        is created or deleted, O(n) for CLEAR_SIDE / CLEAR_BOOK.
        """
        op, side, price, qty, t = delta
        if type(price) is not int or type(qty) is not int or type(t) is not int:
            raise ValueError(f"{delta!r}: price_ticks, quantity and time_ns must be int")
        if not (
            -0x8000000000000000 <= price <= 0x7FFFFFFFFFFFFFFF
            and -0x8000000000000000 <= qty <= 0x7FFFFFFFFFFFFFFF
            and 0 <= t <= 0xFFFFFFFFFFFFFFFF
        ):
            raise ValueError(f"{delta!r}: a field is out of its wire range (i64, i64, u64)")
        # The sorted key list is looked up only where a level is created or deleted: a
        # change to an existing level (the common case) touches the dict alone.
        if side == 0:
            levels = self._bids
            key = -price
        elif side == 1:
            levels = self._asks
            key = price
        else:
            raise ValueError(f"{delta!r}: side must be 0 (BID) or 1 (ASK)")

        if op == 1:  # ADD
            if qty <= 0:
                raise ValueError(f"{delta!r}: ADD quantity must be positive")
            lv = levels.get(key)
            if lv is None:
                if not self._allow_crossed:
                    if side == 0:
                        other = self._ask_keys
                        if other and price >= other[0]:
                            raise ValueError(
                                f"{delta!r}: bid at {price} would cross best ask {other[0]}"
                            )
                    else:
                        other = self._bid_keys
                        if other and price <= -other[0]:
                            raise ValueError(
                                f"{delta!r}: ask at {price} would cross best bid {-other[0]}"
                            )
                levels[key] = (price, qty, 1, t)
                keys = self._ask_keys if side else self._bid_keys
                if isinstance(keys, list):
                    insort(keys, key)
                    if len(keys) > _FLAT_MAX_LEVELS:
                        self._set_keys(side, SortedList(keys))
                else:
                    keys.add(key)
            else:
                _, lq, lo, _ = lv
                nq = lq + qty
                if nq > 0x7FFFFFFFFFFFFFFF:
                    raise ValueError(f"{delta!r}: level quantity would exceed 2**63-1")
                if lo >= 0xFFFFFFFF:
                    raise ValueError(f"{delta!r}: level order count would exceed 2**32-1")
                levels[key] = (price, nq, lo + 1, t)
        elif op == 3 or op == 2:  # REMOVE, REDUCE
            if qty <= 0:
                raise ValueError(f"{delta!r}: quantity must be positive")
            lv = levels.get(key)
            if lv is None:
                raise ValueError(f"{delta!r}: no {_side_name(side)} level at {price}")
            _, lq, lo, _ = lv
            nq = lq - qty
            if nq < 0:
                raise ValueError(f"{delta!r}: quantity {qty} exceeds the level's quantity {lq}")
            if nq == 0 or (op == 3 and lo == 1):
                del levels[key]
                keys = self._ask_keys if side else self._bid_keys
                if type(keys) is list:
                    del keys[bisect_left(keys, key)]
                else:
                    keys.remove(key)
            elif op == 3:
                levels[key] = (price, nq, lo - 1, t)
            else:
                levels[key] = (price, nq, lo, t)
        elif op == 6:  # TRADE
            if qty <= 0:
                raise ValueError(f"{delta!r}: TRADE quantity must be positive")
            volume = self._volume + qty
            if volume > 0xFFFFFFFFFFFFFFFF:
                raise ValueError(f"{delta!r}: traded volume would exceed 2**64-1")
            self._volume = volume
            self._last_trade = (price, qty, t)
        elif op == 4:  # CLEAR_SIDE
            levels.clear()
            self._set_keys(side, [])
        elif op == 5:  # CLEAR_BOOK
            self._bids.clear()
            self._asks.clear()
            self._bid_keys = []
            self._ask_keys = []
        else:
            raise ValueError(f"{delta!r}: unknown op {op!r}")

    def _set_keys(self, side: int, keys: _Keys) -> None:
        if side:
            self._ask_keys = keys
        else:
            self._bid_keys = keys

    def copy(self) -> "OrderBook":
        """An independent deep copy. O(n).

        The level tuples are shared: they are immutable, so sharing them is as independent
        as copying them, and cheaper.
        """
        new = OrderBook.__new__(OrderBook)
        new._allow_crossed = self._allow_crossed
        new._bids = self._bids.copy()
        new._asks = self._asks.copy()
        new._bid_keys = self._bid_keys.copy()  # a list, or a SortedList (re-sorting sorted
        new._ask_keys = self._ask_keys.copy()  # keys is one pass: n - 1 comparisons)
        new._last_trade = self._last_trade
        new._volume = self._volume
        return new

    # -------------------------------------------------------------------------- reads

    @property
    def allow_crossed(self) -> bool:
        """Whether :meth:`apply` accepts deltas that cross the book."""
        return self._allow_crossed

    @property
    def last_trade(self) -> tuple[int, int, int] | None:
        """(price_ticks, quantity, time_ns) of the last TRADE, or None."""
        return self._last_trade

    @property
    def traded_volume(self) -> int:
        """Sum of the quantities of every TRADE applied."""
        return self._volume

    @property
    def crossed(self) -> bool:
        """True if both sides have levels and best bid >= best ask. O(1)."""
        b = self._bid_keys
        a = self._ask_keys
        return bool(b) and bool(a) and -b[0] >= a[0]

    def best_bid(self) -> tuple[int, int] | None:
        """(price, qty) of the highest bid, or None. O(1)."""
        if not self._bids:
            return None
        lv = self._bids[self._bid_keys[0]]
        return lv[0], lv[1]

    def best_ask(self) -> tuple[int, int] | None:
        """(price, qty) of the lowest ask, or None. O(1)."""
        if not self._asks:
            return None
        lv = self._asks[self._ask_keys[0]]
        return lv[0], lv[1]

    def spread(self) -> int | None:
        """best ask - best bid in ticks, or None if a side is empty. O(1)."""
        if not self._bids or not self._asks:
            return None
        return self._ask_keys[0] + self._bid_keys[0]

    def mid(self) -> float | None:
        """(best bid + best ask) / 2 in ticks, or None if a side is empty. O(1)."""
        if not self._bids or not self._asks:
            return None
        return (self._ask_keys[0] - self._bid_keys[0]) / 2

    def _side(self, side: int) -> tuple[_Side, _Keys, int]:
        if side == 0:
            return self._bids, self._bid_keys, -1
        if side == 1:
            return self._asks, self._ask_keys, 1
        raise ValueError(f"side must be 0 (BID) or 1 (ASK), not {side!r}")

    def level(self, side: int, price: int) -> tuple[int, int, int] | None:
        """(qty, orders, time_ns) of the level at ``price``, or None. O(1)."""
        levels, _, sign = self._side(side)
        lv = levels.get(sign * price)
        return None if lv is None else (lv[1], lv[2], lv[3])

    def depth(self, side: int, n: int) -> list[tuple[int, int, int]]:
        """The best ``n`` levels of ``side`` as (price, qty, orders), best first. O(log n + k)."""
        if n < 0:
            raise ValueError(f"depth n must be >= 0, not {n}")
        levels, keys, _ = self._side(side)
        return [lv[:3] for lv in map(levels.__getitem__, keys[:n])]

    def iter_levels(self, side: int) -> Iterator[tuple[int, int, int, int]]:
        """Iterate (price, qty, orders, time_ns) of ``side`` from the best price.

        Do not apply deltas while iterating.
        """
        levels, keys, _ = self._side(side)
        # The stored rows are immutable and already in this shape: hand them out as they are.
        yield from map(levels.__getitem__, keys)

    def volume_at_or_better(self, side: int, price: int) -> int:
        """Total quantity of ``side`` at ``price`` or better (bids >= price, asks <= price).

        Runtime complexity: O(log n + k) for the k levels summed.
        """
        levels, keys, sign = self._side(side)
        bound = sign * price
        end = bisect_right(keys, bound) if isinstance(keys, list) else keys.bisect_right(bound)
        get = levels.__getitem__
        return sum(get(k)[1] for k in keys[:end])

    def __len__(self) -> int:
        """Number of levels on both sides."""
        return len(self._bids) + len(self._asks)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, OrderBook):
            return NotImplemented
        # The key lists are derived from the dicts' keys: equal dicts mean equal books.
        return (
            self._volume == other._volume
            and self._last_trade == other._last_trade
            and self._bids == other._bids
            and self._asks == other._asks
        )

    __hash__ = None  # type: ignore[assignment]  # mutable

    def checksum(self) -> int:
        """A 64-bit content checksum (blake2b of :func:`encode_book`), stable across processes.
        O(n)."""
        return int.from_bytes(blake2b(encode_book(self), digest_size=8).digest(), "little")

    def __repr__(self) -> str:
        return (
            f"OrderBook(bids={len(self._bids)}, asks={len(self._asks)}, "
            f"best_bid={self.best_bid()}, best_ask={self.best_ask()}, "
            f"last_trade={self._last_trade}, traded_volume={self._volume})"
        )

    def _check(self) -> None:
        """Assert every internal invariant (for tests)."""
        bids, asks = self._bids, self._asks
        for levels, keys, sign in ((bids, self._bid_keys, -1), (asks, self._ask_keys, 1)):
            assert type(levels) is dict
            if type(keys) is not list:
                assert type(keys) is SortedList
                keys._check()  # type: ignore[attr-defined]  # not in the stubs
            # Same length, every key present and strictly increasing: the same key set.
            assert len(keys) == len(levels)
            prev: int | None = None
            for k in keys:
                assert type(k) is int
                assert _I64_MIN <= sign * k <= _I64_MAX
                assert prev is None or prev < k
                prev = k
                lv = levels[k]
                assert type(lv) is tuple
                assert len(lv) == 4
                price, qty, orders, time_ns = lv
                assert type(price) is int
                assert price == sign * k
                assert type(qty) is int
                assert 1 <= qty <= _I64_MAX
                assert type(orders) is int
                assert 1 <= orders <= _U32_MAX
                assert type(time_ns) is int
                assert 0 <= time_ns <= _U64_MAX
        if not self._allow_crossed and bids and asks:
            assert -self._bid_keys[0] < self._ask_keys[0]
        assert type(self._volume) is int
        assert 0 <= self._volume <= _U64_MAX
        if self._last_trade is None:
            assert self._volume == 0
        else:
            p, q, t = self._last_trade
            assert _I64_MIN <= p <= _I64_MAX
            assert 1 <= q <= _I64_MAX
            assert q <= self._volume
            assert 0 <= t <= _U64_MAX


# --------------------------------------------------------------------------- snapshots


def encode_book(book: OrderBook) -> bytes:
    """The snapshot bytes of ``book`` (layout in the module docstring). O(n)."""
    bids, asks = book._bids, book._asks
    trade = book._last_trade
    if trade is None:
        header = _HEADER.pack(_SNAPSHOT_VERSION, 0, len(bids), len(asks), 0, 0, 0, 0)
    else:
        header = _HEADER.pack(
            _SNAPSHOT_VERSION, _FLAG_TRADE, len(bids), len(asks), *trade, book._volume
        )
    pack = _LEVEL.pack
    parts = [header]
    append = parts.append
    # Each stored row is already (price_ticks, qty, orders, time_ns), the wire order.
    for lv in map(bids.__getitem__, book._bid_keys):
        append(pack(*lv))
    for lv in map(asks.__getitem__, book._ask_keys):
        append(pack(*lv))
    return b"".join(parts)


def decode_book(payload: memoryview | bytes, *, allow_crossed: bool = False) -> OrderBook:
    """The book encoded in ``payload``; raises only :class:`~grapevine.DecodeError`. O(n).

    A crossed book is rejected unless ``allow_crossed``.
    """
    mv = memoryview(payload).cast("B")
    size = len(mv)
    if size < _HEADER_SIZE:
        raise DecodeError(
            f"book snapshot is {size} bytes, shorter than its {_HEADER_SIZE}-byte header",
            offset=0,
            field="book.header",
        )
    version, flags, n_bids, n_asks, tp, tq, tt, volume = _HEADER.unpack_from(mv, 0)
    if version != _SNAPSHOT_VERSION:
        raise DecodeError(f"unknown book snapshot version {version}", offset=0, field="version")
    if flags & ~_FLAG_TRADE:
        raise DecodeError(f"unknown book snapshot flags 0x{flags:02x}", offset=1, field="flags")
    expected = _HEADER_SIZE + _LEVEL_SIZE * (n_bids + n_asks)
    if size != expected:
        raise DecodeError(
            f"book snapshot is {size} bytes but n_bids={n_bids} and n_asks={n_asks} "
            f"need {expected}",
            offset=2,
            field="n_bids",
        )
    if flags & _FLAG_TRADE:
        if not 1 <= tq <= volume:
            raise DecodeError(
                f"last_trade_qty {tq} must be in 1..traded_volume ({volume})",
                offset=18,
                field="last_trade_qty",
            )
    elif tp or tq or tt or volume:
        raise DecodeError(
            "trade fields must be 0 when no trade is recorded", offset=10, field="last_trade"
        )

    book = OrderBook.__new__(OrderBook)
    book._allow_crossed = allow_crossed
    offset = _HEADER_SIZE
    for count, sign in ((n_bids, -1), (n_asks, 1)):
        levels: _Side = {}
        keys: list[int] | tuple[int, ...] = ()
        if count:
            end = offset + count * _LEVEL_SIZE
            # The tuples iter_unpack makes are stored as they are (the rows of the book):
            # no per-level object is built. Whole columns are validated with C-level
            # builtins; the culprit is located only on failure.
            rows = list(_LEVEL.iter_unpack(mv[offset:end]))
            prices, qtys, orders, _ = zip(*rows, strict=True)
            keys = list(map(neg, prices)) if sign < 0 else prices
            if not all(map(lt, keys, keys[1:])):
                i = next(i for i in range(1, count) if keys[i] <= keys[i - 1])
                raise DecodeError(
                    f"level price {prices[i]} is not strictly after the previous level's "
                    f"{prices[i - 1]}",
                    offset=offset + i * _LEVEL_SIZE,
                    field="level.price_ticks",
                )
            if min(qtys) <= 0:
                i = next(i for i in range(count) if qtys[i] <= 0)
                raise DecodeError(
                    f"level quantity {qtys[i]} must be positive",
                    offset=offset + i * _LEVEL_SIZE + 8,
                    field="level.quantity",
                )
            if min(orders) == 0:
                i = orders.index(0)
                raise DecodeError(
                    "level order count is 0",
                    offset=offset + i * _LEVEL_SIZE + 16,
                    field="level.orders",
                )
            levels = dict(zip(keys, rows, strict=True))
            offset = end
        # Strictly increasing keys were just checked: the sort inside SortedList is
        # Timsort's single pass over a run already in order, n - 1 comparisons.
        key_seq: _Keys = list(keys) if count <= _FLAT_MAX_LEVELS else SortedList(keys)
        if sign < 0:
            book._bids, book._bid_keys = levels, key_seq
        else:
            book._asks, book._ask_keys = levels, key_seq
    if not allow_crossed and book.crossed:
        raise DecodeError(
            "book snapshot is crossed (best bid >= best ask)",
            offset=_HEADER_SIZE,
            field="level.price_ticks",
        )
    if flags & _FLAG_TRADE:
        book._last_trade = (tp, tq, tt)
        book._volume = volume
    else:
        book._last_trade = None
        book._volume = 0
    return book


# ------------------------------------------------------------------------------- model


class OrderBookModel:
    """The :class:`~grapevine.LeafModel` for order books: leaves are :class:`OrderBook`.

    Publisher and subscribers must agree on ``allow_crossed``.
    """

    __slots__ = ("allow_crossed",)

    def __init__(self, *, allow_crossed: bool = False) -> None:
        self.allow_crossed = allow_crossed

    def new_leaf(self) -> OrderBook:
        """An empty book."""
        return OrderBook(allow_crossed=self.allow_crossed)

    def apply(self, leaf: OrderBook, delta: BookDelta) -> OrderBook:
        """Apply ``delta`` to ``leaf`` in place and return it (ValueError if rejected)."""
        leaf.apply(delta)
        return leaf

    def encode_delta(self, delta: BookDelta) -> bytes:
        """The 26-byte wire form of ``delta``; EncodeError if a field is out of range."""
        if delta[0] not in _OP_BY_VALUE or delta[1] not in _SIDE_BY_VALUE:
            raise EncodeError(f"{delta!r}: unknown op or side")
        try:
            return _DELTA.pack(*delta)
        except struct.error as exc:
            raise EncodeError(f"{delta!r} cannot be encoded: {exc}") from None

    def decode_delta(self, payload: memoryview | bytes) -> BookDelta:
        """A delta from its 26-byte wire form; raises only DecodeError."""
        size = len(payload)  # bytes too, not only the memoryview the engine passes
        if size != BOOK_DELTA_SIZE:
            raise DecodeError(
                f"book delta is {size} bytes, not {BOOK_DELTA_SIZE}",
                offset=0,
                field="book_delta",
            )
        op, side, price, qty, t = _DELTA.unpack_from(payload)
        op_e = _OP_BY_VALUE.get(op)
        if op_e is None:
            raise DecodeError(f"unknown book delta op {op}", offset=0, field="op")
        side_e = _SIDE_BY_VALUE.get(side)
        if side_e is None:
            raise DecodeError(f"unknown book side {side}", offset=1, field="side")
        return BookDelta(op_e, side_e, price, qty, t)

    def encode_leaf(self, leaf: OrderBook) -> bytes:
        """Snapshot bytes of ``leaf``."""
        return encode_book(leaf)

    def decode_leaf(self, payload: memoryview) -> OrderBook:
        """A book from its snapshot bytes; raises only DecodeError."""
        return decode_book(payload, allow_crossed=self.allow_crossed)
