"""The public API's types catch misuse: this file is type-checked by ``mypy --strict``
(``tools/dev.py test``), never run. Each ``type: ignore[code]`` marks a call that must be
rejected; mypy's ``warn_unused_ignores`` (part of --strict) fails the build if it is not."""

from __future__ import annotations

from typing import assert_type

from grapevine import Publisher, StatusEvent, Subscriber, SubscriberStats, Update, UpdateKind
from grapevine.book import BookDelta, Op, OrderBook, OrderBookModel, Side


def on_book(leaf_id: int, kind: UpdateKind, book: OrderBook | None,
            delta: BookDelta | None) -> None: ...


def on_book_update(update: Update[OrderBook, BookDelta]) -> None: ...


def on_bytes(leaf_id: int, kind: UpdateKind, leaf: bytes | None, delta: bytes | None) -> None: ...


def ignores_deleted(leaf_id: int, kind: UpdateKind, book: OrderBook,
                    delta: BookDelta | None) -> None: ...


def on_status(event: StatusEvent) -> None: ...


def callbacks(sub: Subscriber[OrderBook, BookDelta]) -> None:
    sub.on_leaf(1, on_book)
    sub.on_update(on_book)
    sub.on_leaf(1, on_book_update, as_update=True)
    sub.on_update(on_book_update, as_update=True)
    sub.on_status(on_status)
    sub.on_leaf(1, on_bytes)  # type: ignore[arg-type]
    sub.on_leaf(1, ignores_deleted)  # type: ignore[arg-type]  # the leaf is None when DELETED
    sub.on_leaf(1, on_book_update)  # type: ignore[arg-type]  # takes an Update: as_update=True
    sub.on_update(on_book, as_update=True)  # type: ignore[call-overload]
    sub.on_status(on_book)  # type: ignore[arg-type]


def inferred_from_the_model() -> None:
    model = OrderBookModel()
    with Subscriber(model, on_leaf={7: on_book}) as sub, Publisher(model) as pub:
        assert_type(sub, Subscriber[OrderBook, BookDelta])
        assert_type(sub.get(7), OrderBook)
        assert_type(sub.stats(), SubscriberStats)
        assert_type(sub.stats().deltas, int)
        pub.publish(7, BookDelta(Op.ADD, Side.BID, 10_050, 300, 0))
        pub.publish(7, b"bytes")  # type: ignore[arg-type]
    Subscriber(model, on_leaf={7: on_bytes})  # type: ignore[dict-item]


async def pull(sub: Subscriber[OrderBook, BookDelta]) -> None:
    assert_type(sub.handle(0.1), int)
    assert_type(sub.fileno(), int)
    async for update in sub.updates():
        assert_type(update, Update[OrderBook, BookDelta])
        assert_type(update.leaf, OrderBook | None)
        assert_type(update.delta, BookDelta | None)
        assert_type(update.sequence, int)
