"""Helpers every benchmark shares: where it ran, and what else the host did."""

from __future__ import annotations

import os
import platform
from collections.abc import Sequence
from importlib.metadata import version
from pathlib import Path
from typing import Any

import psutil


def machine(packages: Sequence[str] = ("celery", "kombu", "redis")) -> dict[str, Any]:
    """The host a benchmark ran on, and the versions of ``packages``."""
    cpu_model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = psutil.virtual_memory().total
    return {
        "nproc": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model,
        "memory_total_bytes": mem,
        "memory_total_gib": round(mem / 2**30, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
        **{pkg: version(pkg) for pkg in packages},
    }


def busy_cpu() -> tuple[float, float]:
    """(CPU seconds all CPUs spent busy, seconds stolen by the hypervisor) since boot."""
    t = psutil.cpu_times()
    steal = float(getattr(t, "steal", 0.0))
    return sum(t) - t.idle - getattr(t, "iowait", 0.0) - steal, steal


def source_version() -> dict[str, Any]:
    """The commit the bench ran on, and whether the working tree differed from it."""
    import subprocess

    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                                text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "labq", "tasks"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return {"commit": "", "labq_modified": None}
    return {"commit": commit, "labq_modified": bool(dirty)}


def display(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


# -- shared by the benchmarks that start their own stack --------------------------

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def summary(values: Sequence[float]) -> dict[str, float]:
    """Median, min and max of ``values``."""
    import statistics

    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def percentile(values: Sequence[float], p: float) -> float:
    """The ``p``-th percentile (0..100), interpolated between neighbours."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * p / 100
    lo = int(k)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def command_line(module: str, argv: Sequence[str] | None) -> str:
    """The shell command that reproduces this run, from the repository root."""
    import shlex
    import sys

    python = ".venv/bin/python" if ".venv" in sys.executable else sys.executable
    return shlex.join([python, "-m", module, *(sys.argv[1:] if argv is None else argv)])


def write_result(name: str, data: dict[str, Any], output: Path | None = None) -> Path:
    """Write ``bench/results/<name>.json`` (or ``output``) with the common facts added."""
    import json
    from datetime import datetime, timezone

    path = output or RESULTS_DIR / f"{name}.json"
    data = {"benchmark": name, "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "source": source_version(), "loadavg_end": list(os.getloadavg()), **data}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")
    print(f"wrote {display(path)}", flush=True)
    return path


class BenchLab:
    """A temporary embedded stack for one benchmark: ``n`` simulated devices
    (one sim process, unless ``devices=0``), Redis and prefork workers.

    ``workers`` are the slot counts of the workers; all consume the default
    queue (no device names a queue), so every worker can take every task.
    """

    def __init__(self, devices: int = 0, *, latency: float = 0.0, workers: Sequence[int] = (2, 2),
                 name: str = "bench", loglevel: str = "INFO", **settings: Any) -> None:
        self.n = devices
        self.latency = latency
        self.worker_slots = list(workers)
        self.name = name
        self.loglevel = loglevel
        self.extra = settings
        self.names = [f"r{i + 1}" for i in range(devices)]

    def __enter__(self) -> BenchLab:
        import tempfile
        from contextlib import ExitStack

        import labq
        from labq.app import create_app
        from labq.devices.testbed_yaml import load_testbed
        from labq.embedded.sim.process import SimProcess
        from labq.embedded.sim.testbeds import device_entry, make_testbed, write_testbed
        from labq.embedded.stack import Stack, WorkerSpec

        self._exit = ExitStack()
        try:
            tmp = Path(self._exit.enter_context(tempfile.TemporaryDirectory(prefix="labq-bench-")))
            if self.n:
                path = make_testbed(tmp, self.n, latency=self.latency, name=self.name)
            else:
                # A testbed needs a device; no sim serves this one and no task uses it.
                path = write_testbed(tmp / "testbed.yaml",
                                     {"unused": device_entry("127.0.0.1", 9)}, name=self.name)
            self.testbed_path = path
            self.testbed = load_testbed(path)
            settings = labq.Settings.load(env={}, config_file=os.devnull, testbed=path,
                                          state_dir=tmp / "stack", flower_port=0,
                                          concurrency=max(self.worker_slots, default=2), **self.extra)
            self.sim = (self._exit.enter_context(SimProcess(path, state_dir=tmp / "sim"))
                        if self.n else None)
            specs = tuple(WorkerSpec(f"w{i + 1}", (f"w{i + 1}",), concurrency=c)
                          for i, c in enumerate(self.worker_slots))
            self.stack = Stack(settings, workers=specs, with_flower=False, with_sim=False)
            self._set_loglevel()
            self._exit.enter_context(self.stack)
            self.app = create_app(self.stack.settings)
            self.app.loader.import_default_modules()  # registers tasks/ for app.tasks[...]
            self._exit.callback(self.app.close)
        except BaseException:
            self._exit.close()
            raise
        return self

    def _set_loglevel(self) -> None:
        # INFO (as ``labq up``) logs two lines per task in the main process;
        # a benchmark may ask for WARNING to see what they cost.
        import labq.embedded.stack as stack_module

        original = stack_module.worker_argv
        level = self.loglevel

        def argv(*args: Any, **kwargs: Any) -> list[str]:
            kwargs["loglevel"] = level
            return original(*args, **kwargs)

        stack_module.worker_argv = argv  # type: ignore[assignment]
        self._exit.callback(setattr, stack_module, "worker_argv", original)

    def __exit__(self, *exc: object) -> None:
        self._exit.close()

    # -- CPU accounting --------------------------------------------------------

    def worker_pids(self) -> list[int]:
        return [p.pid for p in self.stack.processes.values()]

    def redis_pid(self) -> int | None:
        proc = self.stack.redis.process if self.stack.redis else None
        return proc.pid if proc else None

    def cpu(self) -> dict[str, float]:
        """CPU seconds so far: worker main processes, prefork children, Redis, sim."""
        mains = sum(tree_cpu(p, children=False) for p in self.worker_pids())
        trees = sum(tree_cpu(p) for p in self.worker_pids())
        return {"worker_main": mains, "worker_children": trees - mains,
                "redis": tree_cpu(self.redis_pid()),
                "sim": tree_cpu(self.sim.pid if self.sim else None)}

    def prefork_children(self) -> list[psutil.Process]:
        out: list[psutil.Process] = []
        for pid in self.worker_pids():
            try:
                out += psutil.Process(pid).children()
            except psutil.Error:
                continue
        return out


def tree_cpu(pid: int | None, children: bool = True) -> float:
    """User + system seconds of ``pid`` and its live descendants (0 when gone)."""
    if pid is None:
        return 0.0
    try:
        root = psutil.Process(pid)
        procs = [root, *(root.children(recursive=True) if children else [])]
    except psutil.Error:
        return 0.0
    total = 0.0
    for proc in procs:
        try:
            t = proc.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            continue
    return total


def cpu_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: max(0.0, after[k] - before[k]) for k in after}


def own_cpu() -> float:
    t = os.times()
    return t.user + t.system
