"""Run the benchmarks: `python -m bench [name ...]` (names as in bench/bench_<name>.py). Without
names, every benchmark but those marked `ON_DEMAND` (`real_cluster`, behind `make bench-k8s`)."""

from __future__ import annotations

import importlib
import pkgutil
import sys
import time

import bench


def main(selected: list[str]) -> int:
    names = sorted(m.name.removeprefix("bench_") for m in pkgutil.iter_modules(bench.__path__)
                   if m.name.startswith("bench_"))
    unknown = set(selected) - set(names)
    if unknown:
        print(f"unknown benchmark(s): {', '.join(sorted(unknown))}; available: {', '.join(names)}", file=sys.stderr)
        return 2
    for name in selected or names:
        module = importlib.import_module(f"bench.bench_{name}")
        if not selected and getattr(module, "ON_DEMAND", False):
            continue  # run only when named (it needs more than `make bench` installs)
        print(f"== {name}", flush=True)
        started = time.monotonic()
        module.run()
        print(f"   ({time.monotonic() - started:.1f}s)\n", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
