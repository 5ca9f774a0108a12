#!/usr/bin/env python3
"""Per-delta cost of the sans-I/O engine (no sockets, no threads), as ratios to a baseline.

    python3 tools/bench_core.py [--deltas 200000] [--repeats 5]

Measures, for 18-byte deltas spread over 1,000 leaves (the publisher batches about 40 per
datagram): ``PublisherCore.publish`` (apply + sequence + queue), packing into datagrams,
``codec.decode`` alone, and ``SubscriberCore.receive`` (decode + sequencing + apply +
update tuples). The baseline, measured in the same run, is a bare loop that calls a trivial
Python function once per delta: figures are printed in ns/delta and as multiples of it, so
that runs on a noisy shared machine can be compared. Best of ``--repeats``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from grapevine import BytesModel
from grapevine._publisher_core import PublisherConfig, PublisherCore
from grapevine._subscriber_core import SubscriberConfig, SubscriberCore
from grapevine.auth import KeyRing, generate_key
from grapevine.codec import decode_datagram

PAYLOAD = bytes(range(18))


def best_of(repeats: int, run: Callable[[], float]) -> float:
    return min(run() for _ in range(repeats))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deltas", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    for touched_interval_s in (PublisherConfig().touched_interval_s, 0.0):
        label = (f"TOUCHED summaries every {touched_interval_s * 1000:.0f} ms (default)"
                 if touched_interval_s else "TOUCHED summaries off")
        print(f"--- {label}")
        measure(args.deltas, args.repeats, PublisherConfig(
            min_cycle_s=1e9, max_queued_deltas=args.deltas + 1,
            touched_interval_s=touched_interval_s))
    # Authentication on against off, interleaved in this run (issue 8): the same stream,
    # every datagram signed by the publisher and verified (and replay-checked) by the
    # subscriber.
    ring = KeyRing.from_text(generate_key(1))
    sides: dict[bool, list[list[tuple[str, float]]]] = {False: [], True: []}
    for _ in range(2):
        for keys in (False, True):
            print(f"--- authentication {'on' if keys else 'off'} (TOUCHED default)")
            sides[keys].append(measure(args.deltas, args.repeats, PublisherConfig(
                min_cycle_s=1e9, max_queued_deltas=args.deltas + 1,
                keys=ring if keys else None), SubscriberConfig(keys=ring if keys else None)))
    print("--- authentication on / off (best of both rounds)")
    for index, name in enumerate(("publish", "pack (and sign)", "decode",
                                  "receive (and verify)")):
        off = min(row[index][1] for row in sides[False])
        on = min(row[index][1] for row in sides[True])
        print(f"{name:40} {on / off:5.2f} x  (+{(on - off) / args.deltas * 1e9:.0f} ns/delta)")
    return 0


def measure(n: int, repeats: int, config: PublisherConfig,
            sub_config: SubscriberConfig | None = None) -> list[tuple[str, float]]:
    model = BytesModel()

    def baseline() -> float:
        def call(leaf_id: int, payload: bytes) -> int:
            return leaf_id
        start = time.perf_counter()
        for i in range(n):
            call(i % 1000, PAYLOAD)
        return time.perf_counter() - start

    datagrams: list[bytes] = []

    def publish() -> float:
        pub = PublisherCore(model, config, session_id=1)
        start = time.perf_counter()
        for i in range(n):
            pub.publish(i % 1000, PAYLOAD)
        elapsed = time.perf_counter() - start
        datagrams.clear()
        while (datagram := pub.next_datagram(0.0)) is not None:
            datagrams.append(bytes(datagram))
        return elapsed

    def pack() -> float:
        pub = PublisherCore(model, config, session_id=1)
        for i in range(n):
            pub.publish(i % 1000, PAYLOAD)
        start = time.perf_counter()
        while pub.next_datagram(0.0) is not None:
            pass
        return time.perf_counter() - start

    def decode_only() -> float:
        start = time.perf_counter()
        for datagram in datagrams:
            decode_datagram(datagram)
        return time.perf_counter() - start

    def receive() -> float:
        sub = SubscriberCore(model, sub_config)
        start = time.perf_counter()
        for datagram in datagrams:
            sub.receive(datagram, 0.0)
            sub.updates.clear()
        elapsed = time.perf_counter() - start
        assert sub.stats.deltas == n
        return elapsed

    base = best_of(repeats, baseline)
    rows = [("publish (apply, sequence, queue)", best_of(repeats, publish)),
            ("pack into datagrams", best_of(repeats, pack)),
            ("decode (fast path)", best_of(repeats, decode_only)),
            ("receive (decode + sequencing + apply)", best_of(repeats, receive))]
    print(f"{n} deltas of {len(PAYLOAD)} bytes over 1000 leaves, {len(datagrams)} datagrams "
          f"({sum(map(len, datagrams)):,} bytes), {n / len(datagrams):.1f} deltas/datagram, "
          f"best of {repeats}")
    print(f"{'baseline: one Python call per delta':40} {base / n * 1e9:8.0f} ns/delta  1.0 x")
    for name, seconds in rows:
        print(f"{name:40} {seconds / n * 1e9:8.0f} ns/delta {seconds / base:4.1f} x "
              f"({n / seconds / 1e6:.2f} M deltas/s)")
    publisher = rows[0][1] + rows[1][1]
    print(f"publisher side {n / publisher / 1e3:.0f} k deltas/s, subscriber side "
          f"{n / rows[3][1] / 1e3:.0f} k deltas/s (one core each)")
    return rows


if __name__ == "__main__":
    raise SystemExit(main())
