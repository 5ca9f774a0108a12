#!/usr/bin/env python3
"""Nightly adversarial explorer for the subscriber core: many seeded random schedules.

    python tools/explore.py --seconds 600 --seed 1000
    python tools/explore.py --schedules 200 --scenario chain-all --moves 400
    python tools/explore.py --replay 1234 --scenario blob-control   # one schedule again

Each schedule is plain seeded ``random`` (not Hypothesis): schedule ``seed`` in scenario
``S`` is the same moves on every machine, so a failure reproduces from its seed alone.
The world, the moves and the oracle are in tests/adversary.py. On a failure the schedule
is shrunk by deleting moves greedily and printed as a ready-to-paste regression test (for
tests/test_explorer.py); the exit status is then 1.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

# Not resolve(): run through a symlink, the explorer tests the tree it is linked into.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]

from adversary import (  # noqa: E402 - after the path set-up above
    SCENARIOS,
    Move,
    OracleFailure,
    Scenario,
    as_test,
    random_schedule,
    run_schedule,
    shrink,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=None,
                        help="stop starting schedules after this long (default 60)")
    parser.add_argument("--schedules", type=int, default=None,
                        help="run this many schedules (default: until --seconds)")
    parser.add_argument("--seed", type=int, default=0, help="first seed (default 0)")
    parser.add_argument("--moves", type=int, default=300, help="moves per schedule")
    parser.add_argument("--scenario", action="append", choices=sorted(SCENARIOS),
                        help="scenario(s) to cycle through (default: all)")
    parser.add_argument("--max-failures", type=int, default=3,
                        help="stop after this many distinct failures (default 3)")
    parser.add_argument("--shrink-seconds", type=float, default=120.0,
                        help="time budget for shrinking each failure")
    parser.add_argument("--replay", type=int, metavar="SEED",
                        help="run only the schedule of this seed (with --scenario)")
    args = parser.parse_args(argv)
    names = args.scenario or sorted(SCENARIOS)
    if args.replay is not None:
        args.seed, args.schedules, names = args.replay, len(names), names
    if args.seconds is None and args.schedules is None:
        args.seconds = 60.0

    started = last_report = time.monotonic()
    ran = 0
    failures: dict[tuple[str, str, str], int] = {}
    while True:
        if args.schedules is not None and ran >= args.schedules:
            break
        if args.seconds is not None and time.monotonic() - started >= args.seconds:
            break
        # Seed-major order: every scenario runs seed s before any runs s + 1.
        name = names[ran % len(names)]
        seed = args.seed if args.replay is not None else args.seed + ran // len(names)
        ran += 1
        scenario = SCENARIOS[name]
        moves = list(random_schedule(seed, scenario, args.moves))
        try:
            run_schedule(scenario, moves)
        except OracleFailure as failure:
            key = (name, *failure.signature)
            if key in failures:
                print(f"seed {seed} {name}: {failure.kind} again (as seed {failures[key]})",
                      flush=True)
                continue
            failures[key] = seed
            report(name, seed, scenario, moves, failure, args.shrink_seconds)
            if len(failures) >= args.max_failures:
                break
        if time.monotonic() - last_report >= 10:
            last_report = time.monotonic()
            print(f"{time.monotonic() - started:6.0f}s: {ran} schedules, "
                  f"{len(failures)} failure(s)", flush=True)
    elapsed = time.monotonic() - started
    print(f"done: {ran} schedules of {args.moves} moves in {elapsed:.0f}s "
          f"(scenarios {', '.join(names)}, seeds from {args.seed}), "
          f"{len(failures)} distinct failure(s)")
    for (name, kind, extra), seed in failures.items():
        print(f"  --replay {seed} --scenario {name}: {kind} {extra}".rstrip())
    return 1 if failures else 0


def report(name: str, seed: int, scenario: Scenario, moves: list[Move],
           failure: OracleFailure, budget: float) -> None:
    print(f"\nFAILURE: seed {seed}, scenario {name}, move {failure.step} of {len(moves)}:")
    print(f"  {failure}".replace("\n", "\n  "))
    # Moves after the failing one cannot matter: cut them, then delete greedily.
    moves = moves[: failure.step + 1]
    small = shrink(scenario, moves, failure.signature,
                   deadline=time.monotonic() + budget)
    try:
        run_schedule(scenario, small)
    except OracleFailure as final:
        failure = final
    print(f"\nshrunk to {len(small)} move(s); the oracle says:\n  "
          + str(failure).replace("\n", "\n  "))
    print(f"\n# python tools/explore.py --replay {seed} --scenario {name}")
    test_name = f"explore_{name.replace('-', '_')}_seed_{seed}"
    print(as_test(test_name, scenario, small, failure) + "\n", flush=True)


if __name__ == "__main__":
    sys.exit(main())
