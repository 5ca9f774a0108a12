#!/usr/bin/env python3
"""Decode captured Grapevine datagrams: ``python tools/decode.py INPUT...`` from a checkout.

The same code as ``grapevine decode`` (see grapevine/_decode_cmd.py): hex strings, ``-`` for
hex lines on stdin, pcap and pcapng captures, test-vector JSON files, hex-line files or raw
binary files; filters, ``--json`` and ``--summary`` as there.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from grapevine._decode_cmd import main

if __name__ == "__main__":
    sys.exit(main())
