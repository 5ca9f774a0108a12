"""The ``grapevine`` command line: one subcommand per module in ``_COMMANDS``."""

from __future__ import annotations

import argparse
import importlib
import sys

# subcommand -> (module, help). Each module defines add_arguments(parser) and run(args) -> int.
_COMMANDS: dict[str, tuple[str, str]] = {
    "decode": ("grapevine._decode_cmd", "decode captured datagrams (hex, binary file, pcap)"),
    "demo": ("grapevine._demo", "run the order-book demo on loopback multicast"),
}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``grapevine`` console script."""
    parser = argparse.ArgumentParser(prog="grapevine", description=__doc__)
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module_name, help_text) in _COMMANDS.items():
        command = sub.add_parser(name, help=help_text)
        command.set_defaults(_module=module_name)
        _load(module_name).add_arguments(command)
    args = parser.parse_args(argv)
    try:
        return int(_load(args._module).run(args))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _load(module_name: str):  # type: ignore[no-untyped-def]
    return importlib.import_module(module_name)


def _version() -> str:
    from grapevine import __version__

    return f"grapevine {__version__}"
