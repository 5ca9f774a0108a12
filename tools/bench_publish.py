#!/usr/bin/env python3
"""The publisher's cost per delta, flat out, against raw UDP in the same run (issue 12).

    python3 tools/bench_publish.py                  # 5 interleaved repeats
    python3 tools/bench_publish.py --deltas 50000 --repeats 1   # a smoke run

Every row publishes ``--deltas`` changes over ``--leaves`` leaves as fast as it can, to a
multicast group on loopback (TTL 0) that nobody has joined, and reports the process CPU
and the wall time per delta, from the first publish until every delta has left (flush).
Rows:

* ``raw x1``: one 32-byte message per ``socket.send`` (the baseline of every ratio);
* ``raw x20``: 20 messages packed per datagram with ``struct.pack_into`` (the pure-Python
  ceiling for batching);
* ``core 32 B`` / ``core book``: :class:`PublisherCore` alone (publish, then
  ``next_datagram`` every 20 deltas, no socket, no thread, no lock): the protocol's cost;
* ``Publisher 32 B`` / ``Publisher book``: the runtime with its sender thread, ``publish``
  one at a time; ``... many`` the same with ``publish_many`` in batches of 64.

Book rows publish order-book deltas from :class:`grapevine.testing.Market` over 1,000 books
(the publisher applies each to its own book, as a real one must). The snapshot cycle runs
at its defaults in the runtime rows. Repeats are interleaved so that the shared machine's
drifts hit every row alike; the table gives medians and ratios to raw x1 of the same repeat.
"""

from __future__ import annotations

import argparse
import statistics
import struct
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from grapevine import BytesModel, Publisher
from grapevine._publisher_core import PublisherConfig, PublisherCore
from grapevine._transport import open_sender
from grapevine.book import OrderBookModel
from grapevine.testing import Market, free_port

GROUP = "239.255.79.3"
MESSAGE = struct.Struct("<IIQQQ")  # 32 bytes, as tools/bench_peers.py's raw rows


def measure(run: Callable[[], None]) -> tuple[float, float]:
    """(process CPU seconds, wall seconds) of ``run``."""
    cpu, wall = time.process_time(), time.perf_counter()
    run()
    return time.process_time() - cpu, time.perf_counter() - wall


def raw_row(per_datagram: int, deltas: int, leaves: int) -> Callable[[], None]:
    def run() -> None:
        sock = open_sender(GROUP, free_port(GROUP), interface="127.0.0.1", ttl=0)
        try:
            send = sock.send
            if per_datagram == 1:
                pack = MESSAGE.pack
                for i in range(deltas):
                    send(pack(1, i % leaves, i + 1, 0, 0))
                return
            buffer = bytearray(MESSAGE.size * per_datagram)
            view = memoryview(buffer)
            pack_into = MESSAGE.pack_into
            size = MESSAGE.size
            for first in range(0, deltas, per_datagram):
                count = min(per_datagram, deltas - first)
                for j in range(count):
                    pack_into(buffer, j * size, 1, (first + j) % leaves, first + j + 1, 0, 0)
                send(view[: count * size])
        finally:
            sock.close()
    return run


def core_row(model: Any, changes: list[tuple[int, Any]], initial: dict[int, Any]
             ) -> Callable[[], None]:
    def run() -> None:
        core = PublisherCore(model, PublisherConfig(), initial=initial, session_id=1)
        publish, next_datagram = core.publish, core.next_datagram
        now = 0.0
        for i, (leaf, delta) in enumerate(changes):
            publish(leaf, delta)
            if i % 20 == 19:
                while next_datagram(now) is not None:
                    pass
                now += 0.00005  # 20 deltas every 50 us: 400k/s of simulated time
        while next_datagram(now) is not None:
            pass
    return run


def runtime_row(model: Any, changes: list[tuple[int, Any]], initial: dict[int, Any],
                batch: int) -> Callable[[], None]:
    def run() -> None:
        endpoint = {"group": GROUP, "port": free_port(GROUP)}
        with Publisher(model, initial=initial, **endpoint) as pub:  # type: ignore[arg-type]
            if batch == 1:
                publish = pub.publish
                for leaf, delta in changes:
                    publish(leaf, delta)
            else:
                for first in range(0, len(changes), batch):
                    pub.publish_many(changes[first : first + batch])
            pub.flush(60)
    return run


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--deltas", type=int, default=200_000)
    parser.add_argument("--leaves", type=int, default=1_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    deltas, leaves = args.deltas, args.leaves
    small = [(i % leaves, MESSAGE.pack(1, i % leaves, i + 1, 0, 0)) for i in range(deltas)]
    small_initial = {leaf: bytes(MESSAGE.size) for leaf in range(leaves)}
    market = Market(leaves, seed=1)
    book_initial = market.copy_books()
    books = market.batch(deltas)[:deltas]

    def fresh_books() -> dict[int, Any]:
        return {leaf: book.copy() for leaf, book in book_initial.items()}

    rows: dict[str, Callable[[], Callable[[], None]]] = {
        "raw x1": lambda: raw_row(1, deltas, leaves),
        "raw x20": lambda: raw_row(20, deltas, leaves),
        "core 32 B": lambda: core_row(BytesModel(), small, small_initial),
        "core book": lambda: core_row(OrderBookModel(), books, fresh_books()),
        "Publisher 32 B": lambda: runtime_row(BytesModel(), small, small_initial, 1),
        "Publisher 32 B, many": lambda: runtime_row(BytesModel(), small, small_initial, 64),
        "Publisher book": lambda: runtime_row(OrderBookModel(), books, fresh_books(), 1),
        "Publisher book, many": lambda: runtime_row(OrderBookModel(), books, fresh_books(), 64),
    }
    cpu: dict[str, list[float]] = {name: [] for name in rows}
    wall: dict[str, list[float]] = {name: [] for name in rows}
    for repeat in range(args.repeats):
        names = list(rows)
        shift = repeat % len(names)
        for name in ["raw x1", *[n for n in names[shift:] + names[:shift] if n != "raw x1"]]:
            used, took = measure(rows[name]())
            cpu[name].append(used / deltas * 1e6)
            wall[name].append(took / deltas * 1e6)
    print(f"tools/bench_publish.py: {deltas} deltas over {leaves} leaves, {args.repeats} "
          "interleaved repeat(s); medians, and the median of per-repeat ratios to raw x1")
    print()
    print("| row | CPU us/delta | x raw x1 | wall us/delta | deltas/s | x raw x1 rate |")
    print("|---|---:|---:|---:|---:|---:|")
    for name in rows:
        cpu_ratio = statistics.median(c / b for c, b in zip(cpu[name], cpu["raw x1"],
                                                             strict=True))
        rate_ratio = statistics.median(b / w for w, b in zip(wall[name], wall["raw x1"],
                                                             strict=True))
        median_wall = statistics.median(wall[name])
        print(f"| {name} | {statistics.median(cpu[name]):.2f} | {cpu_ratio:.2f} | "
              f"{median_wall:.2f} | {1e6 / median_wall:,.0f} | {rate_ratio:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
