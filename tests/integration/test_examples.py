"""The examples run against the session stack, as a user would run them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import need
from labq.embedded.stack import PROJECT_ROOT, Stack, child_env

EXAMPLES = PROJECT_ROOT / "examples"


def test_pytest_example_passes_against_the_lab(stack: Stack) -> None:
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          str(EXAMPLES / "test_lab.py"), "--rootdir", str(EXAMPLES)],
                         env=child_env(stack.settings), capture_output=True, text=True,
                         timeout=300, cwd=EXAMPLES)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert "3 passed" in out.stdout


def test_aetest_example_passes_with_labq_pcall(stack: Stack) -> None:
    need(Path(sys.executable).with_name("mock_device_cli").exists(),
         "the pyats extra is not installed (pip install -e '.[pyats]')")
    out = subprocess.run([sys.executable, str(EXAMPLES / "aetest_testscript.py"),
                          "--devices", "a1", "b1", "a2"],
                         env=child_env(stack.settings), capture_output=True, text=True,
                         timeout=300)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-4000:]
    assert "3 devices answered" in text


def test_pools_example_runs_picks_and_topologies_on_any_labelled_testbed(stack: Stack) -> None:
    out = subprocess.run([sys.executable, str(EXAMPLES / "pools.py")],
                         env={**child_env(stack.settings), "COLUMNS": "200"},
                         capture_output=True, text=True, timeout=300)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-4000:]
    assert "execute: succeeded on {'device': 'sp-" in text
    assert "ping_peer: succeeded on {'dut': 'lf-a1', 'peer': 'sp-a" in text
    assert "three leaves held together: lf-a" in text
