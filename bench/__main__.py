"""``python -m bench`` (``make bench``): every benchmark with its reference arguments."""

from __future__ import annotations

import importlib
import shlex
import sys

#: (module under ``bench/``, arguments); each module has ``main(argv) -> int``.
BENCHMARKS: tuple[tuple[str, list[str]], ...] = (
    ("fanout", []),                      # issue 3: connect + show version, no latency
    ("fanout", ["--latency", "0.2"]),    # issue 7: 0.2 s per command
    ("timelimits", []),                  # issue 5: soft/hard lateness, lease free, orphans
)


def main() -> int:
    status = 0
    for name, argv in BENCHMARKS:
        print(f"== python -m bench.{name} {shlex.join(argv)}".rstrip(), flush=True)
        module = importlib.import_module(f"bench.{name}")
        status = module.main(argv) or status
    return status


if __name__ == "__main__":
    sys.exit(main())
