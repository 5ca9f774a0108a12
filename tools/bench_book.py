#!/usr/bin/env python3
"""Benchmark grapevine.book: ``python tools/bench_book.py`` from the repository root.

The machine may be shared and noisy, so every figure is the best of several repeats
(``time.perf_counter_ns``, garbage collector off while timing) and is also printed as a
ratio against a baseline measured in the same run:

* ``x dict``: the same delta sequence applied to a plain dict-of-dicts book
  (``{side: {price: [qty, orders, time_ns]}}``, no sorting, no validation): what keeping
  levels sorted and checked costs on top of the cheapest possible Python book;
* ``x call``: one call of an empty Python function taking one argument, a yardstick for
  the machine's Python speed (stable across machines, unlike nanoseconds).

Whole script: well under a minute.
"""

from __future__ import annotations

import gc
import random
import sys
import time
import tracemalloc
from collections.abc import Callable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from grapevine.book import BookDelta, Op, OrderBook, Side, decode_book, encode_book  # noqa: E402

ADD, REMOVE = Op.ADD, Op.REMOVE
RefBook = dict[int, dict[int, list[int]]]


# ----------------------------------------------------------------------------- helpers


def best_ns(fn: Callable[[], object], number: int, repeat: int) -> float:
    """Best-of-``repeat`` time per call of ``fn`` (called ``number`` times per repeat)."""
    best = float("inf")
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for _ in range(repeat):
            t0 = time.perf_counter_ns()
            for _ in range(number):
                fn()
            best = min(best, (time.perf_counter_ns() - t0) / number)
    finally:
        if gc_was_enabled:
            gc.enable()
    return best


def time_sequence(setup: Callable[[], Callable[[], None]], n_ops: int, repeat: int) -> float:
    """Best-of-``repeat`` ns per op; ``setup`` (untimed) returns a runner of ``n_ops`` ops."""
    best = float("inf")
    gc.disable()
    try:
        for _ in range(repeat):
            runner = setup()
            t0 = time.perf_counter_ns()
            runner()
            best = min(best, (time.perf_counter_ns() - t0) / n_ops)
    finally:
        gc.enable()
    return best


def noop(_x: object) -> None:
    return None


def call_baseline_ns() -> float:
    """ns for one loop iteration calling an empty one-argument function."""
    items = list(range(200_000))

    def run() -> None:
        f = noop
        for x in items:
            f(x)

    return best_ns(run, 1, 7) / len(items)


def ref_apply(book: RefBook, delta: BookDelta) -> None:
    """The cheapest Python book: dict-of-dicts, unsorted, unchecked."""
    op, side, price, qty, t = delta
    levels = book[side]
    if op == 1:  # ADD
        lv = levels.get(price)
        if lv is None:
            levels[price] = [qty, 1, t]
        else:
            lv[0] += qty
            lv[1] += 1
            lv[2] = t
    else:  # REMOVE
        lv = levels[price]
        lv[0] -= qty
        lv[1] -= 1
        lv[2] = t
        if lv[0] == 0 or lv[1] == 0:
            del levels[price]


class Generator:
    """Valid ADD/REMOVE streams over books whose individual orders it tracks."""

    def __init__(self, rng: random.Random, n_books: int, levels_per_side: int) -> None:
        self.rng = rng
        self.levels_per_side = levels_per_side
        # orders[book][side][price] = list of order quantities
        self.orders: list[list[dict[int, list[int]]]] = [[{}, {}] for _ in range(n_books)]
        self.t = 0

    def price(self, side: int) -> int:
        # Bids in [0, L), asks in [L, 2L): a book never crosses. ~1 order per price on
        # average, so levels are created and deleted regularly.
        n = self.levels_per_side
        return self.rng.randrange(0, n) if side == 0 else self.rng.randrange(n, 2 * n)

    def add(self, b: int, side: int, price: int) -> BookDelta:
        qty = self.rng.randrange(1, 100)
        self.orders[b][side].setdefault(price, []).append(qty)
        self.t += 1
        return BookDelta(ADD, Side(side), price, qty, self.t)

    def initial(self, b: int) -> list[BookDelta]:
        out = []
        for side in (0, 1):
            base = 0 if side == 0 else self.levels_per_side
            for price in range(base, base + self.levels_per_side):
                for _ in range(self.rng.randrange(1, 3)):
                    out.append(self.add(b, side, price))
        return out

    def step(self, b: int) -> BookDelta:
        rng = self.rng
        side = rng.randrange(2)
        levels = self.orders[b][side]
        if rng.random() < 0.5 or not levels:
            return self.add(b, side, self.price(side))
        price = self.price(side)
        queue = levels.get(price)
        if not queue:
            return self.add(b, side, price)
        qty = queue.pop(rng.randrange(len(queue)))
        if not queue:
            del levels[price]
        self.t += 1
        return BookDelta(REMOVE, Side(side), price, qty, self.t)


def build(deltas: Sequence[BookDelta]) -> tuple[OrderBook, RefBook]:
    book = OrderBook()
    ref: RefBook = {0: {}, 1: {}}
    for d in deltas:
        book.apply(d)
        ref_apply(ref, d)
    return book, ref


def copy_ref(ref: RefBook) -> RefBook:
    return {side: {p: lv[:] for p, lv in levels.items()} for side, levels in ref.items()}


def row(label: str, ns: float, call: float, ref: float | None = None, extra: str = "") -> None:
    text = f"  {label:<44} {fmt(ns):>10}  {ns / call:8.1f} x call"
    if ref is not None:
        text += f"  {ns / ref:6.2f} x dict"
    print(text + (f"  {extra}" if extra else ""))


def fmt(ns: float) -> str:
    if ns < 10_000:
        return f"{ns:.0f} ns"
    if ns < 10_000_000:
        return f"{ns / 1000:.1f} us"
    return f"{ns / 1e6:.1f} ms"


# ------------------------------------------------------------------------------ sections


def bench_deep_book(call: float) -> OrderBook:
    print("\nOne book, 10,000 levels (5,000 per side), ADD/REMOVE mix:")
    rng = random.Random(1)
    gen = Generator(rng, 1, 5_000)
    book0, ref0 = build(gen.initial(0))
    n_ops = 200_000
    ops = [gen.step(0) for _ in range(n_ops)]
    created = sum(1 for d in ops if d.op == ADD)
    print(f"  (book has {len(book0)} levels; {created} ADD, {n_ops - created} REMOVE)")

    def setup_book() -> Callable[[], None]:
        book = book0.copy()

        def run() -> None:
            apply = book.apply
            for d in ops:
                apply(d)

        return run

    def setup_ref() -> Callable[[], None]:
        ref = copy_ref(ref0)

        def run() -> None:
            for d in ops:
                ref_apply(ref, d)

        return run

    t_ref = time_sequence(setup_ref, n_ops, 5)
    t_book = time_sequence(setup_book, n_ops, 5)
    row("apply (OrderBook)", t_book, call, t_ref)
    row("apply (dict-of-dicts baseline)", t_ref, call, t_ref)
    return book0


def bench_many_books(call: float) -> None:
    n_books = 10_000
    print(f"\n{n_books:,} books, 20 levels per side, ADD/REMOVE mix on random books:")
    rng = random.Random(2)
    gen = Generator(rng, n_books, 20)
    books0: list[OrderBook] = []
    refs0: list[RefBook] = []
    for b in range(n_books):
        book, ref = build(gen.initial(b))
        books0.append(book)
        refs0.append(ref)
    n_ops = 200_000
    ops: list[tuple[int, BookDelta]] = []
    for _ in range(n_ops):
        b = rng.randrange(n_books)
        ops.append((b, gen.step(b)))

    def setup_book() -> Callable[[], None]:
        books = [b.copy() for b in books0]

        def run() -> None:
            for b, d in ops:
                books[b].apply(d)

        return run

    def setup_ref() -> Callable[[], None]:
        refs = [copy_ref(r) for r in refs0]

        def run() -> None:
            for b, d in ops:
                ref_apply(refs[b], d)

        return run

    t_ref = time_sequence(setup_ref, n_ops, 3)
    t_book = time_sequence(setup_book, n_ops, 3)
    row("apply (OrderBook)", t_book, call, t_ref)
    row("apply (dict-of-dicts baseline)", t_ref, call, t_ref)


def bench_reads(deep: OrderBook, call: float) -> None:
    small, _ = build(Generator(random.Random(3), 1, 20).initial(0))
    for label, book, number in (("10,000-level book", deep, 20), ("40-level book", small, 2000)):
        print(f"\nReads and snapshots, {label} ({len(book)} levels):")
        data = encode_book(book)
        mv = memoryview(data)
        row("best_bid()", best_ns(book.best_bid, 100_000, 5), call)

        def depth(b: OrderBook = book) -> list[tuple[int, int, int]]:
            return b.depth(Side.BID, 10)

        row("depth(BID, 10)", best_ns(depth, 20_000, 5), call)
        per = f"{len(data):,} bytes"
        for name, fn in (
            ("checksum()", book.checksum),
            ("encode()", lambda b=book: encode_book(b)),
            ("decode_book()", lambda m=mv: decode_book(m)),
            ("copy()", book.copy),
        ):
            ns = best_ns(fn, number, 5)
            row(name, ns, call, extra=f"{ns / len(book):.0f} ns/level, {per}")


def traced_bytes(make: Callable[[], object]) -> tuple[int, object]:
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        obj = make()
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    return after - before, obj


def bench_memory() -> None:
    print("\nMemory (tracemalloc, bytes held by the books after building):")
    deep_ops = Generator(random.Random(4), 1, 5_000).initial(0)
    gen = Generator(random.Random(5), 10_000, 20)
    many_ops = [gen.initial(b) for b in range(10_000)]

    def one_book() -> object:
        return build(deep_ops)[0]

    def one_ref() -> object:
        return build(deep_ops)[1]

    def many_books() -> object:
        return [build(ops)[0] for ops in many_ops]

    def many_refs() -> object:
        return [build(ops)[1] for ops in many_ops]

    for label, make, make_ref, levels in (
        ("one 10,000-level book", one_book, one_ref, 10_000),
        ("10,000 books x 40 levels", many_books, many_refs, 400_000),
    ):
        size, keep = traced_bytes(make)
        # build() makes both; measure each alone so only one kind is held.
        del keep
        ref_size, keep = traced_bytes(make_ref)
        del keep
        print(
            f"  {label:<28} OrderBook {size / 1e6:7.1f} MB ({size / levels:5.0f} B/level)"
            f"   dict-of-dicts {ref_size / 1e6:7.1f} MB   {size / ref_size:4.2f} x dict"
        )


def main() -> None:
    t0 = time.perf_counter()
    print(f"grapevine.book benchmark, Python {sys.version.split()[0]}")
    call = call_baseline_ns()
    print(f"baseline: empty function call in a loop = {call:.1f} ns ('x call' below)")
    deep = bench_deep_book(call)
    bench_many_books(call)
    bench_reads(deep, call)
    bench_memory()
    print(f"\ntotal {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
