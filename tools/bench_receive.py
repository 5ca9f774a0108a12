#!/usr/bin/env python3
"""The subscriber's receive cost (issue 12), as ratios measured in the same run.

    python3 tools/bench_receive.py                         # this tree only
    python3 tools/bench_receive.py --compare /tmp/before   # A/B against another copy
    python3 tools/bench_receive.py --only core             # no sockets

``--compare DIR`` names a directory holding another ``grapevine`` package (a copy taken
before a change): every measurement then runs in a fresh process for each tree in turn,
alternating, ``--repeats`` times, and the report gives each figure of this tree as a ratio
to the other's (medians). This machine is shared and noisy: read the ratios.

Measurements (32-byte ``BytesModel`` deltas over 1,000 leaves, ``--per-datagram`` per
datagram, 20 by default):

* core: ns per delta of ``codec.decode_datagram``, of the subscriber's receive-path decode
  (``codec._decode_datagram_fast`` where it exists) and of ``SubscriberCore.receive``;
* socket: a ``Subscriber`` (dispatcher thread, a trivial callback) fed over loopback
  multicast (127.0.0.1, TTL 0) by a sender process replaying the encoded stream, paced at
  ``--rate`` deltas/s: the subscriber process's CPU time (all threads) per delivered delta;
* flood: the same sender as fast as it can for ``--flood-seconds``: deltas delivered per
  second of the run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PAYLOAD = bytes(range(32))
LEAVES = 1000
DEFAULT_PER_DATAGRAM = 20
GROUP = "239.255.71.9"


# ------------------------------------------------------------------ the stream


def make_stream(deltas: int, per_datagram: int) -> list[bytes]:
    """``deltas`` deltas, ``per_datagram`` per datagram (no snapshots, no summaries)."""
    from grapevine import BytesModel
    from grapevine._publisher_core import PublisherConfig, PublisherCore
    from grapevine.codec import DELTA_OVERHEAD, HEADER_SIZE

    size = HEADER_SIZE + per_datagram * (DELTA_OVERHEAD + len(PAYLOAD))
    pub = PublisherCore(BytesModel(), PublisherConfig(
        min_cycle_s=1e9, max_queued_deltas=deltas + 1, touched_interval_s=0.0,
        max_datagram_size=max(size, 512)), session_id=7)
    out: list[bytes] = []
    for first in range(0, deltas, per_datagram):  # a datagram's worth, then sent
        for i in range(first, min(first + per_datagram, deltas)):
            pub.publish(i % LEAVES, PAYLOAD)
        while (datagram := pub.next_datagram(0.0)) is not None:
            out.append(bytes(datagram))
    return out


# ------------------------------------------------------------------ core (no sockets)


def measure_core(deltas: int, per_datagram: int) -> dict[str, float]:
    from grapevine import BytesModel, codec
    from grapevine._subscriber_core import SubscriberCore

    stream = make_stream(deltas, per_datagram)
    fast = getattr(codec, "_decode_datagram_fast", codec.decode_datagram)

    def baseline() -> float:
        def call(leaf_id: int, payload: bytes) -> int:
            return leaf_id
        start = time.perf_counter()
        for i in range(deltas):
            call(i % LEAVES, PAYLOAD)
        return time.perf_counter() - start

    def decode(function: Any) -> float:
        start = time.perf_counter()
        for datagram in stream:
            function(datagram)
        return time.perf_counter() - start

    def receive() -> float:
        core = SubscriberCore(BytesModel())
        start = time.perf_counter()
        for datagram in stream:
            core.receive(datagram, 0.0)
            core.updates.clear()
        elapsed = time.perf_counter() - start
        assert core.stats.deltas == deltas, core.stats
        return elapsed

    results: dict[str, list[float]] = {"baseline": [], "decode_datagram": [],
                                       "receive-path decode": [], "SubscriberCore.receive": []}
    for _ in range(5):  # interleaved, best of 5
        results["baseline"].append(baseline())
        results["decode_datagram"].append(decode(codec.decode_datagram))
        results["receive-path decode"].append(decode(fast))
        results["SubscriberCore.receive"].append(receive())
    return {name: min(values) / deltas * 1e9 for name, values in results.items()}


# ------------------------------------------------------------------ over a socket


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def measure_socket(deltas: int, rate: float, seconds: float, flood: bool,
                   per_datagram: int) -> dict[str, float]:
    from grapevine import BytesModel, Subscriber, SubscriberConfig
    from grapevine.testing import free_port

    stream = make_stream(deltas, per_datagram)
    port = free_port(GROUP)
    delivered = [0]
    done = threading.Event()
    target = deltas

    def on_update(leaf_id: int, kind: Any, leaf: Any, delta: Any) -> None:
        delivered[0] += 1
        if delivered[0] >= target:
            done.set()

    with tempfile.NamedTemporaryFile(suffix=".bin", delete=False) as handle:
        for datagram in stream:
            handle.write(struct.pack("<H", len(datagram)) + datagram)
        path = handle.name
    config = SubscriberConfig(retransmit=False, silence_timeout_s=5.0, restart_grace_s=5.0)
    try:
        with Subscriber(BytesModel(), group=GROUP, port=port, config=config,
                        on_update=on_update) as sub:
            sender = subprocess.Popen(
                [sys.executable, __file__, "--send", path, "--port", str(port),
                 "--rate", "0" if flood else str(rate / per_datagram),
                 "--seconds", str(seconds)], stdin=subprocess.PIPE)
            assert sender.stdin is not None
            cpu0, wall0 = _cpu(), time.perf_counter()
            sender.stdin.close()  # go
            sender.wait()
            # Until the subscriber has read everything the kernel kept for it.
            seen, cpu1, wall1 = -1, _cpu(), time.perf_counter()
            while not done.is_set() and sub.stats().datagrams != seen:
                seen = sub.stats().datagrams
                cpu1, wall1 = _cpu(), time.perf_counter()
                done.wait(0.2)
            if done.is_set():
                cpu1, wall1 = _cpu(), time.perf_counter()
            stats = sub.stats()
    finally:
        os.unlink(path)
    # Deltas taken in stream order (applied, or buffered for a stale leaf: this replay
    # has no snapshot cycle to repair leaves after kernel drops, so callbacks stop).
    count = stats.deltas
    wall = wall1 - wall0
    return {"delivered": float(delivered[0]), "deltas/s taken": count / wall,
            "cpu us/delta taken": (cpu1 - cpu0) / max(count, 1) * 1e6,
            "kernel drops": float(stats.kernel_drops), "gaps": float(stats.gaps)}


def send(path: str, port: int, datagram_rate: float, seconds: float) -> None:
    """Sender process: replay the file's datagrams to GROUP:port from 127.0.0.1, TTL 0."""
    data = Path(path).read_bytes()
    datagrams: list[bytes] = []
    offset = 0
    while offset < len(data):
        (size,) = struct.unpack_from("<H", data, offset)
        datagrams.append(data[offset + 2:offset + 2 + size])
        offset += 2 + size
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton("127.0.0.1"))
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 0)
    sock.bind(("127.0.0.1", 0))
    sock.connect((GROUP, port))
    sys.stdin.read()  # wait for "go"
    start = time.perf_counter()
    deadline = start + seconds
    for index, datagram in enumerate(datagrams):
        if datagram_rate:
            due = start + index / datagram_rate
            while (now := time.perf_counter()) < due:
                if due - now > 0.002:
                    time.sleep(due - now - 0.001)  # pacing a sender, not synchronising
        if index % 64 == 0 and time.perf_counter() > deadline:
            break
        try:
            sock.send(datagram)
        except OSError:
            pass
    sock.close()


# ------------------------------------------------------------------ driver


def worker(args: argparse.Namespace) -> None:
    result: dict[str, Any] = {}
    if args.only in (None, "core"):
        result["core"] = measure_core(args.deltas, args.per_datagram)
    if args.only in (None, "socket"):
        result["paced"] = measure_socket(int(args.rate * args.seconds), args.rate,
                                         args.seconds * 3, flood=False,
                                         per_datagram=args.per_datagram)
        result["flood"] = measure_socket(int(2e6 * args.flood_seconds), 0,
                                         args.flood_seconds, flood=True,
                                         per_datagram=args.per_datagram)
    print(json.dumps(result))


def run_tree(tree: Path, args: argparse.Namespace) -> dict[str, Any]:
    env = dict(os.environ, PYTHONPATH=str(tree))
    cmd = [sys.executable, __file__, "--worker", "--deltas", str(args.deltas),
           "--rate", str(args.rate), "--seconds", str(args.seconds),
           "--flood-seconds", str(args.flood_seconds),
           "--per-datagram", str(args.per_datagram)]
    if args.only:
        cmd += ["--only", args.only]
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True,
                         cwd=tempfile.gettempdir())
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def flatten(result: dict[str, Any]) -> dict[str, float]:
    return {f"{part}: {name}": value for part, values in result.items()
            for name, value in values.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compare", type=Path, help="directory holding another grapevine")
    parser.add_argument("--tree", type=Path, default=ROOT,
                        help="directory holding this grapevine (default: this checkout)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--deltas", type=int, default=100_000)
    parser.add_argument("--rate", type=float, default=100_000.0, help="paced deltas/s")
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--flood-seconds", type=float, default=2.0)
    parser.add_argument("--only", choices=["core", "socket"])
    parser.add_argument("--per-datagram", type=int, default=DEFAULT_PER_DATAGRAM,
                        help="deltas per datagram (1: a sparse stream, as a publisher "
                             "sends it at 20k changes/s)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--send", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.send:
        send(args.send, args.port, args.rate, args.seconds)
        return 0
    if args.worker:
        worker(args)
        return 0
    trees = [("this", args.tree.resolve())]
    if args.compare:
        trees.append(("other", args.compare.resolve()))
    runs: dict[str, list[dict[str, float]]] = {name: [] for name, _ in trees}
    for repeat in range(args.repeats):
        for name, tree in trees if repeat % 2 == 0 else trees[::-1]:
            runs[name].append(flatten(run_tree(tree, args)))
            print(f"repeat {repeat + 1}/{args.repeats} {name}: done", file=sys.stderr)
    keys = list(runs["this"][0])
    print(f"medians of {args.repeats} runs per tree (core: best of 5 within a run)")
    header = f"{'measure':42} {'this':>12}"
    if args.compare:
        header += f" {'other':>12} {'this/other':>10}"
    print(header)
    for key in keys:
        this = statistics.median(run[key] for run in runs["this"])
        line = f"{key:42} {this:12.1f}"
        if args.compare:
            other = statistics.median(run[key] for run in runs["other"])
            ratios = [a[key] / b[key] for a, b in zip(runs["this"], runs["other"], strict=True)
                      if b[key]]
            ratio = statistics.median(ratios) if ratios else float("nan")
            line += f" {other:12.1f} {ratio:10.2f}"
        print(line)
    if "core: baseline" in keys:
        print("core figures are ns/delta; the baseline is one Python call per delta")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
