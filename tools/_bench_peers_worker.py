#!/usr/bin/env python3
"""Worker processes of ``tools/bench_peers.py``: not a tool of its own.

    python tools/_bench_peers_worker.py ROLE CONFIG_JSON

``bench_peers.py`` starts every worker itself, inside the private network namespace it
made (only ``lo`` exists there); a worker refuses to start anywhere else. A worker reads
one JSON command per line on stdin and answers each with one JSON line on stdout (its
logging goes to stderr). Roles:

* ``pub``: the publisher of every throughput and latency trial. ``open`` names the system
  (raw UDP, pyzmq, LCM, Grapevine), ``run`` publishes paced or flat out, ``finish`` ends
  its CPU account and reports a digest of the publisher's state.
* ``sub``: one subscriber (``bench_peers.py`` runs four, all idle but the ones a trial
  arms). ``arm`` opens the system's subscriber, ``mark`` starts the measured phase,
  ``collect`` waits for the last message and reports counts, gaps, CPU and latency,
  ``digest`` reports the replica's digest (so the parent checks it equals the publisher's).
* ``ljpub`` / ``ljsub``: the late join: a Grapevine order-book publisher of N books under
  churn, and a fresh subscriber process per join (its RSS growth is the replica's memory).
* ``plain``: the memory of the same books held as plain ``OrderBook`` objects (what a
  pyzmq or LCM subscriber holds: they have no replica of their own).

Every publisher stamps each message with ``time.monotonic_ns()`` just before handing it
to the library; the subscriber callback compares that with its own ``monotonic_ns()``
(one host, one clock). Raw and 32-byte Grapevine messages carry the stamp in the payload;
order-book deltas do not have room, so the publisher keeps the stamps by sequence in a
side file that the subscriber reads after the run.
"""

from __future__ import annotations

import array
import ctypes
import functools
import gc
import hashlib
import importlib
import json
import mmap
import os
import random
import resource
import select
import signal
import socket
import struct
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, cast

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from grapevine import BytesModel, Publisher, PublisherConfig, Subscriber, Update, UpdateKind
from grapevine.book import BookDelta, Op, OrderBook, OrderBookModel, Side, decode_book, encode_book

# The 32-byte message of the raw UDP and Grapevine BytesModel rows:
# trial id, leaf id, sequence (from 1), publish time (monotonic ns), padding.
MSG = struct.Struct("<IIQQQ")
# The order-book message of the pyzmq and LCM rows: trial id, leaf id, sequence, then the
# 26-byte delta exactly as OrderBookModel encodes it for Grapevine.
HDR = struct.Struct("<IIQ")
POOL_ENTRY = struct.Struct("<I26s")  # a pooled delta: leaf id, encoded BookDelta
BOOK_ENTRY = struct.Struct("<II")  # a stored book: leaf id, length of encode_book()
PROBE_LEAF = 0xFFFFFFFF  # a leaf id no trial uses: marks the connection probes
INTERFACE = "127.0.0.1"
RECEIVE_BUFFER = 4 << 20  # Grapevine's default SO_RCVBUF, given to every UDP receiver
LCM_CHANNEL = "BOOK"
CHANGED = UpdateKind.CHANGED
CONFLATED = UpdateKind.CONFLATED
_PR_SET_PDEATHSIG = 1

clock = time.monotonic_ns


# ---------------------------------------------------------------------------- plumbing

def optional(name: str) -> Any:
    """An optional module (pyzmq, LCM), or None. Imported by name so that the benchmark,
    and mypy, work where the ``bench`` extra is not installed."""
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def cpu_s() -> float:
    """CPU time of this whole process (every thread), user + system, in seconds.
    ``process_time`` reads CLOCK_PROCESS_CPUTIME_ID: the same account as ``os.times()``
    without its 10 ms clock ticks, which short trials would not survive."""
    return time.process_time()


def rss_bytes() -> int:
    """Resident set size now (not the peak that getrusage reports)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize()


def only_loopback() -> None:
    """Refuse to run unless this network namespace has only ``lo``: then nothing a worker
    sends can leave the host, whatever address it is given."""
    present = sorted(name for _, name in socket.if_nameindex())
    if present != ["lo"]:
        raise SystemExit(f"bench_peers worker: refusing to run in a namespace with "
                         f"interfaces {present}; start tools/bench_peers.py instead")


def die_with_parent() -> None:
    """Ask the kernel to kill this worker if the benchmark dies (no orphans, ever)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass  # not Linux: the parent's cleanup still kills every worker
    if os.getppid() == 1:  # the parent died before prctl took effect
        raise SystemExit(1)


class Commands:
    """JSON command lines from fd 0, read without Python's read-ahead buffering, so that
    ``waiting()`` (select on the fd) tells the truth: the publisher probes until the parent
    sends its next command."""

    def __init__(self) -> None:
        self._buffer = b""

    def waiting(self, timeout: float) -> bool:
        if b"\n" in self._buffer:
            return True
        readable, _, _ = select.select([0], [], [], timeout)
        return bool(readable)

    def next(self) -> dict[str, Any] | None:
        while b"\n" not in self._buffer:
            chunk = os.read(0, 65536)
            if not chunk:
                return None
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        command: dict[str, Any] = json.loads(line)
        return command


def reply(fields: Mapping[str, Any]) -> None:
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


def read_books(path: str) -> dict[int, OrderBook]:
    """Books stored by the parent (leaf id, length, ``encode_book`` bytes each). Through an
    mmap that is closed before returning, so the file's bytes do not stay resident (the
    ``plain`` role measures the RSS the books themselves take)."""
    books: dict[int, OrderBook] = {}
    with open(path, "rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as data:
        view = memoryview(data)
        offset = 0
        try:
            while offset < len(view):
                leaf, size = BOOK_ENTRY.unpack_from(view, offset)
                offset += BOOK_ENTRY.size
                books[leaf] = decode_book(view[offset:offset + size])
                offset += size
        finally:
            view.release()
    return books


def digest_items(items: Iterable[tuple[int, Any]]) -> str:
    """A digest of a state: leaf ids and values, in leaf order. Values are order books
    (hashed as their canonical snapshot bytes), bytes, or ints (the raw rows' last
    sequence per leaf)."""
    h = hashlib.blake2b(digest_size=16)
    for leaf, value in sorted(items, key=lambda item: item[0]):
        h.update(leaf.to_bytes(4, "little"))
        if isinstance(value, OrderBook):
            data = encode_book(value)
        elif isinstance(value, int):
            data = value.to_bytes(8, "little")
        else:
            data = bytes(value)
        h.update(len(data).to_bytes(4, "little"))
        h.update(data)
    return h.hexdigest()


def percentiles(values: array.array[int]) -> dict[str, float | int]:
    """p50 / p99 / p99.9 / max of latencies in ns, reported in microseconds."""
    if not values:
        return {"samples": 0}
    ordered = sorted(values)
    n = len(ordered)

    def at(q: float) -> float:
        return round(ordered[min(n - 1, int(q * n))] / 1000, 1)

    return {"samples": n, "p50_us": at(0.50), "p99_us": at(0.99), "p999_us": at(0.999),
            "max_us": round(ordered[-1] / 1000, 1)}


# ---------------------------------------------------------------------------- publishers

SendBatch = Callable[[int, int], int]  # (first index, how many) -> how many it published


def drive(send: SendBatch, rate: float | None, seconds: float, cap: int,
          limit: int) -> tuple[int, int, int]:
    """Publish through ``send`` for ``seconds``: paced at ``rate`` messages/s (each message
    is published once it is due; sleeps while none is), or flat out (``rate`` None), in
    calls of at most ``cap`` messages, never more than ``limit`` in all. Returns (sent,
    start ns, end ns)."""
    start = clock()
    end = start + int(seconds * 1e9)
    sent = 0
    ns_per = 1e9 / rate if rate else 0.0
    sleep = time.sleep
    while sent < limit:
        now = clock()
        if now >= end:
            break
        if rate:
            due = int((now - start) / ns_per) + 1 - sent
            if due <= 0:
                sleep((sent * ns_per - (now - start)) / 1e9)
                continue
            n = min(due, cap, limit - sent)
        else:
            n = min(cap, limit - sent)
        done = send(sent, n)
        sent += done
        if done < n:
            break
    return sent, start, clock()


class PubSystem:
    """One system's publisher for one trial."""

    cap = 64  # messages per send() call: small enough to check the clock often
    side_times = False  # True: keeps publish stamps by sequence (order-book rows)

    def __init__(self) -> None:
        self.times: array.array[int] = array.array("q")

    def probe(self, trial: int) -> None:
        """Send one connection probe (systems whose subscribers cannot tell otherwise
        that they are connected; Grapevine's sync replaces it)."""

    def sender(self, trial: int) -> SendBatch:
        raise NotImplementedError

    def limit(self) -> int:
        """How many messages a run may publish at most (the delta pool's size)."""
        return 1 << 62

    def after_run(self) -> None:
        """Called at the end of the publishing loop, inside the measured phase."""

    def digest(self, sent: int) -> str:
        raise NotImplementedError

    def close(self) -> None:
        pass


class RawPub(PubSystem):
    """Pure Python multicast: ``per_datagram`` 32-byte messages per datagram at most (a
    datagram leaves with whatever is due, as Grapevine's do; flat out they are full)."""

    def __init__(self, group: str, port: int, per_datagram: int, leaves: int) -> None:
        super().__init__()
        self.per = per_datagram
        self.leaves = leaves  # message i updates leaf i % leaves + 1
        self.cap = 64 if per_datagram == 1 else per_datagram * 4
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(INTERFACE))
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 0)  # never leaves the host
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)
        sock.bind((INTERFACE, 0))
        sock.connect((group, port))
        self.sock = sock

    def probe(self, trial: int) -> None:
        self.sock.send(MSG.pack(trial, PROBE_LEAF, 0, 0, 0))

    def sender(self, trial: int) -> SendBatch:
        send = self.sock.send
        pack = MSG.pack
        leaves = self.leaves
        if self.per == 1:
            def send_one(first: int, n: int) -> int:
                for i in range(first, first + n):
                    send(pack(trial, i % leaves + 1, i + 1, clock(), 0))
                return n
            return send_one
        per = self.per
        size = MSG.size
        buffer = bytearray(size * per)
        view = memoryview(buffer)
        pack_into = MSG.pack_into

        def send_many(first: int, n: int) -> int:
            i, end = first, first + n
            while i < end:
                k = min(per, end - i)
                for j in range(k):
                    pack_into(buffer, size * j, trial, (i + j) % leaves + 1, i + j + 1,
                              clock(), 0)
                send(view[:size * k])
                i += k
            return n
        return send_many

    def digest(self, sent: int) -> str:
        # The subscriber's state is the last sequence of each leaf.
        leaves = self.leaves
        return digest_items((i % leaves + 1, i + 1) for i in range(max(0, sent - leaves), sent))

    def close(self) -> None:
        self.sock.close()


class BookPub(PubSystem):
    """Order-book deltas as one message each (pyzmq, LCM): a header and the delta's 26
    bytes. Like a real feed handler, it does not keep a book of its own (it needs no
    snapshots); its final state is rebuilt after the run, outside the measurement."""

    side_times = True

    def __init__(self, worker: PubWorker, send_bytes: Callable[[bytes], object]) -> None:
        super().__init__()
        self.worker = worker
        self.send_bytes = send_bytes

    def probe(self, trial: int) -> None:
        self.send_bytes(HDR.pack(trial, PROBE_LEAF, 0) + bytes(26))

    def limit(self) -> int:
        return self.worker.pool_size

    def sender(self, trial: int) -> SendBatch:
        pool = self.worker.pool
        stamp = self.times.append
        encode = self.worker.model.encode_delta
        header = HDR.pack
        send = self.send_bytes

        def send_deltas(first: int, n: int) -> int:
            end = min(first + n, len(pool))
            for i in range(first, end):
                leaf, delta = pool[i]
                stamp(clock())
                send(header(trial, leaf, i + 1) + encode(delta))
            return end - first
        return send_deltas

    def digest(self, sent: int) -> str:
        books = {leaf: book.copy() for leaf, book in self.worker.initial.items()}
        for leaf, delta in self.worker.pool[:sent]:
            books[leaf].apply(delta)
        return digest_items(books.items())


class ZmqPub(BookPub):
    def __init__(self, worker: PubWorker, queue: int) -> None:
        zmq = worker.zmq
        sock = worker.zmq_context.socket(zmq.PUB)
        sock.setsockopt(zmq.LINGER, 0)
        if queue:  # messages queued per subscriber before the PUB drops (default 1000)
            sock.setsockopt(zmq.SNDHWM, queue)
        sock.bind("tcp://127.0.0.1:*")  # loopback only, a port the kernel picks
        self.sock = sock
        self.endpoint: str = sock.getsockopt(zmq.LAST_ENDPOINT).decode()
        super().__init__(worker, sock.send)

    def close(self) -> None:
        self.sock.close(0)


class LcmPub(BookPub):
    def __init__(self, worker: PubWorker, url: str) -> None:
        self.lc = worker.lcm.LCM(url)
        super().__init__(worker, functools.partial(self.lc.publish, LCM_CHANNEL))

    def close(self) -> None:
        del self.lc  # the binding has no close(): its sockets close with the object


class GvPub(PubSystem):
    """A Grapevine publisher (default PublisherConfig: the snapshot cycle at its defaults)."""

    def __init__(self, worker: PubWorker, group: str, port: int, book: bool) -> None:
        super().__init__()
        self.worker = worker
        self.book = book
        self.side_times = book
        model: Any
        initial: dict[int, Any]
        if book:
            model = worker.model
            initial = {leaf: b.copy() for leaf, b in worker.initial.items()}
        else:
            model = BytesModel()
            initial = {leaf: bytes(MSG.size) for leaf in range(1, worker.leaves + 1)}
        self.pub: Publisher[Any, Any] = Publisher(model, group=group, port=port,
                                                  initial=initial)

    def limit(self) -> int:
        return self.worker.pool_size if self.book else 1 << 62

    def sender(self, trial: int) -> SendBatch:
        publish = self.pub.publish
        if self.book:
            pool = self.worker.pool
            stamp = self.times.append

            def send_deltas(first: int, n: int) -> int:
                end = min(first + n, len(pool))
                for i in range(first, end):
                    leaf, delta = pool[i]
                    stamp(clock())
                    publish(leaf, delta)
                return end - first
            return send_deltas
        pack = MSG.pack
        leaves = self.worker.leaves

        def send_bytes(first: int, n: int) -> int:
            for i in range(first, first + n):
                leaf = i % leaves + 1
                publish(leaf, pack(trial, leaf, i + 1, clock(), 0))
            return n
        return send_bytes

    def after_run(self) -> None:
        self.pub.flush(60)  # every delta sent: part of the cost of publishing them

    def digest(self, sent: int) -> str:
        if self.pub.last_sequence != sent:  # one sequence per publish, from 1
            raise RuntimeError(f"published {sent} deltas but the stream is at "
                               f"{self.pub.last_sequence}")
        with self.pub.locked() as state:
            return digest_items(state.items())

    def close(self) -> None:
        self.pub.close()


class _Role:
    """What the pub and sub roles share: the optional peer libraries and the system under
    test, opened per trial and closed before the next (or at shutdown)."""

    system: PubSystem | SubSystem | None

    def __init__(self) -> None:
        self.zmq = optional("zmq")
        self.zmq_context: Any = self.zmq.Context() if self.zmq is not None else None
        self.lcm = optional("lcm")

    def close_system(self) -> None:
        if self.system is not None:
            system, self.system = self.system, None
            system.close()

    def shutdown(self) -> None:
        self.close_system()
        if self.zmq_context is not None:
            self.zmq_context.term()


class PubWorker(_Role):
    """The ``pub`` role: one publisher at a time, opened per trial."""

    def __init__(self, config: dict[str, Any], commands: Commands) -> None:
        self.commands = commands
        self.model = OrderBookModel()
        self.initial = read_books(config["books"])
        self.leaves = len(self.initial)  # raw and BytesModel rows: as many leaves as books
        self.pool_bytes = Path(config["pool"]).read_bytes()
        self.pool_size = len(self.pool_bytes) // POOL_ENTRY.size
        self.pool: list[tuple[int, BookDelta]] = []
        super().__init__()
        self.system: PubSystem | None = None
        self.trial = 0
        self.cpu_start = 0.0
        self.cpu_excluded = 0.0
        self.sent = 0

    def decode_pool(self, count: int) -> None:
        """Decode the pooled deltas up to ``count`` (outside any measured phase)."""
        count = min(count, self.pool_size)
        decode = self.model.decode_delta
        view = memoryview(self.pool_bytes)
        for i in range(len(self.pool), count):
            leaf, payload = POOL_ENTRY.unpack_from(view, i * POOL_ENTRY.size)
            self.pool.append((leaf, decode(payload)))

    def handle(self, cmd: dict[str, Any]) -> dict[str, Any] | None:
        name = cmd["cmd"]
        if name == "open":
            self.close_system()
            self.trial = cmd["trial"]
            kind = cmd["system"]
            info: dict[str, Any] = {}
            if kind in ("raw1", "raw20"):
                self.system = RawPub(cmd["group"], cmd["port"], 1 if kind == "raw1" else 20,
                                     self.leaves)
            elif kind == "zmq":
                zmq_pub = ZmqPub(self, cmd["queue"])
                self.system = zmq_pub
                info["endpoint"] = zmq_pub.endpoint
            elif kind == "lcm":
                self.system = LcmPub(self, cmd["url"])
            elif kind in ("gv-bytes", "gv-book"):
                gv = GvPub(self, cmd["group"], cmd["port"], book=kind == "gv-book")
                self.system = gv
                info["session"] = gv.pub.session_id
            else:
                raise ValueError(f"unknown system {kind!r}")
            return {"opened": kind, **info}
        if name == "probe":
            # Probes until the parent's next command ("stop") arrives: every subscriber
            # has then seen one, so none misses the start of the run.
            assert self.system is not None
            probes = 0
            while not self.commands.waiting(0.002):
                self.system.probe(self.trial)
                probes += 1
            stop = self.commands.next()
            if stop is None or stop["cmd"] != "stop":
                raise RuntimeError(f"expected 'stop' after 'probe', got {stop!r}")
            return {"probes": probes}
        if name == "run":
            assert self.system is not None
            rate: float | None = cmd["rate"]
            seconds: float = cmd["seconds"]
            limit = self.system.limit()
            if limit < 1 << 62:  # decode the deltas this run can use before it starts
                self.decode_pool(limit if rate is None else int(rate * seconds) + 256)
            send = self.system.sender(self.trial)
            gc.collect()  # start every run with the same, empty, collector generations
            self.cpu_start = cpu_s()
            sent, start, end = drive(send, rate, seconds, self.system.cap, limit)
            self.system.after_run()
            flushed = clock()
            self.sent = sent
            # Writing the side file is not publishing: its CPU is left out of the account.
            before = cpu_s()
            times_file = None
            if self.system.side_times:
                times_file = cmd["times_file"]
                with open(times_file, "wb") as out:
                    self.system.times.tofile(out)
                self.system.times = array.array("q")
            self.cpu_excluded = cpu_s() - before
            return {"sent": sent, "start_ns": start, "end_ns": end, "flushed_ns": flushed,
                    "times_file": times_file}
        if name == "pace":
            # The driving loop alone, sending nothing: what every system's publisher CPU
            # per message includes besides the system's own cost (issue 12: at 20k/s on
            # this machine it is most of raw x1's figure).
            rate = cmd["rate"]
            gc.collect()
            before = cpu_s()
            sent, _, _ = drive(lambda first, n: n, rate, cmd["seconds"], PubSystem.cap,
                               1 << 62)
            return {"cpu_us": (cpu_s() - before) / max(sent, 1) * 1e6, "sent": sent}
        if name == "finish":
            # CPU up to now: until every subscriber had the last message (a pyzmq PUB
            # sends from its I/O thread after send() returns; Grapevine's sender keeps
            # cycling snapshots, a cost of its own, counted while the run lasts).
            assert self.system is not None
            cpu = cpu_s() - self.cpu_start - self.cpu_excluded
            return {"cpu_s": cpu, "digest": self.system.digest(self.sent)}
        if name == "close":
            self.close_system()
            return {"closed": True}
        raise ValueError(f"unknown command {name!r}")



# ---------------------------------------------------------------------------- subscribers

class Recorder:
    """What one subscriber saw in one trial, written by the receiving thread (or
    Grapevine's receiver or dispatcher thread) and read by the worker's main thread once
    ``done`` is set or the stream has gone quiet."""

    def __init__(self, trial: int) -> None:
        self.trial = trial
        self.probed = threading.Event()
        self.done = threading.Event()
        self.target = 1 << 62  # the last sequence: set by collect
        self.count = 0
        self.gaps = 0
        self.next_seq = 1
        self.max_seq = 0
        self.conflated = 0
        self.rejected = 0  # deltas a diverged peer replica refused (after a loss)
        self.first_ns = 0
        self.last_ns = 0
        self.seqs: array.array[int] = array.array("q")
        self.times: array.array[int] = array.array("q")
        self.lats: array.array[int] = array.array("q")
        self.state: dict[int, int] = {}  # the raw rows' replica: last sequence per leaf

    def _seen(self, seq: int, now: int) -> None:
        self.count += 1
        if seq != self.next_seq:
            self.gaps += 1
        self.next_seq = seq + 1
        if not self.first_ns:
            self.first_ns = now
        self.last_ns = now
        if seq > self.max_seq:
            self.max_seq = seq
            if seq >= self.target:
                self.done.set()

    # The callbacks. Each system calls one of them once per message or update.

    def raw(self, leaf: int, seq: int, sent_ns: int) -> None:
        """A raw 32-byte message."""
        now = clock()
        self.state[leaf] = seq
        self.lats.append(now - sent_ns)
        self._seen(seq, now)

    def book(self, leaf: int, kind: UpdateKind, book: OrderBook | None,
             delta: BookDelta | None, seq: int) -> None:
        """An order-book update: the same callback for pyzmq, LCM and Grapevine (which
        calls it through :meth:`gv_book`). Stamps the time for the latency side channel."""
        now = clock()
        if kind is CHANGED:
            self.seqs.append(seq)
            self.times.append(now)
            self._seen(seq, now)
            return
        if kind is CONFLATED:
            self.conflated += 1
        self.last_ns = now
        if seq > self.max_seq:
            self.max_seq = seq
            if seq >= self.target:
                self.done.set()

    def gv_book(self, update: Update[OrderBook, BookDelta]) -> None:
        self.book(update[0], update[1], update[2], update[3], update[4])

    def gv_bytes(self, update: Update[bytes, bytes]) -> None:
        """A Grapevine BytesModel update: the 32-byte message carries its publish time."""
        now = clock()
        if update[1] is CHANGED:
            _trial, _leaf, _seq, sent_ns, _pad = MSG.unpack(cast(bytes, update[3]))
            self.lats.append(now - sent_ns)
            self._seen(update[4], now)
            return
        if update[1] is CONFLATED:
            self.conflated += 1
        self.last_ns = now
        seq = update[4]
        if seq > self.max_seq:
            self.max_seq = seq
            if seq >= self.target:
                self.done.set()


class SubSystem:
    """One system's subscriber for one trial."""

    grapevine = False

    def __init__(self, worker: SubWorker) -> None:
        self.worker = worker
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, loop: Callable[[], None]) -> None:
        self._thread = threading.Thread(target=loop, name="bench-receiver", daemon=True)
        self._thread.start()

    def digest(self) -> str:
        """The digest of this subscriber's replica (see :func:`digest_items`)."""
        raise NotImplementedError

    def wake(self) -> None:
        """Unblock the receiving thread so that it sees the stop flag."""

    def close(self) -> None:
        self._stop.set()
        self.wake()
        if self._thread is not None:
            self._thread.join(10)
            if self._thread.is_alive():
                raise RuntimeError("the receiving thread did not stop")


class RawSub(SubSystem):
    """Pure Python multicast receiver: blocking ``recv_into`` on its own thread."""

    def __init__(self, worker: SubWorker, group: str, port: int) -> None:
        super().__init__(worker)
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
        sock.bind((group, port))
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP,
                        socket.inet_aton(group) + socket.inet_aton(INTERFACE))
        self.sock = sock
        self.start(self._loop)

    def _loop(self) -> None:
        buffer = bytearray(65536)
        recv_into = self.sock.recv_into
        unpack_from = MSG.unpack_from
        size_of = MSG.size
        worker = self.worker
        stop = self._stop
        while not stop.is_set():
            try:
                size = recv_into(buffer)
            except OSError:
                continue
            rec = worker.rec
            on_message = rec.raw
            for offset in range(0, size - size_of + 1, size_of):
                trial, leaf, seq, sent_ns, _pad = unpack_from(buffer, offset)
                if trial != rec.trial:
                    break
                if leaf == PROBE_LEAF:
                    rec.probed.set()
                    break
                on_message(leaf, seq, sent_ns)

    def digest(self) -> str:
        return digest_items(self.worker.rec.state.items())

    def wake(self) -> None:
        # shutdown() wakes a recv blocked on an unconnected UDP socket (it then returns
        # 0) although it raises ENOTCONN.
        try:
            self.sock.shutdown(socket.SHUT_RD)
        except OSError:
            pass

    def close(self) -> None:
        super().close()
        self.sock.close()


class BookSub(SubSystem):
    """The pyzmq and LCM subscribers: decode each message, apply the delta to the
    subscriber's own books with OrderBookModel.apply, call the shared callback."""

    def __init__(self, worker: SubWorker) -> None:
        super().__init__(worker)
        self.books = {leaf: book.copy() for leaf, book in worker.initial.items()}
        model = OrderBookModel()
        books = self.books
        decode = model.decode_delta
        apply = model.apply
        unpack_from = HDR.unpack_from
        header = HDR.size

        def on_message(data: bytes) -> None:
            trial, leaf, seq = unpack_from(data)
            rec = worker.rec
            if trial != rec.trial:
                return
            if leaf == PROBE_LEAF:
                rec.probed.set()
                return
            delta = decode(memoryview(data)[header:])
            try:
                book = apply(books[leaf], delta)
            except ValueError:
                # A book that missed deltas can refuse the next one: the replica is wrong
                # from here on (these peers have no repair), but the stream goes on.
                rec.rejected += 1
                book = books[leaf]
            rec.book(leaf, CHANGED, book, delta, seq)

        self.on_message = on_message

    def digest(self) -> str:
        return digest_items(self.books.items())


class ZmqSub(BookSub):
    def __init__(self, worker: SubWorker, endpoint: str, queue: int) -> None:
        super().__init__(worker)
        zmq = worker.zmq
        if not endpoint.startswith("tcp://127.0.0.1:"):
            raise ValueError(f"pyzmq endpoint {endpoint!r} is not on 127.0.0.1")
        sock = worker.zmq_context.socket(zmq.SUB)
        sock.setsockopt(zmq.LINGER, 0)
        if queue:  # messages queued before the SUB drops (default 1000)
            sock.setsockopt(zmq.RCVHWM, queue)
        sock.setsockopt(zmq.RCVTIMEO, 100)  # to see the stop flag when idle
        sock.setsockopt(zmq.SUBSCRIBE, b"")
        sock.connect(endpoint)
        self.sock = sock
        self.start(self._loop)

    def _loop(self) -> None:
        recv = self.sock.recv
        again = self.worker.zmq.Again
        on_message = self.on_message
        stop = self._stop
        while not stop.is_set():
            try:
                data = recv()
            except again:
                continue
            on_message(data)

    def close(self) -> None:
        super().close()
        self.sock.close(0)


class LcmSub(BookSub):
    def __init__(self, worker: SubWorker, url: str, queue: int) -> None:
        super().__init__(worker)
        self.lc = worker.lcm.LCM(url)
        on_message = self.on_message
        self.subscription = self.lc.subscribe(LCM_CHANNEL,
                                              lambda _channel, data: on_message(data))
        if queue:  # messages queued for the handler before LCM drops (default 30)
            self.subscription.set_queue_capacity(queue)
        self.start(self._loop)

    def _loop(self) -> None:
        handle = self.lc.handle_timeout
        stop = self._stop
        while not stop.is_set():
            handle(100)

    def close(self) -> None:
        super().close()
        # The subscription and the LCM object refer to each other: without this the pair
        # is never freed, and its socket stays joined (and read) for the rest of the run.
        self.lc.unsubscribe(self.subscription)
        del self.subscription, self.lc


class GvSub(SubSystem):
    grapevine = True

    def __init__(self, worker: SubWorker, group: str, port: int, book: bool,
                 delivery: str) -> None:
        super().__init__(worker)
        model: Any = OrderBookModel() if book else BytesModel()
        self.sub: Subscriber[Any, Any] = Subscriber(model, group=group, port=port,
                                                    delivery=cast(Any, delivery))
        # The recorder changes at mark: look it up per update.
        if book:
            self.sub.on_update(lambda update: worker.rec.gv_book(update), as_update=True)
        else:
            self.sub.on_update(lambda update: worker.rec.gv_bytes(update), as_update=True)

    def digest(self) -> str:
        with self.sub.locked() as replica:  # the receiver waits: a consistent read
            return digest_items(replica.items())

    def close(self) -> None:
        self.sub.close()


class SubWorker(_Role):
    """The ``sub`` role: one subscriber at a time, armed per trial."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.initial = read_books(config["books"])
        super().__init__()
        self.rec = Recorder(0)
        self.system: SubSystem | None = None
        self.cpu_start = 0.0
        self.stats_start: Any = None

    def handle(self, cmd: dict[str, Any]) -> dict[str, Any] | None:
        name = cmd["cmd"]
        if name == "arm":
            self.close_system()
            self.rec = Recorder(cmd["trial"])
            kind = cmd["system"]
            if kind in ("raw1", "raw20"):
                self.system = RawSub(self, cmd["group"], cmd["port"])
            elif kind == "zmq":
                self.system = ZmqSub(self, cmd["endpoint"], cmd["queue"])
            elif kind == "lcm":
                self.system = LcmSub(self, cmd["url"], cmd["queue"])
            elif kind in ("gv-bytes", "gv-book"):
                self.system = GvSub(self, cmd["group"], cmd["port"], kind == "gv-book",
                                    cmd["delivery"])
            else:
                raise ValueError(f"unknown system {kind!r}")
            return {"armed": kind}
        if name == "ready":
            # Connected: a probe arrived (pyzmq subscriptions take a moment to reach the
            # PUB), or, for Grapevine, synced with the trial's publisher session.
            system = self.system
            assert system is not None
            deadline = time.monotonic() + cmd["timeout"]
            if isinstance(system, GvSub):
                session = cmd["session"]
                while time.monotonic() < deadline:
                    if system.sub.wait_synced(max(0.0, deadline - time.monotonic())) \
                            and system.sub.session_id == session:
                        return {"ready": True}
                    time.sleep(0.01)  # synced to an older session: wait for this one
                return {"ready": False}
            return {"ready": self.rec.probed.wait(cmd["timeout"])}
        if name == "mark":
            trial = self.rec.trial
            gc.collect()
            self.rec = Recorder(trial)  # from here on, what the trial's run delivers
            if isinstance(self.system, GvSub):
                self.stats_start = self.system.sub.stats()
            self.cpu_start = cpu_s()
            return {"marked": True}
        if name == "collect":
            return self.collect(cmd)
        if name == "digest":
            system = self.system
            assert system is not None
            synced = True
            if isinstance(system, GvSub):
                # Lost deltas are repaired from the snapshot cycle: wait for that.
                synced = system.sub.wait_until_applied(cmd["last_seq"],
                                                       session_id=cmd["session"],
                                                       timeout=cmd["timeout"])
            return {"digest": system.digest(), "synced": synced}
        if name == "disarm":
            self.close_system()
            return {"disarmed": True}
        raise ValueError(f"unknown command {name!r}")

    def collect(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """Wait until the last message arrived (or nothing more came for ``quiet`` s),
        then end the CPU account and report."""
        rec = self.rec
        system = self.system
        assert system is not None
        target: int = cmd["last_seq"]
        rec.target = target
        if rec.max_seq >= target:
            rec.done.set()
        quiet_ns = int(cmd["quiet"] * 1e9)
        deadline = clock() + int(cmd["timeout"] * 1e9)
        progress = (rec.last_ns, rec.count)
        progress_at = clock()
        while not rec.done.wait(0.02):
            now = clock()
            if (rec.last_ns, rec.count) != progress:
                progress = (rec.last_ns, rec.count)
                progress_at = now
            elif now - progress_at >= quiet_ns or now >= deadline:
                break
        cpu = cpu_s() - self.cpu_start
        done_ns = clock()
        result: dict[str, Any] = {
            "complete": rec.done.is_set(), "count": rec.count, "conflated": rec.conflated,
            "first_ns": rec.first_ns, "last_ns": rec.last_ns, "done_ns": done_ns,
            "cpu_s": cpu, "max_seq": rec.max_seq, "rejected": rec.rejected,
        }
        if isinstance(system, GvSub):
            stats = system.sub.stats().since(self.stats_start)
            result.update(gaps=stats.gaps, missed=stats.missed_deltas, deltas=stats.deltas,
                          retransmitted=stats.retransmitted_datagrams,
                          kernel_drops=stats.kernel_drops, conflated=stats.conflated_updates,
                          callback_errors=stats.callback_errors)
        else:
            result.update(gaps=rec.gaps, missed=max(0, target - rec.count),
                          deltas=rec.count, retransmitted=0, kernel_drops=None)
        if cmd["latency"]:
            lats = rec.lats
            if cmd.get("times_file"):  # order-book rows: publish stamps by sequence
                sent = array.array("q")
                with open(cmd["times_file"], "rb") as side:
                    sent.frombytes(side.read())
                lats = array.array("q", (t - sent[s - 1] for s, t in
                                         zip(rec.seqs, rec.times, strict=True)))
            result["latency"] = percentiles(lats)
        return result



# ---------------------------------------------------------------------------- late join

class LateJoinPub:
    """The ``ljpub`` role: a Grapevine publisher of the stored books under churn."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.books = read_books(config["books"])
        self.group: str = config["group"]
        self.port: int = config["port"]
        self.churn_rate: int = config["churn_rate"]
        default = PublisherConfig()
        self.config = PublisherConfig(
            snapshot_bytes_per_s=config.get("snapshot_bytes_per_s")
            or default.snapshot_bytes_per_s,
            min_cycle_s=config.get("min_cycle_s", default.min_cycle_s))
        self.pub: Publisher[OrderBook, BookDelta] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _churn(self, pub: Publisher[OrderBook, BookDelta]) -> None:
        """An order joins the best bid of a random book and leaves again: always valid,
        whatever the book, and it leaves the book's levels as they were (the level's time
        changes). ``churn_rate`` deltas/s in ticks of 10 ms."""
        rng = random.Random(1)
        leaves = list(self.books)
        books = self.books  # the publisher's own objects: only this thread changes them
        per_tick = max(1, self.churn_rate // 200)
        while not self._stop.wait(0.01):
            for _ in range(per_tick):
                leaf = rng.choice(leaves)
                best = books[leaf].best_bid()
                if best is None:
                    continue
                now = time.time_ns()
                pub.publish(leaf, BookDelta(Op.ADD, Side.BID, best[0], 100, now))
                pub.publish(leaf, BookDelta(Op.REMOVE, Side.BID, best[0], 100, now))

    def _start_churn(self) -> None:
        assert self.pub is not None
        if self.churn_rate <= 0:  # a quiet publisher: only its snapshot cycle
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._churn, args=(self.pub,), daemon=True)
        self._thread.start()

    def _stop_churn(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None

    def handle(self, cmd: dict[str, Any]) -> dict[str, Any] | None:
        name = cmd["cmd"]
        if name == "open":
            # The publisher takes the books as its state (no copy: 100,000 books).
            self.pub = Publisher(OrderBookModel(), group=self.group, port=self.port,
                                 initial=self.books, config=self.config)
            self._start_churn()
            return {"session": self.pub.session_id}
        if name == "settle":  # the first cycle is out, and then extra_s more
            assert self.pub is not None
            pause = threading.Event()
            while self.pub.stats().cycles < 1:
                pause.wait(0.005)
            pause.wait(float(cmd["extra_s"]))
            return {"cycles": self.pub.stats().cycles}
        if name == "pause":  # churn stops: the state is final until "resume"
            assert self.pub is not None
            began = time.monotonic()
            self._stop_churn()
            stopped = time.monotonic()
            self.pub.flush(60)
            flushed = time.monotonic()
            with self.pub.locked() as state:
                digest = digest_items(state.items())
            return {"last_seq": self.pub.last_sequence, "digest": digest,
                    "cycles": self.pub.stats().cycles,
                    "pause_s": [round(stopped - began, 3), round(flushed - stopped, 3),
                                round(time.monotonic() - flushed, 3)]}
        if name == "resume":
            self._start_churn()
            return {"resumed": True}
        if name == "close":
            self.shutdown()
            return {"closed": True}
        raise ValueError(f"unknown command {name!r}")

    def shutdown(self) -> None:
        self._stop_churn()
        if self.pub is not None:
            pub, self.pub = self.pub, None
            pub.close()


class LateJoinSub:
    """The ``ljsub`` role: one late join, timed, in a process of its own (so that its RSS
    growth is this replica's and nothing else's)."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.group: str = config["group"]
        self.port: int = config["port"]
        self.delivery: str = config["delivery"]
        self.sub: Subscriber[OrderBook, BookDelta] | None = None
        self.updates = 0

    def _count(self, update: Update[OrderBook, BookDelta]) -> None:
        self.updates += 1

    def handle(self, cmd: dict[str, Any]) -> dict[str, Any] | None:
        name = cmd["cmd"]
        if name == "join":
            gc.collect()
            rss_before = rss_bytes()
            began = time.monotonic()
            sub = Subscriber(OrderBookModel(), group=self.group, port=self.port,
                             delivery=cast(Any, self.delivery))
            self.sub = sub
            sub.on_update(self._count, as_update=True)
            synced = False
            deadline = began + cmd["timeout"]
            while time.monotonic() < deadline:
                if sub.wait_synced(deadline - time.monotonic()) \
                        and sub.session_id == cmd["session"]:
                    synced = True
                    break
                time.sleep(0.01)  # an older session: wait for this one
            seconds = time.monotonic() - began
            stats = sub.stats()  # what the join went through (a slow one: why)
            gc.collect()
            rss_after = rss_bytes()
            with sub.locked() as replica:
                books = replica.items()
                levels = sum(len(book) for _, book in books)
            return {"synced": synced, "seconds": seconds, "rss_delta": rss_after - rss_before,
                    "levels": levels, "books": len(books), "updates": self.updates,
                    "stats": {name: getattr(stats, name) for name in JOIN_STATS}}
        if name == "digest":
            assert self.sub is not None
            synced = self.sub.wait_until_applied(cmd["last_seq"], session_id=cmd["session"],
                                                 timeout=cmd["timeout"])
            with self.sub.locked() as replica:
                digest = digest_items(replica.items())
            return {"digest": digest, "synced": synced}
        raise ValueError(f"unknown command {name!r}")

    def shutdown(self) -> None:
        if self.sub is not None:
            self.sub.close()


# Subscriber counters a late join reports (tools/bench_peers.py keeps them in the JSON).
JOIN_STATS = ("datagrams", "kernel_drops", "gaps", "missed_deltas", "retransmit_requests",
              "retransmitted_datagrams", "gaps_resolved", "snapshots", "installs", "repairs",
              "leaves_made_stale", "census_mismatches", "leaves_shed", "conflated_updates",
              "callback_backlog")


class PlainBooks:
    """The ``plain`` role: RSS growth of holding the stored books as plain OrderBooks."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.path: str = config["books"]
        self.books: dict[int, OrderBook] = {}

    def handle(self, cmd: dict[str, Any]) -> dict[str, Any] | None:
        if cmd["cmd"] != "measure":
            raise ValueError(f"unknown command {cmd['cmd']!r}")
        gc.collect()
        before = rss_bytes()
        self.books = read_books(self.path)
        gc.collect()
        after = rss_bytes()
        return {"rss_delta": after - before, "books": len(self.books),
                "levels": sum(len(book) for book in self.books.values())}

    def shutdown(self) -> None:
        pass


# ---------------------------------------------------------------------------- main

def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    only_loopback()
    die_with_parent()
    role, config = argv[0], json.loads(argv[1])
    commands = Commands()
    worker: PubWorker | SubWorker | LateJoinPub | LateJoinSub | PlainBooks
    if role == "pub":
        worker = PubWorker(config, commands)
    elif role == "sub":
        worker = SubWorker(config)
    elif role == "ljpub":
        worker = LateJoinPub(config)
    elif role == "ljsub":
        worker = LateJoinSub(config)
    elif role == "plain":
        worker = PlainBooks(config)
    else:
        print(f"unknown role {role!r}", file=sys.stderr)
        return 2
    reply({"ready": role, "pid": os.getpid()})
    try:
        while (cmd := commands.next()) is not None:
            if cmd["cmd"] == "exit":
                break
            try:
                answer = worker.handle(cmd)
            except Exception as exc:  # noqa: BLE001 - reported to the parent, which decides
                traceback.print_exc()
                answer = {"error": f"{type(exc).__name__}: {exc}"}
            if answer is not None:
                reply(answer)
    finally:
        worker.shutdown()
    reply({"exited": role})
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
