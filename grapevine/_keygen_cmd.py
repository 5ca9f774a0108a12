"""``grapevine keygen``: print a new random authentication key.

Prints one line ``KEY_ID:SECRET`` (32 random bytes in hex) to stdout, the format
``KeyRing.from_text`` reads from a key file or the GRAPEVINE_KEYS environment variable, and
a reminder on stderr to keep it secret.
"""

from __future__ import annotations

import argparse
import sys
from typing import TextIO

from .auth import KEY_ENV_VAR, generate_key

__all__ = ["add_arguments", "run"]

_MAX_KEY_ID = 0xFFFF_FFFF


def _key_id(text: str) -> int:
    try:
        value = int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a decimal number") from None
    if not 0 <= value <= _MAX_KEY_ID:
        raise argparse.ArgumentTypeError(f"{value} is outside 0..{_MAX_KEY_ID} (u32)")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the ``keygen`` options on ``parser``."""
    parser.description = __doc__.split("\n\n")[1] if __doc__ else None
    parser.add_argument("--key-id", type=_key_id, default=1, metavar="N",
                        help="the key id, 0 to 2^32-1 (default 1); give each key its own id "
                             "so that keys can rotate")


def run(args: argparse.Namespace) -> int:
    """Print one key line; 0."""
    return _run(args.key_id, sys.stdout, sys.stderr)


def _run(key_id: int, out: TextIO, err: TextIO) -> int:
    out.write(generate_key(key_id) + "\n")
    err.write("keep this key secret: anyone who has it can forge datagrams. Put it in a key "
              f"file readable only by the publisher and subscribers (mode 600) or in "
              f"${KEY_ENV_VAR}; prefix its line with '*' to sign with it.\n")
    return 0
