"""Small helpers for timing loops and printing figures against a baseline."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def timed(fn: Callable[[], object], n: int, warmup: int = 5) -> list[float]:
    """Milliseconds per call, after a few warm-up calls."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(n):
        started = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def summary(samples: list[float], quantiles: tuple[int, ...] = (90, 99)) -> str:
    tails = "".join(f"p{q} {percentile(samples, q):7.2f} ms  " for q in quantiles)
    return f"p50 {statistics.median(samples):7.2f} ms  {tails}(n={len(samples)})"


def report(label: str, samples: list[float], baseline: list[float] | None = None, goal: float | None = None,
           quantiles: tuple[int, ...] = (90, 99)) -> None:
    line = f"  {label:<44} {summary(samples, quantiles)}"
    if baseline:
        ratio = statistics.median(samples) / statistics.median(baseline)
        line += f"  ratio {ratio:.2f}x"
        if goal is not None:
            line += f" (goal <= {goal}x: {'met' if ratio <= goal else 'NOT met'})"
    print(line, flush=True)
