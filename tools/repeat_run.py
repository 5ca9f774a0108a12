#!/usr/bin/env python3
"""Two networks joined only by a routed veth link: repeaters, or a multicast router, between.

Run as root (or anywhere ``unshare -rn`` works) with iproute2 and nftables (and smcroute
for ``--mode mroute``)::

    python3 tools/repeat_run.py                        # repeaters over TCP, every phase
    python3 tools/repeat_run.py --udp --keys           # a UDP link, a signed stream
    python3 tools/repeat_run.py --phases loss_a,link_cut
    python3 tools/repeat_run.py --mode mroute          # smcroute static route, TTL 2
    python3 tools/repeat_run.py --mode throughput      # repeater ceiling vs publisher

It re-executes itself inside a new network namespace (``unshare -rn``; it starts with only
``lo``, so nothing can leave the host) and makes a second one joined to it by a veth pair
(``tools/_netns.PeerNamespace``): network A is this namespace (10.77.0.1 on the link),
network B the other (10.77.0.2). The multicast routes the helper adds are deleted again:
the only thing joining A and B is a unicast link.

``--mode repeat`` (default): a publisher (order books from the demo's market) multicasts on
A's loopback (127.0.0.1, TTL 0) and a subscriber listens on B's loopback; neither can hear
the other. Two ``grapevine repeat`` processes carry the stream: ``--send`` in A,
``--receive`` in B listening on 10.77.0.2, over TCP (or UDP with ``--udp``). First the
control: B hears nothing while only the publisher runs. Then, while the publisher goes on
publishing, each phase injects a fault, ends it, pauses publishing and waits for the
subscriber to be synced with every delta applied and equal to the publisher leaf by leaf:

* ``loss_a``: nftables drops ``--loss`` percent of the group's datagrams in A (into the
  send-side repeater), ``numgen random mod 100``, for ``--fault-seconds``;
* ``loss_b``: the same in B (the re-multicast datagrams into the subscriber);
* ``restart_receive``: the receive side is killed (SIGKILL) and started again;
* ``restart_send``: the send side is stopped (SIGTERM) and started again;
* ``link_cut``: nftables in B drops the link's packets both ways for ``--cut-seconds``
  (longer than the link timeout, so both ends give the connection up and the send side
  reconnects once the cut ends).

``--mode mroute``: the same two namespaces, no repeater. The publisher sends with TTL 2
from a LAN interface of A (a veth pair of its own, 10.78.0.1); ``smcrouted`` in A holds a
static multicast route from that LAN to the link; the subscriber joins on B's end of the
link. The control first: without the route B hears nothing. If the kernel cannot route
multicast (no CONFIG_IP_MROUTE: ``setsockopt(MRT_INIT)`` fails) the run says so, with
smcrouted's own log, and exits 3.

``--mode throughput``: the repeaters of ``--mode repeat``. First the publisher publishes
flat out for ``--seconds`` (its datagram rate, carried by the repeaters, loss counted);
then a blaster sends datagrams of the publisher's mean size at rising ``--rates`` to the
send side for ``--seconds`` each, and the highest rate carried to B without one lost
datagram is compared with the publisher's rate.

Prints one JSON report as its last stdout line; exit 0 only if everything checked held.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import queue
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _feeder import Feeder  # this script's folder, tools/
from _netns import PeerNamespace, run_in_private_namespace

from grapevine import Publisher, PublisherConfig, Subscriber, SubscriberConfig
from grapevine._transport import open_sender
from grapevine.auth import KeyRing, generate_key
from grapevine.book import OrderBookModel
from grapevine.codec import DatagramBuilder
from grapevine.testing import Market, free_port

ROOT = Path(__file__).resolve().parent.parent
_GROUP = "239.255.77.1"
_A, _B = "10.77.0.1", "10.77.0.2"
_LAN_A = "10.78.0.1"
_LAN_DEV, _LAN_PEER_DEV = "gv-lan-a", "gv-lan-x"
_LOSS_TABLE, _CUT_TABLE = "grapevine_repeat_loss", "grapevine_repeat_cut"
PHASES = ("loss_a", "loss_b", "restart_receive", "restart_send", "link_cut")
_MRT_INIT = 200  # linux/mroute.h: the socket option that turns a netns into a router


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("repeat", "mroute", "throughput"), default="repeat")
    parser.add_argument("--udp", action="store_true", help="repeat: a UDP link, not TCP")
    parser.add_argument("--keys", action="store_true",
                        help="the publisher signs, the subscriber verifies (a fresh key)")
    parser.add_argument("--phases", default=",".join(PHASES),
                        help=f"repeat: comma-separated, from {', '.join(PHASES)}")
    parser.add_argument("--leaves", type=int, default=300, help="instruments (order books)")
    parser.add_argument("--rate", type=int, default=3000, help="deltas per second")
    parser.add_argument("--loss", type=int, default=10, help="percent dropped in loss phases")
    parser.add_argument("--fault-seconds", type=float, default=1.5,
                        help="publishing under loss, or with a repeater down")
    parser.add_argument("--cut-seconds", type=float, default=4.0,
                        help="link cut length (above the link timeout)")
    parser.add_argument("--link-timeout", type=float, default=2.0,
                        help="the repeaters' --link-timeout")
    parser.add_argument("--converge-timeout", type=float, default=30.0)
    parser.add_argument("--seconds", type=float, default=2.0,
                        help="throughput: seconds per measurement")
    parser.add_argument("--rates", default="2000,5000,10000,20000,30000,40000,50000,60000,80000",
                        help="throughput: datagram rates the blaster tries, rising")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    needs = {"nft": "nftables"}
    if args.mode == "mroute":
        needs["smcrouted"] = "smcroute"
    return run_in_private_namespace(__file__, lambda: run_inside(args), also_needs=needs)


def run_inside(args: argparse.Namespace) -> int:
    peer = PeerNamespace(local=_A, peer=_B)
    try:
        # PeerNamespace routes 224.0.0.0/4 over the pair; take that away on both ends, so
        # that A and B share nothing but unicast over the link (B routes A's LAN via A).
        sh("ip", "route", "del", "224.0.0.0/4", "dev", peer.local_dev)
        peer.run(lambda: sh("ip", "route", "del", "224.0.0.0/4", "dev", peer.peer_dev))
        peer.run(lambda: sh("ip", "route", "add", "10.78.0.0/24", "via", _A))
        if args.mode == "repeat":
            report, ok = run_repeat(args, peer)
        elif args.mode == "mroute":
            report, ok = run_mroute(args, peer)
        else:
            report, ok = run_throughput(args, peer)
        report["veth"] = peer.counters()
    finally:
        kill_spawned()
        peer.close()
    print(json.dumps(report))
    if report.get("supported") is False:
        return 3
    return 0 if ok else 1


# --------------------------------------------------------------------------- helpers


def sh(*words: str) -> str:
    return subprocess.run(list(words), check=True, capture_output=True, text=True).stdout


def nft_drop(table: str, rules: list[tuple[str, str]]) -> None:
    """A table of drop rules, each ``(hook, match)``; ``nft_counts`` reads them back."""
    sh("nft", "add", "table", "inet", table)
    for hook in sorted({hook for hook, _ in rules}):
        sh("nft", "add", "chain", "inet", table, hook,
           f"{{ type filter hook {hook} priority 0; policy accept; }}")
    for hook, match in rules:
        sh("nft", "add", "rule", "inet", table, hook, *match.split(), "counter", "drop")


def nft_counts(table: str) -> int:
    """Packets the table's rules dropped so far."""
    listing = json.loads(sh("nft", "-j", "list", "table", "inet", table))
    dropped = 0
    for item in listing["nftables"]:
        for expr in item.get("rule", {}).get("expr", []):
            if "counter" in expr:
                dropped += expr["counter"]["packets"]
    return dropped


def nft_delete(table: str) -> None:
    sh("nft", "delete", "table", "inet", table)


def pause(seconds: float) -> None:
    """The workload's own duration (publishing under a fault): not synchronisation."""
    threading.Event().wait(seconds)


# Every process this run starts, killed at the end whatever happened. Each also stops by
# itself (--duration, ``timeout``) should this run be killed before it can clean up.
_SPAWNED: list[subprocess.Popen[str]] = []
_CHILD_LIFETIME_S = 600


def kill_spawned() -> None:
    for proc in _SPAWNED:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


class RepeaterProcess:
    """One ``grapevine repeat`` process: its JSON events (stdout) and its log's tail."""

    def __init__(self, argv: list[str], spawn: Callable[[Callable[[], Any]], Any]) -> None:
        command = [sys.executable, "-m", "grapevine", "repeat", *argv,
                   "--duration", str(_CHILD_LIFETIME_S)]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.argv = argv
        self.proc: subprocess.Popen[str] = spawn(lambda: subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env))
        _SPAWNED.append(self.proc)
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self.log: deque[str] = deque(maxlen=30)
        self._readers = [
            threading.Thread(target=self._read_events, name="repeat-run-events", daemon=True),
            threading.Thread(target=self._read_log, name="repeat-run-log", daemon=True),
        ]
        for reader in self._readers:
            reader.start()
        self.ready = self.wait_event("ready", 15)

    def _read_events(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with contextlib.suppress(json.JSONDecodeError):
                self.events.put(json.loads(line))

    def _read_log(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.log.append(line.rstrip())

    def wait_event(self, name: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            try:
                event = self.events.get(timeout=max(left, 0.001))
            except queue.Empty:
                raise RuntimeError(f"repeater {self.argv} gave no {name!r} event in {timeout} "
                                   f"s (exit {self.proc.poll()}); log:\n"
                                   + "\n".join(self.log)) from None
            if event.get("event") == name:
                return event

    def stats(self) -> dict[str, Any]:
        self.proc.send_signal(signal.SIGUSR1)
        return self.wait_event("stats", 10)

    def stop(self) -> dict[str, Any]:
        """SIGTERM: a clean stop; its final stats."""
        self.proc.send_signal(signal.SIGTERM)
        final = self.wait_event("final", 15)
        self._reap()
        return final

    def kill(self) -> None:
        self.proc.kill()
        self._reap()

    def _reap(self) -> None:
        self.proc.wait(15)
        for reader in self._readers:
            reader.join(5)


def truth_of(pub: Publisher[Any, Any]) -> dict[int, int]:
    return {leaf: book.checksum() for leaf, book in pub.values().items()}


def converge(pub: Publisher[Any, Any], sub: Subscriber[Any, Any], since: float,
             timeout: float) -> dict[str, Any]:
    """Wait (publishing paused) until the subscriber has every delta, synced, and equals
    the publisher; how long that took after ``since`` (when the fault ended)."""
    pub.flush(10)
    deadline = time.monotonic() + timeout
    truth = truth_of(pub)
    applied = equal = False
    while time.monotonic() < deadline and not equal:
        applied = sub.wait_until_applied(pub.last_sequence, session_id=pub.session_id,
                                         timeout=max(deadline - time.monotonic(), 0.01))
        if applied:
            with sub.locked() as replica:
                mine = {leaf: book.checksum() for leaf, book in replica.items()}
            equal = mine == truth
            if not equal:  # a snapshot still to come: look again shortly
                pause(0.05)
    return {"synced": applied and sub.synced, "equal": equal,
            "seconds": round(time.monotonic() - since, 3)}


def subscriber_counts(sub: Subscriber[Any, Any]) -> dict[str, int]:
    s = sub.stats()
    return {"datagrams": s.datagrams, "gaps": s.gaps, "missed_deltas": s.missed_deltas,
            "repairs": s.repairs, "restarts": s.restarts, "malformed": s.malformed,
            "unauthenticated": s.unauthenticated, "bad_tags": s.bad_tags,
            "replayed": s.replayed, "internal_errors": s.internal_errors,
            "retransmitted": s.retransmitted_datagrams}


def diff(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before.get(k, 0) for k in after}


def keys_for(args: argparse.Namespace) -> KeyRing | None:
    return KeyRing.from_text(generate_key(1)) if args.keys else None


# --------------------------------------------------------------------------- mode: repeat


class Repeaters:
    """The send side in A and the receive side in B, restartable."""

    def __init__(self, args: argparse.Namespace, peer: PeerNamespace, port: int) -> None:
        self.args, self.peer, self.port = args, peer, port
        self.link_port = 0
        self.finals: list[dict[str, Any]] = []  # of stopped processes
        self.rx = self.start_receive()
        self.tx = self.start_send()

    def _common(self) -> list[str]:
        common = ["--group", f"{_GROUP}:{self.port}", "--link-timeout",
                  str(self.args.link_timeout), "--stats-interval", "1"]
        return [*common, "--udp"] if self.args.udp else common

    def start_receive(self) -> RepeaterProcess:
        rx = RepeaterProcess(["--receive", "--listen", f"{_B}:{self.link_port}",
                              *self._common()], self.peer.run)
        self.link_port = int(rx.ready["link"].rpartition(":")[2])
        return rx

    def start_send(self) -> RepeaterProcess:
        return RepeaterProcess(["--send", "--peer", f"{_B}:{self.link_port}",
                                *self._common()], lambda start: start())

    def stats(self) -> dict[str, Any]:
        return {"send": self.tx.stats(), "receive": self.rx.stats()}

    def close(self) -> None:
        for side in (self.tx, self.rx):
            if side.proc.poll() is None:
                self.finals.append(side.stop())


def run_repeat(args: argparse.Namespace, peer: PeerNamespace) -> tuple[dict[str, Any], bool]:
    phases = [p for p in args.phases.split(",") if p]
    unknown = set(phases) - set(PHASES)
    if unknown:
        raise SystemExit(f"unknown phases {sorted(unknown)}; known: {PHASES}")
    port = free_port(_GROUP)
    keys = keys_for(args)
    model = OrderBookModel()
    market = Market(args.leaves, seed=args.seed)
    # loopback, TTL 0 on both networks
    sub: Subscriber[Any, Any] = peer.run(lambda: Subscriber(
        model, config=SubscriberConfig(keys=keys), group=_GROUP, port=port))
    report: dict[str, Any] = {"mode": "repeat", "transport": "udp" if args.udp else "tcp",
                              "keys": keys is not None, "group": f"{_GROUP}:{port}",
                              "phases": []}
    repeaters: Repeaters | None = None
    feeder: Feeder | None = None
    ok = True
    try:
        with Publisher(model, config=PublisherConfig(keys=keys), initial=market.copy_books(),
                       group=_GROUP, port=port) as pub:
            feeder = Feeder(pub, market, args.rate, paused=True, name="repeat-run-feeder")
            # Control: the publisher alone; B must hear nothing of A's multicast.
            feeder.resume()
            pause(0.5)
            report["control"] = {"publisher_datagrams": pub.stats().datagrams,
                                 "subscriber_datagrams": sub.stats().datagrams}
            ok &= report["control"]["subscriber_datagrams"] == 0
            started = time.monotonic()
            repeaters = Repeaters(args, peer, port)
            report["link"] = f"{_B}:{repeaters.link_port}"
            feeder.pause()
            report["initial"] = converge(pub, sub, started, args.converge_timeout)
            ok &= report["initial"]["equal"]
            for name in phases:
                result = run_phase(name, args, peer, pub, sub, feeder, repeaters, port)
                report["phases"].append(result)
                ok &= result["ok"]
            feeder.stop()
            report["deltas_published"] = feeder.sent
            report["feeder_error"] = feeder.error
            ok &= feeder.error is None
            report["subscriber"] = subscriber_counts(sub)
            if keys is not None:  # a signed stream arrives unchanged: nothing dropped
                counts = report["subscriber"]
                ok &= counts["unauthenticated"] == 0 and counts["bad_tags"] == 0
    finally:
        if feeder is not None:
            feeder.stop()
        if repeaters is not None:
            repeaters.close()
            report["repeaters_final"] = repeaters.finals
        sub.close()
    report["ok"] = bool(ok)
    return report, bool(ok)


def run_phase(name: str, args: argparse.Namespace, peer: PeerNamespace,
              pub: Publisher[Any, Any], sub: Subscriber[Any, Any], feeder: Feeder,
              repeaters: Repeaters, port: int) -> dict[str, Any]:
    before_sub = subscriber_counts(sub)
    before_tx: dict[str, Any] | None = repeaters.tx.stats()
    result: dict[str, Any] = {"phase": name}
    feeder.resume()
    pause(0.3)  # a live stream before the fault
    if name in ("loss_a", "loss_b"):
        rule = [("input", f"udp dport {port} numgen random mod 100 < {args.loss}")]
        where: Callable[[Callable[[], Any]], Any] = (
            (lambda f: f()) if name == "loss_a" else peer.run)
        where(lambda: nft_drop(_LOSS_TABLE, rule))
        pause(args.fault_seconds)
        result["nft_dropped"] = where(lambda: nft_counts(_LOSS_TABLE))
        where(lambda: nft_delete(_LOSS_TABLE))
        effect = result["nft_dropped"] > 0
    elif name == "restart_receive":
        repeaters.rx.kill()  # a crash: no clean stop, the connection just breaks
        pause(args.fault_seconds)
        repeaters.rx = repeaters.start_receive()
        effect = True
    elif name == "restart_send":
        repeaters.finals.append(repeaters.tx.stop())
        pause(args.fault_seconds)
        repeaters.tx = repeaters.start_send()
        before_tx = None  # a new process: its counters start at zero
        effect = True
    else:  # link_cut: the link's packets vanish both ways, as on a dead line
        proto = "udp" if args.udp else "tcp"
        link = repeaters.link_port
        cut = [("input", f"{proto} dport {link}"), ("output", f"{proto} sport {link}")]
        peer.run(lambda: nft_drop(_CUT_TABLE, cut))
        pause(args.cut_seconds)
        result["nft_dropped"] = peer.run(lambda: nft_counts(_CUT_TABLE))
        peer.run(lambda: nft_delete(_CUT_TABLE))
        effect = result["nft_dropped"] > 0
    fault_ended = time.monotonic()
    pause(0.5)  # the stream goes on after the fault
    feeder.pause()
    result["converged"] = converge(pub, sub, fault_ended, args.converge_timeout)
    result["subscriber"] = diff(subscriber_counts(sub), before_sub)
    after_tx = repeaters.tx.stats()
    result["send_side"] = {k: after_tx[k] - (before_tx or {}).get(k, 0) for k in
                           ("received", "forwarded", "reconnects", "connect_failures",
                            "link_errors", "kernel_drops")}
    result["send_side"]["dropped"] = {
        k: v - (before_tx or {}).get("dropped", {}).get(k, 0)
        for k, v in after_tx["dropped"].items()}
    result["receive_side"] = repeaters.rx.stats()
    if name == "link_cut" and not args.udp:
        # Both ends gave the dead connection up and the send side connected again.
        effect = effect and result["send_side"]["reconnects"] >= 1
    if name == "restart_receive" and not args.udp:
        effect = result["send_side"]["reconnects"] >= 1
    result["fault_had_effect"] = effect
    result["ok"] = bool(effect and result["converged"]["equal"]
                        and result["converged"]["synced"])
    return result


# --------------------------------------------------------------------------- mode: mroute


def probe_multicast_routing() -> str | None:
    """None if this network namespace can become a multicast router, else why not."""
    try:
        probe = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_IGMP)
    except OSError as exc:
        return f"cannot open a raw IGMP socket: {exc}"
    with probe:
        try:
            probe.setsockopt(socket.IPPROTO_IP, _MRT_INIT, 1)
        except OSError as exc:
            return (f"setsockopt(IPPROTO_IP, MRT_INIT) failed: {exc}: this kernel has no "
                    "IPv4 multicast routing (CONFIG_IP_MROUTE is not set), so no multicast "
                    "routing daemon (smcrouted, pimd) can forward here")
    return None


@contextlib.contextmanager
def smcrouted(config: str) -> Iterator[tuple[subprocess.Popen[str], deque[str]]]:
    """smcrouted in the foreground on ``config`` (files in a private temporary folder);
    yields the process and its log lines as they come."""
    with tempfile.TemporaryDirectory(prefix="gv-smcroute-") as folder:
        conf = Path(folder, "smcroute.conf")
        conf.write_text(config)
        proc = subprocess.Popen(
            ["timeout", str(_CHILD_LIFETIME_S), "smcrouted", "-n", "-N", "-l", "debug",
             "-f", str(conf), "-u", str(Path(folder, "smcroute.sock")),
             "-P", str(Path(folder, "smcroute.pid"))],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        _SPAWNED.append(proc)
        lines: deque[str] = deque(maxlen=200)
        ready = threading.Event()

        def read() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.append(line.rstrip())
                if "Ready" in line:
                    ready.set()
            ready.set()

        reader = threading.Thread(target=read, name="repeat-run-smcroute", daemon=True)
        reader.start()
        ready.wait(10)
        try:
            yield proc, lines
        finally:
            proc.terminate()
            proc.wait(10)
            reader.join(5)


def run_mroute(args: argparse.Namespace, peer: PeerNamespace) -> tuple[dict[str, Any], bool]:
    # A's LAN: a veth pair of its own (this kernel has no dummy interfaces); the publisher
    # sends from gv-lan-a, the far end only keeps the link up.
    sh("ip", "link", "add", _LAN_DEV, "type", "veth", "peer", "name", _LAN_PEER_DEV)
    sh("ip", "addr", "add", f"{_LAN_A}/24", "dev", _LAN_DEV)
    sh("ip", "link", "set", _LAN_DEV, "up")
    sh("ip", "link", "set", _LAN_PEER_DEV, "up")
    Path("/proc/sys/net/ipv4/ip_forward").write_text("1\n")
    port = free_port(_GROUP)
    keys = keys_for(args)
    model = OrderBookModel()
    market = Market(args.leaves, seed=args.seed)
    report: dict[str, Any] = {"mode": "mroute", "group": f"{_GROUP}:{port}", "ttl": 2,
                              "publisher_interface": _LAN_A, "subscriber_interface": _B}
    sub: Subscriber[Any, Any] = peer.run(lambda: Subscriber(
        model, group=_GROUP, port=port, interface=_B, config=SubscriberConfig(keys=keys)))
    ok = True
    try:
        with Publisher(model, group=_GROUP, port=port, interface=_LAN_A, ttl=2,
                       config=PublisherConfig(keys=keys),
                       initial=market.copy_books()) as pub:
            feeder = Feeder(pub, market, args.rate, paused=True, name="repeat-run-feeder")
            try:
                feeder.resume()
                pause(1.0)
                report["control"] = {"publisher_datagrams": pub.stats().datagrams,
                                     "subscriber_datagrams": sub.stats().datagrams}
                ok &= report["control"]["subscriber_datagrams"] == 0
                why_not = probe_multicast_routing()
                config = (f"phyint {_LAN_DEV} enable\nphyint {peer.local_dev} enable\n"
                          f"mroute from {_LAN_DEV} group {_GROUP} to {peer.local_dev}\n")
                report["smcroute_conf"] = config
                started = time.monotonic()
                with smcrouted(config) as (daemon, lines):
                    if why_not is not None:
                        pause(1.0)  # let it log what it makes of this kernel
                        report["supported"] = False
                        report["reason"] = why_not
                        report["smcrouted_log"] = list(lines)
                        report["smcrouted_running"] = daemon.poll() is None
                        report["subscriber_datagrams_with_smcrouted"] = sub.stats().datagrams
                        return report, False
                    report["supported"] = True
                    feeder.pause()
                    report["converged"] = converge(pub, sub, started, args.converge_timeout)
                    report["mfc"] = Path("/proc/net/ip_mr_cache").read_text()
                    report["smcrouted_log"] = list(lines)[-20:]
                ok &= report["converged"]["equal"] and report["converged"]["synced"]
                report["subscriber"] = subscriber_counts(sub)
            finally:
                feeder.stop()
    finally:
        sub.close()
    report["ok"] = bool(ok)
    return report, bool(ok)


# --------------------------------------------------------------------------- mode: throughput


class Blaster:
    """Sends distinct valid datagrams of one size at a paced rate (A's loopback, TTL 0)."""

    def __init__(self, port: int, size: int) -> None:
        builder = DatagramBuilder(stream_id=99, session_id=0xB1A5_7E12, max_size=size)
        builder.start(1)
        builder.add_delta(1, 1, 0, bytes(size - 36 - 16))
        self.buffer = bytearray(builder.finish(time.time_ns()))
        self.sequence = 1
        self.sock = open_sender(_GROUP, port)

    def run(self, rate: int, seconds: float) -> tuple[int, float]:
        """(datagrams sent, seconds taken). Each has its own header sequence, so none is a
        byte-identical copy of another (the repeater drops those)."""
        pack = struct.Struct("<Q").pack_into
        buffer, send = self.buffer, self.sock.send
        sent = 0
        started = time.monotonic()
        tick = threading.Event()
        while True:
            elapsed = time.monotonic() - started
            if elapsed >= seconds:
                break
            due = int(elapsed * rate) - sent
            for _ in range(due):
                self.sequence += 1
                pack(buffer, 20, self.sequence)
                try:
                    send(buffer)
                except OSError:
                    continue  # ENOBUFS: the sender's own loss, not the repeater's
                sent += 1
            if due <= 0:
                tick.wait(0.0002)
        return sent, time.monotonic() - started

    def close(self) -> None:
        self.sock.close()


def settle(repeaters: Repeaters, before_rx: int, expected: int) -> dict[str, Any]:
    """The receive side's stats once it has forwarded ``expected`` datagrams since
    ``before_rx`` or stopped making progress."""
    last, still = -1, 0
    rx = repeaters.rx.stats()
    for _ in range(100):
        forwarded = rx["forwarded"] - before_rx
        if forwarded >= expected:
            break
        still = still + 1 if forwarded == last else 0
        if still >= 5:
            break
        last = forwarded
        pause(0.1)
        rx = repeaters.rx.stats()
    return rx


def run_throughput(args: argparse.Namespace,
                   peer: PeerNamespace) -> tuple[dict[str, Any], bool]:
    port = free_port(_GROUP)
    model = OrderBookModel()
    market = Market(args.leaves, seed=args.seed)
    repeaters = Repeaters(args, peer, port)
    report: dict[str, Any] = {"mode": "throughput", "transport": "udp" if args.udp else "tcp",
                              "seconds": args.seconds, "link": f"{_B}:{repeaters.link_port}"}
    ok = True
    try:
        # 1. The publisher flat out (its sender thread paced only by the CPU), repeated.
        tx0, rx0 = repeaters.tx.stats(), repeaters.rx.stats()
        with Publisher(model, group=_GROUP, port=port, initial=market.copy_books()) as pub:
            first = pub.stats()
            started = time.monotonic()
            while time.monotonic() - started < args.seconds:
                for leaf_id, delta in market.batch(2000):
                    pub.publish(leaf_id, delta)
            pub.flush(30)
            last = pub.stats()
        elapsed = last.taken_at - first.taken_at
        total = pub.stats().datagrams  # after close: every datagram of the session
        rx = settle(repeaters, rx0["forwarded"], total)
        tx = repeaters.tx.stats()
        publisher = {
            "datagrams_per_s": round((last.datagrams - first.datagrams) / elapsed),
            "bytes_per_s": round((last.bytes_sent - first.bytes_sent) / elapsed),
            "deltas_per_s": round((last.deltas - first.deltas) / elapsed),
            "mean_datagram_bytes": round((last.bytes_sent - first.bytes_sent)
                                         / max(last.datagrams - first.datagrams, 1)),
            "datagrams": total,
            "carried_to_b": rx["forwarded"] - rx0["forwarded"],
            "send_side_kernel_drops": tx["kernel_drops"] - tx0["kernel_drops"],
            "send_side_dropped": sum(tx["dropped"].values()) - sum(tx0["dropped"].values()),
        }
        publisher["lossless"] = publisher["carried_to_b"] == total
        report["publisher"] = publisher
        # 2. The blaster at rising rates: the highest rate carried without loss.
        size = publisher["mean_datagram_bytes"]
        blaster = Blaster(port, size)
        trials = []
        try:
            for rate in [int(r) for r in args.rates.split(",") if r]:
                tx0, rx0 = repeaters.tx.stats(), repeaters.rx.stats()
                sent, took = blaster.run(rate, args.seconds)
                rx = settle(repeaters, rx0["forwarded"], sent)
                tx = repeaters.tx.stats()
                carried = rx["forwarded"] - rx0["forwarded"]
                trial = {"target_per_s": rate, "sent": sent,
                         "sent_per_s": round(sent / took), "carried": carried,
                         "kernel_drops": tx["kernel_drops"] - tx0["kernel_drops"],
                         "dropped": {k: v - tx0["dropped"][k] for k, v in tx["dropped"].items()
                                     if v - tx0["dropped"][k]}}
                trial["lossless"] = carried == sent
                trial["rate_reached"] = sent / took >= 0.9 * rate
                trials.append(trial)
                if not (trial["lossless"] and trial["rate_reached"]):
                    break
        finally:
            blaster.close()
        report["blaster"] = {"datagram_bytes": size, "trials": trials}
        carried_ok = [t["sent_per_s"] for t in trials if t["lossless"]]
        best = max(carried_ok, default=0)
        report["max_lossless_datagrams_per_s"] = best
        report["ratio_to_publisher"] = round(best / max(publisher["datagrams_per_s"], 1), 2)
        report["limited_by"] = ("repeater loss" if trials and not trials[-1]["lossless"]
                                else "blaster could not send faster" if trials
                                and not trials[-1]["rate_reached"] else "rates list")
        ok &= publisher["lossless"] and best > 0
    finally:
        repeaters.close()
        report["repeaters_final"] = repeaters.finals
    report["ok"] = bool(ok)
    return report, bool(ok)


if __name__ == "__main__":
    raise SystemExit(main())
