"""Run a tool inside a private network namespace of its own (``unshare -rn``).

The tools that put real traffic on the wire (``loss_run.py``, ``attack_run.py``) re-execute
themselves in a new network namespace: it has only a loopback interface, so nothing they
send can leave the host, and whatever they change there (nftables rules) vanishes with it.
"""

from __future__ import annotations

import ctypes
import json
import os
import queue
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

# The commands this module runs itself, with the package that provides each.
_NEEDS = {"unshare": "util-linux", "ip": "iproute2"}


def run_in_private_namespace(script: str, inside: Callable[[], int], *,
                             also_needs: Mapping[str, str] | None = None) -> int:
    """Run ``inside()`` in a fresh network namespace with ``lo`` up; return its exit status.

    Called from ``script`` (the tool's ``__file__``) in the host's namespace, it re-executes
    the script with the same arguments under ``unshare -rn`` and returns that run's exit
    status; in the re-executed run it brings ``lo`` up and calls ``inside``. ``also_needs``
    names further commands the tool runs (command -> package), checked before re-executing.
    Returns 2 if a needed command is missing.
    """
    tool = Path(script).stem
    # Per tool, so that one tool started from inside another's namespace still makes its own.
    marker = f"GRAPEVINE_{tool.upper()}_INSIDE"
    if os.environ.get(marker) == "1":
        subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
        return inside()
    needs = {**_NEEDS, **(also_needs or {})}
    if not all(shutil.which(command) for command in needs):
        listed = [f"{command} ({package})" for command, package in needs.items()]
        print(f"{tool} needs {', '.join(listed[:-1])} and {listed[-1]}", file=sys.stderr)
        return 2
    env = {**os.environ, marker: "1"}
    command = ["unshare", "-rn", sys.executable, script, *sys.argv[1:]]
    return subprocess.run(command, env=env, check=False).returncode


_CLONE_NEWNET = 0x40000000


class PeerNamespace:
    """A second network namespace joined to the current one by a veth pair.

    Python has no ``os.setns`` before 3.12, and network namespaces are per thread: a helper
    thread calls ``unshare(CLONE_NEWNET)`` and stays in the new namespace (B) until
    :meth:`close`. From the calling thread (namespace A) the pair ``local_dev`` / ``peer_dev``
    is created, ``peer_dev`` is moved into B (by the helper's thread id) and each end gets
    its address and a route for 224.0.0.0/4. :meth:`run` calls a function on the helper
    thread: sockets it creates belong to B whatever thread uses them later. Only ``lo`` and
    the veth pair exist in either namespace when A is a fresh one, so nothing can leave.
    """

    def __init__(self, *, local: str = "10.77.0.1", peer: str = "10.77.0.2", prefix: int = 24,
                 local_dev: str = "gv-veth-a", peer_dev: str = "gv-veth-b") -> None:
        present = sorted(name for _, name in socket.if_nameindex())
        if present != ["lo"]:
            # Only in a namespace this run made itself: nothing may reach a real interface.
            raise RuntimeError(f"a peer namespace is only made from a fresh private namespace "
                               f"(only lo); this one has {present}")
        self.local, self.peer = local, peer
        self.local_dev, self.peer_dev = local_dev, peer_dev
        self._libc = ctypes.CDLL(None, use_errno=True)
        self._jobs: queue.Queue[Callable[[], None] | None] = queue.Queue()
        self._started = threading.Event()
        self._tid: int | None = None
        self._error: str | None = None
        self._thread = threading.Thread(target=self._serve, name="peer-netns", daemon=True)
        self._thread.start()
        tid = self._wait_started()
        if tid is None:
            raise OSError(f"unshare(CLONE_NEWNET) failed: {self._error}")
        made = False
        try:
            for command in (
                ["ip", "link", "add", local_dev, "type", "veth", "peer", "name", peer_dev],
                ["ip", "link", "set", peer_dev, "netns", str(tid)],
                ["ip", "addr", "add", f"{local}/{prefix}", "dev", local_dev],
                ["ip", "link", "set", local_dev, "up"],
                ["ip", "route", "add", "224.0.0.0/4", "dev", local_dev],
            ):
                subprocess.run(command, check=True)
                made = True
            self.run(lambda: self._configure_peer(prefix))
            self._check()
        except BaseException:
            self.close(delete=made)
            raise

    def _wait_started(self) -> int | None:
        """The helper thread's id once it is in namespace B; None if it failed or took
        more than 5 s. (A call, not a read: ``_tid`` is set on the helper thread.)"""
        self._started.wait(5)
        return self._tid

    def _serve(self) -> None:
        if self._libc.unshare(_CLONE_NEWNET) != 0:
            self._error = os.strerror(ctypes.get_errno())
            self._started.set()
            return
        self._tid = threading.get_native_id()
        self._started.set()
        while (job := self._jobs.get()) is not None:
            job()

    def run(self, function: Callable[[], Any]) -> Any:
        """``function()`` called on the helper thread (in namespace B); its result or error."""
        if not self._thread.is_alive():
            raise RuntimeError("the peer namespace is closed")
        done = threading.Event()
        box: dict[str, Any] = {}

        def job() -> None:
            try:
                box["result"] = function()
            except BaseException as exc:  # noqa: BLE001 - re-raised on the caller's thread
                box["error"] = exc
            done.set()

        self._jobs.put(job)
        done.wait()
        if "error" in box:
            raise box["error"]
        return box["result"]

    def _configure_peer(self, prefix: int) -> None:
        # Subprocesses started from this thread inherit its namespace (B).
        for command in (
            ["ip", "link", "set", "lo", "up"],
            ["ip", "addr", "add", f"{self.peer}/{prefix}", "dev", self.peer_dev],
            ["ip", "link", "set", self.peer_dev, "up"],
            ["ip", "route", "add", "224.0.0.0/4", "dev", self.peer_dev],
        ):
            subprocess.run(command, check=True)

    def _check(self) -> None:
        """Sockets made on the helper thread are in B: the peer address is bindable there
        and not here, and the local address here and not there."""
        def bindable(address: str) -> bool:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
                try:
                    probe.bind((address, 0))
                except OSError:
                    return False
            return True

        here = (bindable(self.local), bindable(self.peer))
        there = self.run(lambda: (bindable(self.local), bindable(self.peer)))
        if here != (True, False) or there != (False, True):
            raise RuntimeError(f"veth namespaces not as expected: local/peer bindable here "
                               f"{here}, in the peer namespace {there}")

    def counters(self) -> dict[str, int]:
        """Packets and bytes through this namespace's end of the pair (``ip -s link``)."""
        shown = subprocess.run(["ip", "-j", "-s", "link", "show", "dev", self.local_dev],
                               capture_output=True, text=True, check=True).stdout
        stats = json.loads(shown)[0]["stats64"]
        return {f"{way}_{key}": stats[way][key] for way in ("tx", "rx")
                for key in ("packets", "bytes")}

    def close(self, *, delete: bool = True) -> None:
        """Stop the helper thread and delete the veth pair (both ends go together)."""
        if self._thread.is_alive():
            self._jobs.put(None)
            self._thread.join(5)
        if delete:
            subprocess.run(["ip", "link", "del", self.local_dev], check=False,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
