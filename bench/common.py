"""Helpers every benchmark shares: where it ran, and what else the host did."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psutil


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
