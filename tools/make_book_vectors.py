#!/usr/bin/env python3
"""Generate the order-book test vectors in ``protocol/vectors/orderbook/`` (one JSON file each).

They pin down the order-book profile, protocol/ORDERBOOK.md: the 26-byte delta payload, the
book (snapshot) payload and its checksum, as :mod:`grapevine.book` implements them.

* ``book_*``: book payloads. Valid ones are packed here from hand-written field values
  (``struct``, not :func:`~grapevine.book.encode_book`) and then checked: they decode to those
  values, re-encode to the same bytes and their ``checksum`` is BLAKE2b-64 computed here with
  ``hashlib`` and by :meth:`OrderBook.checksum`. Invalid ones record the
  :class:`~grapevine.DecodeError` :func:`~grapevine.book.decode_book` raises (``field``,
  ``offset`` in the payload, ``reason_contains``). ``allow_crossed`` says how they are decoded.
* ``delta_*``: delta payloads, decoded by :meth:`OrderBookModel.decode_delta`; the same
  ``fields`` / ``error`` convention.
* ``sequence``: deltas applied one by one to an empty book (the rejected ones leave it
  unchanged), with the book's encoding and checksum after each step.
* ``stream``: the accepted deltas of ``sequence`` carried as Grapevine datagrams, followed by
  a snapshot cycle of two books (the second one fragmented over three datagrams), with each
  leaf's checksum after every message.

Everything is deterministic: re-running this script reproduces the files byte for byte
(``tests/test_orderbook_spec.py`` checks it).

Usage: ``python tools/make_book_vectors.py [--check]`` from a checkout.
"""

from __future__ import annotations

import hashlib
import struct
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# The shared command line lives beside this script (also when a test loads it by path).
if str(ROOT / "tools") not in sys.path:
    sys.path.insert(0, str(ROOT / "tools"))
from _vector_files import render, write_or_check  # noqa: E402

from grapevine import codec, wire  # noqa: E402
from grapevine._errors import DecodeError  # noqa: E402
from grapevine.book import (  # noqa: E402
    Op,
    OrderBook,
    OrderBookModel,
    Side,
    decode_book,
    encode_book,
)
from grapevine.codec import DatagramBuilder, Snapshot  # noqa: E402
from grapevine.wire import DeltaFlag, SnapshotFlag  # noqa: E402

VECTOR_DIR = ROOT / "protocol" / "vectors" / "orderbook"

# The layouts of protocol/ORDERBOOK.md, written out here rather than taken from book.py so
# that the vectors check the implementation instead of repeating it.
HEADER = struct.Struct("<BBIIqqQQ")
LEVEL = struct.Struct("<qqIQ")
DELTA = struct.Struct("<BBqqQ")
CHECKSUM_SIZE = 8

I64_MIN = -(1 << 63)
I64_MAX = (1 << 63) - 1
U32_MAX = (1 << 32) - 1
U64_MAX = (1 << 64) - 1

# The same identity as protocol/vectors (SPEC section 14).
STREAM_ID = 7
SESSION_ID = 0x5EED_CAFE_0000_0001
SEND_TIME_NS = 1_767_225_600_000_000_000  # 2026-01-01T00:00:00Z
T0 = SEND_TIME_NS  # the time_ns of the first delta of the sequence

Level = tuple[int, int, int, int]  # price_ticks, quantity, orders, time_ns
Trade = tuple[int, int, int, int]  # last_trade_price, last_trade_qty, last_trade_time_ns, volume


# --------------------------------------------------------------------------- packing


def pack_book(bids: Sequence[Level], asks: Sequence[Level], trade: Trade | None = None, *,
              version: int = 1, flags: int | None = None, n_bids: int | None = None,
              n_asks: int | None = None) -> bytes:
    """A book payload from field values; the keyword arguments override what they imply."""
    if flags is None:
        flags = 0 if trade is None else 1
    tp, tq, tt, volume = (0, 0, 0, 0) if trade is None else trade
    header = HEADER.pack(version, flags, len(bids) if n_bids is None else n_bids,
                         len(asks) if n_asks is None else n_asks, tp, tq, tt, volume)
    return header + b"".join(LEVEL.pack(*level) for level in (*bids, *asks))


def book_fields(payload: bytes) -> dict[str, Any]:
    """The fields of a book payload, read with the layouts above (never with book.py)."""
    version, flags, n_bids, n_asks, tp, tq, tt, volume = HEADER.unpack_from(payload, 0)
    levels = [dict(zip(("price_ticks", "quantity", "orders", "time_ns"), level, strict=True))
              for level in LEVEL.iter_unpack(payload[HEADER.size:])]
    return {"version": version, "flags": flags, "n_bids": n_bids, "n_asks": n_asks,
            "last_trade_price": tp, "last_trade_qty": tq, "last_trade_time_ns": tt,
            "traded_volume": volume, "bids": levels[:n_bids], "asks": levels[n_bids:]}


def decoded_fields(book: OrderBook) -> dict[str, Any]:
    """The fields of a decoded :class:`OrderBook`, through its public reads."""
    trade = book.last_trade
    bids = [dict(zip(("price_ticks", "quantity", "orders", "time_ns"), level, strict=True))
            for level in book.iter_levels(Side.BID)]
    asks = [dict(zip(("price_ticks", "quantity", "orders", "time_ns"), level, strict=True))
            for level in book.iter_levels(Side.ASK)]
    tp, tq, tt = (0, 0, 0) if trade is None else trade
    return {"version": 1, "flags": 0 if trade is None else 1, "n_bids": len(bids),
            "n_asks": len(asks), "last_trade_price": tp, "last_trade_qty": tq,
            "last_trade_time_ns": tt, "traded_volume": book.traded_volume, "bids": bids,
            "asks": asks}


def checksum(payload: bytes) -> int:
    """ORDERBOOK.md's checksum, computed here without grapevine.book."""
    digest = hashlib.blake2b(payload, digest_size=CHECKSUM_SIZE).digest()
    return int.from_bytes(digest, "little")


def pack_delta(op: int, side: int, price: int, qty: int, time_ns: int) -> bytes:
    return DELTA.pack(op, side, price, qty, time_ns)


def delta_fields(payload: bytes) -> dict[str, Any]:
    op, side, price, qty, time_ns = DELTA.unpack(payload)
    return {"op": op, "op_name": Op(op).name, "side": side, "side_name": Side(side).name,
            "price_ticks": price, "quantity": qty, "time_ns": time_ns}


# --------------------------------------------------------------------------- collecting


class Vectors:
    """Collects vectors in order and checks each one against grapevine.book as it is added."""

    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []

    def book(self, name: str, description: str, payload: bytes, *,
             allow_crossed: bool = False) -> None:
        book = decode_book(payload, allow_crossed=allow_crossed)
        fields = book_fields(payload)
        if decoded_fields(book) != fields:
            raise AssertionError(f"{name}: decode_book gives {decoded_fields(book)}")
        if encode_book(book) != payload:
            raise AssertionError(f"{name}: encode_book does not give the payload back")
        value = checksum(payload)
        if book.checksum() != value:
            raise AssertionError(f"{name}: OrderBook.checksum() is {book.checksum():#x}")
        self._add({"name": name, "description": description, "kind": "book", "valid": True,
                   "allow_crossed": allow_crossed, "size": len(payload), "hex": payload.hex(),
                   "fields": fields, "checksum": value,
                   "digest_hex": value.to_bytes(CHECKSUM_SIZE, "little").hex()})

    def bad_book(self, name: str, description: str, payload: bytes, *, field: str, offset: int,
                 reason: str, allow_crossed: bool = False) -> None:
        try:
            decode_book(payload, allow_crossed=allow_crossed)
        except DecodeError as exc:
            _expect(name, exc, field, offset, reason)
        else:
            raise AssertionError(f"{name}: decode_book accepted it")
        self._add({"name": name, "description": description, "kind": "book", "valid": False,
                   "allow_crossed": allow_crossed, "size": len(payload), "hex": payload.hex(),
                   "error": {"field": field, "offset": offset, "reason_contains": reason}})

    def delta(self, name: str, description: str, payload: bytes) -> None:
        got = OrderBookModel().decode_delta(memoryview(payload))
        fields = delta_fields(payload)
        if list(got) != [fields[k] for k in ("op", "side", "price_ticks", "quantity",
                                             "time_ns")]:
            raise AssertionError(f"{name}: decode_delta gives {got}")
        if OrderBookModel().encode_delta(got) != payload:
            raise AssertionError(f"{name}: encode_delta does not give the payload back")
        self._add({"name": name, "description": description, "kind": "delta", "valid": True,
                   "size": len(payload), "hex": payload.hex(), "fields": fields})

    def bad_delta(self, name: str, description: str, payload: bytes, *, field: str,
                  offset: int, reason: str) -> None:
        try:
            OrderBookModel().decode_delta(memoryview(payload))
        except DecodeError as exc:
            _expect(name, exc, field, offset, reason)
        else:
            raise AssertionError(f"{name}: decode_delta accepted it")
        self._add({"name": name, "description": description, "kind": "delta", "valid": False,
                   "size": len(payload), "hex": payload.hex(),
                   "error": {"field": field, "offset": offset, "reason_contains": reason}})

    def add(self, item: dict[str, Any]) -> None:
        self._add(item)

    def _add(self, item: dict[str, Any]) -> None:
        if any(i["name"] == item["name"] for i in self.items):
            raise AssertionError(f"duplicate vector {item['name']}")
        self.items.append(item)


def _expect(name: str, exc: DecodeError, field: str, offset: int, reason: str) -> None:
    if (exc.field, exc.offset) != (field, offset) or reason not in exc.reason:
        raise AssertionError(f"{name}: {exc.field!r}@{exc.offset}: {exc.reason}")


# --------------------------------------------------------------------------- book payloads


def add_books(v: Vectors) -> None:
    t = T0
    two_bids = [(10_050, 500, 2, t + 2), (10_049, 100, 1, t + 3)]
    three_asks = [(10_052, 100, 1, t + 4), (10_053, 400, 1, t + 5), (10_060, 7, 3, t + 9)]
    hdr = HEADER.size
    lvl = LEVEL.size

    v.book("book_empty", "A book with no levels and no trade: the 42-byte header alone (what "
           "a CREATE applies its first delta to).", pack_book([], []))
    v.book("book_two_sided", "Two bid levels (best first: 10050 then 10049) and three ask "
           "levels (best first: 10052, 10053, 10060); no trade recorded.",
           pack_book(two_bids, three_asks))
    v.book("book_with_trade", "The two-sided book with a trade recorded: flags bit 0 (TRADE), "
           "last trade 25 at 10052, traded volume 125.",
           pack_book(two_bids, three_asks, (10_052, 25, t + 8, 125)))
    v.book("book_bids_only", "Bids only (n_asks 0): a one-sided book is never crossed.",
           pack_book(two_bids, []))
    v.book("book_asks_only", "Asks only (n_bids 0).", pack_book([], three_asks))
    v.book("book_extremes", "Extreme values: negative prices, i64 minimum and maximum prices, "
           "the largest quantity (2^63 - 1), order count (2^32 - 1) and time_ns (2^64 - 1); a "
           "trade at the i64 minimum price with traded volume 2^64 - 1.",
           pack_book([(-1, I64_MAX, U32_MAX, U64_MAX), (I64_MIN, 1, 1, 0)],
                     [(0, 1, 1, 0), (I64_MAX, I64_MAX, U32_MAX, U64_MAX)],
                     (I64_MIN, I64_MAX, U64_MAX, U64_MAX)))
    v.book("book_trade_without_levels", "No levels, but a trade recorded (CLEAR_BOOK keeps "
           "the trade state): last trade 1 at -3, traded volume 1.",
           pack_book([], [], (-3, 1, t, 1)))
    crossed = pack_book([(101, 5, 1, t)], [(100, 5, 1, t)])
    v.book("book_crossed_allowed", "A crossed book (best bid 101 above best ask 100), valid "
           "only where both ends allow crossed books (allow_crossed).", crossed,
           allow_crossed=True)

    # ---------------------------------------------------------------- invalid: framing
    v.bad_book("book_payload_empty", "An empty payload.", b"", field="book.header", offset=0,
               reason="shorter than its 42-byte header")
    v.bad_book("book_header_truncated", "41 bytes: one byte short of the header.",
               pack_book([], [])[:-1], field="book.header", offset=0,
               reason="41 bytes, shorter than its 42-byte header")
    v.bad_book("book_version_zero", "version 0 (only 1 is defined).",
               pack_book(two_bids, three_asks, version=0), field="version", offset=0,
               reason="unknown book snapshot version 0")
    v.bad_book("book_version_two", "version 2.", pack_book([], [], version=2), field="version",
               offset=0, reason="unknown book snapshot version 2")
    v.bad_book("book_reserved_flags", "flags 0x02: a reserved bit is set (only bit 0 is "
               "defined, and unlike Grapevine's own flags, reserved bits are rejected).",
               pack_book([], [], flags=0x02), field="flags", offset=1,
               reason="unknown book snapshot flags 0x02")
    v.bad_book("book_extra_level", "n_bids 1 but two bid levels follow: 98 bytes where the "
               "counts need 70.", pack_book(two_bids, [], n_bids=1), field="n_bids", offset=2,
               reason="need 70")
    v.bad_book("book_missing_level", "n_asks 3 but two ask levels follow.",
               pack_book([], three_asks[:2], n_asks=3), field="n_bids", offset=2,
               reason="need 126")
    v.bad_book("book_partial_level", "One bid level cut to 27 bytes.",
               pack_book(two_bids[:1], [])[:-1], field="n_bids", offset=2, reason="need 70")
    v.bad_book("book_counts_overflow", "n_bids and n_asks both 2^32 - 1 and no levels: the "
               "length they need, 42 + 28 x (2^33 - 2) bytes, must be computed in at least 64 "
               "bits.", pack_book([], [], n_bids=U32_MAX, n_asks=U32_MAX), field="n_bids",
               offset=2, reason=f"need {hdr + lvl * 2 * U32_MAX}")
    v.bad_book("book_count_wraps_32_bits", "n_bids 2^30 and a 42-byte payload: 28 x 2^30 is "
               "7 x 2^32, so a port computing the length in 32 bits would need 42 bytes and "
               "accept it.", pack_book([], [], n_bids=1 << 30), field="n_bids", offset=2,
               reason=f"need {hdr + lvl * (1 << 30)}")
    v.bad_book("book_count_sum_wraps_32_bits", "n_bids and n_asks both 2^31 and a 42-byte "
               "payload: their sum wraps to 0 in 32 bits.",
               pack_book([], [], n_bids=1 << 31, n_asks=1 << 31), field="n_bids", offset=2,
               reason=f"need {hdr + lvl * (1 << 32)}")

    # ---------------------------------------------------------------- invalid: trade state
    v.bad_book("book_trade_qty_zero", "TRADE flag set with last_trade_qty 0.",
               pack_book(two_bids, [], (10_050, 0, t, 10)), field="last_trade_qty", offset=18,
               reason="last_trade_qty 0 must be in 1..traded_volume (10)")
    v.bad_book("book_trade_qty_negative", "TRADE flag set with last_trade_qty -1.",
               pack_book([], [], (10_050, -1, t, 10)), field="last_trade_qty", offset=18,
               reason="last_trade_qty -1 must be in 1..traded_volume")
    v.bad_book("book_trade_qty_above_volume", "TRADE flag set with last_trade_qty 11 above "
               "traded_volume 10.", pack_book([], [], (10_050, 11, t, 10)),
               field="last_trade_qty", offset=18, reason="must be in 1..traded_volume (10)")
    v.bad_book("book_volume_without_trade", "No TRADE flag but traded_volume 5: the four "
               "trade fields must all be 0.",
               pack_book([], [], (0, 0, 0, 5), flags=0), field="last_trade", offset=10,
               reason="trade fields must be 0")
    v.bad_book("book_trade_time_without_trade", "No TRADE flag but last_trade_time_ns set.",
               pack_book(two_bids, three_asks, (0, 0, t, 0), flags=0), field="last_trade",
               offset=10, reason="trade fields must be 0")

    # ---------------------------------------------------------------- invalid: levels
    first = hdr  # the first level
    v.bad_book("book_bids_ascending", "Bids 10049 then 10050: bids must be strictly "
               "descending (best first).", pack_book(two_bids[::-1], []),
               field="level.price_ticks", offset=first + lvl,
               reason="level price 10050 is not strictly after the previous level's 10049")
    v.bad_book("book_bids_equal_prices", "Two bid levels at 10050: prices are strictly "
               "monotonic, a price appears once per side.",
               pack_book([two_bids[0], (10_050, 1, 1, t)], []), field="level.price_ticks",
               offset=first + lvl, reason="not strictly after")
    v.bad_book("book_asks_descending", "Asks 10052, 10060, 10053: the third ask is below the "
               "second.", pack_book(two_bids, [three_asks[0], three_asks[2], three_asks[1]]),
               field="level.price_ticks", offset=first + 4 * lvl,
               reason="level price 10053 is not strictly after the previous level's 10060")
    v.bad_book("book_level_quantity_zero", "The second bid level has quantity 0.",
               pack_book([two_bids[0], (10_049, 0, 1, t)], three_asks), field="level.quantity",
               offset=first + lvl + 8, reason="level quantity 0 must be positive")
    v.bad_book("book_level_quantity_negative", "The first ask level has quantity -7.",
               pack_book(two_bids, [(10_052, -7, 1, t), *three_asks[1:]]),
               field="level.quantity", offset=first + 2 * lvl + 8,
               reason="level quantity -7 must be positive")
    v.bad_book("book_level_orders_zero", "The third ask level has order count 0.",
               pack_book(two_bids, [*three_asks[:2], (10_060, 7, 0, t)]),
               field="level.orders", offset=first + 4 * lvl + 16,
               reason="level order count is 0")
    v.bad_book("book_order_checked_before_quantity", "Two faults on the bid side: level 0 has "
               "quantity 0 and level 2 is out of order. A side's price order is checked over "
               "all its levels before any quantity: the price is reported.",
               pack_book([(10_050, 0, 1, t), (10_049, 1, 1, t), (10_051, 1, 1, t)], []),
               field="level.price_ticks", offset=first + 2 * lvl, reason="not strictly after")
    v.bad_book("book_quantity_checked_before_orders", "Level 0 has order count 0, level 1 "
               "quantity 0: every quantity of a side is checked before any order count.",
               pack_book([(10_050, 5, 0, t), (10_049, 0, 1, t)], []), field="level.quantity",
               offset=first + lvl + 8, reason="level quantity 0")
    v.bad_book("book_bids_checked_before_asks", "The asks are out of order and a bid has "
               "order count 0: the bid side is checked completely before the ask side.",
               pack_book([(10_050, 5, 0, t)], [three_asks[1], three_asks[0]]),
               field="level.orders", offset=first + 16, reason="level order count is 0")
    v.bad_book("book_crossed", "Best bid 101 above best ask 100 (the payload of "
               "book_crossed_allowed), decoded without allow_crossed.", crossed,
               field="level.price_ticks", offset=first,
               reason="crossed (best bid >= best ask)")
    v.bad_book("book_locked", "Best bid equal to best ask (100): a locked book counts as "
               "crossed.", pack_book([(100, 5, 1, t)], [(100, 5, 1, t), (101, 1, 1, t)]),
               field="level.price_ticks", offset=first, reason="crossed")
    v.bad_book("book_crossed_after_level_checks", "Crossed, and the ask side is out of "
               "order: crossing is checked last, after both sides.",
               pack_book([(101, 5, 1, t)], [(100, 5, 1, t), (99, 1, 1, t)]),
               field="level.price_ticks", offset=first + 2 * lvl, reason="not strictly after")


# --------------------------------------------------------------------------- delta payloads


def add_deltas(v: Vectors) -> None:
    t = T0
    v.delta("delta_add", "ADD a bid order of 300 at 10050.",
            pack_delta(Op.ADD, Side.BID, 10_050, 300, t))
    v.delta("delta_reduce", "REDUCE the ask level at 10053 by 150 (an order partly filled or "
            "modified down).", pack_delta(Op.REDUCE, Side.ASK, 10_053, 150, t + 1))
    v.delta("delta_remove", "REMOVE an order of 100 from the bid level at 10049.",
            pack_delta(Op.REMOVE, Side.BID, 10_049, 100, t + 2))
    v.delta("delta_clear_side", "CLEAR_SIDE of the asks; price and quantity unused (0).",
            pack_delta(Op.CLEAR_SIDE, Side.ASK, 0, 0, t + 3))
    v.delta("delta_clear_book", "CLEAR_BOOK; side, price and quantity unused (0).",
            pack_delta(Op.CLEAR_BOOK, Side.BID, 0, 0, t + 4))
    v.delta("delta_trade", "TRADE 25 at 10052 (side 1, ASK: the side is not used by TRADE).",
            pack_delta(Op.TRADE, Side.ASK, 10_052, 25, t + 5))
    v.delta("delta_extremes", "ADD with a negative price at the i64 minimum, the largest "
            "quantity and the largest time_ns.",
            pack_delta(Op.ADD, Side.ASK, I64_MIN, I64_MAX, U64_MAX))
    v.delta("delta_unused_fields_set", "CLEAR_BOOK with price, quantity and time_ns set: "
            "unused fields SHOULD be 0 but are not checked.",
            pack_delta(Op.CLEAR_BOOK, Side.ASK, 12_345, -6, 99))
    v.delta("delta_nonpositive_quantity", "ADD with quantity 0 decodes (the payload is well "
            "formed); applying it is rejected (sequence step 14).",
            pack_delta(Op.ADD, Side.BID, 10_049, 0, t))

    good = pack_delta(Op.ADD, Side.BID, 10_050, 300, t)
    v.bad_delta("delta_empty", "An empty payload: a book delta is exactly 26 bytes (only a "
                "DELETE, which is never decoded, has an empty payload).", b"",
                field="book_delta", offset=0, reason="0 bytes, not 26")
    v.bad_delta("delta_too_short", "25 bytes.", good[:-1], field="book_delta", offset=0,
                reason="25 bytes, not 26")
    v.bad_delta("delta_too_long", "27 bytes.", good + b"\x00", field="book_delta", offset=0,
                reason="27 bytes, not 26")
    v.bad_delta("delta_op_zero", "op 0: zeroed bytes are never a valid delta.",
                bytes(DELTA.size), field="op", offset=0, reason="unknown book delta op 0")
    v.bad_delta("delta_op_unknown", "op 7 (ops are 1 to 6).",
                pack_delta(7, Side.BID, 10_050, 300, t), field="op", offset=0,
                reason="unknown book delta op 7")
    v.bad_delta("delta_side_unknown", "side 2 (sides are 0 BID and 1 ASK).",
                pack_delta(Op.ADD, 2, 10_050, 300, t), field="side", offset=1,
                reason="unknown book side 2")
    v.bad_delta("delta_op_checked_before_side", "op 0 and side 255: the op is reported.",
                pack_delta(0, 255, 0, 0, 0), field="op", offset=0,
                reason="unknown book delta op 0")


# --------------------------------------------------------------------------- the sequence

# (op, side, price_ticks, quantity, note); time_ns is T0 + step. A note starting with
# "rejected:" is a delta OrderBook.apply rejects; the text after it is in its ValueError.
SEQUENCE: list[tuple[Op, Side, int, int, str]] = [
    (Op.ADD, Side.BID, 10_050, 300, "creates the bid level 10050 (1 order)"),
    (Op.ADD, Side.BID, 10_050, 200, "a second order at 10050: 500, 2 orders"),
    (Op.ADD, Side.BID, 10_049, 100, "a new bid level below the best"),
    (Op.ADD, Side.ASK, 10_052, 100, "the first ask level"),
    (Op.ADD, Side.ASK, 10_053, 400, "a second ask level"),
    (Op.ADD, Side.BID, 10_052, 50, "rejected: would cross best ask"),
    (Op.REDUCE, Side.BID, 10_050, 100, "10050 down to 400, still 2 orders"),
    (Op.TRADE, Side.ASK, 10_052, 100, "a trade print: last trade 100 at 10052, volume 100"),
    (Op.REMOVE, Side.ASK, 10_052, 100, "the ask level's only order leaves: level gone"),
    (Op.REMOVE, Side.BID, 10_050, 150, "an order of 150 leaves 10050: 250, 1 order"),
    (Op.REMOVE, Side.BID, 10_050, 50, "the last order leaves: level gone although 200 remain"),
    (Op.REDUCE, Side.ASK, 10_053, 500, "rejected: exceeds the level's quantity"),
    (Op.REDUCE, Side.ASK, 10_060, 1, "rejected: no ASK level at 10060"),
    (Op.ADD, Side.BID, 10_049, 0, "rejected: ADD quantity must be positive"),
    (Op.TRADE, Side.BID, 10_049, 25, "a second trade: last trade 25 at 10049, volume 125"),
    (Op.CLEAR_SIDE, Side.ASK, 0, 0, "every ask level removed"),
    (Op.ADD, Side.ASK, 10_049, 10, "rejected: would cross best bid"),
    (Op.ADD, Side.ASK, 10_051, 10, "a new best ask"),
    (Op.CLEAR_BOOK, Side.BID, 0, 0, "every level removed; the trade state stays"),
    (Op.ADD, Side.ASK, -5, 1, "prices are signed: an ask at -5"),
]


def run_sequence() -> list[dict[str, Any]]:
    """Each step of SEQUENCE applied to an empty book, checked against grapevine.book."""
    book = OrderBook()
    steps = []
    for number, (op, side, price, qty, note) in enumerate(SEQUENCE, 1):
        payload = pack_delta(op, side, price, qty, T0 + number)
        delta = OrderBookModel().decode_delta(memoryview(payload))
        before = encode_book(book)
        step: dict[str, Any] = {"step": number, "note": note, "delta_hex": payload.hex(),
                                "delta": delta_fields(payload)}
        try:
            book.apply(delta)
        except ValueError as exc:
            reason = note.removeprefix("rejected: ")
            if not note.startswith("rejected: ") or reason not in str(exc):
                raise AssertionError(f"step {number} rejected: {exc}") from None
            if encode_book(book) != before:
                raise AssertionError(f"step {number}: a rejected delta changed the "
                                     "book") from None
            step.update(accepted=False, reason_contains=reason)
        else:
            if note.startswith("rejected: "):
                raise AssertionError(f"step {number} was accepted")
            step["accepted"] = True
        after = encode_book(book)
        value = checksum(after)
        if book.checksum() != value:
            raise AssertionError(f"step {number}: OrderBook.checksum() disagrees")
        step.update(book_hex=after.hex(), checksum=value,
                    digest_hex=value.to_bytes(CHECKSUM_SIZE, "little").hex())
        steps.append(step)
    return steps


def add_sequence(v: Vectors, steps: list[dict[str, Any]]) -> None:
    empty = pack_book([], [])
    v.add({"name": "sequence", "kind": "sequence",
           "description": "Deltas applied one by one to an empty book (allow_crossed false). "
           "Each step gives the delta (hex and fields), whether apply accepts it (a rejected "
           "delta leaves the book unchanged; reason_contains is in its error), and the book's "
           "encoding and checksum after the step.",
           "allow_crossed": False,
           "initial": {"hex": empty.hex(), "checksum": checksum(empty)},
           "steps": steps})


# --------------------------------------------------------------------------- the stream


def deep_book() -> bytes:
    """Leaf 2's book: 60 levels a side, too large for one 1400-byte datagram."""
    t = T0 - 1_000_000_000
    bids = [(9_990 - 2 * i, 10 * (i + 1), 1 + i % 4, t + i) for i in range(60)]
    asks = [(10_010 + 3 * i, 5 * (i + 2), 1 + i % 3, t + 100 + i) for i in range(60)]
    return pack_book(bids, asks, (10_000, 40, t + 500, 1_040))


def build_stream(steps: list[dict[str, Any]]) -> dict[str, Any]:
    """The accepted deltas of the sequence as DELTAs of leaf 1, then a snapshot cycle."""
    model = OrderBookModel()
    leaf1: OrderBook | None = None
    deep = deep_book()
    leaves: dict[int, OrderBook] = {2: decode_book(deep)}
    accepted = [s for s in steps if s["accepted"]]
    datagrams: list[dict[str, Any]] = []
    sequence = 1
    send_time = SEND_TIME_NS
    # Three deltas a datagram: enough to show the implicit seq of each.
    for start in range(0, len(accepted), 3):
        builder = DatagramBuilder(STREAM_ID, SESSION_ID, wire.DEFAULT_DATAGRAM_SIZE)
        builder.start(sequence)
        messages = []
        for offset, step in enumerate(accepted[start : start + 3]):
            seq = sequence + offset
            payload = bytes.fromhex(step["delta_hex"])
            flags = int(DeltaFlag.CREATE) if leaf1 is None else 0
            if not builder.add_delta(1, seq, flags, payload):
                raise AssertionError("a delta does not fit")
            leaf1 = model.apply(model.new_leaf() if leaf1 is None else leaf1,
                                model.decode_delta(memoryview(payload)))
            if leaf1.checksum() != step["checksum"]:
                raise AssertionError(f"stream seq {seq}: leaf 1 differs from the sequence")
            messages.append({"kind": "DELTA", "seq": seq, "leaf_id": 1, "leaf_seq": seq,
                             "flags": flags, "step": step["step"],
                             "checksum": leaf1.checksum()})
        sequence += len(messages)
        datagrams.append(_finish(builder, send_time, messages))
        send_time += 1_000_000
    assert leaf1 is not None
    leaves[1] = leaf1
    leaf_seqs = {1: sequence - 1, 2: 0}
    # The cycle: leaf 1 (position 0), then leaf 2 (position 1, LAST) in fragments.
    encodings = {leaf_id: encode_book(book) for leaf_id, book in leaves.items()}
    pending = [(1, 0), (2, 0)]  # (leaf_id, next fragment offset)
    while pending:
        builder = DatagramBuilder(STREAM_ID, SESSION_ID, wire.DEFAULT_DATAGRAM_SIZE)
        builder.start(sequence)
        messages = []
        while pending:
            leaf_id, offset = pending[0]
            whole = encodings[leaf_id]
            room = builder.room - codec.SNAPSHOT_OVERHEAD
            if room <= 0:
                break
            piece = whole[offset : offset + room]
            last = leaf_id == 2
            snap = Snapshot(leaf_id, 0 if leaf_id == 1 else 2, 1, leaf_id - 1, 2,
                            leaf_seqs[leaf_id], sequence, len(whole), offset,
                            int(SnapshotFlag.LAST) if last else 0, piece)
            if not builder.add_snapshot(snap):
                raise AssertionError("a fragment does not fit")
            end = offset + len(piece)
            complete = end == len(whole)
            message: dict[str, Any] = {"kind": "SNAPSHOT", "leaf_id": leaf_id,
                                       "leaf_seq": leaf_seqs[leaf_id],
                                       "fragment_offset": offset, "payload_length": len(piece),
                                       "total_length": len(whole), "complete": complete}
            if complete:
                message["checksum"] = checksum(whole)
                pending.pop(0)
            else:
                pending[0] = (leaf_id, end)
            messages.append(message)
        datagrams.append(_finish(builder, send_time, messages))
        send_time += 1_000_000
    return {
        "name": "stream", "kind": "stream",
        "description": "The accepted deltas of the sequence vector as a Grapevine session "
        "(stream 7, session 0x5EEDCAFE00000001): DELTAs of leaf 1, three a datagram, the first "
        "with CREATE. Then one snapshot cycle as of the next sequence: leaf 1 (position 0 of "
        "2) and leaf 2 (position 1 of 2, LAST, leaf_seq 0: it existed from the start), whose "
        "3402-byte book is fragmented over three 1400-byte datagrams. Each message lists the "
        "checksum of its leaf after it (DELTA) or of the reassembled book (the SNAPSHOT "
        "fragment that completes it).",
        "datagrams": datagrams,
        "final": {str(leaf_id): {"hex": encodings[leaf_id].hex(),
                                 "checksum": checksum(encodings[leaf_id])}
                  for leaf_id in sorted(encodings)},
    }


def _finish(builder: DatagramBuilder, send_time: int,
            messages: list[dict[str, Any]]) -> dict[str, Any]:
    data = bytes(builder.finish(send_time))
    decoded = codec.decode_datagram(data)
    if codec.comparable(codec.decode_with_construct(data)) != codec.comparable(decoded):
        raise AssertionError("the two decoders disagree on a stream datagram")
    return {"hex": data.hex(), "size": len(data), "messages": messages}


# --------------------------------------------------------------------------- files


def build() -> list[dict[str, Any]]:
    """Every vector, in a fixed order."""
    v = Vectors()
    add_books(v)
    add_deltas(v)
    steps = run_sequence()
    add_sequence(v, steps)
    v.add(build_stream(steps))
    return v.items



def expected_files() -> dict[str, str]:
    """File name -> content, for every vector."""
    return {f"{item['name']}.json": render(item) for item in build()}


def main(argv: list[str] | None = None) -> int:
    return write_or_check(__doc__.split("\n\n")[0], VECTOR_DIR, expected_files, argv)


if __name__ == "__main__":
    sys.exit(main())
