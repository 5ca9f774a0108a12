#!/usr/bin/env python3
"""Per-datagram cost of the two stdlib MAC candidates for the auth trailer (issue 8).

Candidates, each producing a 16-byte tag over one datagram:

* ``hmac-sha256/16``: HMAC-SHA256 truncated to 16 bytes (what SPEC section 9 first named);
* ``blake2b-16``: keyed BLAKE2b with ``digest_size=16`` (``hashlib.blake2b(key=...)``).

Each is measured two ways: a new MAC object per datagram (``hmac.new`` / ``hashlib.blake2b``
with the key), and ``.copy()`` of an object keyed once up front (what grapevine.auth does).
The one-shot ``hmac.digest`` (C fast path, no object at all) is shown for completeness, and
so are the library's own :func:`grapevine.auth.sign` (copy, set the flag, append the trailer)
and :meth:`grapevine.auth.Verifier.check` on a signed datagram of the same size.

Figures are ns per datagram, best of N repeats, for 1,400-byte and 200-byte datagrams, and
ratios against two baselines measured in the same run: ``bytearray(data)`` (one copy of
the datagram) and a call of a trivial Python function.

Usage: ``python tools/bench_auth.py [--repeat N] [--seconds S]`` (a few seconds).
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import platform
import sys
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _bench import best_ns  # this script's own folder, tools/

from grapevine import auth, wire

KEY = bytes(range(32))
SIZES = (1400, 200)
TAG_SIZE = 16


def candidates(data: bytes) -> dict[str, Callable[[], object]]:
    """Each candidate computes the 16-byte tag of ``data``."""
    hmac_keyed = hmac.new(KEY, digestmod=hashlib.sha256)
    blake_keyed = hashlib.blake2b(key=KEY, digest_size=TAG_SIZE)
    sha256 = hashlib.sha256

    def hmac_new() -> bytes:
        return hmac.new(KEY, data, sha256).digest()[:TAG_SIZE]

    def hmac_copy() -> bytes:
        mac = hmac_keyed.copy()
        mac.update(data)
        return mac.digest()[:TAG_SIZE]

    def hmac_oneshot() -> bytes:
        return hmac.digest(KEY, data, "sha256")[:TAG_SIZE]

    def blake_new() -> bytes:
        return hashlib.blake2b(data, key=KEY, digest_size=TAG_SIZE).digest()

    def blake_copy() -> bytes:
        mac = blake_keyed.copy()
        mac.update(data)
        return mac.digest()

    # All candidates of one family agree (the bench measures what it claims to).
    assert hmac_new() == hmac_copy() == hmac_oneshot()
    assert blake_new() == blake_copy()
    ring = auth.KeyRing([auth.Key(1, KEY)])
    unsigned = wire.MAGIC + b"\x01\x00" + data[6 : len(data) - wire.AUTH_TRAILER_SIZE]
    signed = auth.sign(unsigned, ring)
    assert len(signed) == len(data)
    verifier = auth.Verifier(ring)
    assert verifier.check(signed) is auth.Verdict.ACCEPTED
    return {
        "hmac-sha256/16  new object": hmac_new,
        "hmac-sha256/16  keyed .copy()": hmac_copy,
        "hmac-sha256/16  hmac.digest one-shot": hmac_oneshot,
        "blake2b-16      new object": blake_new,
        "blake2b-16      keyed .copy()": blake_copy,
        "grapevine.auth.sign": lambda: auth.sign(unsigned, ring),
        "grapevine.auth Verifier.check": lambda: verifier.check(signed),
    }


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--repeat", type=int, default=5, help="timed repeats (best is kept)")
    parser.add_argument("--seconds", type=float, default=0.5,
                        help="time budget per figure (default 0.5 s)")
    args = parser.parse_args(argv)
    print(f"python {platform.python_version()} ({platform.python_implementation()}), "
          f"{hashlib.sha256().name}/{hashlib.blake2b().name}, best of {args.repeat}")

    def trivial() -> None:
        return None

    call_ns = best_ns(trivial, args.repeat, args.seconds)
    for size in SIZES:
        data = bytes(i & 0xFF for i in range(size))

        def copy(data: bytes = data) -> bytearray:
            return bytearray(data)

        copy_ns = best_ns(copy, args.repeat, args.seconds)
        print(f"\n{size}-byte datagram")
        print(f"  {'baseline: bytearray(data) copy':38} {copy_ns:8.0f} ns")
        print(f"  {'baseline: trivial call':38} {call_ns:8.0f} ns")
        print(f"  {'candidate':38} {'ns/dgram':>8}  {'x copy':>7}  {'x call':>7}  MB/s")
        for name, fn in candidates(data).items():
            ns = best_ns(fn, args.repeat, args.seconds)
            print(f"  {name:38} {ns:8.0f}  {ns / copy_ns:7.1f}  {ns / call_ns:7.1f}  "
                  f"{size / ns * 1e3:5.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
