"""``python -m bench``: run every benchmark with its defaults, one after another."""

from __future__ import annotations

import importlib
import sys

#: Benchmark modules under ``bench/``, each with ``main(argv) -> int``.
BENCHMARKS = ("fanout",)


def main() -> int:
    status = 0
    for name in BENCHMARKS:
        print(f"== bench.{name}", flush=True)
        module = importlib.import_module(f"bench.{name}")
        status = module.main([]) or status
    return status


if __name__ == "__main__":
    sys.exit(main())
