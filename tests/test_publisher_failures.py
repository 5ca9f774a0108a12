"""Publisher failures: a model that cannot encode a leaf, a sender thread that dies, socket
send errors, and the stream_id keyword against the config's (issue 7, items 7 and 8a).

Every socket sends to loopback only (interface 127.0.0.1, TTL 0) on a group and a port
free for it; every wait is on an event or condition with a timeout.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import socket
import threading
from typing import Any

import pytest
from helpers import drain, fast_publisher, wait_until

import grapevine.publisher as publisher_module
from grapevine import (
    BytesModel,
    ClosedError,
    ConfigError,
    Publisher,
    PublisherConfig,
    PublisherFailedError,
    Status,
    StatusEvent,
    Subscriber,
    SubscriberConfig,
)
from grapevine._publisher_core import PublisherCore
from grapevine._transport import open_sender
from grapevine.codec import Delta, Snapshot
from grapevine.wire import SnapshotFlag


class PoisonModel(BytesModel):
    """BytesModel whose ``encode_leaf`` fails for the value ``b"poison"`` (a user bug)."""

    def encode_leaf(self, leaf: bytes) -> bytes:
        if leaf == b"poison":
            raise ValueError("cannot encode a poisoned leaf")
        return bytes(leaf)


class NoneModel(BytesModel):
    """BytesModel whose ``encode_leaf`` returns None for ``b"none"`` (a user bug)."""

    def encode_leaf(self, leaf: bytes) -> bytes:
        if leaf == b"none":
            return None  # type: ignore[return-value]
        return bytes(leaf)


def run_cycle(core: PublisherCore[Any, Any], start: float) -> tuple[list[Any], float]:
    """Drain at advancing times until one more snapshot cycle has ended."""
    cycles = core.stats.cycles
    out: list[Any] = []
    now = start
    for _ in range(1000):
        out += drain(core, now)
        if core.stats.cycles > cycles:
            return out, now
        now += 0.001
    raise AssertionError("the snapshot cycle did not end")


# ---------------------------------------------------------------------- sans-I/O core


def test_core_skips_a_leaf_that_fails_to_encode_and_loses_no_delta() -> None:
    core = PublisherCore(PoisonModel(), fast_publisher(min_cycle_s=0.0), session_id=1)
    for leaf_id in range(10):
        core.publish(leaf_id, b"poison" if leaf_id == 4 else b"ok%d" % leaf_id)
    datagrams, now = run_cycle(core, 0.0)
    deltas = [m for d in datagrams for m in d.messages if isinstance(m, Delta)]
    assert [d.seq for d in deltas] == list(range(1, 11))  # none lost, none renumbered
    assert core.queued_deltas == 0
    snapshots = [m for d in datagrams for m in d.messages if isinstance(m, Snapshot)]
    assert 4 not in {s.leaf_id for s in snapshots}
    assert {s.leaf_id for s in snapshots} == set(range(10)) - {4}
    after = next(s for s in snapshots if s.leaf_id == 5)
    assert after.range_start == 5  # leaf 4 exists: no range assertion may cover it
    assert (after.cycle_position, after.cycle_count) == (5, 10)
    assert core.stats.snapshot_errors >= 1
    assert set(core.snapshot_failures) == {4}
    assert isinstance(core.snapshot_failures[4], ValueError)
    # A delta that makes the leaf encodable again: the next cycle snapshots it.
    core.publish(4, b"cured")
    later = [m for d in run_cycle(core, now + 1.0)[0] for m in d.messages
             if isinstance(m, Snapshot)]
    assert any(s.leaf_id == 4 and s.payload == b"cured" for s in later)
    assert core.snapshot_failures == {}


def test_core_every_leaf_failing_with_no_minimum_cycle_does_not_spin() -> None:
    core = PublisherCore(PoisonModel(), fast_publisher(min_cycle_s=0.0),
                         initial=dict.fromkeys(range(3), b"poison"), session_id=1)
    for step in range(5):
        drain(core, step * 0.01)  # returns: a failed attempt is charged to the budget
    assert core.stats.snapshot_errors >= 3
    assert core.stats.snapshots == 0
    assert set(core.snapshot_failures) == {0, 1, 2}
    assert core.stats.cycles >= 1


def test_core_a_non_bytes_leaf_encoding_is_a_snapshot_error() -> None:
    core = PublisherCore(NoneModel(), fast_publisher(), session_id=1,
                         initial={1: b"a", 2: b"none"})
    datagrams, _ = run_cycle(core, 0.0)
    snapshots = [m for d in datagrams for m in d.messages if isinstance(m, Snapshot)]
    assert [s.leaf_id for s in snapshots] == [1]  # leaf 2 skipped, the cycle goes on
    assert not snapshots[0].flags & SnapshotFlag.LAST  # leaf 2 was the last: no LAST claim
    assert isinstance(core.snapshot_failures[2], TypeError)
    core.delete(2)  # a deleted leaf no longer counts as failing
    assert core.snapshot_failures == {}


# ---------------------------------------------------------------------- runtime: encode_leaf


@pytest.mark.network
def test_encode_leaf_error_skips_that_leaf_and_is_surfaced(
        endpoint: dict[str, Any], caplog: pytest.LogCaptureFixture) -> None:
    model = PoisonModel()
    caplog.set_level(logging.ERROR, logger="grapevine")
    with Subscriber(model, **endpoint) as early, \
            Publisher(model, config=fast_publisher(), **endpoint) as pub:
        ended = threading.Event()

        def on_status(event: StatusEvent) -> None:
            if event.kind is Status.SESSION_ENDED:
                ended.set()

        early.on_status(on_status)
        pub.publish(1, b"ok")
        pub.publish(2, b"poison")
        assert wait_until(lambda: pub.stats().snapshot_errors >= 1)
        # The sender lives on: deltas still flow, flush() returns, the error is visible.
        pub.publish(3, b"more")
        assert pub.flush(timeout=5)
        assert wait_until(lambda: early.values().get(3) == b"more")
        assert early.values()[2] == b"poison"  # live subscribers still get the deltas
        failures = pub.snapshot_failures()
        assert list(failures) == [2]
        assert isinstance(failures[2], ValueError)
        assert pub.stats().snapshot_failing_leaves == 1
        assert wait_until(lambda: any("leaf 2" in r.getMessage() and r.exc_info
                                      for r in caplog.records))
        # A late joiner installs every leaf the cycle can carry but is truthfully not synced.
        with Subscriber(model, **endpoint) as late:
            assert wait_until(lambda: {1, 3} <= set(late.values()))
            assert 2 not in late.values()
            assert not late.synced
            # Once the leaf encodes again the cycle carries it and the late joiner syncs.
            seq = pub.publish(2, b"cured")
            assert late.wait_until_applied(seq, session_id=pub.session_id, timeout=10)
            assert late.values() == pub.values()
            assert pub.snapshot_failures() == {}
        assert pub.stats().send_errors == 0
        # close() still ends the session cleanly (END_OF_SESSION).
        pub.close()
        assert ended.wait(10)


# ---------------------------------------------------------------------- runtime: dead sender


class FaultySocket:
    """Wraps the publisher's real (loopback, TTL 0) socket to inject send failures."""

    def __init__(self, real: socket.socket, *, block_first_send: bool) -> None:
        self.real = real
        self.block = block_first_send  # the next send waits for `release`
        self.blocked = threading.Event()  # a send is waiting for `release`
        self.release = threading.Event()
        self.fail_next: BaseException | None = None  # raised by the next send, once
        self.os_errors = 0  # this many sends raise EPERM

    def _fault(self) -> None:
        if self.block:
            self.block = False
            self.blocked.set()
            self.release.wait(10)
        if self.fail_next is not None:
            exc, self.fail_next = self.fail_next, None
            raise exc
        if self.os_errors:
            self.os_errors -= 1
            raise PermissionError(errno.EPERM, "Operation not permitted")

    def send(self, data: Any) -> int:
        self._fault()
        return self.real.send(data)

    def sendto(self, data: Any, address: Any) -> int:
        # The stream goes out with sendto when the publisher also answers retransmission
        # requests on this socket (SPEC §15).
        self._fault()
        return self.real.sendto(data, address)

    def fileno(self) -> int:
        return self.real.fileno()

    def recvfrom(self, size: int) -> tuple[bytes, Any]:
        return self.real.recvfrom(size)

    def close(self) -> None:
        self.real.close()


class Faults:
    """The :class:`FaultySocket` of every publisher the test creates, in order."""

    def __init__(self) -> None:
        self.sockets: list[FaultySocket] = []
        self.block_first_send = False  # the sender's first send (a heartbeat) blocks


@pytest.fixture
def faults(monkeypatch: pytest.MonkeyPatch) -> Faults:
    """Publishers created in the test send through a :class:`FaultySocket`."""
    faults = Faults()

    def open_faulty(*args: Any, **kwargs: Any) -> FaultySocket:
        wrapper = FaultySocket(open_sender(*args, **kwargs),
                               block_first_send=faults.block_first_send)
        faults.sockets.append(wrapper)
        return wrapper

    monkeypatch.setattr(publisher_module, "open_sender", open_faulty)
    return faults


@pytest.mark.network
@pytest.mark.timeout(30)
def test_a_dead_sender_is_raised_by_publish_delete_and_flush(
        endpoint: dict[str, Any], faults: Faults, caplog: pytest.LogCaptureFixture) -> None:
    faults.block_first_send = True
    pub: Publisher[bytes, bytes] = Publisher(BytesModel(), config=fast_publisher(), **endpoint)
    sock = faults.sockets[0]
    try:
        assert sock.blocked.wait(10)
        pub.publish(1, b"queued")  # the sender is alive, stuck in its first send
        sock.fail_next = RuntimeError("boom")
        sock.release.set()
        with pytest.raises(PublisherFailedError, match="RuntimeError: boom") as raised:
            pub.flush()  # no timeout: must not hang once the sender is dead
        assert isinstance(raised.value.__cause__, RuntimeError)
        assert pub.failure is raised.value.__cause__
        with pytest.raises(PublisherFailedError, match="boom") as raised:
            pub.publish(2, b"x")
        assert isinstance(raised.value.__cause__, RuntimeError)
        with pytest.raises(PublisherFailedError):
            pub.delete(1)
        with pytest.raises(PublisherFailedError):
            pub.flush(timeout=1)
        assert any(r.levelno == logging.ERROR and r.exc_info for r in caplog.records)
    finally:
        pub.close()  # the calls above reported the failure: close() does not raise it again
    pub.close()
    assert sock.real.fileno() == -1  # the socket is closed (the fixture checks the thread)
    with pytest.raises(ClosedError):
        pub.publish(3, b"y")


@pytest.mark.network
@pytest.mark.timeout(30)
def test_a_dead_sender_ends_the_session_and_close_raises_it_once(
        endpoint: dict[str, Any], faults: Faults) -> None:
    model = BytesModel()
    events: list[Status] = []
    with Subscriber(model, on_status=lambda e: events.append(e.kind), **endpoint) as sub:
        pub: Publisher[bytes, bytes] = Publisher(model, config=fast_publisher(), **endpoint)
        sock = faults.sockets[0]
        try:
            seq = pub.publish(1, b"a")
            assert sub.wait_until_applied(seq, session_id=pub.session_id, timeout=10)
            sock.fail_next = RuntimeError("kaput")  # the next heartbeat kills the sender
            # The dead sender still tells subscribers the session is over.
            assert wait_until(lambda: Status.SESSION_ENDED in events)
            assert isinstance(pub.failure, RuntimeError)
            assert not sub.synced
        except BaseException:
            with contextlib.suppress(PublisherFailedError):
                pub.close()  # without hiding the assertion that failed
            raise
        with pytest.raises(PublisherFailedError, match="RuntimeError: kaput") as raised:
            pub.close()  # nothing reported the failure yet: close() does, once
        assert raised.value.__cause__ is pub.failure
        pub.close()  # a second close is a no-op
        assert sock.real.fileno() == -1


@pytest.mark.network
@pytest.mark.timeout(30)
def test_a_publish_blocked_on_a_full_queue_wakes_when_the_sender_dies(
        endpoint: dict[str, Any], faults: Faults) -> None:
    faults.block_first_send = True
    pub: Publisher[bytes, bytes] = Publisher(
        BytesModel(), on_full="block", publish_timeout=20,
        config=fast_publisher(max_queued_deltas=2), **endpoint)
    sock = faults.sockets[0]
    outcome: list[BaseException | int] = []

    def third() -> None:
        try:
            outcome.append(pub.publish(3, b"c"))
        except Exception as exc:  # noqa: BLE001 - handed to the test thread
            outcome.append(exc)

    waiter = threading.Thread(target=third, name="test-blocked-publish")
    try:
        assert sock.blocked.wait(10)
        pub.publish(1, b"a")
        pub.publish(2, b"b")  # the queue is full and the sender is stuck in a send
        waiter.start()
        # Wait until that publish waits for room (CPython's Condition keeps its waiters).
        assert wait_until(lambda: len(pub._room._waiters) > 0)  # type: ignore[attr-defined]
        sock.fail_next = RuntimeError("boom")
        sock.release.set()
        waiter.join(10)
        assert not waiter.is_alive()
        assert len(outcome) == 1
        assert isinstance(outcome[0], PublisherFailedError), outcome
    finally:
        sock.release.set()
        pub.close()
        waiter.join(10)


@pytest.mark.network
def test_send_errors_are_counted_and_the_sender_survives(
        endpoint: dict[str, Any], faults: Faults) -> None:
    model = BytesModel()
    with Subscriber(model, **endpoint) as sub, \
            Publisher(model, config=fast_publisher(), **endpoint) as pub:
        faults.sockets[0].os_errors = 3  # EPERM, as a firewall rule gives
        assert wait_until(lambda: pub.stats().send_errors >= 3)
        assert pub.failure is None
        seq = pub.publish(1, b"after")
        assert pub.flush(timeout=5)
        assert sub.wait_until_applied(seq, session_id=pub.session_id, timeout=10)
        assert sub.values() == {1: b"after"}


# ---------------------------------------------------------------------- 8a: stream_id


@pytest.mark.network
def test_the_configs_stream_id_is_used_when_no_keyword_is_given(
        endpoint: dict[str, Any]) -> None:
    model = BytesModel()
    with Publisher(model, config=fast_publisher(stream_id=5), **endpoint) as pub, \
            Subscriber(model, stream_id=5, **endpoint) as by_keyword, \
            Subscriber(model, config=SubscriberConfig(stream_id=5), **endpoint) as by_config:
        assert (pub.stream_id, pub.config.stream_id) == (5, 5)
        assert (by_config.stream_id, by_config.config.stream_id) == (5, 5)
        names = {t.name for t in threading.enumerate()}
        label = f"{endpoint['group']}:{endpoint['port']}/5"
        assert {f"grapevine-sender[{label}]", f"grapevine-receiver[{label}]"} <= names
        seq = pub.publish(1, b"on stream 5")
        for sub in (by_keyword, by_config):
            assert sub.wait_until_applied(seq, session_id=pub.session_id, timeout=10)
            assert sub.values() == {1: b"on stream 5"}
            assert sub.stats().foreign_stream == 0


@pytest.mark.network
def test_an_explicit_stream_id_wins_and_a_conflict_is_refused(
        endpoint: dict[str, Any]) -> None:
    model = BytesModel()
    with Publisher(model, stream_id=7, **endpoint) as pub:
        assert (pub.stream_id, pub.config.stream_id) == (7, 7)
    with Publisher(model, stream_id=7, config=PublisherConfig(stream_id=7), **endpoint) as pub:
        assert pub.config.stream_id == 7
    with Subscriber(model, stream_id=7, **endpoint) as sub:
        assert (sub.stream_id, sub.config.stream_id) == (7, 7)
    with Subscriber(model, stream_id=7, config=SubscriberConfig(stream_id=7),
                    **endpoint) as sub:
        assert sub.config.stream_id == 7
    before = set(threading.enumerate())
    with pytest.raises(ConfigError, match=r"stream_id=7.*config\.stream_id=5"):
        Publisher(model, stream_id=7, config=PublisherConfig(stream_id=5), **endpoint)
    with pytest.raises(ConfigError, match=r"stream_id=3.*config\.stream_id=0"):
        Publisher(model, stream_id=3, config=PublisherConfig(), **endpoint)
    with pytest.raises(ConfigError, match=r"stream_id=7.*config\.stream_id=5"):
        Subscriber(model, stream_id=7, config=SubscriberConfig(stream_id=5), **endpoint)
    assert set(threading.enumerate()) <= before  # refused before any thread started
