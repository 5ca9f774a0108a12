#!/usr/bin/env python3
"""What the snapshot cycle costs both sides, per delta, against its period (issue 12).

    python3 tools/bench_cycle.py                       # 1,000 books at 20k deltas/s
    python3 tools/bench_cycle.py --leaves 200 --min-cycle-s 0.25 1 --repeats 1

A :class:`PublisherCore` and a :class:`SubscriberCore` (no sockets, no threads) run one
second of simulated stream (the first cycle, the join), then ``--seconds`` measured:
``--rate`` order-book deltas/s over ``--leaves`` books, packed every millisecond, with the
snapshot cycle at each ``--min-cycle-s`` (and the default budget); process CPU per delta
on each side. The baseline
of the ratios, measured in the same repeat, is a cycle too slow to send a snapshot in the
measured seconds, so the ratio is what the cycle adds to the cost of the deltas alone.
Repeats are interleaved; medians.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from grapevine._publisher_core import PublisherConfig, PublisherCore
from grapevine._subscriber_core import SubscriberConfig, SubscriberCore
from grapevine.book import OrderBookModel
from grapevine.testing import Market

BASELINE = 1e9  # a cycle that never comes round again in the measured second


def run(min_cycle_s: float, initial: dict[int, Any], changes: list[tuple[int, Any]],
        rate: int, seconds: int) -> tuple[float, float, int, bool]:
    """(publisher us/delta, subscriber us/delta, snapshots sent, synced at the end)."""
    pub = PublisherCore(OrderBookModel(), PublisherConfig(min_cycle_s=min_cycle_s),
                        initial={leaf: book.copy() for leaf, book in initial.items()},
                        session_id=1)
    sub = SubscriberCore(OrderBookModel(), SubscriberConfig())
    per_ms = rate // 1000
    now, pub_cpu, sub_cpu, measured = 0.0, 0.0, 0.0, 0
    snapshots_before = 0
    for step in range(1000 * (1 + seconds)):  # a millisecond at a time
        start = step * per_ms
        begin = time.process_time()
        for leaf, delta in changes[start : start + per_ms]:
            pub.publish(leaf, delta)
        datagrams: list[bytes] = []
        while (view := pub.next_datagram(now)) is not None:
            datagrams.append(bytes(view))
        packed = time.process_time()
        for datagram in datagrams:
            sub.receive(datagram, now)
        sub.updates.clear()
        received = time.process_time()
        if step == 1000:  # after the warm-up
            snapshots_before = pub.stats.snapshots
        if step >= 1000:  # past the warm-up second (the first cycle, the join)
            pub_cpu += packed - begin
            sub_cpu += received - packed
            measured += per_ms
        now += 0.001
    return (pub_cpu / measured * 1e6, sub_cpu / measured * 1e6,
            round((pub.stats.snapshots - snapshots_before) / seconds), sub.synced)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--leaves", type=int, default=1_000)
    parser.add_argument("--rate", type=int, default=20_000, help="deltas/s (>= 1000)")
    parser.add_argument("--min-cycle-s", type=float, nargs="+", default=[0.25, 0.5, 1.0, 2.0])
    parser.add_argument("--seconds", type=int, default=2,
                        help="simulated seconds measured, after one of warm-up")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    market = Market(args.leaves, seed=1)
    initial = market.copy_books()
    total = args.rate * (1 + args.seconds)
    changes = market.batch(total)[:total]  # none replayed: each applies to the books
    periods = [BASELINE, *args.min_cycle_s]
    figures: dict[float, list[tuple[float, float, int, bool]]] = {p: [] for p in periods}
    for repeat in range(args.repeats):
        shift = repeat % len(args.min_cycle_s)
        order = [BASELINE, *args.min_cycle_s[shift:], *args.min_cycle_s[:shift]]
        for period in order:
            figures[period].append(run(period, initial, changes, args.rate, args.seconds))
    print(f"tools/bench_cycle.py: {args.leaves} books, {args.rate:,} deltas/s, "
          f"{args.repeats} interleaved repeat(s); CPU per delta over {args.seconds} simulated "
          "s after 1 s of warm-up; medians, and the median of per-repeat ratios to the "
          "baseline")
    print()
    print("| min_cycle_s | snapshots/s | publisher us/delta | x | subscriber us/delta | x | "
          "synced |")
    print("|---|---:|---:|---:|---:|---:|---|")
    base = figures[BASELINE]
    for period in periods:
        rows = figures[period]
        pub = statistics.median(r[0] for r in rows)
        sub = statistics.median(r[1] for r in rows)
        pub_x = statistics.median(r[0] / b[0] for r, b in zip(rows, base, strict=True))
        sub_x = statistics.median(r[1] / b[1] for r, b in zip(rows, base, strict=True))
        name = "none (baseline)" if period == BASELINE else f"{period:g} s"
        print(f"| {name} | {statistics.median(r[2] for r in rows):,.0f} | {pub:.2f} | "
              f"{pub_x:.2f} | {sub:.2f} | {sub_x:.2f} | {all(r[3] for r in rows)} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
