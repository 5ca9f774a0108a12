"""Helpers shared by the benchmarks in tools/: timing (bench_codec, bench_auth) and the
machine's stolen CPU time (bench_peers)."""

from __future__ import annotations

import time
from collections.abc import Callable


def best_ns(fn: Callable[[], object], repeat: int, budget_s: float) -> float:
    """Best per-call time of ``fn`` in ns over ``repeat`` timed batches, each batch sized
    to about ``budget_s / repeat`` seconds (so fast and slow calls are timed alike)."""
    fn()
    calls = 1
    while True:
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        elapsed = time.perf_counter() - start
        if elapsed > budget_s / repeat / 4 or calls > 1 << 22:
            break
        calls *= 2
    per_batch = max(1, int(calls * (budget_s / repeat) / max(elapsed, 1e-9)))
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(per_batch):
            fn()
        best = min(best, (time.perf_counter() - start) / per_batch)
    return best * 1e9


def cpu_times() -> tuple[int, int] | None:
    """(steal, total) jiffies of the whole machine from /proc/stat (None: not Linux).
    Steal is time the hypervisor gave the virtual CPUs' slots to other guests: the
    share of it during a run says how disturbed its timings were."""
    try:
        with open("/proc/stat", encoding="ascii") as stat:
            fields = [int(x) for x in stat.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    steal = fields[7] if len(fields) > 7 else 0
    return steal, sum(fields[:8])


def steal_share(start: tuple[int, int] | None, end: tuple[int, int] | None) -> float | None:
    """The share of the machine's CPU time stolen between two :func:`cpu_times`."""
    if start is None or end is None or end[1] <= start[1]:
        return None
    return (end[0] - start[0]) / (end[1] - start[1])
