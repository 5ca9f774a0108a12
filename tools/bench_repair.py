#!/usr/bin/env python3
"""Time from loss to repair: retransmission on request (SPEC §15) against snapshot-only.

    python3 tools/bench_repair.py                       # 1,000 and 10,000 books
    python3 tools/bench_repair.py --books 1000 --seconds 2 --json

One publisher of order books (the demo's market, ``--rate`` deltas/s) and one subscriber,
in two processes, on loopback multicast (127.0.0.1, TTL 0). The subscriber's drop filter
loses datagrams on purpose: exactly one datagram carrying deltas ("one"), or each datagram
with probability 1% or 10%. For every DELTA lost, the repair time is from the moment its
datagram was dropped to the first update of its leaf that reflects it (an update whose
``sequence`` is at or past the lost delta's: the delta itself, sent again, or a snapshot
that repaired the leaf). Each configuration runs twice, one after the other: with
retransmission, and with ``SubscriberConfig(retransmit=False)`` (the snapshot cycle
repairs). Every run ends with the replica equal to the publisher's books (checked).
Figures are in milliseconds, median / p99 / max; this machine is shared, so read the two
modes against each other rather than as absolutes.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import random
import statistics
import sys
import threading
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from grapevine import Publisher, Subscriber, SubscriberConfig, Update
from grapevine.book import BookDelta, OrderBook, OrderBookModel
from grapevine.codec import Delta, decode_datagram
from grapevine.testing import Market, free_port

_GROUP = "239.255.76.1"


class Loss:
    """The drop filter: records what it drops (on the receiver thread)."""

    def __init__(self, pattern: str, seed: int) -> None:
        self.pattern = pattern
        self.rate = {"one": 0.0, "1%": 0.01, "10%": 0.10}[pattern]
        self.rng = random.Random(seed)
        self.active = False
        self.lost: dict[int, list[tuple[int, float]]] = {}  # leaf -> [(seq, dropped at)]
        self.count = 0
        self.datagrams = 0

    def __call__(self, view: memoryview) -> bool:
        if not self.active:
            return False
        self.datagrams += 1
        if self.pattern == "one":
            if self.count or self.datagrams < 200:
                return False
        elif self.rng.random() >= self.rate:
            return False
        deltas = [m for m in decode_datagram(view).messages if type(m) is Delta]
        if not deltas:
            return False  # only datagrams that carry deltas: those are what loss costs
        now = time.monotonic()
        for delta in deltas:
            self.lost.setdefault(delta.leaf_id, []).append((delta.seq, now))
        self.count += len(deltas)
        return True


class Repairs:
    """Matches updates to lost deltas (runs inline on the receiver thread)."""

    def __init__(self, loss: Loss) -> None:
        self.loss = loss
        self.times: list[float] = []

    def __call__(self, update: Update[OrderBook, BookDelta]) -> None:
        pending = self.loss.lost.get(update.leaf_id)
        if not pending:
            return
        now = time.monotonic()
        keep = []
        for seq, dropped_at in pending:
            if update.sequence >= seq:
                self.times.append(now - dropped_at)
            else:
                keep.append((seq, dropped_at))
        self.loss.lost[update.leaf_id] = keep


def publisher_main(port: int, books: int, seed: int, rate: int, seconds: float,
                   conn: Connection) -> None:
    """The publisher, in a process of its own (so that it does not share the GIL with the
    subscriber being measured): publishes ``rate`` deltas/s for ``seconds`` on "go"."""
    market = Market(books, seed=seed)
    with Publisher(OrderBookModel(), group=_GROUP, port=port,
                   initial=market.copy_books()) as pub:
        conn.send(pub.session_id)
        conn.recv()  # "go": the subscriber is synced and loses from now on
        started = time.monotonic()
        published = 0
        pause = threading.Event()
        while (elapsed := time.monotonic() - started) < seconds:
            due = int(rate * elapsed) - published
            batch = market.batch(min(due, rate // 100 + 1))
            pub.publish_many(batch)
            published += len(batch)
            pause.wait(0.001)  # pacing
        conn.send(published)
        conn.recv()  # "quiet": the loss is over
        conn.send(pub.publish_many(market.batch(10)))
        conn.recv()  # "checksums"
        with pub.locked() as leaves:
            conn.send({leaf_id: book.checksum() for leaf_id, book in leaves.items()})
        conn.recv()  # "stop"


def run(books: int, pattern: str, retransmit: bool, rate: int, seconds: float,
        seed: int) -> dict[str, Any]:
    port = free_port(_GROUP)
    loss = Loss(pattern, seed)
    repairs = Repairs(loss)
    context = multiprocessing.get_context("spawn")
    ours, theirs = context.Pipe()
    publisher = context.Process(target=publisher_main, name="bench-repair-publisher",
                                args=(port, books, seed, rate, seconds, theirs))
    with Subscriber(OrderBookModel(), group=_GROUP, port=port, delivery="inline",
                    drop_filter=loss, config=SubscriberConfig(retransmit=retransmit)) as sub:
        sub.on_update(repairs, as_update=True)
        publisher.start()
        try:
            session_id = ours.recv()
            if not sub.wait_synced(120):
                raise RuntimeError("the subscriber did not sync")
            loss.active = True
            ours.send("go")
            published = ours.recv()
            loss.active = False
            ours.send("quiet")
            seq = ours.recv()
            synced = sub.wait_until_applied(seq, session_id=session_id, timeout=60)
            deadline = time.monotonic() + 30
            while any(loss.lost.values()) and time.monotonic() < deadline:
                threading.Event().wait(0.01)
            ours.send("checksums")
            truth = ours.recv()
            with sub.locked() as replica:
                equal = truth == {leaf_id: book.checksum() for leaf_id, book in replica.items()}
            stats = sub.stats()
            ours.send("stop")
        finally:
            publisher.join(30)
            if publisher.is_alive():
                publisher.kill()
    times = sorted(t * 1000 for t in repairs.times)
    return {
        "books": books, "loss": pattern, "mode": "retransmit" if retransmit else "snapshots",
        "lost_deltas": loss.count, "repaired": len(times),
        "unrepaired": sum(len(v) for v in loss.lost.values()),
        "median_ms": round(statistics.median(times), 2) if times else None,
        "p99_ms": round(times[min(len(times) - 1, int(len(times) * 0.99))], 2) if times else None,
        "max_ms": round(times[-1], 2) if times else None,
        "gaps": stats.gaps, "retransmitted": stats.retransmitted_datagrams,
        "kernel_drops": stats.kernel_drops,
        "synced": synced, "equal": equal, "deltas": published,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--books", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--loss", nargs="+", default=["one", "1%", "10%"],
                        choices=["one", "1%", "10%"])
    parser.add_argument("--rate", type=int, default=10_000, help="deltas per second")
    parser.add_argument("--seconds", type=float, default=3.0, help="publishing under loss")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="JSON lines instead of a table")
    args = parser.parse_args()
    rows = []
    if not args.json:
        print(f"{'books':>6} {'loss':>4} {'mode':>10} {'lost':>6} {'median ms':>10} "
              f"{'p99 ms':>8} {'max ms':>8} {'gaps':>5} {'resent':>6} {'kdrops':>6}  equal")
    for books in args.books:
        for pattern in args.loss:
            for retransmit in (True, False):
                row = run(books, pattern, retransmit, args.rate, args.seconds, args.seed)
                rows.append(row)
                if args.json:
                    print(json.dumps(row), flush=True)
                else:
                    print(f"{books:>6} {pattern:>4} {row['mode']:>10} {row['lost_deltas']:>6} "
                          f"{row['median_ms']!s:>10} {row['p99_ms']!s:>8} {row['max_ms']!s:>8} "
                          f"{row['gaps']:>5} {row['retransmitted']:>6} "
                          f"{row['kernel_drops']:>6}  "
                          f"{row['equal'] and row['synced'] and not row['unrepaired']}",
                          flush=True)
    return 0 if all(r["equal"] and r["synced"] and not r["unrepaired"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
