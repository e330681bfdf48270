"""labq's benchmarks: each module runs both sides of a comparison in one
invocation, prints its figures and writes them as JSON under ``bench/results/``.

Run one with ``python -m bench.<name>`` from the repository root, or all with
``python -m bench`` (``make bench``). ``docs/performance.md`` reports them.
"""
