"""Follow the order books of examples/order_book_publisher.py and show the replica live.

    python examples/order_book_subscriber.py --top 5
    python examples/order_book_subscriber.py --loss 0.05    # drop 5% of datagrams on purpose

Start it before or after the publisher: it syncs from the snapshot cycle either way. Status
events (SYNCED, GAP, RESTARTED, SILENT, ...) print as they happen, a few per second at most;
once a second it prints sync progress, counters and the top of the first --top books.
"""

from __future__ import annotations

import argparse
import random
import sys
import threading
import time
from collections import Counter
from queue import Empty, SimpleQueue
from typing import Any

from grapevine import (
    DEFAULT_GROUP,
    DEFAULT_PORT,
    Status,
    StatusEvent,
    Subscriber,
    SubscriberConfig,
)
from grapevine.book import BookDelta, OrderBook, OrderBookModel

_EVENTS_PER_KIND_PER_S = 3
# What the live view says while not synced, after each of these events.
_PHASES = {
    Status.SESSION_STARTED: "syncing",
    Status.RESTARTED: "syncing (publisher restarted)",
    Status.RESUMED: "syncing",
    Status.SILENT: "publisher silent",
    Status.SESSION_ENDED: "publisher ended its session",
}


class Updates:
    """Counts updates; on_update calls it on the subscriber's dispatcher thread."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, leaf_id: int, kind: Any, leaf: Any, delta: Any) -> None:
        self.count += 1


def describe(event: StatusEvent) -> str:
    text = event.kind.name
    if event.kind is Status.GAP:
        text += f" deltas {event.first_seq}..{(event.end_seq or 1) - 1} lost"
    elif event.leaf_id is not None:
        text += f" book {event.leaf_id}"
    elif event.session_id is not None and event.kind in (Status.SESSION_STARTED,
                                                         Status.RESTARTED):
        text += f" session {event.session_id:#018x}"
    return text


def top_of_book(leaf_id: int, book: OrderBook, fresh: bool) -> str:
    bid, ask = book.best_bid(), book.best_ask()
    bid_text = f"{bid[1]:>6} @ {bid[0]:<7}" if bid else f"{'-':>16}"
    ask_text = f"{ask[0]:>7} x {ask[1]:<6}" if ask else f"{'-':<16}"
    spread = book.spread()
    trade = book.last_trade
    last = f"last {trade[1]}@{trade[0]}" if trade else ""
    return (f"    book {leaf_id:>4} {bid_text} | {ask_text} spread "
            f"{spread if spread is not None else '-':>3}  {last}{'' if fresh else '  (stale)'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--group", default=DEFAULT_GROUP)
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--stream", type=int, default=0, help="stream id")
    parser.add_argument("--duration", type=float, default=0.0, help="seconds (0: forever)")
    parser.add_argument("--top", type=int, default=5, help="books to show")
    parser.add_argument("--loss", type=float, default=0.0,
                        help="fault injection: fraction of datagrams to drop (0..1)")
    parser.add_argument("--seed", type=int, default=None, help="seed of the loss RNG")
    parser.add_argument("--no-retransmit", action="store_true",
                        help="do not ask for lost datagrams: the snapshot cycle repairs loss")
    args = parser.parse_args(argv)

    rng = random.Random(args.seed)
    loss = args.loss
    drop = (lambda datagram: rng.random() < loss) if loss > 0 else None
    events: SimpleQueue[StatusEvent] = SimpleQueue()
    updates = Updates()
    # Callbacks passed to the constructor are in place before the first datagram arrives.
    sub: Subscriber[OrderBook, BookDelta] = Subscriber(
        OrderBookModel(), group=args.group, port=args.port,
        config=SubscriberConfig(stream_id=args.stream, retransmit=not args.no_retransmit),
        drop_filter=drop, on_status=events.put, on_update=updates)
    print(f"listening on {args.group}:{args.port} stream {args.stream}"
          + (f" dropping {loss:.0%} of datagrams" if loss else ""), flush=True)

    tick = threading.Event()
    start = last = time.monotonic()
    last_updates = 0
    phase = "waiting for a publisher"
    printed: Counter[Status] = Counter()
    suppressed: Counter[Status] = Counter()
    try:
        with sub:
            while not args.duration or time.monotonic() - start < args.duration:
                tick.wait(0.1)
                now = time.monotonic()
                while True:
                    try:
                        event = events.get_nowait()
                    except Empty:
                        break
                    if event.kind in _PHASES:
                        phase = _PHASES[event.kind]
                    if printed[event.kind] < _EVENTS_PER_KIND_PER_S:
                        printed[event.kind] += 1
                        print(f"[{event.time - start:6.1f}s] {describe(event)}", flush=True)
                    else:
                        suppressed[event.kind] += 1
                if now - last < 1.0:
                    continue
                if suppressed:
                    print("         (not shown: " + ", ".join(
                        f"{count} {kind.name}" for kind, count in suppressed.items()) + ")")
                printed.clear()
                suppressed.clear()
                stats = sub.stats()
                fresh, total = sub.progress()
                state = "SYNCED" if sub.synced else phase
                rate = (updates.count - last_updates) / (now - last)
                print(f"[{now - start:6.1f}s] {state}  fresh {fresh}/{total}  stale "
                      f"{stats.stale_leaves}  suspect {stats.suspect_leaves}  {rate:,.0f}"
                      f" updates/s  gaps {stats.gaps}  repairs {stats.repairs}  restarts "
                      f"{stats.restarts}  dropped {stats.injected_drops}  resent "
                      f"{stats.retransmitted_datagrams}", flush=True)
                with sub.locked() as replica:
                    lines = [top_of_book(leaf_id, book, replica.is_fresh(leaf_id))
                             for leaf_id, book in replica.items()[: args.top]]
                if lines:
                    print("\n".join(lines), flush=True)
                last, last_updates = now, updates.count
    except KeyboardInterrupt:
        pass  # leaving the with block closed the subscriber
    stats = sub.stats()
    print(f"stopped: {stats.datagrams:,} datagrams, {stats.deltas:,} deltas, "
          f"{stats.gaps} gaps, {stats.repairs} repairs, synced={sub.synced}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
