"""Run the benchmarks: `python -m bench [name ...]` (names as in bench/bench_<name>.py)."""

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
        print(f"== {name}", flush=True)
        started = time.monotonic()
        importlib.import_module(f"bench.bench_{name}").run()
        print(f"   ({time.monotonic() - started:.1f}s)\n", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
