#!/usr/bin/env python3
"""Per-delta encode/decode cost: fast path (struct) vs construct path, against a baseline.

Datagrams hold ~40 deltas with 18-byte payloads (what fits a 1400-byte datagram). Every
figure is ns per delta, best of N repeats; the baselines are measured in the same run so
ratios are comparable across machines:

* decode baseline: a bare ``struct.unpack_from`` loop reading the same number of deltas;
* encode baseline: a bare ``struct.pack_into`` loop writing them.

Usage: ``python tools/bench_codec.py [--repeat N] [--seconds S]`` (well under a minute).
"""

from __future__ import annotations

import argparse
import struct
import sys
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _bench import best_ns  # this script's own folder, tools/

from grapevine import codec, wire

PAYLOAD = bytes(range(18))
SESSION = 0x5EED_0000_0000_0001


def per_datagram(payload_size: int, max_size: int = wire.DEFAULT_DATAGRAM_SIZE) -> int:
    return (max_size - codec.HEADER_SIZE) // (codec.DELTA_OVERHEAD + payload_size)


DELTAS = per_datagram(len(PAYLOAD))


def best_ns_per_delta(fn: Callable[[], object], repeat: int, budget_s: float) -> float:
    """Best per-call time over ``repeat`` timed batches, divided by deltas per call."""
    return best_ns(fn, repeat, budget_s) / DELTAS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5, help="timed repeats (best is kept)")
    parser.add_argument("--seconds", type=float, default=1.0,
                        help="time budget per measurement (default 1.0)")
    args = parser.parse_args(argv)
    repeat, budget = args.repeat, args.seconds

    print(f"header {codec.HEADER_SIZE} bytes, per-delta overhead {codec.DELTA_OVERHEAD} bytes "
          f"(message header {codec.MESSAGE_HEADER_SIZE} + leaf_id 4 + leaf_seq 8)")
    for size in (18, 26):
        n = per_datagram(size)
        used = codec.HEADER_SIZE + n * (codec.DELTA_OVERHEAD + size)
        print(f"{size}-byte payload: {n} deltas per {wire.DEFAULT_DATAGRAM_SIZE}-byte datagram "
              f"({used} bytes used, payload efficiency {n * size / used:.0%})")
    print(f"benchmark: {DELTAS} deltas of {len(PAYLOAD)} bytes per datagram, best of {repeat}")

    builder = codec.DatagramBuilder(7, SESSION)

    def fast_encode() -> memoryview:
        builder.start(1000)
        add = builder.add_delta
        for leaf in range(DELTAS):
            add(leaf, 5, 0, PAYLOAD)
        return builder.finish(123)

    raw = bytes(fast_encode())
    value = codec.decode_with_construct(raw)
    assert len(value.messages) == DELTAS
    container = wire.Datagram.parse(raw)

    def fast_decode() -> object:
        return codec.decode_datagram(raw)

    def construct_decode_codec() -> object:
        return codec.decode_with_construct(raw)

    def construct_parse() -> object:
        return wire.Datagram.parse(raw)

    def construct_build() -> object:
        return wire.Datagram.build(container)

    def construct_encode_codec() -> object:
        return codec.encode_with_construct(value)

    # Baselines: the irreducible struct work for the same number of items.
    item = struct.Struct("<BBHIQ")
    offsets = [codec.HEADER_SIZE + i * (codec.DELTA_OVERHEAD + len(PAYLOAD))
               for i in range(DELTAS)]
    unpack_from = item.unpack_from
    pack_into = item.pack_into
    out = bytearray(len(raw))

    def baseline_unpack() -> object:
        return [unpack_from(raw, off) for off in offsets]

    def baseline_pack() -> None:
        for off in offsets:
            pack_into(out, off, 1, 0, 30, off, 5)

    rows: list[tuple[str, str, float]] = []

    def measure(group: str, name: str, fn: Callable[[], object]) -> float:
        ns = best_ns_per_delta(fn, repeat, budget)
        rows.append((group, name, ns))
        return ns

    base_dec = measure("decode", "baseline: bare struct.unpack_from loop", baseline_unpack)
    measure("decode", "fast: codec.decode", fast_decode)
    measure("decode", "construct: Datagram.parse", construct_parse)
    measure("decode", "construct: codec.decode_with_construct", construct_decode_codec)
    base_enc = measure("encode", "baseline: bare struct.pack_into loop", baseline_pack)
    measure("encode", "fast: DatagramBuilder", fast_encode)
    measure("encode", "construct: Datagram.build", construct_build)
    measure("encode", "construct: codec.encode_with_construct", construct_encode_codec)

    compiled = wire.Datagram.compile()
    assert compiled.parse(raw) == container
    assert compiled.build(container) == raw
    measure("decode", "construct compiled: parse", lambda: compiled.parse(raw))
    measure("encode", "construct compiled: build", lambda: compiled.build(container))

    print(f"\n{'':6} {'path':44} {'ns/delta':>10} {'x baseline':>11}")
    for group, name, ns in sorted(rows, key=lambda r: (r[0] != "decode", r[2])):
        base = base_dec if group == "decode" else base_enc
        print(f"{group:6} {name:44} {ns:10.1f} {ns / base:11.1f}")
    fast_d = next(ns for g, n, ns in rows if n == "fast: codec.decode")
    fast_e = next(ns for g, n, ns in rows if n == "fast: DatagramBuilder")
    slow_d = next(ns for g, n, ns in rows if n == "construct: Datagram.parse")
    slow_e = next(ns for g, n, ns in rows if n == "construct: Datagram.build")
    print(f"\nconstruct/fast: decode {slow_d / fast_d:.1f}x, encode {slow_e / fast_e:.1f}x; "
          f"fast path ~{1e9 / fast_d / 1e6:.1f} M deltas/s decode, "
          f"~{1e9 / fast_e / 1e6:.1f} M deltas/s encode (one core)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
