"""Helpers every benchmark shares: where it ran, and what else the host did."""

from __future__ import annotations

import os
import platform
from collections.abc import Sequence
from importlib.metadata import version
from pathlib import Path
from typing import Any

import psutil


def machine(packages: Sequence[str]) -> dict[str, Any]:
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
