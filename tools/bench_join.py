#!/usr/bin/env python3
"""What a late joiner's subscriber spends installing order books (issue 12), old vs new.

    python3 tools/bench_join.py [--leaves 10000] [--levels 20] [--rounds 3]

A publisher engine (no sockets) records one snapshot cycle, and a little more, of
``--leaves`` books of ``--levels`` levels a side as datagrams; then, in CPU seconds
(``time.process_time``) with the garbage collector running as in any application:

* ``unpack``: the baseline, ``struct.iter_unpack`` of every level of every book, kept
  (the least any decoder must do); every other figure is also printed as a multiple of it;
* ``decode new`` / ``decode old``: :func:`grapevine.book.decode_book` of every snapshot,
  all kept, against the representation before issue 12 (``SortedDict`` of ``Level``
  objects, reproduced below as ``decode_legacy``);
* ``receive new`` / ``receive old``: ``SubscriberCore.receive`` of every recorded datagram
  until the replica is synced, with :class:`~grapevine.book.OrderBookModel` and with a
  model that decodes the old way: the whole install path of a joining subscriber.

The machine may be shared and noisy: the rows are interleaved, ``--rounds`` times, in one
process, and the summary gives each row's best round and its ratios (new / old, and to the
baseline), never one absolute figure alone. Every round checks that the replica equals the
publisher's books. Default sizes: about a minute on one core.
"""

from __future__ import annotations

import argparse
import gc
import struct
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from operator import lt, neg
from pathlib import Path
from typing import Any, TypeVar

from sortedcontainers import SortedDict

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from grapevine import DecodeError
from grapevine._publisher_core import PublisherConfig, PublisherCore
from grapevine._subscriber_core import SubscriberCore
from grapevine.book import BookDelta, OrderBook, OrderBookModel, decode_book, encode_book
from grapevine.testing import Market

_HEADER = struct.Struct("<BBIIqqQQ")
_LEVEL = struct.Struct("<qqIQ")
T = TypeVar("T")


# ------------------------------------------------------------------ the old representation


class LegacyLevel:
    """A level as ``grapevine.book`` held it before issue 12: one GC-tracked object each."""

    __slots__ = ("orders", "qty", "time_ns")

    def __init__(self, qty: int, orders: int, time_ns: int) -> None:
        self.qty = qty
        self.orders = orders
        self.time_ns = time_ns


class LegacyBook:
    """The fields of the old ``OrderBook``: two ``SortedDict`` of :class:`LegacyLevel`."""

    __slots__ = ("ask_keys", "asks", "bid_keys", "bids", "last_trade", "volume")

    def __init__(self) -> None:
        self.bids: SortedDict[int, LegacyLevel] = SortedDict()
        self.asks: SortedDict[int, LegacyLevel] = SortedDict()
        self.bid_keys = self.bids.keys()
        self.ask_keys = self.asks.keys()
        self.last_trade: tuple[int, int, int] | None = None
        self.volume = 0


def decode_legacy(payload: memoryview | bytes) -> LegacyBook:
    """``decode_book`` as it was before issue 12 (same checks, same objects built)."""
    mv = memoryview(payload).cast("B")
    version, flags, n_bids, n_asks, tp, tq, tt, volume = _HEADER.unpack_from(mv, 0)
    if version != 1 or flags & ~1 or len(mv) != _HEADER.size + _LEVEL.size * (n_bids + n_asks):
        raise DecodeError("bad book snapshot header", offset=0, field="book.header")
    book = LegacyBook()
    offset = _HEADER.size
    for levels, count, sign in ((book.bids, n_bids, -1), (book.asks, n_asks, 1)):
        if not count:
            continue
        end = offset + count * _LEVEL.size
        prices, qtys, orders, times = zip(*_LEVEL.iter_unpack(mv[offset:end]), strict=True)
        keys = list(map(neg, prices)) if sign < 0 else list(prices)
        if not all(map(lt, keys, keys[1:])) or min(qtys) <= 0 or min(orders) == 0:
            raise DecodeError("bad level", offset=offset, field="level")
        levels.update(zip(keys, map(LegacyLevel, qtys, orders, times), strict=True))
        offset = end
    if book.bids and book.asks and -book.bid_keys[0] >= book.ask_keys[0]:
        raise DecodeError("crossed", offset=_HEADER.size, field="level.price_ticks")
    if flags & 1:
        book.last_trade = (tp, tq, tt)
        book.volume = volume
    return book


def encode_legacy(book: LegacyBook) -> bytes:
    """The snapshot bytes of a :class:`LegacyBook` (to check the old path's replicas)."""
    trade = book.last_trade or (0, 0, 0)
    parts = [_HEADER.pack(1, book.last_trade is not None, len(book.bids), len(book.asks),
                          *trade, book.volume)]
    parts += [_LEVEL.pack(-k, lv.qty, lv.orders, lv.time_ns) for k, lv in book.bids.items()]
    parts += [_LEVEL.pack(k, lv.qty, lv.orders, lv.time_ns) for k, lv in book.asks.items()]
    return b"".join(parts)


class LegacyModel:
    """:class:`OrderBookModel` but for ``decode_leaf``, which decodes the old way."""

    def __init__(self) -> None:
        self._model = OrderBookModel()

    def new_leaf(self) -> Any:
        return self._model.new_leaf()

    def apply(self, leaf: Any, delta: BookDelta) -> Any:
        return self._model.apply(leaf, delta)

    def encode_delta(self, delta: BookDelta) -> bytes:
        return self._model.encode_delta(delta)

    def decode_delta(self, payload: memoryview) -> BookDelta:
        return self._model.decode_delta(payload)

    def encode_leaf(self, leaf: Any) -> bytes:
        return encode_legacy(leaf) if isinstance(leaf, LegacyBook) else encode_book(leaf)

    def decode_leaf(self, payload: memoryview) -> Any:
        return decode_legacy(payload)


# ------------------------------------------------------------------------ the recording


@dataclass
class Recording:
    """Snapshot payloads by leaf id, and the datagrams a joiner needs to sync from them."""

    payloads: dict[int, bytes]
    datagrams: list[bytes]


def record(leaves: int, levels: int, seed: int = 1) -> Recording:
    """Books from the demo's market, and the datagrams of their snapshot cycle: a publisher
    engine with an unbounded budget, run until two cycles are out, then trimmed to what a
    subscriber that hears the first one needs to be synced."""
    books = Market(leaves, seed=seed, levels=levels).copy_books()
    payloads = {leaf_id: encode_book(book) for leaf_id, book in books.items()}
    config = PublisherConfig(snapshot_bytes_per_s=1e12, min_cycle_s=0.0, touched_interval_s=0.0)
    pub = PublisherCore(OrderBookModel(), config, initial=books, session_id=7)
    del books
    datagrams: list[bytes] = []
    now = 1.0
    while pub.stats.cycles < 2:
        view = pub.next_datagram(now)
        if view is None:
            now += 0.001
        else:
            datagrams.append(bytes(view))
    sub = SubscriberCore(OrderBookModel())
    for index, datagram in enumerate(datagrams):
        sub.receive(datagram, now)
        if sub.synced:
            return Recording(payloads, datagrams[:index + 1])
    raise RuntimeError("a subscriber fed two whole snapshot cycles did not sync")


# ----------------------------------------------------------------------------- measures


def cpu_seconds(work: Callable[[], T]) -> tuple[float, T]:
    """CPU time of ``work()`` from a collected heap, the collector on, and its result (kept
    until the clock stops, as a replica keeps its leaves)."""
    gc.collect()
    start = time.process_time()
    kept = work()
    return time.process_time() - start, kept


def unpack_all(payloads: Sequence[bytes]) -> list[list[tuple[int, ...]]]:
    unpack = _LEVEL.iter_unpack
    return [list(unpack(memoryview(p)[_HEADER.size:])) for p in payloads]


def receive_all(model: Any, recording: Recording) -> SubscriberCore[Any, BookDelta]:
    """A subscriber core fed the recording, its updates drained as the runtime does."""
    sub: SubscriberCore[Any, BookDelta] = SubscriberCore(model)
    receive, updates = sub.receive, sub.updates
    for datagram in recording.datagrams:
        receive(datagram, 1.0)
        updates.clear()
    return sub


def check_replica(sub: SubscriberCore[Any, BookDelta], recording: Recording) -> None:
    """The synced replica holds every leaf, each encoding exactly as the publisher's."""
    if not sub.synced or len(sub.leaves) != len(recording.payloads):
        raise AssertionError(f"replica not synced: {len(sub.leaves)} of "
                             f"{len(recording.payloads)} leaves")
    encode = sub.model.encode_leaf
    for leaf_id, payload in recording.payloads.items():
        value = sub.leaves[leaf_id].value
        if encode(value) != payload or (isinstance(value, OrderBook)
                                        and value != decode_book(payload)):
            raise AssertionError(f"leaf {leaf_id} differs from the publisher's")


ROWS = ("unpack", "decode new", "decode old", "receive new", "receive old")


def run_round(recording: Recording) -> dict[str, float]:
    """One interleaved round: CPU seconds of every row."""
    payloads = list(recording.payloads.values())
    result: dict[str, float] = {}
    result["unpack"] = cpu_seconds(lambda: unpack_all(payloads))[0]
    result["decode new"] = cpu_seconds(lambda: [decode_book(p) for p in payloads])[0]
    result["decode old"] = cpu_seconds(lambda: [decode_legacy(p) for p in payloads])[0]
    models: tuple[tuple[str, Any], ...] = (("receive new", OrderBookModel()),
                                           ("receive old", LegacyModel()))
    for name, model in models:
        result[name], sub = cpu_seconds(lambda: receive_all(model, recording))  # noqa: B023 - run at once
        check_replica(sub, recording)  # untimed
        del sub
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--leaves", type=int, default=10_000)
    parser.add_argument("--levels", type=int, default=20, help="levels a side per book")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    recording = record(args.leaves, args.levels)
    size = sum(map(len, recording.payloads.values()))
    print(f"{args.leaves} books x {args.levels} levels a side ({size / 1e6:.1f} MB of "
          f"snapshots, {len(recording.datagrams)} datagrams to sync); CPU seconds, "
          f"collector on, Python {sys.version.split()[0]}")
    rounds: list[dict[str, float]] = []
    for number in range(1, args.rounds + 1):
        rounds.append(run_round(recording))
        print(f"  round {number}: " + ", ".join(f"{row} {rounds[-1][row]:.3f}" for row in ROWS))
    best = {row: min(r[row] for r in rounds) for row in ROWS}
    base = best["unpack"]
    print("best of the rounds:")
    for row in ROWS:
        per_leaf = best[row] / args.leaves * 1e6
        print(f"  {row:12} {best[row]:7.3f} s  {per_leaf:6.1f} us/book  "
              f"{best[row] / base:6.2f} x unpack")
    for what in ("decode", "receive"):
        ratios = [r[f"{what} new"] / r[f"{what} old"] for r in rounds]
        print(f"  {what} new / old: {best[f'{what} new'] / best[f'{what} old']:.3f} (best), "
              f"per round {', '.join(f'{x:.3f}' for x in ratios)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
