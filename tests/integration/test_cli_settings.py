"""One precedence for every setting, and one form for every error, through the
real ``labq`` command line (issue 13, item 3)."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

import labq as labq_api
from labq.embedded.ports import free_port
from labq.embedded.redis_server import RedisServer
from labq.errors import BrokerUnavailable
from labq.settings import Settings

LABQ = str(Path(sys.executable).parent / "labq")


def labq(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("LABQ_")}
    return subprocess.run([LABQ, *args], env={**clean, **(env or {})}, capture_output=True,
                          text=True, timeout=60)


def test_a_misspelt_variable_is_named_with_the_setting_it_is_close_to() -> None:
    out = labq("config", env={"LABQ_CONCURENCY": "3", "LABQ_LAB_PASSWORD": "for a testbed"})
    assert out.returncode == 0
    assert out.stderr.splitlines() == [
        "labq: warning: LABQ_CONCURENCY is not a setting and is ignored; "
        "did you mean LABQ_CONCURRENCY?"]
    assert re.search(r"^concurrency\s+4$", out.stdout, re.M)


@pytest.mark.parametrize(("args", "env", "expected"), [
    (["worker"], {"LABQ_CONCURRENCY": "lots"},
     "labq: error: Invalid value for '--concurrency' / '-c' (env var: 'LABQ_CONCURRENCY'): "
     "'lots' is not a valid integer."),
    (["--config", "/nonexistent.yaml", "config"], {},
     "labq: error: --config='/nonexistent.yaml': no such file"),
    (["config"], {"LABQ_CONFIG": "/nonexistent.yaml"},
     "labq: error: LABQ_CONFIG='/nonexistent.yaml': no such file"),
    (["scale", "lab-a", "two"], {}, "labq: error: Invalid value for 'N': 'two' is not a valid integer."),
    (["nosuchcommand"], {}, "labq: error: No such command 'nosuchcommand'."),
])
def test_every_error_is_one_line_and_exit_2(args: list[str], env: dict[str, str],
                                            expected: str) -> None:
    out = labq(*args, env=env)
    assert (out.returncode, out.stderr.strip()) == (2, expected)


def test_a_broken_settings_file_is_one_line_naming_where(tmp_path: Path) -> None:
    path = tmp_path / "labq.yaml"
    path.write_text("concurrency: 3\nbroker_url: [redis://x\n")
    out = labq("--config", str(path), "config")
    assert out.returncode == 2
    assert out.stderr.strip() == (f"labq: error: --config='{path}': not valid YAML at line 3, "
                                  "column 1: expected ',' or ']', but got '<stream end>'")


def test_the_help_shows_the_settings_own_defaults() -> None:
    defaults = Settings()
    text = " ".join(labq("up", "--help").stdout.split())
    assert f"[default: from settings, {defaults.concurrency}]" in text
    assert f"[default: {defaults.flower_port}]" in text


def test_labq_up_takes_concurrency_from_its_config_file(tmp_path: Path) -> None:
    config = tmp_path / "labq.yaml"
    config.write_text("concurrency: 3\nshutdown_timeout: 5\n")
    env = {**os.environ, "LABQ_STATE_DIR": str(tmp_path)}
    env.pop("LABQ_CONCURRENCY", None)
    proc = subprocess.Popen([LABQ, "--config", str(config), "up", "--redis-port", "0",
                             "--flower-port", "0"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env)
    assert proc.stdout is not None
    export = ""
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and not export:
        line = proc.stdout.readline()
        if not line:
            break
        if "export LABQ_BROKER_URL" in line:
            export = line
    try:
        assert export, "labq up did not become ready"
        assigned = dict(word.split("=", 1) for word in shlex.split(export)[1:])
        url = assigned["LABQ_BROKER_URL"]
        assert Path(assigned["LABQ_TESTBED"]).is_absolute()  # works from any directory
        workers: list[dict[str, object]] = []
        while time.monotonic() < deadline:
            status = labq("status", "--json", "--broker", url)
            workers = json.loads(status.stdout)["workers"] if status.returncode == 0 else []
            if len(workers) >= 2:
                break
            time.sleep(0.5)
        assert len(workers) >= 2 and {w["concurrency"] for w in workers} == {3}, workers
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=60)


def test_a_testscript_and_labq_devices_find_the_testbed_from_another_directory(
        tmp_path: Path) -> None:
    script = tmp_path / "where.py"
    script.write_text("import labq\nprint(labq.Settings.load().testbed)\n")
    clean = {k: v for k, v in os.environ.items() if not k.startswith("LABQ_")}
    out = subprocess.run([sys.executable, str(script)], cwd="/tmp", env=clean,
                         capture_output=True, text=True, timeout=60)
    root = Path(__file__).resolve().parents[2]
    assert out.returncode == 0, out.stderr
    assert Path(out.stdout.strip()) == root / "config" / "testbed.yaml"
    missing = subprocess.run([LABQ, "devices"], cwd="/tmp",
                             env={**clean, "LABQ_TESTBED": "lab/none.yaml"},
                             capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2
    assert missing.stderr.strip() == (
        "labq: error: lab/none.yaml: no such testbed file in /tmp or its parents; point "
        "LABQ_TESTBED (or testbed: in the config file, or --testbed) at it")


@pytest.mark.parametrize("password", ["wrong-password", ""], ids=["wrong", "none"])
def test_refused_credentials_are_named_as_such_not_as_unreachable(
        redis_server: RedisServer, tmp_path: Path, password: str) -> None:
    url = f"redis://:{password}@127.0.0.1:{redis_server.port}/0" if password else \
        f"redis://127.0.0.1:{redis_server.port}/0"
    masked = f"redis://:****@127.0.0.1:{redis_server.port}/0" if password else url
    for command in (["status", "--broker", url], ["devices"]):
        out = labq(*command, env={"LABQ_BROKER_URL": url})
        assert out.returncode == 2, out.stderr
        assert f"authentication failed for user 'default' at {masked}" in out.stderr, out.stderr
        assert "unreachable" not in out.stderr and "HELLO must be called" not in out.stderr
        assert password not in out.stderr or not password
    settings = Settings.load(env={}, config_file=os.devnull, state_dir=tmp_path, broker_url=url)
    with pytest.raises(BrokerUnavailable, match="authentication failed for user 'default'"):
        labq_api.Run("auth", settings=settings, progress=False)


def test_flower_without_a_password_needs_no_auth_said_out_loud(
        redis_server: RedisServer, tmp_path: Path) -> None:
    env = {"LABQ_BROKER_URL": redis_server.url, "LABQ_STATE_DIR": str(tmp_path)}
    refused = labq("flower", env=env)
    assert refused.returncode == 2
    assert refused.stderr.startswith("labq: error: Flower needs LABQ_FLOWER_PASSWORD")
    port = free_port()
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("LABQ_", "FLOWER_"))}
    proc = subprocess.Popen([LABQ, "flower", "--no-auth", "--port", str(port)],
                            env={**clean, **env}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        status = 0
        while time.monotonic() < deadline and status != 200:
            assert proc.poll() is None, proc.communicate()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/workers", timeout=2) as r:
                    status = r.status
            except OSError:
                time.sleep(0.5)
        assert status == 200  # served without credentials, as asked
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert f"labq: warning: Flower on 127.0.0.1:{port} serves without auth (--no-auth)" in err
