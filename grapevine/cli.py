"""The ``grapevine`` command line: one subcommand per module in ``_COMMANDS``.

Each subcommand's module is imported only when that subcommand runs (or for ``--help``), so
one subcommand's imports can never break another.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from types import ModuleType

# subcommand -> (module, help). Each module defines add_arguments(parser) and run(args) -> int.
_COMMANDS: dict[str, tuple[str, str]] = {
    "decode": ("grapevine._decode_cmd",
               "decode datagrams: pcap/pcapng captures, hex, files; --json, --summary"),
    "demo": ("grapevine._demo", "run the order-book demo on loopback multicast"),
    "keygen": ("grapevine._keygen_cmd", "print a new random authentication key line"),
    "doctor": ("grapevine._doctor_cmd", "check what breaks multicast on this host, with fixes"),
    "listen": ("grapevine._listen_cmd", "print the datagrams heard on a group, live"),
    "play": ("grapevine._play_cmd", "multicast a capture's datagrams again, at recorded pace"),
    "record": ("grapevine._record_cmd", "record the datagrams heard on a group to pcapng"),
    "replay": ("grapevine._replay_cmd", "rebuild a replica from a capture, as of a time or seq"),
    "stats": ("grapevine._stats_cmd", "a live view of a group's streams, rates, gaps, cycles"),
    "repeat": ("grapevine._repeat_cmd", "carry multicast streams between networks over a link"),
}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``grapevine`` console script."""
    args_in = sys.argv[1:] if argv is None else argv
    from grapevine import __version__

    parser = argparse.ArgumentParser(prog="grapevine",
                                     description="Grapevine: state replication over multicast.")
    parser.add_argument("--version", action="version", version=f"grapevine {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    chosen = next((word for word in args_in if not word.startswith("-")), None)
    for name, (module_name, help_text) in _COMMANDS.items():
        command = sub.add_parser(name, help=help_text, description=help_text)
        if name == chosen:
            command.set_defaults(_module=module_name)
            _load(module_name).add_arguments(command)
    args = parser.parse_args(args_in)
    try:
        return int(_load(args._module).run(args))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _load(module_name: str) -> ModuleType:
    return importlib.import_module(module_name)
