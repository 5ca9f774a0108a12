"""Publish a random market of order books on loopback multicast.

    python examples/order_book_publisher.py --instruments 100 --rate 2000
    python examples/order_book_subscriber.py          # in another terminal

Every delta goes out on 127.0.0.1 with TTL 0 (the library defaults): nothing leaves this
host. Ctrl-C stops cleanly: closing the Publisher sends END_OF_SESSION.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time

from grapevine import DEFAULT_GROUP, DEFAULT_PORT, Publisher
from grapevine.book import BookDelta, OrderBook, OrderBookModel
from grapevine.testing import Market


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--instruments", type=int, default=100, help="books (leaf ids 1..N)")
    parser.add_argument("--rate", type=float, default=2000.0, help="deltas per second")
    parser.add_argument("--duration", type=float, default=0.0, help="seconds (0: forever)")
    parser.add_argument("--group", default=DEFAULT_GROUP)
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--stream", type=int, default=0, help="stream id")
    parser.add_argument("--seed", type=int, default=1, help="market seed")
    args = parser.parse_args(argv)

    market = Market(args.instruments, args.seed)
    pub: Publisher[OrderBook, BookDelta] = Publisher(
        OrderBookModel(), group=args.group, port=args.port, stream_id=args.stream,
        initial=market.copy_books())
    print(f"publishing {args.instruments} books at {args.rate:,.0f} deltas/s on "
          f"{args.group}:{args.port} stream {args.stream} (session {pub.session_id:#018x})",
          flush=True)
    tick = threading.Event()
    start = last = time.monotonic()
    published = last_deltas = last_datagrams = 0
    try:
        with pub:
            while not args.duration or time.monotonic() - start < args.duration:
                elapsed = time.monotonic() - start
                # Time-based batches: publish what is due, then sleep until the next tick.
                due = min(int(args.rate * elapsed) - published, int(args.rate * 0.1) + 1)
                batch = market.batch(due)
                for leaf_id, delta in batch:
                    pub.publish(leaf_id, delta)
                published += len(batch)
                now = time.monotonic()
                if now - last >= 1.0:
                    stats = pub.stats()
                    span = now - last
                    print(f"[{now - start:6.1f}s] {(stats.deltas - last_deltas) / span:7,.0f}"
                          f" deltas/s  {(stats.datagrams - last_datagrams) / span:6,.0f}"
                          f" datagrams/s  {stats.cycles:5} snapshot cycles  "
                          f"{stats.leaves} leaves  queued {stats.queued_deltas}", flush=True)
                    last, last_deltas, last_datagrams = now, stats.deltas, stats.datagrams
                tick.wait(0.01)
            pub.flush(timeout=5)
    except KeyboardInterrupt:
        pass  # leaving the with block closed the publisher
    stats = pub.stats()
    print(f"stopped after {stats.deltas:,} deltas in {stats.datagrams:,} datagrams; "
          "END_OF_SESSION sent", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
