#!/usr/bin/env python3
"""Real packet loss: a publisher and subscribers in a private network namespace.

Run as root (or anywhere ``unshare -rn`` works) with nftables installed::

    python3 tools/loss_run.py --loss 10 --seconds 5

It re-executes itself inside a new network namespace (``unshare -rn``: only a loopback
interface exists there, so nothing can leave the host), brings ``lo`` up, and installs an
nftables rule that drops ``--loss`` percent of the datagrams to the stream's port at random
(``numgen random mod 100 < loss``) on their way into the receiving sockets. The kernel, not
the library, loses the packets. After ``--seconds`` of publishing under loss, the rule is
deleted and the run waits for every subscriber to be synced, then compares each replica
with the publisher leaf by leaf. Prints a JSON report on the last line; exit 0 only if every
replica equals the publisher.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _netns import run_in_private_namespace  # this script's own folder, tools/

from grapevine import (
    Publisher,
    PublisherConfig,
    Status,
    StatusEvent,
    Subscriber,
    SubscriberConfig,
)
from grapevine.book import OrderBookModel
from grapevine.testing import Market, free_port

_TABLE = "grapevine_loss"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loss", type=int, default=10, help="percent of datagrams dropped")
    parser.add_argument("--seconds", type=float, default=5.0, help="publishing under loss")
    parser.add_argument("--leaves", type=int, default=1000, help="instruments (order books)")
    parser.add_argument("--rate", type=int, default=20_000, help="deltas per second")
    parser.add_argument("--subscribers", type=int, default=3)
    parser.add_argument("--port", type=int, default=0,
                        help="UDP port (0: one the kernel picks inside the namespace)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--touched-interval", type=float,
                        default=PublisherConfig().touched_interval_s,
                        help="seconds between TOUCHED summaries (0: off)")
    parser.add_argument("--no-retransmit", action="store_true",
                        help="subscribers do not ask for lost datagrams (SPEC §15): "
                             "the snapshot cycle repairs every loss")
    args = parser.parse_args()
    return run_in_private_namespace(__file__, lambda: run_inside(args),
                                    also_needs={"nft": "nftables"})


def nft(*words: str) -> None:
    subprocess.run(["nft", *words], check=True)


def run_inside(args: argparse.Namespace) -> int:
    group = "239.255.73.1"
    args.port = args.port or free_port(group)
    nft("add", "table", "inet", _TABLE)
    nft("add", "chain", "inet", _TABLE, "input",
        "{ type filter hook input priority 0; policy accept; }")
    nft("add", "rule", "inet", _TABLE, "input", "udp", "dport", str(args.port),
        "numgen", "random", "mod", "100", "<", str(args.loss), "counter", "drop")
    model = OrderBookModel()
    endpoint = {"group": group, "port": args.port}
    stale_at: dict[tuple[int, int], float] = {}
    repair_times: list[float] = []
    lock = threading.Lock()

    def watcher(index: int) -> Any:
        def on_status(event: StatusEvent) -> None:
            with lock:
                if event.kind is Status.LEAF_STALE and event.leaf_id is not None:
                    stale_at.setdefault((index, event.leaf_id), time.monotonic())
                elif event.kind is Status.LEAF_REPAIRED and event.leaf_id is not None:
                    began = stale_at.pop((index, event.leaf_id), None)
                    if began is not None:
                        repair_times.append(time.monotonic() - began)
        return on_status

    subs = [Subscriber(model, config=SubscriberConfig(retransmit=not args.no_retransmit),
                       **endpoint)
            for _ in range(args.subscribers)]
    for index, sub in enumerate(subs):
        sub.on_status(watcher(index))
    market = Market(args.leaves, seed=args.seed)  # the demo's never-crossing market
    try:
        config = PublisherConfig(touched_interval_s=args.touched_interval)
        with Publisher(model, config=config, initial=market.copy_books(), **endpoint) as pub:
            started = time.monotonic()
            next_sample = started + 1.0  # after the first snapshot cycles
            fresh_samples: list[float] = []
            sent = 0
            while time.monotonic() - started < args.seconds:
                target = int((time.monotonic() - started) * args.rate)
                for leaf, delta in market.batch(target - sent):
                    pub.publish(leaf, delta)
                    sent += 1
                threading.Event().wait(0.002)
                if time.monotonic() >= next_sample:  # how much of each replica is fresh
                    next_sample += 0.05
                    for sub in subs:
                        fresh, total = sub.progress()
                        fresh_samples.append(fresh / max(total, 1))
            pub.flush(10)
            loss_stopped = time.monotonic()
            nft("delete", "table", "inet", _TABLE)
            synced = [sub.wait_until_applied(pub.last_sequence, session_id=pub.session_id,
                                             timeout=60) for sub in subs]
            sync_after_loss = time.monotonic() - loss_stopped
            truth = {leaf: book.checksum() for leaf, book in pub.values().items()}
            reports = []
            for sub, ok in zip(subs, synced, strict=True):
                with sub.locked() as replica:
                    mine = {leaf: book.checksum() for leaf, book in replica.items()}
                stats = sub.stats()
                reports.append({
                    "synced": ok, "equal": mine == truth, "gaps": stats.gaps,
                    "missed_deltas": stats.missed_deltas, "deltas": stats.deltas,
                    "gaps_resolved_by_summaries": stats.gaps_resolved,
                    "leaves_made_stale": stats.leaves_made_stale,
                    "suspects_proven": stats.suspects_proven, "repairs": stats.repairs,
                    "kernel_drops": stats.kernel_drops,
                    "retransmitted": stats.retransmitted_datagrams,
                    "retransmit_requests": stats.retransmit_requests,
                })
    finally:
        for sub in subs:
            sub.close()
    report = {
        "loss_percent": args.loss, "seconds": args.seconds, "leaves": args.leaves,
        "touched_interval_s": args.touched_interval,
        "deltas_published": sent, "subscribers": reports,
        "repair_time_s": {
            "count": len(repair_times),
            "median": round(statistics.median(repair_times), 4) if repair_times else None,
            "p99": round(sorted(repair_times)[int(len(repair_times) * 0.99)], 4)
            if repair_times else None,
            "max": round(max(repair_times), 4) if repair_times else None,
        },
        "time_to_sync_after_loss_stopped_s": round(sync_after_loss, 3),
        "mean_fresh_share_under_loss": round(statistics.mean(fresh_samples), 3)
        if fresh_samples else None,
    }
    print(json.dumps(report))
    return 0 if all(r["synced"] and r["equal"] for r in reports) else 1


if __name__ == "__main__":
    raise SystemExit(main())
