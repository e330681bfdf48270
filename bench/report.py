"""Write ``docs/performance.md`` from ``bench/templates/performance.md`` and the
JSON results under ``bench/results/``.

The template holds the hand-written prose; each ``{{name}}`` placeholder is
replaced by a generated block (tables, the machine, the reproducing command)
built from one result file. A missing file becomes a note saying how to make
it. Run from the repository root: ``.venv/bin/python -m bench.report``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
TEMPLATE = ROOT / "bench" / "templates" / "performance.md"
OUTPUT = ROOT / "docs" / "performance.md"


def load(name: str) -> dict[str, Any] | None:
    path = RESULTS / f"{name}.json"
    if not path.exists():
        return None
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def where(d: dict[str, Any]) -> str:
    """The machine, the run and the reproducing command, as a short block."""
    m = d.get("machine", {})
    src = d.get("source", {})
    commit = (src.get("commit") or "")[:7]
    dirty = " (labq/ or tasks/ modified)" if src.get("labq_modified") else ""
    load = d.get("loadavg_end") or (d.get("loadavg") or {}).get("end")
    start = (d.get("loadavg") or {}).get("start")
    load_s = (f", load average at the start {start[0]:.1f}" if start else "") + (
        f", at the end {load[0]:.1f}" if start and load else
        f", load average at the end {load[0]:.1f}" if load else "")
    return (f"*Machine: nproc {m.get('nproc')}, {m.get('memory_total_gib')} GiB, "
            f"{m.get('cpu_model') or 'CPU model unknown'}, Python {m.get('python')}; "
            f"run {d.get('date', '?')} on commit {commit or '?'}{dirty}{load_s}.*\n"
            f"*Reproduce:* `{d.get('command', '?')}`")


def missing(name: str, command: str) -> str:
    return f"*Not measured yet: `bench/results/{name}.json` is missing; run `{command}`.*"


def _f(x: float, digits: int = 2) -> str:
    return f"{x:.{digits}f}"


def _mmm(s: dict[str, float], digits: int = 3) -> str:
    return f"{s['median']:.{digits}f} (min {s['min']:.{digits}f}, max {s['max']:.{digits}f})"


# -- one block per benchmark ------------------------------------------------------------


def fanout_block(name: str, command: str) -> str:
    d = load(name)
    if d is None:
        return missing(name, command)
    sides = d["params"].get("sides", ["labq", "pool"])
    ideal = d["ideal"]
    t1 = d["per_task"]["median"]
    n, c = d["params"]["devices"], d["params"]["concurrency"]
    lines = [where(d), "",
             f"N = {n}, C = {c} (labq/celery: 2 workers x {c // 2}), latency "
             f"{d['params']['latency']:g} s per command, workers at --loglevel "
             f"{d['params'].get('worker_loglevel', 'INFO')}. t1 = {_f(t1, 3)} s (median of "
             f"{d['params']['samples']} serial runs), ideal = ceil({n}/{c}) x t1 = "
             f"{_f(ideal)} s.", "",
             "| round | " + " | ".join(sides) + " |",
             "|---|" + "---|" * len(sides)]
    for r in d["rounds"]:
        cells = [f"{_f(r['sides'][s]['makespan'])} s ({_f(r['ratios'][s], 3)})" for s in sides]
        lines.append(f"| {r['round']} | " + " | ".join(cells) + " |")
    lines += ["", "| side | makespan median | / ideal | / pool: median (min, max) |",
              "|---|---|---|---|"]
    for s in sides:
        ps = d["summary"]["sides"][s]
        lines.append(f"| {s} | {_f(ps['makespan']['median'])} s | "
                     f"{_f(ps['over_ideal']['median'])} | {_mmm(ps['over_pool'])} |")
    if d["summary"].get("ratio"):
        verdict = "met" if d["summary"]["meets_target"] else "missed"
        lines += ["", f"**labq / pool = {_mmm(d['summary']['ratio'])}; target <= 1.10: "
                      f"{verdict}.**"]
    cpu = _mean_cpu(d, sides)
    if cpu:
        keys = sorted({k for v in cpu.values() for k in v if k != "steal"})
        lines += ["", "CPU seconds per measured run (mean): "
                  + "; ".join(f"{s}: " + ", ".join(f"{k} {v[k]:.1f}" for k in keys if k in v)
                              for s, v in cpu.items()) + "."]
        lines += _cpu_budget(cpu)
    return "\n".join(lines)


def _cpu_budget(cpu: dict[str, dict[str, float]]) -> list[str]:
    """labq's CPU against the pool's, and how much of it the queue itself
    (worker main processes and Redis) takes: at latency 0 the makespan follows it."""
    if "labq" not in cpu or "pool" not in cpu:
        return []
    total = {s: sum(v for k, v in c.items() if k != "steal") for s, c in cpu.items()}
    queue = cpu["labq"].get("worker_main", 0.0) + cpu["labq"].get("redis", 0.0)
    if not total["pool"]:
        return []
    return ["", f"All CPU: labq {total['labq']:.2f} s, pool {total['pool']:.2f} s "
                f"(labq / pool {total['labq'] / total['pool']:.3f}). labq's worker main "
                f"processes and Redis alone: {queue:.2f} s, "
                f"{100 * queue / total['pool']:.1f} % of the pool side's CPU."]


def _mean_cpu(d: dict[str, Any], sides: Sequence[str]) -> dict[str, dict[str, float]]:
    out = {}
    for s in sides:
        cpus = [r["sides"][s].get("cpu", {}) for r in d["rounds"]]
        keys = set().union(*cpus) if cpus else set()
        out[s] = {k: sum(c.get(k, 0.0) for c in cpus) / len(cpus) for k in keys}
    return out


def overhead_block() -> str:
    d = load("overhead")
    if d is None:
        return missing("overhead", ".venv/bin/python -m bench.overhead")
    p, s = d["params"], d["summary"]
    lines = [where(d), "",
             f"{p['tasks']} x `{p['task']}`, workers {p['workers']} slots.", "",
             "| round | labq tasks/s | celery group tasks/s | labq without fair share tasks/s "
             "| labq / celery | with / without fair share |", "|---|---|---|---|---|---|"]
    for r in d["rounds"]:
        lines.append(f"| {r['round']} | {r['A']['tasks_per_s']:.0f} | {r['B']['tasks_per_s']:.0f} "
                     f"| {r['C']['tasks_per_s']:.0f} | {_f(r['ratio'], 3)} "
                     f"| {_f(r['fair_over_fifo'], 3)} |" if "C" in r else
                     f"| {r['round']} | {r['A']['tasks_per_s']:.0f} | {r['B']['tasks_per_s']:.0f} "
                     f"| - | {_f(r['ratio'], 3)} | - |")
    verdict = "met" if s["meets_target"] else "missed"
    lines += ["", f"**labq / celery = {_mmm(s['ratio'])}; target >= 0.90: {verdict}.** "
                  f"Medians: labq {s['A_tasks_per_s']['median']:.0f} tasks/s, Celery "
                  f"{s['B_tasks_per_s']['median']:.0f} tasks/s."]
    if "fair_over_fifo" in s:
        lines += ["", f"**Fair share's cost: labq with / without it = "
                      f"{_mmm(s['fair_over_fifo'])}** (without it {s['C_tasks_per_s']['median']:.0f} "
                      f"tasks/s, {_f(s['fifo_ratio']['median'], 3)} x Celery)."]
    cpu_a = _avg([r["A"]["cpu"] for r in d["rounds"]])
    cpu_b = _avg([r["B"]["cpu"] for r in d["rounds"]])
    lines += ["", "CPU seconds per run (mean): labq " + _cpu(cpu_a) + "; celery " + _cpu(cpu_b) + "."]
    if all("C" in r for r in d["rounds"]):
        lines[-1] = lines[-1][:-1] + "; labq without fair share " + _cpu(
            _avg([r["C"]["cpu"] for r in d["rounds"]])) + "."
    return "\n".join(lines)


def _avg(cpus: Sequence[dict[str, float]]) -> dict[str, float]:
    return {k: sum(c[k] for c in cpus) / len(cpus) for k in cpus[0]} if cpus else {}


def _cpu(c: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.1f}" for k, v in c.items())


def submit_block() -> str:
    d = load("submit")
    if d is None:
        return missing("submit", ".venv/bin/python -m bench.submit")
    s = d["summary"]
    lines = [where(d), "", f"{d['params']['tasks']} x `{d['params']['task']}` per side, no worker "
             "running.", "",
             "| round | Run.submit loop | Run.submit_many | submit_many, no task-sent events "
             "| submit_many, no fair share | Celery delay() loop |",
             "|---|---|---|---|---|---|"]
    for r in d["rounds"]:
        noev = r.get("submit_many_noevents", {}).get("tasks_per_s", float("nan"))
        nofair = r.get("submit_many_nofair", {}).get("tasks_per_s", float("nan"))
        lines.append(f"| {r['round']} | {r['submit']['tasks_per_s']:.0f}/s | "
                     f"{r['submit_many']['tasks_per_s']:.0f}/s | {noev:.0f}/s | {nofair:.0f}/s | "
                     f"{r['delay']['tasks_per_s']:.0f}/s |")
    verdict = "met" if s["meets_target"] else "missed"
    lines += ["", f"**submit_many: {_mmm(s['submit_many_tasks_per_s'], 0)} tasks/s; target "
                  f">= 5,000: {verdict}.** submit_many / submit loop = {_mmm(s['batch_over_loop'], 1)}."]
    if "submit_many_nofair_tasks_per_s" in s:
        lines[-1] += (f" Without fair share (straight onto the queue's list): "
                      f"{_mmm(s['submit_many_nofair_tasks_per_s'], 0)} tasks/s.")
    return "\n".join(lines)


def roundtrip_block() -> str:
    d = load("roundtrip")
    if d is None:
        return missing("roundtrip", ".venv/bin/python -m bench.roundtrip")
    s = d["summary"]
    lines = [where(d), "", f"{d['params']['trials']} trials per side, workers "
             f"{d['params']['workers']}, alternated in blocks of {d['params']['block']}.", "",
             "| side | p50 | p90 | p99 | max |", "|---|---|---|---|---|"]
    for key, label in (("A", "labq `Run.submit` + `Run.wait`"), ("B", "Celery `delay().get()`")):
        x = s[key]
        lines.append(f"| {label} | {_f(x['p50'], 1)} ms | {_f(x['p90'], 1)} ms | "
                     f"{_f(x['p99'], 1)} ms | {_f(x['max'], 1)} ms |")
    verdict = "met" if s["meets_target"] else "missed"
    lines += ["", f"**Targets p50 <= 5 ms, p99 <= 15 ms: {verdict}.**"]
    return "\n".join(lines)


def memory_block() -> str:
    d = load("memory")
    if d is None:
        return missing("memory", ".venv/bin/python -m bench.memory")
    lines = [where(d), "", f"One worker, {d['params']['slots']} prefork children.", "",
             "| state | USS median (min, max) | PSS median | worker main RSS |",
             "|---|---|---|---|"]
    for key, label in (("idle", "idle, fresh pool"), ("session", "in an SSH session"),
                       ("idle_after", "idle after a task")):
        x = d[key]
        lines.append(f"| {label} | {_mmm(x['uss'], 1)} MB | {_f(x['pss']['median'], 1)} MB | "
                     f"{x['main']['rss']:.0f} MB |")
    verdict = "met" if d["summary"]["meets_target"] else "missed"
    lines += ["", f"**USS per idle child <= 15 MB: {verdict}.**"]
    return "\n".join(lines)


def scale_block() -> str:
    d = load("scale")
    if d is None:
        return missing("scale", ".venv/bin/python -m bench.scale")
    p = d["params"]
    lines = [where(d), "", f"{p['devices']} devices (one sim process), workers {p['workers']}, one "
             f"`{p['command']}` each; the stack started in {d['stack_start']:.0f} s.", "",
             "| round | makespan | tasks/s | failed | Redis used after (peak) | CPU s: client / "
             "worker main / children / Redis / sim / other |", "|---|---|---|---|---|---|"]
    for i, r in enumerate(d["rounds"]):
        c = r["cpu"]
        mem = r["redis_after"]
        lines.append(
            f"| {i + 1} | {_f(r['makespan'], 1)} s | {_f(r['tasks_per_s'], 1)} | {r['failed']} | "
            f"{mem['used_memory'] / 2**20:.1f} MiB ({mem['used_memory_peak'] / 2**20:.1f}) | "
            f"{c['client']:.1f} / {c['worker_main']:.1f} / {c['worker_children']:.1f} / "
            f"{c['redis']:.1f} / {c['sim']:.1f} / {c.get('other', 0):.1f} |")
    return "\n".join(lines)


def allocation_block() -> str:
    d = load("allocation")
    if d is None:
        return missing("allocation", ".venv/bin/python -m bench.allocation")
    p, big, small = d["params"], d["lab"], d["small_lab"]
    lines = [where(d), "",
             f"{p['devices']} devices, each held, and {p['waiters']} waiters in line; a Pick "
             f"of a pool of {p['pool']}, a named 3-role topology and a named device, "
             f"interleaved, {p['trials']} trials each (the time of one request alone; it is "
             f"released before the next).", "",
             "| side | free: us per request | busy: us per refused try | "
             f"free, in a lab of {small['devices']} |", "|---|---|---|---|"]
    for side in ("named", "pick", "topology3"):
        lines.append(f"| {side} | {_mmm(big['cost_free_us'][side], 0)} | "
                     f"{_mmm(big['cost_busy_us'][side], 0)} | "
                     f"{_mmm(small['cost_free_us'][side], 0)} |")
    w = d["wait_to_start_ms"]
    lines += ["", f"Wait to start, from the holder's release to the grant of a parked "
                  f"waiter ({p['waits']} trials each): "
              + "; ".join(f"{side} {_mmm(w[side], 1)} ms" for side in ("named", "pick",
                                                                      "topology3")) + ".",
              "", f"**Pick / named = {_f(d['summary']['pick_over_named'])}, topology / named "
                  f"= {_f(d['summary']['topology3_over_named'])}; a Pick in the "
                  f"{p['devices']}-device lab / in the {small['devices']}-device lab = "
                  f"{_f(d['summary']['pick_lab_over_small_lab'])}.**"]
    return "\n".join(lines)


def metrics_block() -> str:
    d = load("metrics")
    if d is None:
        return missing("metrics", ".venv/bin/python -m bench.metrics")
    p, s = d["params"], d["scrape_ms"]
    lines = [where(d), "",
             f"One `/metrics` render (every Redis read of a scrape, and the encoding), "
             f"{p['trials']} trials per lab, alternating; a third of the devices leased, a "
             f"tenth with waiters, a tenth with a health state.", "",
             "| lab | scrape: median (min, max) | p95 | bytes | first scrape (testbed parse) |",
             "|---|---|---|---|---|"]
    for k, n in (("big", p["devices"]), ("small", p["small"])):
        lines.append(f"| {n} devices | {_mmm(s[k], 1)} ms | {_f(s[k]['p95'], 1)} ms | "
                     f"{d['bytes'][k]} | {_f(d['first_scrape_ms'][k], 0)} ms |")
    lines += ["", f"**{p['devices']} / {p['small']} devices = "
                  f"{_f(d['summary']['big_over_small'])}; p95 at {p['devices']} devices "
                  f"{_f(s['big']['p95'], 1)} ms, target < 50 ms: "
                  f"{'met' if d['summary']['meets_target'] else 'missed'}.**"]
    return "\n".join(lines)


def fairshare_block() -> str:
    d = load("fairshare")
    if d is None:
        return missing("fairshare", ".venv/bin/python -m bench.fairshare")
    p, sm = d["params"], d["summary"]
    lines = [where(d), "",
             f"Run A: {p['backlog']} tasks of {p['seconds']:g} s on one worker of "
             f"{p['slots']} slots; run B: {p['small']} of the same, {p['delay']:g} s later. "
             f"A's backlog is {_f(sm['backlog_s'], 0)} s of the worker's time.", "",
             "| round | B alone | B behind A, fair share | ratio | A's tasks done meanwhile "
             "| B behind A, FIFO | ratio |", "|---|---|---|---|---|---|---|"]
    for r in d["rounds"]:
        lines.append(f"| {r['round']} | {_f(r['idle'])} s | {_f(r['behind'])} s | "
                     f"{_f(r['ratio'], 2)} | {r.get('a_done', '-')} | "
                     f"{_f(r['fifo'])} s | {_f(r['fifo_ratio'], 1)} |" if "fifo" in r else
                     f"| {r['round']} | {_f(r['idle'])} s | - | - | - | {_f(r['behind'])} s | "
                     f"{_f(r['ratio'], 1)} |")
    met = sm["ratio"]["median"] <= sm["target_ratio"]
    if "fifo_ratio" in sm:
        lines += ["", f"**B behind A / B alone with fair share = {_mmm(sm['ratio'])} (issue 15's "
                      f"target: <= {_f(sm['target_ratio'], 1)}: {'met' if met else 'missed'}); "
                      f"without it (FIFO) {_f(sm['fifo_ratio']['median'], 1)}.**"]
    else:
        lines += ["", f"**B behind A / B alone = {_f(sm['ratio']['median'], 1)} (no fair share).**"]
    return "\n".join(lines)


TIMELIMIT_ROWS = (("soft", "soft lateness, from body start", "p99 <= 100"),
                  ("soft_from_arm", "soft lateness, from timer arm", ""),
                  ("hard", "hard lateness, whole group dead, from body start", "p99 <= 300"),
                  ("hard_from_arm", "hard lateness, from timer arm", ""),
                  ("lease_free", "lease free, from the child's death", "<= 1000"))


def timelimits_block() -> str:
    d = load("timelimits")
    if d is None:
        return missing("timelimits", ".venv/bin/python -m bench.timelimits")
    s = d["summary"]
    lines = [where(d), "", "| measure (ms) | n | p50 | p90 | p99 | max | expected |",
             "|---|---|---|---|---|---|---|"]
    for key, label, expect in TIMELIMIT_ROWS:
        if key in s:
            x = s[key]
            lines.append(f"| {label} | {x['n']} | {_f(x['p50'], 1)} | {_f(x['p90'], 1)} | "
                         f"{_f(x['p99'], 1)} | {_f(x['max'], 1)} | {expect} |")
    orphans = d.get("orphans")
    count = (orphans.get("count") if isinstance(orphans, dict)
             else len(orphans) if isinstance(orphans, list) else orphans)
    lines += ["", f"Orphans 2 s after a kill: {count}."]
    return "\n".join(lines)


def targets_block() -> str:
    rows = []

    def row(figure: str, target: str, value: str, met: bool | None) -> None:
        verdict = "-" if met is None else ("met" if met else "**missed**")
        rows.append(f"| {figure} | {target} | {value} | {verdict} |")

    for name, label in (("fanout", "fan-out, latency 0 (issue 3)"),
                        ("fanout-latency0.2", "fan-out, latency 0.2 s")):
        d = load(name)
        if d and d["summary"].get("ratio"):
            row(f"{label}: labq / multiprocessing.Pool", "<= 1.10",
                _mmm(d["summary"]["ratio"]), d["summary"]["meets_target"])
    d = load("overhead")
    if d:
        row("no-op throughput, labq / raw Celery", ">= 0.90", _mmm(d["summary"]["ratio"]),
            d["summary"]["meets_target"])
    d = load("submit")
    if d:
        row("submit rate, submit_many", ">= 5,000 tasks/s",
            f"{d['summary']['submit_many_tasks_per_s']['median']:.0f} tasks/s",
            d["summary"]["meets_target"])
        noev = d["summary"].get("submit_many_noevents_tasks_per_s")
        if noev:
            row("submit rate, submit_many(sent_events=False)", ">= 5,000 tasks/s",
                f"{noev['median']:.0f} tasks/s", noev["median"] >= 5000)
    d = load("roundtrip")
    if d:
        a = d["summary"]["A"]
        row("round trip p50 / p99", "<= 5 / <= 15 ms", f"{a['p50']:.1f} / {a['p99']:.1f} ms",
            d["summary"]["meets_target"])
    d = load("metrics")
    if d:
        row("metrics scrape at 1,000 devices, p95", "< 50 ms",
            f"{d['scrape_ms']['big']['p95']:.1f} ms (median {d['scrape_ms']['big']['median']:.1f})",
            d["summary"]["meets_target"])
    d = load("memory")
    if d:
        row("USS per idle prefork child", "<= 15 MB",
            f"{d['idle']['uss']['median']:.1f} MB (max {d['idle']['uss']['max']:.1f})",
            d["summary"]["meets_target"])
    return "\n".join(["| figure | target | measured (median (min, max)) | |",
                      "|---|---|---|---|", *rows])


def machine_block() -> str:
    for name in ("fanout", "overhead", "submit", "scale"):
        d = load(name)
        if d:
            m = d["machine"]
            pkgs = ", ".join(f"{k} {m[k]}" for k in ("celery", "kombu", "redis", "netmiko",
                                                     "paramiko", "asyncssh") if k in m)
            return "\n".join([
                "| | |", "|---|---|",
                f"| CPUs (`nproc`) | {m['nproc']} ({m.get('cpu_model', '')}) |",
                f"| memory | {m['memory_total_gib']} GiB |",
                f"| OS | {m.get('platform', '')} |",
                f"| Python | {m.get('python', '')} |",
                f"| packages | {pkgs} |"])
    return "*No results yet.*"


BLOCKS: dict[str, Callable[[], str]] = {
    "machine": machine_block,
    "targets": targets_block,
    "fanout": lambda: fanout_block("fanout", ".venv/bin/python -m bench.fanout"),
    "fanout_latency": lambda: fanout_block(
        "fanout-latency0.2",
        ".venv/bin/python -m bench.fanout --latency 0.2 --sides labq,pool,celery,pcall"),
    "overhead": overhead_block,
    "submit": submit_block,
    "roundtrip": roundtrip_block,
    "memory": memory_block,
    "scale": scale_block,
    "allocation": allocation_block,
    "fairshare": fairshare_block,
    "metrics": metrics_block,
    "timelimits": timelimits_block,
}


def render(template: str) -> str:
    def sub(match: re.Match[str]) -> str:
        key = match.group(1)
        if key not in BLOCKS:
            raise KeyError(f"{TEMPLATE}: unknown placeholder {{{{{key}}}}}")
        return BLOCKS[key]()

    return re.sub(r"\{\{(\w+)\}\}", sub, template)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.report", description=__doc__.split("\n")[0])
    p.add_argument("--output", type=Path, default=OUTPUT)
    args = p.parse_args(argv)
    args.output.write_text(render(TEMPLATE.read_text()))
    print(f"wrote {args.output.relative_to(ROOT) if args.output.is_relative_to(ROOT) else args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
