"""Where callbacks run and what they get: Update objects (sequence, send time), pull mode
(handle, fileno), the asyncio adapter, and typed stats. Real loopback multicast."""

from __future__ import annotations

import ast
import asyncio
import dataclasses
import inspect
import selectors
import threading
import time
from typing import Any

import pytest
from helpers import Endpoint, fast_publisher, wait_until

from grapevine import (
    BytesModel,
    ClosedError,
    ConfigError,
    Publisher,
    Status,
    StatusEvent,
    Subscriber,
    Update,
    UpdateKind,
)
from grapevine import stats as stats_module
from grapevine._subscriber_core import SubscriberCounters
from grapevine.stats import PublisherStats, SubscriberStats

pytestmark = pytest.mark.network


def test_updates_carry_the_stream_sequence_and_the_send_time(endpoint: Endpoint) -> None:
    model = BytesModel()
    got: list[Update[bytes, bytes]] = []
    every: list[Update[bytes, bytes]] = []
    plain: list[tuple[Any, ...]] = []
    done = threading.Event()
    with Subscriber(model, **endpoint) as sub, \
            Publisher(model, config=fast_publisher(), **endpoint) as pub:
        sub.on_leaf(5, got.append, as_update=True)
        sub.on_update(every.append, as_update=True)

        def record(*args: Any) -> None:  # every argument, to check there are four
            plain.append(args)
            if len(plain) == 3:
                done.set()

        sub.on_leaf(5, record)
        before = time.time_ns()
        sequences = [pub.publish(5, b"v%d" % i) for i in range(3)]
        pub.publish(6, b"other")
        assert done.wait(10)
        after = time.time_ns()
        assert wait_until(lambda: len(every) >= 4)
    changed = [u for u in got if u.kind is UpdateKind.CHANGED]
    assert [u.sequence for u in changed] == sequences
    assert [u.leaf for u in changed] == [b"v0", b"v1", b"v2"]
    assert all(before <= u.send_time_ns <= after for u in changed)
    # The four-argument form gets the same first four fields, nothing more.
    assert [args for args in plain if args[1] is UpdateKind.CHANGED] == \
        [tuple(u[:4]) for u in changed]
    assert {u.leaf_id for u in every} == {5, 6}
    assert isinstance(changed[0], Update)
    assert changed[0]._fields[-2:] == ("sequence", "send_time_ns")


def test_an_update_callback_can_be_cancelled(endpoint: Endpoint) -> None:
    model = BytesModel()
    seen: list[Update[bytes, bytes]] = []
    with Subscriber(model, **endpoint) as sub, \
            Publisher(model, config=fast_publisher(), **endpoint) as pub:
        subscription = sub.on_update(seen.append, as_update=True)
        seq = pub.publish(1, b"a")
        assert sub.wait_until_applied(seq, timeout=10)
        assert wait_until(lambda: any(u.sequence == seq for u in seen))
        subscription.cancel()
        count = len(seen)
        seq = pub.publish(1, b"b")
        assert sub.wait_until_applied(seq, timeout=10)
        marker = threading.Event()
        sub.on_update(lambda *_: marker.set())  # delivered after the cancelled one would be
        pub.publish(1, b"c")
        assert marker.wait(10)
    assert len(seen) == count


def test_pull_mode_runs_callbacks_on_the_calling_thread(endpoint: Endpoint) -> None:
    model = BytesModel()
    threads: set[str] = set()
    statuses: list[StatusEvent] = []
    values: dict[int, bytes | None] = {}

    def on_update(leaf_id: int, kind: UpdateKind, leaf: bytes | None, _: Any) -> None:
        threads.add(threading.current_thread().name)
        values[leaf_id] = leaf

    with Subscriber(model, delivery="pull", on_update=on_update, on_status=statuses.append,
                    **endpoint) as sub:
        assert not any(t.name.startswith("grapevine-dispatch") for t in threading.enumerate())
        assert sub.handle(timeout=0) == 0  # nothing yet, and no wait
        with Publisher(model, config=fast_publisher(), **endpoint) as pub:
            seq = 0
            for i in range(50):
                seq = pub.publish(i % 5, b"x%d" % i)
            assert sub.wait_until_applied(seq, timeout=10)
            assert values == {}  # nothing runs until the user asks
            delivered = 0
            while len(values) < 5 or not any(e.kind is Status.SYNCED for e in statuses):
                delivered += sub.handle(timeout=5)
            assert delivered >= 50
        assert threads == {threading.current_thread().name}
        assert values == {i: b"x%d" % (45 + i) for i in range(5)}


def test_fileno_is_readable_exactly_when_handle_has_work(endpoint: Endpoint) -> None:
    model = BytesModel()
    seen: list[int] = []
    with Subscriber(model, delivery="pull", **endpoint) as sub, \
            selectors.DefaultSelector() as selector:
        sub.on_update(lambda leaf_id, *_: seen.append(leaf_id))
        selector.register(sub.fileno(), selectors.EVENT_READ)
        with Publisher(model, config=fast_publisher(), **endpoint) as pub:
            seq = pub.publish(3, b"a")
            assert selector.select(timeout=10), "fileno never became readable"
            assert wait_until(lambda: sub.stream_position >= seq)
            while 3 not in seen:
                assert selector.select(timeout=10)
                sub.handle(timeout=0)
            # Everything taken: the fd is quiet until the next datagram.
            sub.handle(timeout=0)
            assert selector.select(timeout=0) == []
            pub.publish(4, b"b")
            assert selector.select(timeout=10)
            while 4 not in seen:
                sub.handle(timeout=5)
        selector.unregister(sub.fileno())


def test_close_wakes_a_blocked_handle_and_pull_calls_then_raise(
        endpoint: Endpoint) -> None:
    sub = Subscriber(BytesModel(), delivery="pull", **endpoint)
    returned = threading.Event()
    result: list[int] = []

    def consume() -> None:
        result.append(sub.handle())  # blocks: no publisher
        returned.set()

    consumer = threading.Thread(target=consume, name="test-consumer")
    consumer.start()
    sub.close()
    assert returned.wait(10)
    consumer.join(10)
    assert result == [0]
    for call in (sub.handle, sub.fileno):
        with pytest.raises(ClosedError):
            call()
    sub.close()  # idempotent


def test_pull_calls_need_pull_delivery(endpoint: Endpoint) -> None:
    with Subscriber(BytesModel(), **endpoint) as sub:
        with pytest.raises(ConfigError, match="delivery='pull'"):
            sub.handle(0)
        with pytest.raises(ConfigError, match="delivery='pull'"):
            sub.fileno()
    with pytest.raises(ConfigError, match="delivery"):
        Subscriber(BytesModel(), delivery="later", **endpoint)  # type: ignore[arg-type]


def test_pull_mode_conflates_when_the_user_falls_behind(endpoint: Endpoint) -> None:
    model = BytesModel()
    latest: dict[int, tuple[UpdateKind, bytes | None]] = {}
    with Subscriber(model, delivery="pull", max_callback_backlog=20, **endpoint) as sub, \
            Publisher(model, config=fast_publisher(), **endpoint) as pub:
        sub.on_update(lambda leaf_id, kind, leaf, _: latest.__setitem__(leaf_id, (kind, leaf)))
        seq = 0
        for i in range(2_000):
            seq = pub.publish(i % 10, b"%d" % i)
        assert sub.wait_until_applied(seq, timeout=20)
        while sub.handle(timeout=0.2):
            pass
        stats = sub.stats()
    assert stats.conflated_updates > 0
    assert stats.callback_backlog == 0
    assert {leaf_id: leaf for leaf_id, (_, leaf) in latest.items()} == \
        {i: b"%d" % (1990 + i) for i in range(10)}
    assert any(kind is UpdateKind.CONFLATED for kind, _ in latest.values())


def test_asyncio_iterates_updates_and_ends_on_close(endpoint: Endpoint) -> None:
    model = BytesModel()
    statuses: list[Status] = []

    async def main() -> list[Update[bytes, bytes]]:
        got: list[Update[bytes, bytes]] = []
        sub = Subscriber(model, delivery="pull", **endpoint)
        sub.on_status(lambda event: statuses.append(event.kind))
        with Publisher(model, config=fast_publisher(), **endpoint) as pub:
            sequences = [pub.publish(i, b"a%d" % i) for i in range(20)]

            async def consume() -> None:
                async for update in sub.updates():
                    got.append(update)
                    if update.sequence == sequences[-1]:
                        sub.close()  # the iteration then ends by itself

            await asyncio.wait_for(consume(), timeout=20)
        return got

    got = asyncio.run(main())
    changed = [u for u in got if u.kind is UpdateKind.CHANGED]
    assert [u.leaf_id for u in changed] == list(range(20))
    assert [u.leaf for u in changed] == [b"a%d" % i for i in range(20)]
    assert Status.SESSION_STARTED in statuses  # status callbacks ran in the loop too


def test_asyncio_iteration_closed_from_another_thread(endpoint: Endpoint) -> None:
    sub = Subscriber(BytesModel(), delivery="pull", **endpoint)

    async def main() -> int:
        count = 0
        loop = asyncio.get_running_loop()
        loop.call_later(0.05, lambda: threading.Thread(target=sub.close,
                                                       name="test-closer").start())
        async for _ in sub.updates():
            count += 1
        return count

    assert asyncio.run(asyncio.wait_for(main(), timeout=20)) == 0
    assert wait_until(lambda: not any(t.name == "test-closer" for t in threading.enumerate()))


# ---------------------------------------------------------------------------- stats


def test_stats_are_frozen_typed_and_take_rates(endpoint: Endpoint) -> None:
    model = BytesModel()
    with Subscriber(model, **endpoint) as sub, \
            Publisher(model, config=fast_publisher(), **endpoint) as pub:
        before, published_before = sub.stats(), pub.stats()
        seq = 0
        for i in range(100):
            seq = pub.publish(i % 7, b"x")
        assert sub.wait_until_applied(seq, timeout=10)
        after, published_after = sub.stats(), pub.stats()
    assert isinstance(after, SubscriberStats)
    assert isinstance(published_after, PublisherStats)
    with pytest.raises(dataclasses.FrozenInstanceError):
        after.deltas = 0  # type: ignore[misc]
    assert after.since(before).deltas == after.deltas - before.deltas >= 100
    assert after.since(before).taken_at == pytest.approx(after.taken_at - before.taken_at)
    rates = after.rates(before)
    assert rates["deltas"] == pytest.approx((after.deltas - before.deltas)
                                            / (after.taken_at - before.taken_at))
    assert "stale_leaves" not in rates  # a gauge has no rate
    assert published_after.rates(published_before)["deltas"] > 0
    assert after.to_dict()["deltas"] == after.deltas
    assert set(after.to_dict()) == {f.name for f in dataclasses.fields(after)}
    with pytest.raises(ValueError, match="earlier"):
        before.rates(after)


def test_every_core_counter_is_a_documented_stats_field() -> None:
    """Counters added to the core cannot be forgotten in the public type or its docs."""
    core_counters = {f.name for f in dataclasses.fields(SubscriberCounters)}
    assert core_counters <= {f.name for f in dataclasses.fields(SubscriberStats)}
    tree = ast.parse(inspect.getsource(stats_module))
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name in ("SubscriberStats",
                                                            "PublisherStats"):
            body = node.body
            for index, item in enumerate(body):
                if isinstance(item, ast.AnnAssign):
                    following = body[index + 1] if index + 1 < len(body) else None
                    where = f"{node.name}.{ast.unparse(item.target)}"
                    assert isinstance(following, ast.Expr), where
                    assert isinstance(following.value, ast.Constant), where


def test_stats_do_not_walk_the_leaves(endpoint: Endpoint,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    model = BytesModel()
    with Subscriber(model, **endpoint) as sub, \
            Publisher(model, config=fast_publisher(), **endpoint) as pub:
        seq = 0
        for i in range(500):
            seq = pub.publish(i, b"x")
        assert sub.wait_until_applied(seq, timeout=10)
        core = sub._core

        def walked(*_: Any) -> Any:
            raise AssertionError("stats() listed leaves")

        for name in ("stale_leaves", "suspect_leaves", "values", "progress"):
            monkeypatch.setattr(core, name, walked)
        stats = sub.stats()
        monkeypatch.undo()
    assert stats.stale_leaves == 0
    assert stats.suspect_leaves == 0
