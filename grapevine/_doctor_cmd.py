"""``grapevine doctor``: check what breaks multicast on this host, and say how to fix it.

The checks are the problems users of multicast libraries hit most (LCM's "common issues"):
an interface address this host does not have; no route for 224.0.0.0/4 where tools that do
not pin the interface (tcpdump, ports to other languages) would need one; loopback multicast
not delivered (a firewall dropping the port, or IP_MULTICAST_LOOP); IP_MULTICAST_ALL
(sockets receiving other groups on the same port); a receive buffer clamped by
net.core.rmem_max; a TTL that keeps datagrams on the host; Docker bridge networks, which do
not carry multicast between containers and the host.

It sends nothing off the host: the delivery test multicasts on loopback with TTL 0, unless
``--send`` asks for a test datagram on the named interface (with ``--ttl``). Each finding is
printed with the command that fixes it; the exit status is 1 if any check failed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from ._transport import (
    DEFAULT_GROUP,
    DEFAULT_INTERFACE,
    DEFAULT_RECEIVE_BUFFER,
    free_port,
    open_receiver,
    open_sender,
)

__all__ = ["Finding", "add_arguments", "diagnose", "run"]

_PROC = Path("/proc/sys/net")
_SYS_NET = Path("/sys/class/net")


@dataclass(frozen=True)
class Finding:
    """One check's result: ``ok`` or not, what was found, and the command that fixes it."""

    check: str
    ok: bool
    detail: str
    fix: str = ""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--interface", default=DEFAULT_INTERFACE, metavar="ADDR",
                        help="the local interface address to check (default 127.0.0.1)")
    parser.add_argument("--group", default=DEFAULT_GROUP, help="multicast group to check")
    parser.add_argument("--port", type=int, default=0,
                        help="UDP port to test (default: a free one)")
    parser.add_argument("--receive-buffer", type=int, default=DEFAULT_RECEIVE_BUFFER,
                        metavar="BYTES", help="the receive buffer subscribers ask for")
    parser.add_argument("--ttl", type=int, default=0, help="the TTL publishers will use")
    parser.add_argument("--send", action="store_true",
                        help="also multicast a test datagram on --interface (leaves the host "
                             "if the interface and --ttl allow it)")
    parser.add_argument("--json", action="store_true", help="JSON Lines, one per finding")


def run(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    findings = diagnose(args.interface, args.group, args.port, args.receive_buffer, args.ttl,
                        send=args.send)
    for finding in findings:
        if args.json:
            print(json.dumps(finding.__dict__), file=out)
            continue
        mark = "ok  " if finding.ok else "FAIL"
        print(f"{mark} {finding.check}: {finding.detail}", file=out)
        if finding.fix:
            print(f"     fix: {finding.fix}", file=out)
    return 0 if all(f.ok for f in findings) else 1


def diagnose(interface: str, group: str, port: int, receive_buffer: int, ttl: int, *,
             send: bool = False) -> list[Finding]:
    """Every check, in order (sans output)."""
    findings = [_interface(interface)]
    if not findings[0].ok:
        return findings  # every other check needs the interface
    findings.append(_route(group, interface))
    findings.append(_loopback_delivery(group, port))
    findings.append(_multicast_all())
    findings.append(_receive_buffer(receive_buffer))
    findings.append(_ttl(interface, ttl))
    findings.append(_docker())
    findings.append(_firewall(port))
    if send:
        findings.append(_send_on(interface, group, port, ttl))
    return findings


def _interface(interface: str) -> Finding:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind((interface, 0))
        except OSError as exc:
            return Finding("interface", False,
                           f"no interface on this host has the address {interface} ({exc})",
                           "ip -4 addr show   # then pass --interface one of those addresses")
    link = _link_of(interface)
    if link is not None and "UP" not in link.get("flags", []):
        name = link.get("ifname", "?")
        return Finding("interface", False, f"{interface} is on {name}, which is down",
                       f"ip link set {name} up")
    if link is not None and "MULTICAST" not in link.get("flags", []) \
            and "LOOPBACK" not in link.get("flags", []):
        name = link.get("ifname", "?")
        return Finding("interface", False, f"{name} ({interface}) has multicast off",
                       f"ip link set {name} multicast on")
    return Finding("interface", True, f"{interface} is an address of this host")


def _route(group: str, interface: str) -> Finding:
    """Grapevine pins the interface (IP_MULTICAST_IF and the join), so the routing table
    only matters to tools that do not: report where the kernel would send the group."""
    if shutil.which("ip") is None:
        return Finding("route", True, "cannot check (no `ip` command); Grapevine pins the "
                                      "interface, so it does not need a multicast route")
    result = subprocess.run(["ip", "-j", "route", "get", group], capture_output=True,
                            text=True, check=False, timeout=5)
    device = None
    if result.returncode == 0:
        try:
            device = json.loads(result.stdout)[0].get("dev")
        except (ValueError, IndexError, AttributeError):
            device = None
    wanted = _device_of(interface)
    if device is None:
        return Finding("route", False,
                       f"no route for {group}: tools that do not pin an interface (tcpdump "
                       "-i any, other ports of the protocol) cannot send to it",
                       f"ip route add 224.0.0.0/4 dev {wanted or 'IFACE'}")
    if wanted is not None and device != wanted:
        return Finding("route", True,
                       f"the kernel routes {group} via {device}, not {wanted} "
                       f"({interface}); Grapevine pins {wanted}, tools that do not will use "
                       f"{device}", f"ip route add 224.0.0.0/4 dev {wanted}   # if they should not")
    return Finding("route", True, f"{group} is routed via {device}")


def _device_of(address: str) -> str | None:
    link = _link_of(address)
    return None if link is None else str(link.get("ifname"))


def _link_of(address: str) -> dict[str, Any] | None:
    """``ip -j addr``'s entry of the link that has ``address`` (None if unknown)."""
    if shutil.which("ip") is None:
        return None
    result = subprocess.run(["ip", "-j", "-4", "addr", "show"], capture_output=True,
                            text=True, check=False, timeout=5)
    try:
        for link in json.loads(result.stdout):
            for info in link.get("addr_info", []):
                if info.get("local") == address:
                    return dict(link)
        if address.startswith("127."):  # lo down lists no address, yet 127/8 is lo's
            shown = subprocess.run(["ip", "-j", "link", "show", "lo"], capture_output=True,
                                   text=True, check=False, timeout=5)
            return dict(json.loads(shown.stdout)[0])
    except (ValueError, IndexError):
        return None
    return None


def _loopback_delivery(group: str, port: int) -> Finding:
    """A datagram multicast on loopback with TTL 0 must come back to a joined socket."""
    port = port or free_port(group)
    token = os.urandom(16)
    try:
        receiver = open_receiver(group, port, interface=DEFAULT_INTERFACE, buffer_bytes=1 << 16)
    except OSError as exc:
        return Finding("loopback delivery", False, f"cannot join {group}:{port} on "
                       f"127.0.0.1: {exc}", "ip link set lo multicast on")
    try:
        with open_sender(group, port, interface=DEFAULT_INTERFACE, ttl=0) as sender:
            receiver.settimeout(0.5)
            buffer = bytearray(64)
            deadline = time.monotonic() + 1.0
            sender.send(token)
            while time.monotonic() < deadline:
                try:
                    size = receiver.recv_into(buffer)
                except TimeoutError:
                    break
                if bytes(buffer[:size]) == token:
                    return Finding("loopback delivery", True,
                                   f"a datagram to {group}:{port} on 127.0.0.1, TTL 0, came "
                                   "back")
    except OSError as exc:
        return Finding("loopback delivery", False, f"sending to {group}:{port} failed: {exc}",
                       "ip link set lo multicast on")
    finally:
        receiver.close()
    return Finding("loopback delivery", False,
                   f"a datagram to {group}:{port} on 127.0.0.1 never arrived: a firewall "
                   "drops it, or loopback has no multicast flag",
                   f"ip link set lo multicast on; nft list ruleset | grep {port}")


def _multicast_all() -> Finding:
    if not sys.platform.startswith("linux"):
        return Finding("IP_MULTICAST_ALL", True, "not Linux: sockets bound to the group "
                       "address receive only that group")
    value = _read_int(_PROC / "ipv4" / "igmp_max_memberships")
    detail = ("Grapevine turns IP_MULTICAST_ALL off on its sockets, so a socket receives "
              "only the group it joined, not every group joined on the host for that port")
    if value is not None and value < 20:
        return Finding("IP_MULTICAST_ALL", False, detail + f"; but igmp_max_memberships is "
                       f"{value}: few groups can be joined at once",
                       "sysctl -w net.ipv4.igmp_max_memberships=1024")
    return Finding("IP_MULTICAST_ALL", True, detail)


def _receive_buffer(wanted: int) -> Finding:
    limit = _read_int(_PROC / "core" / "rmem_max")
    if limit is None:
        return Finding("receive buffer", True, "cannot read net.core.rmem_max here")
    if limit < wanted:
        return Finding("receive buffer", False,
                       f"net.core.rmem_max is {limit} bytes: a subscriber asking for "
                       f"{wanted} gets {limit}, and bursts then overflow it (kernel_drops)",
                       f"sysctl -w net.core.rmem_max={wanted}")
    return Finding("receive buffer", True,
                   f"net.core.rmem_max {limit} bytes allows the {wanted} asked for")


def _ttl(interface: str, ttl: int) -> Finding:
    if interface.startswith("127.") and ttl:
        return Finding("TTL", True, f"TTL {ttl} on loopback: datagrams still stay on the host")
    if not interface.startswith("127.") and ttl == 0:
        return Finding("TTL", False, f"TTL 0 keeps every datagram on this host, even on "
                       f"{interface}", "Publisher(..., interface=..., ttl=1)   # the segment")
    return Finding("TTL", True, f"TTL {ttl}" + (" (this host only)" if ttl == 0 else ""))


def _docker() -> Finding:
    bridges = sorted(p.name for p in _SYS_NET.glob("*")
                     if p.name == "docker0" or p.name.startswith("br-")) \
        if _SYS_NET.exists() else []
    if bridges:
        return Finding("docker", False,
                       f"Docker bridge networks ({', '.join(bridges)}) do not carry multicast "
                       "between containers and the host",
                       "docker run --network host ...   # or a repeater: grapevine repeat")
    return Finding("docker", True, "no Docker bridge network")


def _firewall(port: int) -> Finding:
    if shutil.which("nft") is None:
        return Finding("firewall", True, "cannot check (no `nft` command)")
    result = subprocess.run(["nft", "list", "ruleset"], capture_output=True, text=True,
                            check=False, timeout=5)
    if result.returncode != 0:
        return Finding("firewall", True, "cannot read the nftables ruleset (needs root)")
    drops = [line.strip() for line in result.stdout.splitlines()
             if "drop" in line and ("udp" in line or "policy drop" in line)
             and (not port or str(port) in line or "policy" in line)]
    if drops:
        return Finding("firewall", False, "nftables rules may drop Grapevine's UDP: "
                       + "; ".join(drops[:3]), "nft list ruleset   # allow the group's port")
    return Finding("firewall", True, "no nftables rule drops UDP" +
                   (f" to port {port}" if port else ""))


def _send_on(interface: str, group: str, port: int, ttl: int) -> Finding:
    port = port or free_port(group)
    try:
        with open_sender(group, port, interface=interface, ttl=ttl) as sender:
            sender.send(b"grapevine doctor test datagram")
    except OSError as exc:
        return Finding("send", False, f"cannot multicast on {interface}: {exc}",
                       f"ip route add 224.0.0.0/4 dev IFACE   # the device of {interface}")
    return Finding("send", True, f"sent one test datagram to {group}:{port} on {interface}, "
                   f"TTL {ttl}")


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
