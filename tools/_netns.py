"""Run a tool inside a private network namespace of its own (``unshare -rn``).

The tools that put real traffic on the wire (``loss_run.py``, ``attack_run.py``) re-execute
themselves in a new network namespace: it has only a loopback interface, so nothing they
send can leave the host, and whatever they change there (nftables rules) vanishes with it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

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
