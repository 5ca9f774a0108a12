"""Seeded random operations on OrderBook against a plain dict-of-dicts model.

Each step applies a random delta (valid or not) to both, calls ``_check()`` and compares
every read. Invalid deltas must raise ValueError and leave the book unchanged.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # the venv may not have grapevine installed
    sys.path.insert(0, str(ROOT))

import grapevine.book  # noqa: E402
from grapevine.book import BookDelta, Op, OrderBook, OrderBookModel, Side, decode_book, encode_book  # noqa: E402

SEEDS = [0, 1, 2, 3, 17, 2024]
STEPS = 2500


class Model:
    """The obvious implementation: {side: {price: [qty, orders, time_ns]}}."""

    def __init__(self, allow_crossed: bool) -> None:
        self.allow_crossed = allow_crossed
        self.sides: dict[int, dict[int, list[int]]] = {0: {}, 1: {}}
        self.last_trade: tuple[int, int, int] | None = None
        self.volume = 0

    def apply(self, delta: BookDelta) -> bool:
        """Apply ``delta`` if valid; return whether it was."""
        op, side, price, qty, t = delta
        levels = self.sides[side]
        if op in (Op.ADD, Op.REDUCE, Op.REMOVE, Op.TRADE) and qty <= 0:
            return False
        if op == Op.ADD:
            level = levels.get(price)
            if level is None:
                bids, asks = self.sides[0], self.sides[1]
                if not self.allow_crossed and (
                    (side == 0 and asks and price >= min(asks))
                    or (side == 1 and bids and price <= max(bids))
                ):
                    return False
                levels[price] = [qty, 1, t]
            else:
                level[0] += qty
                level[1] += 1
                level[2] = t
        elif op in (Op.REDUCE, Op.REMOVE):
            level = levels.get(price)
            if level is None or level[0] < qty:
                return False
            level[0] -= qty
            level[2] = t
            if op == Op.REMOVE:
                level[1] -= 1
            if level[0] == 0 or level[1] == 0:
                del levels[price]
        elif op == Op.TRADE:
            self.last_trade = (price, qty, t)
            self.volume += qty
        elif op == Op.CLEAR_SIDE:
            levels.clear()
        else:
            self.sides[0].clear()
            self.sides[1].clear()
        return True

    def sorted_levels(self, side: int) -> list[tuple[int, int, int, int]]:
        levels = self.sides[side]
        prices = sorted(levels, reverse=(side == 0))
        return [(p, *levels[p]) for p in prices]  # type: ignore[misc]


def random_delta(rng: random.Random, model: Model, t: int) -> BookDelta:
    r = rng.random()
    side = Side(rng.randrange(2))
    if r < 0.45:
        op = Op.ADD
        # Bids mostly below 50 and asks mostly above, overlapping to exercise crossing.
        price = rng.randrange(20, 56) if side == 0 else rng.randrange(45, 81)
        qty = rng.randrange(1, 30) if rng.random() < 0.97 else rng.randrange(-2, 1)
    elif r < 0.9:
        op = Op.REMOVE if rng.random() < 0.5 else Op.REDUCE
        levels = model.sides[side]
        if levels and rng.random() < 0.9:
            price = rng.choice(list(levels))
            have = levels[price][0]
            qty = rng.randrange(1, have + 1) if rng.random() < 0.9 else have + rng.randrange(1, 3)
        else:
            price = rng.randrange(0, 100)
            qty = rng.randrange(0, 5)
    elif r < 0.97:
        op = Op.TRADE
        price = rng.randrange(0, 100)
        qty = rng.randrange(-1, 50)
    elif r < 0.99:
        op = Op.CLEAR_SIDE
        price = qty = 0
    else:
        op = Op.CLEAR_BOOK
        price = qty = 0
    return BookDelta(op, side, price, qty, t)


def compare(book: OrderBook, model: Model, rng: random.Random) -> None:
    book._check()
    bids = model.sorted_levels(0)
    asks = model.sorted_levels(1)
    assert list(book.iter_levels(Side.BID)) == bids
    assert list(book.iter_levels(Side.ASK)) == asks
    assert len(book) == len(bids) + len(asks)
    assert book.best_bid() == (bids[0][:2] if bids else None)
    assert book.best_ask() == (asks[0][:2] if asks else None)
    if bids and asks:
        assert book.spread() == asks[0][0] - bids[0][0]
        assert book.mid() == (asks[0][0] + bids[0][0]) / 2
        assert book.crossed == (bids[0][0] >= asks[0][0])
    else:
        assert book.spread() is None
        assert book.mid() is None
        assert not book.crossed
    n = rng.randrange(0, 12)
    assert book.depth(Side.BID, n) == [lv[:3] for lv in bids[:n]]
    assert book.depth(Side.ASK, n) == [lv[:3] for lv in asks[:n]]
    price = rng.randrange(0, 100)
    assert book.volume_at_or_better(Side.BID, price) == sum(q for p, q, _, _ in bids if p >= price)
    assert book.volume_at_or_better(Side.ASK, price) == sum(q for p, q, _, _ in asks if p <= price)
    for side in (Side.BID, Side.ASK):
        level = model.sides[side].get(price)
        assert book.level(side, price) == (tuple(level) if level else None)
    assert book.last_trade == model.last_trade
    assert book.traded_volume == model.volume


def run(seed: int, allow_crossed: bool) -> tuple[int, int]:
    rng = random.Random(seed)
    book = OrderBook(allow_crossed=allow_crossed)
    model = Model(allow_crossed)
    accepted = rejected = 0
    for step in range(STEPS):
        delta = random_delta(rng, model, t=step)
        before = book.checksum()
        if model.apply(delta):
            book.apply(delta)
            accepted += 1
        else:
            with pytest.raises(ValueError, match=r"^BookDelta\("):
                book.apply(delta)
            rejected += 1
            assert book.checksum() == before
        compare(book, model, rng)
        if step % 50 == 0:
            back = decode_book(encode_book(book), allow_crossed=allow_crossed)
            back._check()
            assert back == book
            assert back.checksum() == book.checksum()
            compare(back, model, random.Random(step))
    return accepted, rejected


@pytest.mark.parametrize("seed", SEEDS)
def test_random_ops_match_model(seed: int) -> None:
    accepted, rejected = run(seed, allow_crossed=False)
    # The generator must exercise both paths, or the test proves little.
    assert accepted > STEPS // 2
    assert rejected > STEPS // 50


@pytest.mark.parametrize("seed", SEEDS[:3])
def test_random_ops_match_model_crossed_allowed(seed: int) -> None:
    accepted, _ = run(seed, allow_crossed=True)
    assert accepted > STEPS // 2


@pytest.mark.parametrize("seed", SEEDS[:3])
def test_random_ops_with_sorted_list_keys(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Sides past a few levels keep their keys in a SortedList (deep books do, past 1,000):
    with the threshold at 3 the random ops switch sides between both forms all the time,
    and decoded books use both."""
    monkeypatch.setattr(grapevine.book, "_FLAT_MAX_LEVELS", 3)
    accepted, _ = run(seed, allow_crossed=seed % 2 == 1)
    assert accepted > STEPS // 2


@pytest.mark.parametrize("seed", SEEDS[:3])
def test_replica_through_wire_stays_equal(seed: int) -> None:
    """A publisher book and a replica fed the encoded deltas, resynced from snapshots."""
    rng = random.Random(seed)
    model = OrderBookModel()
    publisher = model.new_leaf()
    replica = model.new_leaf()
    ref = Model(allow_crossed=False)
    crossed_ever = False
    for step in range(STEPS):
        delta = random_delta(rng, ref, t=step)
        try:
            model.apply(publisher, delta)
        except ValueError:
            continue
        ref.apply(delta)
        wire = model.encode_delta(delta)
        assert len(wire) == 26
        replica = model.apply(replica, model.decode_delta(memoryview(wire)))
        replica._check()
        crossed_ever |= replica.crossed
        assert replica.checksum() == publisher.checksum()
        if rng.random() < 0.02:  # a late joiner starts from a snapshot
            replica = model.decode_leaf(memoryview(model.encode_leaf(publisher)))
            assert replica == publisher
    assert replica == publisher
    assert not crossed_ever
    assert len(publisher) > 0


@pytest.mark.parametrize("seed", SEEDS)
def test_random_snapshot_round_trips(seed: int) -> None:
    """Random books of random depth (including deep, extreme and crossed) round-trip."""
    rng = random.Random(seed)
    for _ in range(40):
        book = OrderBook(allow_crossed=True)
        big = rng.random() < 0.3
        for _ in range(rng.randrange(0, 300)):
            price = rng.randrange(-(1 << 63), 1 << 63) if big else rng.randrange(-1000, 1000)
            qty = rng.randrange(1, 1 << 40)
            book.apply(
                BookDelta(Op.ADD, Side(rng.randrange(2)), price, qty, rng.randrange(1 << 64))
            )
        if rng.random() < 0.5:
            book.apply(BookDelta(Op.TRADE, Side.ASK, rng.randrange(-5, 5), rng.randrange(1, 9), 1))
        book._check()
        data = encode_book(book)
        assert len(data) == 42 + 28 * len(book)
        back = decode_book(memoryview(data), allow_crossed=True)
        back._check()
        assert back == book
        assert encode_book(back) == data
        assert back.checksum() == book.checksum()
        copy = book.copy()
        copy._check()
        assert copy == book
