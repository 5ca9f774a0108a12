"""Timing helper shared by the micro-benchmarks in tools/ (bench_codec, bench_auth)."""

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
