#!/usr/bin/env python3
"""How long a late joiner takes to sync, at the default snapshot rate, on loopback.

    python3 tools/measure_sync.py --leaves 1000 10000 --books-levels 10 --joins 5
    python3 tools/measure_sync.py --leaves 1000 --snapshot-mb-per-s 1 8 32 --min-cycle-s 0.25 1

A publisher starts with ``--leaves`` order books (each ``--books-levels`` levels a side) and
publishes ``--rate`` deltas/s; after it has run a second, subscribers join one after another
and each is timed from its creation to ``wait_synced``. Also prints the snapshot cycle's
period so the figures can be read against it (sync needs about one full cycle).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import TypedDict

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from grapevine import Publisher, PublisherConfig, Subscriber
from grapevine.book import OrderBookModel, encode_book
from grapevine.testing import Market, free_port


class Endpoint(TypedDict):
    """Where the stream goes, passed as ``**endpoint`` to Publisher and Subscriber."""

    group: str
    port: int


def measure(leaves: int, levels: int, joins: int, rate: int, snapshot_bytes_per_s: float,
            min_cycle_s: float) -> None:
    market = Market(leaves, seed=leaves, levels=levels)  # the demo's market
    initial = market.copy_books()
    leaf_bytes = sum(len(encode_book(book)) for book in initial.values()) // leaves
    model = OrderBookModel()
    config = PublisherConfig(snapshot_bytes_per_s=snapshot_bytes_per_s, min_cycle_s=min_cycle_s)
    endpoint: Endpoint = {"group": "239.255.74.1", "port": free_port("239.255.74.1")}
    stop = threading.Event()
    times: list[float] = []
    with Publisher(model, initial=initial, config=config, **endpoint) as pub:

        def churn() -> None:
            while not stop.is_set():
                for leaf, delta in market.batch(max(rate // 100, 1)):
                    pub.publish(leaf, delta)
                stop.wait(0.01)

        worker = threading.Thread(target=churn, name="measure-churn")
        worker.start()
        run_started = time.monotonic()
        try:
            stop.wait(1.0)
            for _ in range(joins):
                began = time.monotonic()
                with Subscriber(model, **endpoint) as sub:
                    if not sub.wait_synced(120):
                        print("  a subscriber did not sync within 120 s", file=sys.stderr)
                        continue
                    times.append(time.monotonic() - began)
                    with sub.locked() as replica, pub.locked() as truth:
                        assert len(replica) == len(truth)
            stats = pub.stats()
            run_s = time.monotonic() - run_started
        finally:
            stop.set()
            worker.join()
    cycle_s = run_s / max(stats.cycles, 1)  # measured: budget, min_cycle_s and CPU bound it
    print(f"{leaves:>6} leaves x ~{leaf_bytes} B ({levels} levels/side), "
          f"snapshot budget {config.snapshot_bytes_per_s / 1e6:g} MB/s, "
          f"min_cycle_s {min_cycle_s:g}, measured cycle {cycle_s:.2f} s, "
          f"snapshot traffic {stats.snapshot_bytes / run_s / 1e6:.2f} MB/s: "
          f"sync median {statistics.median(times):.2f} s, min {min(times):.2f} s, "
          f"max {max(times):.2f} s over {len(times)} joins "
          f"(ratio to cycle: {statistics.median(times) / max(cycle_s, 1e-9):.2f})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--leaves", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--books-levels", type=int, default=10)
    parser.add_argument("--joins", type=int, default=5)
    parser.add_argument("--rate", type=int, default=5000)
    parser.add_argument("--snapshot-mb-per-s", type=float, nargs="+",
                        default=[PublisherConfig.snapshot_bytes_per_s / 1e6])
    parser.add_argument("--min-cycle-s", type=float, nargs="+",
                        default=[PublisherConfig.min_cycle_s])
    args = parser.parse_args()
    for leaves in args.leaves:
        for budget in args.snapshot_mb_per_s:
            for min_cycle_s in args.min_cycle_s:
                measure(leaves, args.books_levels, args.joins, args.rate, budget * 1e6,
                        min_cycle_s)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
