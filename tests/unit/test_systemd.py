"""deploy/systemd: the units pass ``systemd-analyze verify`` and run what
``labq worker`` / ``labq flower`` run, with settings from the env file."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from conftest import need
from labq import cli
from labq.embedded.stack import worker_argv
from labq.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
UNITS = ROOT / "deploy" / "systemd"
WORKER_UNIT = UNITS / "labq-worker@.service"
FLOWER_UNIT = UNITS / "labq-flower.service"
ENV_FILE = UNITS / "labq.env"
FLOWER_ENV = ROOT / "config" / "flower.env.example"
#: Where docs/deploy.md installs the venv; the test swaps in this one's.
INSTALLED_LABQ = "/opt/labq/venv/bin/labq"


def unit(path: Path) -> dict[str, list[str]]:
    """``section.Key`` -> every value, in order (keys may repeat)."""
    out: dict[str, list[str]] = {}
    section = ""
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        out.setdefault(f"{section}.{key.strip()}", []).append(value.strip())
    return out


def env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines as systemd's EnvironmentFile= reads these files."""
    pairs = (line.split("=", 1) for line in path.read_text().splitlines()
             if line.strip() and not line.lstrip().startswith("#"))
    return {k.strip(): v.strip() for k, v in pairs}


def labq_exe() -> str:
    exe = Path(shutil.which("labq") or Path(sys.executable).with_name("labq"))
    assert exe.exists(), "labq is not installed in this environment"
    return str(exe)


def verify(tmp_path: Path, *names: str) -> subprocess.CompletedProcess[str]:
    """``systemd-analyze verify`` on copies whose ExecStart is this venv's labq."""
    exe = shutil.which("systemd-analyze")
    need(exe is not None, "systemd-analyze is not installed (apt-get install systemd)")
    assert exe
    return subprocess.run([exe, "verify", "--man=no", *(f"./{n}" for n in names)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False)


def copy_units(tmp_path: Path) -> None:
    for src in (WORKER_UNIT, FLOWER_UNIT):
        (tmp_path / src.name).write_text(src.read_text().replace(INSTALLED_LABQ, labq_exe()))


def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    copy_units(tmp_path)
    # An instance of the template, as `systemctl start labq-worker@lab-a` loads it.
    result = verify(tmp_path, "labq-worker@lab-a.service", "labq-flower.service")
    # verify exits 0 on a misspelt key or bad value and only warns: any line is a finding.
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr


def test_verify_catches_a_bad_directive(tmp_path: Path) -> None:
    copy_units(tmp_path)
    broken = tmp_path / WORKER_UNIT.name
    broken.write_text(broken.read_text().replace("KillMode=mixed", "KillMode=mixd"))
    result = verify(tmp_path, "labq-worker@lab-a.service")
    assert "labq-worker@.service:" in result.stderr
    assert "mixd" in result.stderr


def run_cli(args: list[str], env: dict[str, str],
            monkeypatch: pytest.MonkeyPatch) -> tuple[list[str], dict[str, str]]:
    """What a labq command would exec: its argv and environment."""
    seen: dict[str, Any] = {}

    def fake_execve(path: str, argv: list[str], child_env: dict[str, str]) -> None:
        seen.update(argv=argv, env=child_env)

    monkeypatch.setattr(os, "execve", fake_execve)
    monkeypatch.setattr(os, "chdir", lambda path: None)
    clean = {k: None for k in os.environ if k.startswith("LABQ_")}
    result = CliRunner().invoke(cli.main, args, env={**clean, **env}, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return seen["argv"], seen["env"]


def exec_start(path: Path, instance: str) -> list[str]:
    [line] = unit(path)["Service.ExecStart"]
    # %I is the unescaped instance: systemd turns `-` into `/` there, so
    # labq-worker@lab-a would serve queue lab/a. Only %i is the name as written.
    assert "%I" not in line
    argv = shlex.split(line.replace("%i", instance))
    assert argv[0] == INSTALLED_LABQ
    return argv[1:]


def test_worker_unit_runs_what_labq_worker_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    env = env_file(ENV_FILE)
    argv, child_env = run_cli(exec_start(WORKER_UNIT, "lab-a"), env, monkeypatch)
    settings = Settings.load(env=env, config_file=os.devnull)
    # The flags `labq worker -Q lab-a` uses: no drift between the two.
    assert argv == worker_argv(settings, "lab-a", ["lab-a"], loglevel=env["LABQ_LOGLEVEL"])
    def flag(name: str) -> str:
        return argv[argv.index(name) + 1]

    assert flag("--pool") == "prefork"
    assert flag("--queues") == f"lab-a,{env['LABQ_DEFAULT_QUEUE']}"
    # The node name the unit's header promises: <instance>@<hostname> (%i@%H).
    assert flag("--hostname") == f"lab-a@{socket.gethostname()}"
    assert flag("--concurrency") == env["LABQ_CONCURRENCY"]
    assert child_env["LABQ_BROKER_URL"] == env["LABQ_BROKER_URL"]


def test_worker_unit_stops_warm_within_its_timeout() -> None:
    u = unit(WORKER_UNIT)
    settings = Settings.load(env=env_file(ENV_FILE), config_file=os.devnull)
    # SIGTERM to Celery's main process only: a warm shutdown that lets the
    # prefork children finish their tasks; the rest of the cgroup is killed after.
    assert u["Service.KillMode"] == ["mixed"]
    assert u["Service.KillSignal"] == ["SIGTERM"]
    # Running tasks end by their hard limit at the latest; systemd must not
    # SIGKILL before that.
    [timeout] = u["Service.TimeoutStopSec"]
    assert re.fullmatch(r"\d+", timeout), timeout
    assert int(timeout) > settings.max_time_limit + settings.shutdown_timeout
    assert u["Service.Restart"] == ["on-failure"]
    assert u["Service.User"] == ["labq"]
    assert u["Service.EnvironmentFile"] == ["/etc/labq/labq.env"]


def test_flower_unit_runs_labq_flower(monkeypatch: pytest.MonkeyPatch) -> None:
    u = unit(FLOWER_UNIT)
    assert u["Service.EnvironmentFile"] == ["/etc/labq/flower.env"]
    assert u["Service.User"] == ["labq"]
    env = env_file(FLOWER_ENV)
    argv, child_env = run_cli(exec_start(FLOWER_UNIT, ""), env, monkeypatch)
    assert argv[1:6] == ["-m", "celery", "-A", "tasks", "flower"]
    assert f"--port={env['LABQ_FLOWER_PORT']}" in argv
    assert child_env["FLOWER_BASIC_AUTH"] == (
        f"{env['LABQ_FLOWER_USER']}:{env['LABQ_FLOWER_PASSWORD']}")


@pytest.mark.parametrize("path", [ENV_FILE, FLOWER_ENV], ids=lambda p: p.name)
def test_env_files_hold_only_known_settings_and_placeholder_secrets(path: Path) -> None:
    env = env_file(path)
    settings_vars = set(Settings().to_env())
    command_vars = {p.envvar for name in ("worker", "flower")
                    for p in cli.main.commands[name].params if isinstance(p.envvar, str)}
    labq_vars = {k for k in env if k.startswith("LABQ_")}
    assert labq_vars <= settings_vars | command_vars, labq_vars - settings_vars - command_vars
    # The instance chooses the queues and the node name, never the file.
    assert not labq_vars & {"LABQ_QUEUES", "LABQ_WORKER_NAME"}
    Settings.load(env=env, config_file=os.devnull)  # every value is valid
    for key, value in env.items():
        if "PASSWORD" in key or key.endswith("_URL"):
            assert "@" not in value or "CHANGE-ME" in value, (key, value)
        if "PASSWORD" in key:
            assert "CHANGE-ME" in value, key


def test_a_worker_queue_no_device_is_on_is_warned_about(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}
    monkeypatch.setattr(os, "execve", lambda path, argv, env: seen.update(argv=argv))
    monkeypatch.setattr(os, "chdir", lambda path: None)
    clean = {k: None for k in os.environ if k.startswith("LABQ_")}
    testbed = str(ROOT / "config" / "testbed.yaml")
    result = CliRunner().invoke(
        cli.main, ["worker", "-Q", "lab-a,lab-q"], env={**clean, "LABQ_TESTBED": testbed},
        catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert result.stderr.splitlines() == [
        f"labq: warning: no device in {testbed} is on queue 'lab-q' (its queues: lab-a, "
        "lab-b); this worker gets no device task from it"]
    assert "--queues" in seen["argv"]  # it still starts: the warning is no refusal
