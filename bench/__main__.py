"""``python -m bench`` (``make bench``): every benchmark with its reference
arguments, then ``docs/performance.md`` regenerated from the JSON results.

``--quick`` runs each benchmark's smoke size (results in ``*-quick.json``) and
leaves the doc alone; ``--only NAME ...`` runs a subset; ``--report-only``
just regenerates the doc.
"""

from __future__ import annotations

import argparse
import importlib
import shlex
import sys
from collections.abc import Sequence

#: (module under ``bench/``, arguments); each module has ``main(argv) -> int``.
BENCHMARKS: tuple[tuple[str, list[str]], ...] = (
    ("fanout", ["--rounds", "9"]),  # issue 3: no latency; rounds move by +-10 % on a shared host
    ("fanout", ["--latency", "0.2", "--sides", "labq,pool,celery,pcall"]),  # issue 7 item 2
    ("overhead", []),                                              # 5,000 no-ops
    ("submit", []),                                                # 10,000 submits
    ("roundtrip", []),                                             # 500 trials
    ("memory", []),                                                # USS/PSS per slot
    ("scale", []),                                                 # 1,000 devices
    ("timelimits", []),                                            # issue 5
    ("allocation", []),                                            # issue 14
    ("fairshare", []),                                             # issue 15's baseline
)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke sizes; the doc is not rewritten")
    p.add_argument("--only", nargs="+", default=None, metavar="NAME",
                   help="run only these benchmarks (fanout, overhead, ...)")
    p.add_argument("--report-only", action="store_true", help="only regenerate the doc")
    args = p.parse_args(argv)
    status = 0
    if not args.report_only:
        for name, bench_argv in BENCHMARKS:
            if args.only and name not in args.only:
                continue
            full = [*bench_argv, *(["--quick"] if args.quick else [])]
            print(f"== python -m bench.{name} {shlex.join(full)}".rstrip(), flush=True)
            module = importlib.import_module(f"bench.{name}")
            status = module.main(full) or status
    if not args.quick:
        from bench import report

        report.main([])
    return status


if __name__ == "__main__":
    sys.exit(main())
