"""Deterministic unit tests for grapevine.book (``_check()`` after every mutation)."""

from __future__ import annotations

import struct
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sortedcontainers import SortedList

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # the venv may not have grapevine installed
    sys.path.insert(0, str(ROOT))

from grapevine import DecodeError, EncodeError, LeafModel  # noqa: E402
from grapevine import book as book_module  # noqa: E402
from grapevine.book import (  # noqa: E402
    BOOK_DELTA_SIZE,
    BookDelta,
    Level,
    Op,
    OrderBook,
    OrderBookModel,
    Side,
    decode_book,
    encode_book,
)

BID, ASK = Side.BID, Side.ASK
I64_MAX = (1 << 63) - 1
I64_MIN = -(1 << 63)
U64_MAX = (1 << 64) - 1
HEADER = struct.Struct("<BBIIqqQQ")
LEVEL = struct.Struct("<qqIQ")


def d(op: Op, side: Side, price: int = 0, qty: int = 0, t: int = 0) -> BookDelta:
    return BookDelta(op, side, price, qty, t)


def apply(book: OrderBook, *deltas: BookDelta) -> OrderBook:
    for delta in deltas:
        book.apply(delta)
        book._check()
    return book


def sample_book() -> OrderBook:
    """Bids 100 (2 orders, 30), 99 (1, 5); asks 102 (1, 7), 105 (3, 9); one trade."""
    return apply(
        OrderBook(),
        d(Op.ADD, BID, 100, 10, 1),
        d(Op.ADD, BID, 100, 20, 2),
        d(Op.ADD, BID, 99, 5, 3),
        d(Op.ADD, ASK, 102, 7, 4),
        d(Op.ADD, ASK, 105, 2, 5),
        d(Op.ADD, ASK, 105, 3, 6),
        d(Op.ADD, ASK, 105, 4, 7),
        d(Op.TRADE, BID, 101, 3, 8),
    )


def assert_rejected(book: OrderBook, delta: BookDelta, match: str) -> None:
    """apply raises ValueError and leaves the book exactly as it was."""
    before = book.copy()
    checksum = book.checksum()
    with pytest.raises(ValueError, match=match):
        book.apply(delta)
    book._check()
    assert book == before
    assert book.checksum() == checksum


# ------------------------------------------------------------------------------ apply


def test_empty_book() -> None:
    book = OrderBook()
    book._check()
    assert len(book) == 0
    assert book.best_bid() is None
    assert book.best_ask() is None
    assert book.spread() is None
    assert book.mid() is None
    assert not book.crossed
    assert book.depth(BID, 5) == []
    assert list(book.iter_levels(ASK)) == []
    assert book.volume_at_or_better(BID, 0) == 0
    assert book.last_trade is None
    assert book.traded_volume == 0
    assert book == OrderBook()


def test_add_creates_and_accumulates() -> None:
    book = OrderBook()
    apply(book, d(Op.ADD, BID, 100, 10, 1))
    assert book.level(BID, 100) == (10, 1, 1)
    apply(book, d(Op.ADD, BID, 100, 5, 2))
    assert book.level(BID, 100) == (15, 2, 2)
    assert book.level(ASK, 100) is None
    assert len(book) == 1


def test_reduce_keeps_orders_and_deletes_at_zero() -> None:
    book = sample_book()
    apply(book, d(Op.REDUCE, BID, 100, 12, 20))
    assert book.level(BID, 100) == (18, 2, 20)
    apply(book, d(Op.REDUCE, BID, 100, 18, 21))
    assert book.level(BID, 100) is None
    assert book.best_bid() == (99, 5)


def test_remove_decrements_orders_and_deletes_at_zero_orders() -> None:
    book = sample_book()
    apply(book, d(Op.REMOVE, ASK, 105, 2, 20))
    assert book.level(ASK, 105) == (7, 2, 20)
    apply(book, d(Op.REMOVE, ASK, 105, 3, 21))
    assert book.level(ASK, 105) == (4, 1, 21)
    # The last order leaves: the level disappears even if quantity would remain.
    apply(book, d(Op.REMOVE, ASK, 105, 1, 22))
    assert book.level(ASK, 105) is None
    # Reaching zero quantity removes the level even with orders left.
    apply(book, d(Op.REMOVE, BID, 100, 30, 23))
    assert book.level(BID, 100) is None
    assert len(book) == 2


def test_clear_side_and_book_keep_trade_state() -> None:
    book = sample_book()
    apply(book, d(Op.CLEAR_SIDE, ASK))
    assert book.best_ask() is None
    assert book.best_bid() == (100, 30)
    assert len(book) == 2
    apply(book, d(Op.CLEAR_BOOK, BID))
    assert len(book) == 0
    assert book.last_trade == (101, 3, 8)
    assert book.traded_volume == 3


def test_trade_records_and_accumulates_without_touching_levels() -> None:
    book = sample_book()
    levels = list(book.iter_levels(BID)) + list(book.iter_levels(ASK))
    apply(book, d(Op.TRADE, ASK, 102, 4, 30))
    assert book.last_trade == (102, 4, 30)
    assert book.traded_volume == 7
    assert list(book.iter_levels(BID)) + list(book.iter_levels(ASK)) == levels


@pytest.mark.parametrize(
    ("delta", "match"),
    [
        (d(Op.ADD, BID, 98, 0), "positive"),
        (d(Op.ADD, BID, 98, -1), "positive"),
        (d(Op.REDUCE, BID, 100, 0), "positive"),
        (d(Op.REMOVE, BID, 100, -3), "positive"),
        (d(Op.TRADE, BID, 100, 0), "positive"),
        (d(Op.REDUCE, BID, 98, 1), "no BID level at 98"),
        (d(Op.REMOVE, ASK, 103, 1), "no ASK level at 103"),
        (d(Op.REDUCE, BID, 100, 31), "exceeds"),
        (d(Op.REMOVE, ASK, 102, 8), "exceeds"),
        (d(Op.ADD, BID, 102, 1), "cross"),
        (d(Op.ADD, BID, 103, 1), "cross"),
        (d(Op.ADD, ASK, 100, 1), "cross"),
        (d(Op.ADD, ASK, 50, 1), "cross"),
        (BookDelta(Op.ADD, 2, 98, 1, 0), "side"),  # type: ignore[arg-type]
        (BookDelta(0, BID, 98, 1, 0), "unknown op"),  # type: ignore[arg-type]
        (BookDelta(7, BID, 98, 1, 0), "unknown op"),  # type: ignore[arg-type]
        (d(Op.ADD, BID, 98.0, 1), "must be int"),  # type: ignore[arg-type]
        (d(Op.ADD, BID, 98, 1.5), "must be int"),  # type: ignore[arg-type]
        (d(Op.ADD, BID, 98, True), "must be int"),
        (d(Op.ADD, BID, I64_MAX + 1, 1), "wire range"),
        (d(Op.ADD, BID, I64_MIN - 1, 1), "wire range"),
        (d(Op.ADD, BID, 98, I64_MAX + 1), "wire range"),
        (d(Op.ADD, BID, 98, 1, -1), "wire range"),
        (d(Op.ADD, BID, 98, 1, U64_MAX + 1), "wire range"),
        (d(Op.ADD, BID, 100, I64_MAX), "2\\*\\*63-1"),
        (d(Op.CLEAR_SIDE, 5), "side"),  # type: ignore[arg-type]
    ],
)
def test_invalid_deltas_are_rejected_before_mutating(delta: BookDelta, match: str) -> None:
    assert_rejected(sample_book(), delta, match)


def test_order_count_limit() -> None:
    book = apply(OrderBook(), d(Op.ADD, BID, 1, 1))
    price, qty, _, t = book._bids[-1]
    book._bids[-1] = (price, qty, (1 << 32) - 1, t)  # reach the limit without 4 billion ADDs
    book._check()
    assert_rejected(book, d(Op.ADD, BID, 1, 1), "2\\*\\*32-1")


def test_traded_volume_limit() -> None:
    book = apply(OrderBook(), d(Op.TRADE, BID, 1, I64_MAX), d(Op.TRADE, BID, 1, I64_MAX))
    assert book.traded_volume == 2 * I64_MAX
    apply(book, d(Op.TRADE, BID, 1, 1))
    assert book.traded_volume == U64_MAX
    assert_rejected(book, d(Op.TRADE, BID, 1, 1), "2\\*\\*64-1")


def test_extreme_values_round_trip() -> None:
    book = apply(
        OrderBook(),
        d(Op.ADD, BID, I64_MIN, I64_MAX, U64_MAX),
        d(Op.ADD, ASK, I64_MAX, 1, 0),
        d(Op.TRADE, ASK, I64_MIN, I64_MAX, U64_MAX),
    )
    assert book.spread() == I64_MAX - I64_MIN
    assert decode_book(encode_book(book)) == book


def test_crossed_allowed() -> None:
    book = OrderBook(allow_crossed=True)
    assert book.allow_crossed
    apply(book, d(Op.ADD, BID, 100, 1), d(Op.ADD, ASK, 100, 2))
    assert book.crossed
    assert book.spread() == 0
    apply(book, d(Op.ADD, ASK, 90, 2))
    assert book.spread() == -10
    assert book.mid() == 95.0
    apply(book, d(Op.CLEAR_SIDE, ASK))
    assert not book.crossed


def test_best_spread_mid() -> None:
    book = sample_book()
    assert book.best_bid() == (100, 30)
    assert book.best_ask() == (102, 7)
    assert book.spread() == 2
    assert book.mid() == 101.0
    apply(book, d(Op.ADD, ASK, 101, 1))
    assert book.mid() == 100.5
    assert not book.crossed
    apply(book, d(Op.REMOVE, BID, 100, 10), d(Op.REMOVE, BID, 100, 20))
    assert book.best_bid() == (99, 5)


def test_depth_and_iter_levels() -> None:
    book = sample_book()
    assert book.depth(BID, 10) == [(100, 30, 2), (99, 5, 1)]
    assert book.depth(BID, 1) == [(100, 30, 2)]
    assert book.depth(ASK, 2) == [(102, 7, 1), (105, 9, 3)]
    assert book.depth(ASK, 0) == []
    assert list(book.iter_levels(BID)) == [(100, 30, 2, 2), (99, 5, 1, 3)]
    assert list(book.iter_levels(ASK)) == [(102, 7, 1, 4), (105, 9, 3, 7)]
    with pytest.raises(ValueError, match="n must be"):
        book.depth(BID, -1)
    for bad_side in (2, -1):
        with pytest.raises(ValueError, match="side"):
            book.depth(bad_side, 1)
        with pytest.raises(ValueError, match="side"):
            list(book.iter_levels(bad_side))
        with pytest.raises(ValueError, match="side"):
            book.volume_at_or_better(bad_side, 1)
        with pytest.raises(ValueError, match="side"):
            book.level(bad_side, 1)


def test_volume_at_or_better() -> None:
    book = sample_book()
    assert book.volume_at_or_better(BID, 101) == 0
    assert book.volume_at_or_better(BID, 100) == 30
    assert book.volume_at_or_better(BID, 99) == 35
    assert book.volume_at_or_better(BID, -(10**9)) == 35
    assert book.volume_at_or_better(ASK, 101) == 0
    assert book.volume_at_or_better(ASK, 102) == 7
    assert book.volume_at_or_better(ASK, 104) == 7
    assert book.volume_at_or_better(ASK, 105) == 16


def test_copy_is_independent() -> None:
    book = sample_book()
    twin = book.copy()
    twin._check()
    assert twin == book
    assert twin.allow_crossed == book.allow_crossed
    apply(twin, d(Op.ADD, BID, 100, 1, 99))
    assert twin != book
    assert book.level(BID, 100) == (30, 2, 2)
    assert OrderBook(allow_crossed=True).copy().allow_crossed


def test_equality_and_checksum_track_every_field() -> None:
    base = sample_book()
    assert base == sample_book()
    assert base.checksum() == sample_book().checksum()
    assert base != "not a book"
    # Books built by different paths but with equal content are equal.
    other = sample_book()
    apply(other, d(Op.ADD, BID, 50, 1), d(Op.REMOVE, BID, 50, 1))
    assert other == base
    assert other.checksum() == base.checksum()
    changes = [
        d(Op.ADD, BID, 100, 1, 2),  # qty and orders
        d(Op.REDUCE, BID, 100, 1, 2),  # qty only
        d(Op.REDUCE, BID, 100, 1, 2),
        d(Op.ADD, BID, 98, 1),  # new level
        d(Op.ADD, ASK, 106, 1),
        d(Op.TRADE, BID, 101, 3, 8),  # same trade again: volume changes
        d(Op.TRADE, BID, 101, 3, 9),  # time only
        d(Op.CLEAR_SIDE, BID),
        d(Op.CLEAR_SIDE, ASK),
    ]
    seen = {base.checksum()}
    book = base.copy()
    for delta in changes:
        before = book.copy()
        apply(book, delta)
        assert book != before
        checksum = book.checksum()
        assert checksum not in seen
        seen.add(checksum)
    # Only the time of a level changes (REDUCE then ADD back the same quantity and order).
    a, b = sample_book(), sample_book()
    apply(b, d(Op.ADD, ASK, 102, 1, 50), d(Op.REMOVE, ASK, 102, 1, 50))
    assert b.level(ASK, 102) == (7, 1, 50)
    assert a != b
    assert a.checksum() != b.checksum()
    # A bid and an ask at the same price are different books.
    assert apply(OrderBook(), d(Op.ADD, BID, 5, 1)) != apply(OrderBook(), d(Op.ADD, ASK, 5, 1))


def test_checksum_is_stable() -> None:
    """Checksums must agree across processes, platforms and versions: pin two."""
    assert OrderBook().checksum() == 8254140662172545723
    assert sample_book().checksum() == 11571637695637888336


def test_deep_book_keeps_keys_in_a_sorted_list() -> None:
    """Past _FLAT_MAX_LEVELS a side's keys move from a plain list to a SortedList (and back
    to a list when the side is cleared); reads, copies and snapshots agree either way."""
    limit = book_module._FLAT_MAX_LEVELS
    book = OrderBook()
    for i in range(limit + 5):
        apply(book, d(Op.ADD, BID, 10_000 - 2 * i, i + 1, i), d(Op.ADD, ASK, 10_001 + 2 * i, 1, i))
    apply(book, d(Op.ADD, BID, 10_000 - 2 * limit - 3, 7, 9))  # inserted inside a SortedList
    book._check()
    assert isinstance(book._bid_keys, SortedList)
    assert isinstance(book._ask_keys, SortedList)
    assert book.best_bid() == (10_000, 1)
    assert book.best_ask() == (10_001, 1)
    assert book.depth(BID, 2) == [(10_000, 1, 1), (9_998, 2, 1)]
    assert book.volume_at_or_better(BID, 9_996) == 1 + 2 + 3
    assert book.volume_at_or_better(ASK, 10_005) == 3
    assert book.level(BID, 10_000 - 2 * limit - 3) == (7, 1, 9)
    apply(book, d(Op.REMOVE, BID, 10_000, 1), d(Op.REDUCE, ASK, 10_001, 1))
    book._check()
    assert book.best_bid() == (9_998, 2)
    twin = book.copy()
    twin._check()
    assert twin == book
    back = decode_book(encode_book(book))
    back._check()
    assert isinstance(back._bid_keys, SortedList)
    assert back == book
    assert encode_book(back) == encode_book(book)
    apply(book, d(Op.CLEAR_SIDE, BID))
    book._check()
    assert book._bid_keys == []
    assert twin != book
    small = decode_book(encode_book(sample_book()))
    assert type(small._bid_keys) is list


def test_level_value_semantics() -> None:
    assert Level(1, 2, 3) == Level(1, 2, 3)
    assert Level(1, 2, 3) != Level(1, 2, 4)
    assert Level(1, 2, 3) != (1, 2, 3)
    assert repr(Level(1, 2, 3)) == "Level(qty=1, orders=2, time_ns=3)"
    with pytest.raises(TypeError):
        hash(Level(1, 2, 3))
    with pytest.raises(TypeError):
        hash(OrderBook())


def test_repr() -> None:
    text = repr(sample_book())
    assert "bids=2" in text
    assert "best_ask=(102, 7)" in text


def test_check_detects_corruption() -> None:
    book = sample_book()
    book._bids[-100] = (100, 0, 2, 2)
    with pytest.raises(AssertionError):
        book._check()
    book = sample_book()
    book._asks[102] = (102, 1, 0, 0)
    with pytest.raises(AssertionError):
        book._check()
    book = sample_book()
    book._asks[100] = (100, 1, 1, 0)  # crossed
    book._ask_keys = [100, 102, 105]
    with pytest.raises(AssertionError):
        book._check()
    book = sample_book()
    book._asks[103] = (103, 1, 1, 0)  # a level the sorted key list lacks
    with pytest.raises(AssertionError):
        book._check()
    book = sample_book()
    book._asks[102] = (101, 7, 1, 4)  # a row whose price is not its key's
    with pytest.raises(AssertionError):
        book._check()
    book = sample_book()
    book._bids[-100] = [100, 30, 2, 2]  # type: ignore[assignment]  # rows must be immutable
    with pytest.raises(AssertionError):
        book._check()
    book = sample_book()
    book._volume = 0
    with pytest.raises(AssertionError):
        book._check()


# --------------------------------------------------------------------------- snapshot


def test_snapshot_layout() -> None:
    data = encode_book(sample_book())
    assert len(data) == 42 + 4 * 28
    assert HEADER.unpack_from(data) == (1, 1, 2, 2, 101, 3, 8, 3)
    levels = list(LEVEL.iter_unpack(data[42:]))
    assert levels == [(100, 30, 2, 2), (99, 5, 1, 3), (102, 7, 1, 4), (105, 9, 3, 7)]
    assert encode_book(OrderBook()) == HEADER.pack(1, 0, 0, 0, 0, 0, 0, 0)


@pytest.mark.parametrize(
    "book",
    [
        OrderBook(),
        sample_book(),
        apply(OrderBook(), d(Op.ADD, BID, -5, 1)),
        apply(OrderBook(), d(Op.ADD, ASK, -5, 1), d(Op.TRADE, BID, 7, 1)),
    ],
)
def test_snapshot_round_trip(book: OrderBook) -> None:
    data = encode_book(book)
    for payload in (data, memoryview(data), memoryview(bytearray(data))):
        back = decode_book(payload)
        back._check()
        assert back == book
        assert back.checksum() == book.checksum()
        assert encode_book(back) == data


def test_crossed_snapshot_needs_allow_crossed() -> None:
    book = apply(OrderBook(allow_crossed=True), d(Op.ADD, BID, 10, 1), d(Op.ADD, ASK, 9, 1))
    data = encode_book(book)
    with pytest.raises(DecodeError, match="crossed"):
        decode_book(data)
    back = decode_book(data, allow_crossed=True)
    back._check()
    assert back == book
    assert back.allow_crossed


def _snapshot(*levels: tuple[int, int, int, int], n_bids: int, flags: int = 0) -> bytearray:
    trade = (0, 0, 0, 0) if not flags else (1, 1, 1, 1)
    out = bytearray(HEADER.pack(1, flags, n_bids, len(levels) - n_bids, *trade))
    for level in levels:
        out += LEVEL.pack(*level)
    return out


@pytest.mark.parametrize(
    ("payload", "field", "offset"),
    [
        (b"", "book.header", 0),
        (bytes(41), "book.header", 0),
        (bytes(42), "version", 0),
        (HEADER.pack(2, 0, 0, 0, 0, 0, 0, 0), "version", 0),
        (HEADER.pack(1, 2, 0, 0, 0, 0, 0, 0), "flags", 1),
        (HEADER.pack(1, 0, 1, 0, 0, 0, 0, 0), "n_bids", 2),
        (HEADER.pack(1, 0, 0, 0, 0, 0, 0, 0) + b"\0", "n_bids", 2),
        (HEADER.pack(1, 0, 0xFFFFFFFF, 0xFFFFFFFF, 0, 0, 0, 0), "n_bids", 2),
        (HEADER.pack(1, 0, 0, 0, 5, 0, 0, 0), "last_trade", 10),
        (HEADER.pack(1, 0, 0, 0, 0, 0, 0, 5), "last_trade", 10),
        (HEADER.pack(1, 1, 0, 0, 5, 0, 0, 5), "last_trade_qty", 18),
        (HEADER.pack(1, 1, 0, 0, 5, 6, 0, 5), "last_trade_qty", 18),
        (HEADER.pack(1, 1, 0, 0, 5, -1, 0, 5), "last_trade_qty", 18),
        (_snapshot((10, 1, 1, 0), (10, 1, 1, 0), n_bids=2), "level.price_ticks", 42 + 28),
        (_snapshot((10, 1, 1, 0), (11, 1, 1, 0), n_bids=2), "level.price_ticks", 42 + 28),
        (_snapshot((11, 1, 1, 0), (10, 1, 1, 0), n_bids=0), "level.price_ticks", 42 + 28),
        (_snapshot((10, 1, 1, 0), (10, 1, 1, 0), n_bids=1), "level.price_ticks", 42),
        (_snapshot((10, 1, 1, 0), (9, 1, 1, 0), (8, 0, 1, 0), n_bids=3), "level.quantity", 106),
        (_snapshot((10, -1, 1, 0), n_bids=0), "level.quantity", 50),
        (_snapshot((10, 1, 1, 0), (11, 1, 0, 0), n_bids=1), "level.orders", 42 + 28 + 16),
    ],
)
def test_malformed_snapshot(payload: bytes, field: str, offset: int) -> None:
    with pytest.raises(DecodeError) as info:
        decode_book(memoryview(payload))
    assert info.value.field == field
    assert info.value.offset == offset


@given(st.binary(max_size=200))
@settings(max_examples=300, deadline=None)
def test_random_bytes_only_raise_decode_error(data: bytes) -> None:
    model = OrderBookModel()
    try:
        book = model.decode_leaf(memoryview(data))
    except DecodeError:
        pass
    else:
        book._check()
        assert encode_book(book) == data  # the encoding is canonical
    try:
        delta = model.decode_delta(memoryview(data))
    except DecodeError:
        pass
    else:
        assert model.encode_delta(delta) == data


@given(st.lists(st.tuples(st.integers(-50, 50), st.integers(1, 9)), max_size=20), st.binary())
@settings(max_examples=200, deadline=None)
def test_mutated_snapshots_only_raise_decode_error(
    adds: list[tuple[int, int]], noise: bytes
) -> None:
    """Valid snapshots with bytes flipped, truncated or extended: DecodeError or a valid book."""
    book = OrderBook(allow_crossed=True)
    for price, qty in adds:
        apply(book, d(Op.ADD, BID if price < 0 else ASK, price, qty))
    data = bytearray(encode_book(book))
    for i, byte in enumerate(noise[:8]):
        data[(i * 37 + byte) % len(data)] ^= byte
    cut = noise[8] if len(noise) > 8 else len(data)
    for payload in (data, data[:cut], data + noise):
        try:
            back = decode_book(memoryview(payload), allow_crossed=True)
        except DecodeError:
            continue
        back._check()
        assert encode_book(back) == payload


# ------------------------------------------------------------------------------ model


def test_model_is_a_leaf_model() -> None:
    model = OrderBookModel()
    assert isinstance(model, LeafModel)
    leaf = model.new_leaf()
    assert leaf == OrderBook()
    assert not leaf.allow_crossed
    assert OrderBookModel(allow_crossed=True).new_leaf().allow_crossed
    delta = d(Op.ADD, BID, 100, 3, 7)
    assert model.apply(leaf, delta) is leaf
    leaf._check()
    assert leaf.best_bid() == (100, 3)
    back = model.decode_leaf(memoryview(model.encode_leaf(leaf)))
    assert back == leaf


def test_delta_wire_layout() -> None:
    model = OrderBookModel()
    delta = d(Op.TRADE, ASK, -2, 3, 4)
    data = model.encode_delta(delta)
    assert BOOK_DELTA_SIZE == 26
    assert data == struct.pack("<BBqqQ", 6, 1, -2, 3, 4)
    back = model.decode_delta(memoryview(data))
    assert back == delta
    assert type(back.op) is Op
    assert type(back.side) is Side


@pytest.mark.parametrize(
    ("payload", "field", "offset"),
    [
        (b"", "book_delta", 0),
        (bytes(25), "book_delta", 0),
        (bytes(27), "book_delta", 0),
        (bytes(26), "op", 0),  # op 0 is unused
        (struct.pack("<BBqqQ", 7, 0, 0, 0, 0), "op", 0),
        (struct.pack("<BBqqQ", 1, 2, 0, 0, 0), "side", 1),
        (struct.pack("<BBqqQ", 1, 255, 0, 0, 0), "side", 1),
    ],
)
def test_malformed_delta(payload: bytes, field: str, offset: int) -> None:
    with pytest.raises(DecodeError) as info:
        OrderBookModel().decode_delta(memoryview(payload))
    assert info.value.field == field
    assert info.value.offset == offset


@pytest.mark.parametrize(
    "delta",
    [
        BookDelta(0, BID, 1, 1, 1),  # type: ignore[arg-type]
        BookDelta(Op.ADD, 3, 1, 1, 1),  # type: ignore[arg-type]
        d(Op.ADD, BID, I64_MAX + 1, 1, 1),
        d(Op.ADD, BID, 1, 1, -1),
        d(Op.ADD, BID, 1.5, 1, 1),  # type: ignore[arg-type]
    ],
)
def test_unencodable_delta(delta: BookDelta) -> None:
    with pytest.raises(EncodeError):
        OrderBookModel().encode_delta(delta)


def test_decode_delta_of_bytes_raises_only_decode_error() -> None:
    """Found while specifying ORDERBOOK.md: bytes (not a memoryview) raised AttributeError."""
    model = OrderBookModel()
    with pytest.raises(DecodeError, match="2 bytes"):
        model.decode_delta(b"12")
    delta = BookDelta(Op.ADD, Side.BID, 10_050, 300, 0)
    assert model.decode_delta(model.encode_delta(delta)) == delta
