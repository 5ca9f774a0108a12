#!/usr/bin/env python3
"""Grapevine against its peers (issue 12): raw UDP, pyzmq and LCM, on one host.

    python3 tools/bench_peers.py                            # 5 interleaved repeats
    python3 tools/bench_peers.py --quick                    # smoke run: 1 repeat, tiny durations
    python3 tools/bench_peers.py --json-out peers.json      # and peers.png if matplotlib is there

It re-executes itself in a private network namespace (``unshare -rn``: only ``lo`` exists
there, and it refuses to run if anything else does), brings ``lo`` up and routes multicast
to it (LCM needs a route; Grapevine and the raw rows name 127.0.0.1 and use TTL 0). pyzmq
binds and connects to tcp://127.0.0.1 only. Nothing can leave the host. Publishers and
subscribers run in separate processes (``tools/_bench_peers_worker.py``), started once and
armed per trial; every port is picked by the kernel or by ``grapevine.testing.free_port``.

Rows (one system each):

* raw UDP x1: pure Python multicast, one 32-byte message per datagram: the baseline. Every
  figure is also given as a ratio to this row's figure *in the same repeat*;
* raw UDP <=20: the same messages, up to 20 per datagram (a datagram leaves with whatever is
  due, as Grapevine's do; flat out every datagram holds 20): the pure-Python ceiling;
* pyzmq: PUB/SUB over tcp on loopback, one message per order-book delta; the subscriber
  applies each delta to its own books with ``OrderBookModel.apply`` and calls the same
  callback as the Grapevine order-book rows. High-water marks (send and receive) of
  ``--peer-queue`` messages (100,000, as Grapevine's ``max_callback_backlog``; pyzmq's
  default of 1,000 drops under the first burst);
* LCM: the same messages over LCM's UDP multicast (``udpm``, TTL 0, 4 MiB receive buffer as
  Grapevine's, subscription queue capacity ``--peer-queue``: LCM's default of 30 messages
  drops a few per cent even at 10,000 messages/s);
* Grapevine 32 B: ``BytesModel`` leaves, ``--leaves`` of them (1,000), 32-byte deltas;
* Grapevine order book: ``OrderBookModel`` with ``grapevine.testing.Market`` deltas on
  ``--leaves`` books; each Grapevine row with callbacks on the dispatcher thread and
  inline. (The raw rows also spread their messages over ``--leaves`` keys.)

Columns (medians over the repeats; every trial starts from fresh library objects):

* max zero-gap rate: the highest paced rate (a binary search in log space between
  ``--search-low`` and ``--search-high``) at which the subscriber got every message
  (Grapevine: ``gaps == 0`` and ``missed_deltas == 0``; retransmitted datagrams are
  reported apart, in the JSON), the replica equals the publisher's at the end, and the
  messages got through at 95% of the pace or more, end to end (from the first publish to
  the last callback: queues in the publisher or the subscriber do not hide a shortfall);
* flood: the publisher as fast as it can for ``--flood-seconds``: messages delivered per
  second (from the first publish to the last callback) and the share lost for good;
* latency publish() -> callback at each ``--latency-rates`` (p50 / p99 / p99.9, in us). The
  publisher stamps each message with ``time.monotonic_ns()`` just before handing it to the
  library; the subscriber's callback compares with its own (one host, one clock).
  Order-book deltas have no room for a stamp: the publisher keeps them by sequence in a
  side file. ``*`` marks a cell whose trial lost messages or did not keep the pace;
* CPU per delta with 1 and 4 subscribers, paced at ``--cpu-rate``: user + system time of
  each process (all threads) over the run, divided by the messages it published or
  delivered (the 4-subscriber figure is their mean). The publisher's account runs until
  every subscriber has the last message (a pyzmq PUB sends from its I/O thread; Grapevine's
  snapshot cycle runs meanwhile and is counted). The same figure is also given net of the
  driving loop: that loop, paced the same and sending nothing, is run for as long right
  after each CPU trial in the same process, and its CPU per message subtracted (waking
  from a sleep for every message at 20k/s costs more than a send on this machine: most of
  raw x1's gross figure is the loop, common to every row);
* late join: a Grapevine order-book publisher of N books (``--late-join-levels`` levels a
  side, churning ``--churn-rate`` deltas/s, snapshot cycle at its defaults unless
  ``--snapshot-mb-per-s`` or ``--min-cycle-s``); once it has sent its first cycle, at a
  random moment of the next, time from a new ``Subscriber`` to synced, in a fresh process
  each time;
* replica memory per level: that late joiner's RSS growth at the largest N divided by the
  levels it holds; for pyzmq and LCM, the same books held as plain ``OrderBook`` objects
  (they have no replica of their own: that is what their subscriber holds).

Every trial ends by comparing each subscriber's replica (digest) with the publisher's
state, and the report ends with the tally. Exit status 0 if every Grapevine replica and
every replica of a lossless trial was equal and no trial failed; 1 otherwise; 2 if it
cannot run in a private network namespace of its own.

This machine is shared: read the ratios rather than the absolute figures.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import importlib.util
import json
import math
import os
import platform
import queue
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _bench import cpu_times, steal_share  # tools/
from _bench_peers_worker import BOOK_ENTRY, POOL_ENTRY  # tools/: the files workers read
from _netns import run_in_private_namespace  # this script's own folder, tools/

from grapevine import PublisherConfig
from grapevine.book import OrderBook, OrderBookModel, encode_book
from grapevine.testing import Market, free_port

WORKER = Path(__file__).resolve().parent / "_bench_peers_worker.py"
_PR_SET_PDEATHSIG = 1


# ---------------------------------------------------------------------------- rows, columns

@dataclass(frozen=True)
class Row:
    key: str
    label: str
    system: str
    delivery: str | None = None

    @property
    def grapevine(self) -> bool:
        return self.system.startswith("gv-")


ROWS = [
    Row("raw1", "raw UDP x1 (baseline)", "raw1"),
    Row("raw20", "raw UDP <=20/datagram", "raw20"),
    Row("zmq", "pyzmq PUB/SUB tcp, book", "zmq"),
    Row("lcm", "LCM udpm, book", "lcm"),
    Row("gv-bytes-thread", "Grapevine 32 B, thread", "gv-bytes", "thread"),
    Row("gv-bytes-inline", "Grapevine 32 B, inline", "gv-bytes", "inline"),
    Row("gv-book-thread", "Grapevine book, thread", "gv-book", "thread"),
    Row("gv-book-inline", "Grapevine book, inline", "gv-book", "inline"),
]
BASELINE = "raw1"


@dataclass(frozen=True)
class Column:
    key: str
    label: str
    unit: str  # "msg/s", "%", "us", "us/delta", "s", "B/level"
    group: str


def short(n: float) -> str:
    """20000 -> '20k', 1000000 -> '1M'."""
    if n >= 1e6 and n % 1e6 == 0:
        return f"{n / 1e6:g}M"
    if n >= 1e3 and n % 1e3 == 0:
        return f"{n / 1e3:g}k"
    return f"{n:g}"


GROUPS = ("throughput", "latency", "cpu", "state")


def columns_for(args: argparse.Namespace) -> list[Column]:
    return [c for c in all_columns(args) if c.group in args.groups]


def all_columns(args: argparse.Namespace) -> list[Column]:
    cols = [Column("zero_gap_rate", "max zero-gap rate", "msg/s", "throughput"),
            Column("flood_rate", "flood delivered", "msg/s", "throughput"),
            Column("flood_loss", "flood loss", "%", "throughput")]
    for rate in args.latency_rates:
        for q, name in (("p50", "p50"), ("p99", "p99"), ("p999", "p99.9")):
            cols.append(Column(f"lat_{short(rate)}_{q}", f"{short(rate)}/s {name}", "us",
                               "latency"))
    cpu = f"@{short(args.cpu_rate)}/s"
    cols += [Column("cpu_pub_1", f"pub, 1 sub {cpu}", "us/delta", "cpu"),
             Column("cpu_sub_1", f"sub, 1 sub {cpu}", "us/delta", "cpu"),
             Column("cpu_pub_4", f"pub, 4 subs {cpu}", "us/delta", "cpu"),
             Column("cpu_sub_4", f"sub, 4 subs {cpu}", "us/delta", "cpu"),
             Column("cpu_pub_net_1", f"pub net of the loop, 1 sub {cpu}", "us/delta", "cpu"),
             Column("cpu_pub_net_4", f"pub net of the loop, 4 subs {cpu}", "us/delta",
                    "cpu")]
    for books in args.late_join_books:
        cols.append(Column(f"late_join_{short(books)}", f"late join {short(books)} books", "s",
                           "state"))
    cols.append(Column("mem_per_level", "replica memory", "B/level", "state"))
    return cols


def not_applicable(row: Row, column: Column) -> str | None:
    """Why a column has no figure for a row (None: it has one)."""
    if column.key.startswith("late_join"):
        if row.system in ("raw1", "raw20", "zmq", "lcm"):
            return "no state transfer: a late joiner gets only what is sent after it joins"
        if row.system == "gv-bytes":
            return "late join is measured with order books (the Grapevine book rows)"
    if column.key == "mem_per_level" and row.system in ("raw1", "raw20", "gv-bytes"):
        return "no order-book replica"
    return None


# ---------------------------------------------------------------------------- workers

class WorkerError(RuntimeError):
    """A worker did not answer, died, or reported an error."""


class Worker:
    """A worker process (``_bench_peers_worker.py ROLE CONFIG``) and its command pipe."""

    def __init__(self, name: str, role: str, config: dict[str, Any], logs: Path) -> None:
        self.name = name
        self.log_path = logs / f"{name}.log"
        self._log: IO[str] = open(self.log_path, "w")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(
            [sys.executable, str(WORKER), role, json.dumps(config)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, text=True,
            bufsize=1)
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, name=f"read-{name}", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return "\n    ".join(["", *text[-lines:]]) if text else ""

    def send(self, cmd: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps(cmd) + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, ValueError) as exc:
            raise WorkerError(f"{self.name} is gone ({exc}){self.tail()}") from None

    def expect(self, timeout: float) -> dict[str, Any]:
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise WorkerError(f"{self.name}: no answer within {timeout:.0f} s{self.tail()}") \
                from None
        if line is None:
            self.proc.wait(5)
            raise WorkerError(f"{self.name} exited with status {self.proc.returncode}"
                              f"{self.tail()}")
        answer: dict[str, Any] = json.loads(line)
        if "error" in answer:
            raise WorkerError(f"{self.name}: {answer['error']}{self.tail()}")
        return answer

    def call(self, cmd: dict[str, Any], timeout: float = 60) -> dict[str, Any]:
        self.send(cmd)
        return self.expect(timeout)

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def close(self) -> None:
        """Ask it to exit, then kill it if it has not within 10 s. Always reaps it."""
        if self.proc.poll() is None:
            try:
                self.send({"cmd": "exit"})
                self.proc.wait(10)
            except (WorkerError, subprocess.TimeoutExpired):
                pass
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        self._reader.join(5)
        self._log.close()


def call_all(workers: Sequence[Worker], cmd: dict[str, Any],
             timeout: float = 60) -> list[dict[str, Any]]:
    """The same command to every worker at once (they work in parallel), then each answer."""
    for worker in workers:
        worker.send(cmd)
    return [worker.expect(timeout) for worker in workers]


class Fleet:
    """Every worker started, so that every one is stopped and reaped at the end."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.workers: list[Worker] = []
        self._count = 0

    def start(self, name: str, role: str, config: dict[str, Any],
              ready_timeout: float | None = 120) -> Worker:
        """A new worker; waits for its ready line unless ``ready_timeout`` is None."""
        self._count += 1
        worker = Worker(f"{self._count:03d}-{name}", role, config, self.logs)
        self.workers.append(worker)
        if ready_timeout is not None:
            worker.expect(ready_timeout)
        return worker

    def stop(self, worker: Worker) -> None:
        worker.close()
        if worker in self.workers:
            self.workers.remove(worker)

    def close(self) -> None:
        while self.workers:
            self.workers.pop().close()


# ---------------------------------------------------------------------------- results

@dataclass
class Cell:
    values: list[float | None] = field(default_factory=list)  # one per repeat
    flags: set[str] = field(default_factory=set)


@dataclass
class Results:
    columns: list[Column]
    cells: dict[tuple[str, str], Cell] = field(default_factory=dict)
    trials: list[dict[str, Any]] = field(default_factory=list)
    checks: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def cell(self, row: str, column: str) -> Cell:
        return self.cells.setdefault((row, column), Cell())

    def put(self, row: str, column: str, repeat: int, value: float | None) -> None:
        cell = self.cell(row, column)
        while len(cell.values) <= repeat:
            cell.values.append(None)
        cell.values[repeat] = value


def median(values: Sequence[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def ratios(values: Sequence[float | None], base: Sequence[float | None]) -> list[float | None]:
    """Each repeat's figure divided by the baseline's figure in the same repeat."""
    out: list[float | None] = []
    for i, value in enumerate(values):
        b = base[i] if i < len(base) else None
        out.append(value / b if value is not None and b else None)
    return out


# ---------------------------------------------------------------------------- the bench

@dataclass
class Trial:
    """One trial's outcome, as the parent sees it."""

    rate: float | None
    sent: int
    seconds: float
    achieved: float
    pub_cpu_us: float
    subs: list[dict[str, Any]]  # each: counts, gaps, CPU, latency, delivered, equal...

    @property
    def zero_gap(self) -> bool:
        return all(s["gaps"] == 0 and s["missed"] == 0 for s in self.subs)

    @property
    def equal(self) -> bool:
        return all(s["equal"] for s in self.subs)

    @property
    def kept_pace(self) -> bool:
        """End to end: every subscriber had the messages at 95% of the paced rate or more,
        from the first publish to its last callback. This covers every queue on the way
        (a Grapevine publisher's send queue, a PUB's pipe, a subscriber's backlog), which
        the publish() calls alone would not show."""
        return self.rate is None or all(s["delivered_per_s"] >= 0.95 * self.rate
                                        for s in self.subs)

    @property
    def limit(self) -> str:
        """Why a trial is not clean: 'loss', 'pace' or 'unequal' (first that applies)."""
        if not self.zero_gap:
            return "loss"
        if not self.kept_pace:
            return "pace"
        return "" if self.equal else "unequal"

    @property
    def clean(self) -> bool:
        return self.zero_gap and self.equal and self.kept_pace


def progress(message: str) -> None:
    print(f"[bench_peers {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class Bench:
    def __init__(self, args: argparse.Namespace, fleet: Fleet, tmp: Path,
                 rows: list[Row], results: Results) -> None:
        self.args = args
        self.fleet = fleet
        self.tmp = tmp
        self.rows = rows
        self.results = results
        self.trial_id = 0
        self.rng = random.Random(args.seed)  # when, within a cycle, late joiners join
        self.endpoints: dict[str, dict[str, Any]] = {}
        for index, row in enumerate(rows):
            group = f"239.255.78.{index + 1}"
            port = free_port(group)
            self.endpoints[row.key] = {
                "group": group, "port": port,
                "url": f"udpm://{group}:{port}?ttl=0&recv_buf_size={4 << 20}"}
        self.books_file = tmp / "trial-books.bin"  # the books every trial starts from
        self.pool_file = tmp / "pool.bin"
        self.pub: Worker | None = None
        self.subs: list[Worker] = []

    # -- workers

    def start_workers(self) -> None:
        config = {"books": str(self.books_file), "pool": str(self.pool_file)}
        # Started together (they import and load in parallel), then each waited for.
        self.pub = self.fleet.start("pub", "pub", config, ready_timeout=None)
        self.subs = [self.fleet.start(f"sub{i}", "sub", {"books": str(self.books_file)},
                                      ready_timeout=None) for i in range(4)]
        for worker in [self.pub, *self.subs]:
            worker.expect(120)

    def restart_dead_workers(self) -> None:
        if (self.pub is not None and not self.pub.alive) or any(not s.alive for s in self.subs):
            progress("a worker died: restarting the workers")
            for worker in [w for w in [self.pub, *self.subs] if w is not None]:
                self.fleet.stop(worker)
            self.start_workers()

    # -- one trial

    def trial(self, row: Row, rate: float | None, seconds: float, nsubs: int,
              latency: bool, phase: str, repeat: int) -> Trial:
        assert self.pub is not None
        self.trial_id += 1
        tid = self.trial_id
        began = time.monotonic()
        pub, subs = self.pub, self.subs[:nsubs]
        endpoint = self.endpoints[row.key]
        arm = {"cmd": "arm", "trial": tid, "system": row.system, "delivery": row.delivery,
               "queue": self.args.peer_queue, **endpoint}
        open_ = {"cmd": "open", "trial": tid, "system": row.system,
                 "queue": self.args.peer_queue, **endpoint}
        try:
            if row.grapevine:
                # Subscribers first: they see the publisher's first snapshot cycle from its
                # start and sync within it, instead of waiting for the next one.
                call_all(subs, arm)
                opened = pub.call(open_)
                ready = call_all(subs, {"cmd": "ready", "session": opened["session"],
                                        "timeout": 60}, timeout=90)
                if not all(r["ready"] for r in ready):
                    raise WorkerError("a subscriber did not sync within 60 s")
            else:  # the pyzmq subscribers need the endpoint the publisher bound
                opened = pub.call(open_)
                call_all(subs, {**arm, "endpoint": opened.get("endpoint")})
                pub.send({"cmd": "probe"})
                ready = call_all(subs, {"cmd": "ready", "timeout": 20}, timeout=30)
                pub.send({"cmd": "stop"})
                pub.expect(30)
                if not all(r["ready"] for r in ready):
                    raise WorkerError("a subscriber saw no probe within 20 s (not connected)")
            call_all(subs, {"cmd": "mark"})
            times_file = str(self.tmp / f"times-{tid}.bin")
            run = pub.call({"cmd": "run", "rate": rate, "seconds": seconds,
                            "times_file": times_file}, timeout=seconds * 4 + 120)
            sent = run["sent"]
            got = call_all(subs, {"cmd": "collect", "last_seq": sent, "quiet": self.args.quiet,
                                  "timeout": seconds * 4 + 30, "latency": latency,
                                  "times_file": run["times_file"]}, timeout=seconds * 4 + 60)
            finish = pub.call({"cmd": "finish"}, timeout=300)
            digests = call_all(subs, {"cmd": "digest", "last_seq": sent,
                                      "session": opened.get("session"), "timeout": 30},
                               timeout=90)
            for result, answer in zip(got, digests, strict=True):
                result["equal"] = answer["digest"] == finish["digest"]
                result["synced"] = answer["synced"]
        except BaseException:
            # Some answers may be left unread: the workers are out of step with the
            # parent. Kill them; they are restarted before the next trial.
            self.kill_workers()
            raise
        finally:
            with contextlib.suppress(OSError):
                os.unlink(self.tmp / f"times-{tid}.bin")
        self.cleanup_trial(subs)
        duration = max(1e-9, (run["end_ns"] - run["start_ns"]) / 1e9)
        for result in got:
            result["delivered"] = sent - result["missed"] if row.grapevine else result["count"]
            # From the first publish to the last callback.
            result["delivered_per_s"] = (
                result["delivered"] / max(1e-9, (result["last_ns"] - run["start_ns"]) / 1e9)
                if result["last_ns"] else 0.0)
        trial = Trial(rate=rate, sent=sent, seconds=duration, achieved=sent / duration,
                      pub_cpu_us=finish["cpu_s"] / max(sent, 1) * 1e6, subs=got)
        lossless = trial.zero_gap
        for index, result in enumerate(got):
            self.results.checks.append({
                "row": row.key, "phase": phase, "repeat": repeat, "subscriber": index,
                "equal": result["equal"], "lossless": lossless, "grapevine": row.grapevine})
        self.results.trials.append({
            "row": row.key, "phase": phase, "repeat": repeat, "rate": rate, "sent": sent,
            "seconds": round(duration, 4), "achieved": round(trial.achieved),
            "wall_s": round(time.monotonic() - began, 3),
            "kept_pace": trial.kept_pace, "zero_gap": trial.zero_gap, "equal": trial.equal,
            "pub_cpu_us_per_delta": round(trial.pub_cpu_us, 3),
            "subscribers": [{k: v for k, v in s.items() if not k.endswith("_ns")}
                            for s in got],
        })
        return trial

    def cleanup_trial(self, subs: list[Worker]) -> None:
        """Close what the trial opened."""
        assert self.pub is not None
        try:
            call_all(subs, {"cmd": "disarm"}, timeout=30)
            self.pub.call({"cmd": "close"}, timeout=30)
        except WorkerError:
            self.kill_workers()
            raise

    def kill_workers(self) -> None:
        for worker in [w for w in [self.pub, *self.subs] if w is not None]:
            if worker.alive:
                worker.proc.kill()
                worker.proc.wait(10)

    # -- one row, one repeat

    def measure_row(self, row: Row, repeat: int) -> None:
        args = self.args
        put = self.results.put
        cells = self.results.cell

        def attempt(what: str, action: Callable[[], None]) -> None:
            try:
                action()
            except WorkerError as exc:
                message = f"{row.key} repeat {repeat + 1} {what}: {exc}"
                progress(message)
                self.results.errors.append(message)
                self.restart_dead_workers()

        def search() -> None:
            low, high = args.search_low, args.search_high
            best = 0.0
            limit = ""
            for _ in range(args.search_steps):
                rate = float(round(math.sqrt(low * high), -2))
                trial = self.trial(row, rate, args.trial_seconds, 1, False, "search", repeat)
                if trial.clean:
                    low, best = rate, max(best, rate)
                else:
                    high, limit = rate, trial.limit
            put(row.key, "zero_gap_rate", repeat, best)
            if limit:  # what failed at the lowest rate that failed
                cells(row.key, "zero_gap_rate").flags.add(f"limit:{limit}")

        def flood() -> None:
            trial = self.trial(row, None, args.flood_seconds, 1, False, "flood", repeat)
            sub = trial.subs[0]
            put(row.key, "flood_rate", repeat, sub["delivered_per_s"])
            put(row.key, "flood_loss", repeat, 100.0 * sub["missed"] / max(trial.sent, 1))

        def latency(rate: float) -> None:
            cpu_too = rate == args.cpu_rate
            trial = self.trial(row, rate, args.latency_seconds, 1, True, f"latency@{rate:g}",
                               repeat)
            figures = trial.subs[0].get("latency", {})
            for q in ("p50", "p99", "p999"):
                key = f"lat_{short(rate)}_{q}"
                put(row.key, key, repeat, figures.get(f"{q}_us"))
                if not trial.zero_gap:
                    cells(row.key, key).flags.add("lost")
                if not trial.kept_pace:
                    cells(row.key, key).flags.add("pace")
            if cpu_too and "cpu" in args.groups:
                record_cpu(trial, 1)

        def record_cpu(trial: Trial, nsubs: int) -> None:
            put(row.key, f"cpu_pub_{nsubs}", repeat, trial.pub_cpu_us)
            # The same paced loop with nothing to send, at once in the same process: the
            # publisher's figure net of it is what the system itself costs per message.
            assert self.pub is not None
            assert trial.rate is not None
            loop = self.pub.call({"cmd": "pace", "rate": trial.rate,
                                  "seconds": args.cpu_seconds},
                                 timeout=args.cpu_seconds * 4 + 30)
            put(row.key, f"cpu_pub_net_{nsubs}", repeat,
                max(trial.pub_cpu_us - loop["cpu_us"], 0.0))
            self.results.trials[-1]["driver_loop_cpu_us_per_message"] = round(loop["cpu_us"], 3)
            per_sub = [s["cpu_s"] / max(s["delivered"], 1) * 1e6 for s in trial.subs]
            put(row.key, f"cpu_sub_{nsubs}", repeat, statistics.mean(per_sub))
            for key in (f"cpu_pub_{nsubs}", f"cpu_sub_{nsubs}", f"cpu_pub_net_{nsubs}"):
                if not trial.zero_gap:
                    cells(row.key, key).flags.add("lost")
                if not trial.kept_pace:
                    cells(row.key, key).flags.add("pace")

        def cpu(nsubs: int) -> None:
            trial = self.trial(row, args.cpu_rate, args.cpu_seconds, nsubs, False,
                               f"cpu x{nsubs}", repeat)
            record_cpu(trial, nsubs)

        groups = args.groups
        progress(f"repeat {repeat + 1}/{args.repeats}: {row.label}")
        if "throughput" in groups:
            attempt("zero-gap search", search)
            attempt("flood", flood)
        if "latency" in groups:
            for rate in args.latency_rates:
                attempt(f"latency at {rate:g}/s", functools.partial(latency, rate))
        if "cpu" in groups:
            if args.cpu_rate not in args.latency_rates or "latency" not in groups:
                attempt("CPU, 1 subscriber", lambda: cpu(1))
            attempt("CPU, 4 subscribers", lambda: cpu(4))

    # -- late join and memory, one repeat

    def late_join(self, repeat: int, books_files: dict[int, Path],
                  ljpubs: dict[int, tuple[Worker, dict[str, Any]]], lj_rows: list[Row],
                  plain_rows: list[Row]) -> None:
        """The late joins of one repeat (a publisher per book count, started at first use
        and kept, idle, between repeats: loading 100,000 books takes a while), then the
        plain books' memory."""
        args = self.args
        largest = max(args.late_join_books)
        for books in args.late_join_books:
            if not lj_rows:
                break
            key = f"late_join_{short(books)}"
            try:
                if books not in ljpubs:
                    group = "239.255.79.1"
                    endpoint = {"group": group, "port": free_port(group)}
                    ljpubs[books] = (self.fleet.start(
                        f"ljpub{short(books)}", "ljpub",
                        {"books": str(books_files[books]), "churn_rate": args.churn_rate,
                         "snapshot_bytes_per_s": args.snapshot_mb_per_s * 1e6,
                         "min_cycle_s": args.min_cycle_s,
                         **endpoint}, ready_timeout=900), endpoint)
                ljpub, endpoint = ljpubs[books]
                session = ljpub.call({"cmd": "open"})["session"]
                # A late joiner joins a running stream: after the publisher's first cycle
                # (which goes out at the full budget, as a new publisher's does), at a
                # random moment of the next one.
                ljpub.call({"cmd": "settle", "extra_s": self.rng.random()}, timeout=900)
                try:
                    for row in lj_rows:
                        self.one_late_join(row, books, largest, key, repeat, ljpub, endpoint,
                                           session)
                finally:
                    ljpub.call({"cmd": "close"}, timeout=120)
            except WorkerError as exc:
                message = f"late join {books} books, repeat {repeat + 1}: {exc}"
                progress(message)
                self.results.errors.append(message)
        if plain_rows:
            try:
                plain = self.fleet.start("plain", "plain", {"books": str(books_files[largest])})
                try:
                    got = plain.call({"cmd": "measure"}, timeout=900)
                finally:
                    self.fleet.stop(plain)
                for row in plain_rows:
                    self.results.put(row.key, "mem_per_level", repeat,
                                     got["rss_delta"] / max(got["levels"], 1))
            except WorkerError as exc:
                message = f"plain books memory, repeat {repeat + 1}: {exc}"
                progress(message)
                self.results.errors.append(message)

    def one_late_join(self, row: Row, books: int, largest: int, key: str, repeat: int,
                      ljpub: Worker, endpoint: dict[str, Any], session: int) -> None:
        progress(f"repeat {repeat + 1}/{self.args.repeats}: late join, {books} books, "
                 f"{row.label}")
        steps = {"began": time.monotonic()}
        sub = self.fleet.start(f"ljsub-{row.key}", "ljsub", {**endpoint,
                                                             "delivery": row.delivery})
        try:
            steps["started"] = time.monotonic()
            joined = sub.call({"cmd": "join", "session": session, "timeout": 600}, timeout=700)
            steps["joined"] = time.monotonic()
            paused = ljpub.call({"cmd": "pause"}, timeout=120)
            steps["paused"] = time.monotonic()
            answer = sub.call({"cmd": "digest", "last_seq": paused["last_seq"],
                               "session": session, "timeout": 120}, timeout=200)
            steps["checked"] = time.monotonic()
            ljpub.call({"cmd": "resume"})
        finally:
            self.fleet.stop(sub)
        steps["stopped"] = time.monotonic()
        joined["wall_s"] = {k: round(v - steps["began"], 3) for k, v in steps.items()}
        equal = answer["digest"] == paused["digest"]
        self.results.checks.append({"row": row.key, "phase": f"late join {books}",
                                    "repeat": repeat, "subscriber": 0, "equal": equal,
                                    "lossless": True, "grapevine": True})
        self.results.put(row.key, key, repeat, joined["seconds"] if joined["synced"] else None)
        if books == largest:
            self.results.put(row.key, "mem_per_level", repeat,
                             joined["rss_delta"] / max(joined["levels"], 1))
        self.results.trials.append({"row": row.key, "phase": f"late join {books}",
                                    "repeat": repeat, **joined, "equal": equal,
                                    "publisher_cycles": paused["cycles"],
                                    "pause_s": paused["pause_s"]})


# ---------------------------------------------------------------------------- data files

def write_books(path: Path, books: dict[int, OrderBook]) -> None:
    with open(path, "wb") as out:
        for leaf, book in books.items():
            data = encode_book(book)
            out.write(BOOK_ENTRY.pack(leaf, len(data)))
            out.write(data)


def write_pool(path: Path, deltas: list[tuple[int, Any]]) -> None:
    encode = OrderBookModel().encode_delta
    with open(path, "wb") as out:
        out.write(b"".join(POOL_ENTRY.pack(leaf, encode(delta)) for leaf, delta in deltas))


# ---------------------------------------------------------------------------- report

def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "msg/s":
        if value >= 1e6:
            return f"{value / 1e6:.2f}M"
        if value >= 1e3:
            return f"{value / 1e3:.0f}k"
        return f"{value:.0f}"
    if unit == "%":
        return f"{value:.2g}%" if 0 < value < 0.01 else f"{value:.2f}%"
    if unit == "s":
        return f"{value:.2f} s"
    if unit == "B/level":
        return f"{value:.0f} B"
    return f"{value:.1f}" if value < 100 else f"{value:,.0f}"


def summarize(rows: list[Row], available: dict[str, str | None], results: Results,
              repeats: int) -> list[dict[str, Any]]:
    base: dict[str, list[float | None]] = {}
    out = []
    for row in rows:
        reason = available[row.key]
        cells: dict[str, Any] = {}
        for column in results.columns:
            na = reason or not_applicable(row, column)
            if na:
                cells[column.key] = {"na": na}
                continue
            cell = results.cell(row.key, column.key)
            values = cell.values + [None] * (repeats - len(cell.values))
            if row.key == BASELINE:
                base[column.key] = values
            rel = ratios(values, base.get(column.key, []))
            cells[column.key] = {
                "median": median(values), "ratio_to_raw1": median(rel),
                "per_repeat": values, "ratio_per_repeat": rel, "flags": sorted(cell.flags)}
        out.append({"key": row.key, "label": row.label, "available": reason is None,
                    "reason": reason, "cells": cells})
    return out


def markdown(summary: list[dict[str, Any]], columns: list[Column]) -> str:
    titles = {"throughput": "Throughput (messages/s; loss = share lost for good)",
              "latency": "Latency publish() -> callback (us)",
              "cpu": "CPU per delta (us of process CPU per message published / delivered)",
              "state": "State: late join (s from a new Subscriber to synced) and replica "
                       "memory"}
    lines: list[str] = []
    for group, title in titles.items():
        cols = [c for c in columns if c.group == group]
        if not cols:  # a group left out (--groups)
            continue
        lines += [f"### {title}", "",
                  "| row | " + " | ".join(c.label for c in cols) + " |",
                  "|---|" + "---:|" * len(cols)]
        reasons: dict[str, set[str]] = {}
        marked = limited = False
        for row in summary:
            cells = []
            for c in cols:
                cell = row["cells"][c.key]
                if "na" in cell:
                    cells.append("n/a")
                    reasons.setdefault(cell["na"], set()).add(row["label"])
                    continue
                text = fmt(cell["median"], c.unit)
                if cell["median"] is not None and cell["ratio_to_raw1"] is not None:
                    # A ratio needs the baseline's figure of the same repeat to be non-zero
                    # (flood loss often is zero): say when it rests on fewer repeats.
                    based = sum(r is not None for r in cell["ratio_per_repeat"])
                    measured = sum(v is not None for v in cell["per_repeat"])
                    text += (f" (x{cell['ratio_to_raw1']:.2f})" if based == measured
                             else f" (x{cell['ratio_to_raw1']:.2f}, {based}/{measured})")
                limits = sorted(f.split(":", 1)[1][0].upper() for f in cell["flags"]
                                if f.startswith("limit:"))
                if limits:
                    text += " " + "".join(limits)
                    limited = True
                if any(not f.startswith("limit:") for f in cell["flags"]):
                    text += "*"
                    marked = True
                cells.append(text)
            lines.append(f"| {row['label']} | " + " | ".join(cells) + " |")
        lines.append("")
        if limited:
            lines += ["What stopped the search one step higher (in some repeat): L a "
                      "subscriber lost messages, P the messages did not get through at 95% "
                      "of the pace (publisher or subscriber too slow), U a replica differed.",
                      ""]
        if marked:
            lines += ["`*`: in at least one repeat that trial lost messages, or the messages "
                      "did not get through at 95% of the pace (see the JSON).", ""]
        for reason, labels in reasons.items():
            lines.append(f"n/a ({', '.join(sorted(labels))}): {reason}.")
        if reasons:
            lines.append("")
    return "\n".join(lines)


def checks_report(results: Results) -> tuple[str, bool]:
    """The replica tally, and whether it is acceptable: every Grapevine replica equal, and
    every replica of a trial that lost nothing equal."""
    lines = ["### Replica checks (digest of each subscriber's replica against the "
             "publisher's state, at the end of every trial)", ""]
    ok = True
    by_row: dict[str, list[dict[str, Any]]] = {}
    for check in results.checks:
        by_row.setdefault(check["row"], []).append(check)
    for row, checks in by_row.items():
        equal = sum(c["equal"] for c in checks)
        bad = [c for c in checks if not c["equal"] and (c["grapevine"] or c["lossless"])]
        lossy = sum(1 for c in checks if not c["equal"] and not c["grapevine"]
                    and not c["lossless"])
        note = f" ({lossy} after lost messages: no repair)" if lossy else ""
        if bad:
            ok = False
            note += " UNEXPECTED: " + ", ".join(f"{c['phase']} (repeat {c['repeat'] + 1})"
                                                 for c in bad)
        lines.append(f"* {row}: {equal} of {len(checks)} equal{note}")
    lines.append("")
    lines.append("Replica check: " + ("OK (every Grapevine replica, and every replica of "
                                      "a lossless trial, equals the publisher's)" if ok else
                                      "FAILED"))
    return "\n".join(lines), ok


def chart(summary: list[dict[str, Any]], columns: list[Column], path: Path) -> str | None:
    """A PNG of the main figures; None if matplotlib is not installed."""
    try:
        matplotlib = importlib.import_module("matplotlib")
    except ImportError:
        return None
    matplotlib.use("Agg")
    plt = importlib.import_module("matplotlib.pyplot")
    rows = [r for r in summary if r["available"]]
    labels = [r["label"] for r in rows]
    panels = [
        ("messages/s", ["zero_gap_rate", "flood_rate"], True),
        ("latency, us", [c.key for c in columns if c.group == "latency"
                         and not c.key.endswith("p999")], True),
        ("CPU us per delta", ["cpu_pub_1", "cpu_sub_1", "cpu_pub_4", "cpu_sub_4",
                              "cpu_pub_net_1", "cpu_pub_net_4"], True),
        ("late join, s", [c.key for c in columns if c.key.startswith("late_join")], True),
    ]
    by_key = {c.key: c for c in columns}
    panels = [(title, [k for k in keys if k in by_key], log) for title, keys, log in panels]
    fig, axes = plt.subplots(2, 2, figsize=(16, 10))
    for ax, (title, keys, log) in zip(axes.flat, panels, strict=True):
        width = 0.8 / max(len(keys), 1)
        for k, key in enumerate(keys):
            heights = [r["cells"][key].get("median") or 0 for r in rows]
            ax.bar([i + k * width for i in range(len(rows))], heights, width,
                   label=by_key[key].label)
        ax.set_title(title)
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(rows))])
        ax.set_xticklabels(labels, rotation=30, ha="right", fontsize=8)
        if log:
            ax.set_yscale("log")
        ax.legend(fontsize=7)
    fig.suptitle("Grapevine against its peers (medians; shared, noisy 2-core machine)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return str(path)


# ---------------------------------------------------------------------------- main

def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="smoke run (~30 s): 1 repeat, tiny durations, 200 books, late "
                             "join at 1k and 10k small books without churn")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved repeats")
    parser.add_argument("--trial-seconds", type=float, default=1.0,
                        help="length of each zero-gap search trial")
    parser.add_argument("--search-steps", type=int, default=7,
                        help="binary search steps (log space) for the zero-gap rate")
    parser.add_argument("--search-low", type=float, default=2_000)
    parser.add_argument("--search-high", type=float, default=2_000_000)
    parser.add_argument("--flood-seconds", type=float, default=2.0)
    parser.add_argument("--latency-rates", type=float, nargs="+", default=[20_000, 100_000])
    parser.add_argument("--latency-seconds", type=float, default=2.0)
    parser.add_argument("--cpu-rate", type=float, default=20_000,
                        help="paced rate of the CPU trials")
    parser.add_argument("--cpu-seconds", type=float, default=2.0)
    parser.add_argument("--late-join-books", type=int, nargs="+",
                        default=[1_000, 10_000, 100_000])
    parser.add_argument("--late-join-levels", type=int, default=20,
                        help="levels a side of the late-join books (Market levels)")
    parser.add_argument("--snapshot-mb-per-s", type=float,
                        default=PublisherConfig().snapshot_bytes_per_s / 1e6,
                        help="the late-join publisher's snapshot budget (default: the "
                             "library's default)")
    parser.add_argument("--min-cycle-s", type=float, default=PublisherConfig().min_cycle_s,
                        help="the late-join publisher's min_cycle_s (default: the library's)")
    parser.add_argument("--churn-rate", type=int, default=5_000,
                        help="deltas/s the late-join publisher publishes meanwhile")
    parser.add_argument("--leaves", type=int, default=1_000,
                        help="books (leaves, keys) of the throughput, latency and CPU trials")
    parser.add_argument("--pool", type=int, default=600_000,
                        help="order-book deltas generated for the publishers")
    parser.add_argument("--quiet", type=float, default=0.5,
                        help="a subscriber that gets nothing for this long has all it gets")
    parser.add_argument("--peer-queue", type=int, default=100_000,
                        help="messages pyzmq (SNDHWM, RCVHWM) and LCM (subscription queue "
                             "capacity) hold for a slow subscriber before they drop, as "
                             "Grapevine's max_callback_backlog (0: the libraries' defaults, "
                             "1000 and 30)")
    parser.add_argument("--rows", nargs="+", choices=[r.key for r in ROWS],
                        help="only these rows (the baseline is always measured)")
    parser.add_argument("--groups", nargs="+", choices=GROUPS, default=list(GROUPS),
                        help="only these groups of columns (default: all)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json-out", type=Path, help="write the results as JSON here")
    parser.add_argument("--png-out", type=Path,
                        help="write a chart here (default: beside --json-out, if matplotlib "
                             "is installed)")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats = 1
        args.trial_seconds = 0.1
        args.search_steps = 1
        args.flood_seconds = 0.15
        args.latency_seconds = 0.15
        args.cpu_seconds = 0.15
        args.late_join_books = [1_000, 10_000]
        args.late_join_levels = 2
        # No churn: with deltas queued, the publisher's flush() before the replica check
        # can wait many seconds behind its snapshot backlog (see the report), too long
        # for a smoke run.
        args.churn_rate = 0
        args.leaves = 200
        args.pool = 40_000
        args.quiet = 0.25
    return args


def main() -> int:
    args = parse()
    return run_in_private_namespace(__file__, lambda: inside(args))


def check_namespace() -> str | None:
    """Why this namespace is not safe to flood (None: it is): only ``lo`` may exist."""
    present = sorted(name for _, name in socket.if_nameindex())
    if present != ["lo"]:
        return f"refusing to run: this namespace has interfaces {present}, not only lo"
    return None


def availability(url: str) -> dict[str, str | None]:
    """Each row's reason for being unavailable (None: available)."""
    reasons: dict[str, str | None] = {row.key: None for row in ROWS}
    if importlib.util.find_spec("zmq") is None:
        reasons["zmq"] = "pyzmq is not installed (pip install '.[bench]')"
    try:
        lcm = importlib.import_module("lcm")
    except ImportError as exc:
        reasons["lcm"] = (f"the LCM Python binding is not installed ({exc}; pip install "
                          "'.[bench]', or Debian's python3-lcm)")
    else:
        try:
            lcm.LCM(url)  # fails without a multicast route
        except Exception as exc:  # noqa: BLE001 - LCM raises bare Exception; it is reported
            reasons["lcm"] = f"LCM could not open {url}: {exc}"
    return reasons


def machine() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(), "loadavg_at_start": os.getloadavg(),
            "note": "shared, noisy machine: other work ran at the same time"}


@contextlib.contextmanager
def terminated_cleanly() -> Iterator[None]:
    """SIGTERM (or the parent dying) unwinds like an exception, so every worker is
    stopped by the ``finally`` blocks."""
    def on_term(_signum: int, _frame: object) -> None:
        raise SystemExit(143)

    previous = signal.signal(signal.SIGTERM, on_term)
    with contextlib.suppress(OSError, AttributeError):
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def inside(args: argparse.Namespace) -> int:
    refused = check_namespace()
    if refused:
        print(f"bench_peers: {refused}", file=sys.stderr)
        return 2
    began = time.monotonic()
    cpu_at_start = cpu_times()
    # LCM finds its interface by route: give multicast one, on lo (this namespace only).
    route = subprocess.run(["ip", "route", "add", "224.0.0.0/4", "dev", "lo"],
                           capture_output=True, text=True, check=False)
    rows = [r for r in ROWS if args.rows is None or r.key in args.rows or r.key == BASELINE]
    results = Results(columns_for(args))
    with terminated_cleanly(), tempfile.TemporaryDirectory(prefix="bench_peers-") as tmp_name:
        tmp = Path(tmp_name)
        logs = tmp / "logs"
        logs.mkdir()
        fleet = Fleet(logs)
        try:
            bench = Bench(args, fleet, tmp, rows, results)
            available = availability("udpm://239.255.79.9:7667?ttl=0")

            if route.returncode != 0 and available["lcm"]:
                available["lcm"] += f" (ip route add 224.0.0.0/4 dev lo: {route.stderr.strip()})"
            progress(f"generating {args.pool} order-book deltas on {args.leaves} books")
            market = Market(args.leaves, seed=args.seed)
            write_books(bench.books_file, market.copy_books())
            write_pool(bench.pool_file, market.batch(args.pool)[:args.pool])
            del market
            books_files: dict[int, Path] = {}
            state = "state" in args.groups
            lj_rows = [r for r in rows if state and r.system == "gv-book"
                       and available[r.key] is None]
            plain_rows = [r for r in rows if state and r.system in ("zmq", "lcm")
                          and available[r.key] is None]
            if lj_rows or plain_rows:
                for books in args.late_join_books:
                    progress(f"generating {books} books for the late join")
                    market = Market(books, seed=args.seed, levels=args.late_join_levels)
                    books_files[books] = tmp / f"late-join-books-{books}.bin"
                    write_books(books_files[books], market.books)
                    del market
            bench.start_workers()
            measured = [r for r in rows if available[r.key] is None]
            ljpubs: dict[int, tuple[Worker, dict[str, Any]]] = {}
            for repeat in range(args.repeats):
                # Interleaved: every row once per repeat, so slow drifts of a shared
                # machine hit every row alike; the baseline first, then the others in an
                # order that rotates from one repeat to the next.
                others = [r for r in measured if r.key != BASELINE]
                shift = repeat % max(len(others), 1)
                order = [r for r in measured if r.key == BASELINE] + others[shift:] + others[:shift]
                for row in order:
                    bench.restart_dead_workers()
                    bench.measure_row(row, repeat)
                bench.late_join(repeat, books_files, ljpubs, lj_rows, plain_rows)
        finally:
            fleet.close()
        summary = summarize(rows, available, results, args.repeats)
        table = markdown(summary, results.columns)
        tally, ok = checks_report(results)
    elapsed = time.monotonic() - began
    stolen = steal_share(cpu_at_start, cpu_times())
    steal = ("" if stolen is None else
             f" CPU time stolen by the hypervisor during the run: {stolen:.1%}"
             " (above a few per cent, timings are disturbed).")
    header = [
        "## Grapevine against its peers (tools/bench_peers.py)", "",
        f"Command: `{' '.join(['tools/bench_peers.py', *sys.argv[1:]])}`; "
        f"{args.repeats} interleaved repeat(s); {elapsed:.0f} s.",
        f"Machine: {os.cpu_count()} CPUs, {platform.platform()}, Python "
        f"{platform.python_version()}; load average at start "
        f"{', '.join(f'{x:.2f}' for x in os.getloadavg())}. The machine is shared and noisy:"
        " read the ratios to raw x1 (same repeat) rather than the absolute figures."
        + steal,
        "Cells: median over the repeats (xN: the median of the per-repeat ratios to raw "
        "UDP x1; \"2/5\": the ratio rests on the 2 repeats of 5 where raw x1's figure was "
        "not zero).", ""]
    unavailable = [f"* {row.label}: not measured: {available[row.key]}" for row in rows
                   if available[row.key]]
    errors = [f"* {e.splitlines()[0]}" for e in results.errors]
    report = "\n".join([*header, table, tally, ""]
                       + (["### Not measured", "", *unavailable, ""] if unavailable else [])
                       + (["### Errors", "", *errors, ""] if errors else []))
    print(report, flush=True)
    document = {"tool": "tools/bench_peers.py", "args": {k: (str(v) if isinstance(v, Path)
                                                             else v)
                                                         for k, v in vars(args).items()},
                "machine": machine(), "seconds": round(elapsed, 1), "cpu_steal_share": stolen,
                "columns": [vars(c) for c in results.columns], "baseline": BASELINE,
                "rows": summary, "replica_checks_ok": ok, "replica_checks": results.checks,
                "errors": results.errors, "trials": results.trials}
    png = args.png_out or (args.json_out.with_suffix(".png") if args.json_out else None)
    if png is not None:
        written = chart(summary, results.columns, png)
        document["png"] = written
        print(f"chart: {written}" if written else "chart: matplotlib is not installed")
    if args.json_out is not None:
        args.json_out.write_text(json.dumps(document, indent=1, default=str))
        print(f"json: {args.json_out}")
    return 0 if ok and not results.errors else 1


if __name__ == "__main__":
    raise SystemExit(main())
