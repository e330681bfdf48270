"""docker-compose.yml as Compose resolves it, and the example settings file."""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import need
from labq.devices.testbed_yaml import load_testbed
from labq.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
PASSWORDS = {"LABQ_REDIS_PASSWORD": "redis-secret-1", "LABQ_FLOWER_PASSWORD": "flower-secret-2"}


def compose_config(tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("docker-compose")
    need(exe is not None, "docker-compose is not installed (apt-get install docker-compose)")
    assert exe
    # An empty env file and no inherited LABQ_* variables: only `env` counts,
    # not a developer's .env or shell.
    env_file = tmp_path / "empty.env"
    env_file.write_text("")
    base = {k: v for k, v in os.environ.items() if not k.startswith("LABQ_")}
    return subprocess.run(
        [exe, "--env-file", str(env_file), "-f", str(COMPOSE_FILE), "config"],
        env={**base, **env}, capture_output=True, text=True, timeout=60, check=False,
    )


@pytest.fixture()
def services(tmp_path: Path) -> dict[str, Any]:
    result = compose_config(tmp_path, PASSWORDS)
    assert result.returncode == 0, result.stderr
    return dict(yaml.safe_load(result.stdout)["services"])


def seconds(duration: str) -> float:
    """Compose durations such as ``90s`` or ``1m30s``."""
    parts = re.findall(r"(\d+(?:\.\d+)?)(h|m|s)", duration)
    assert parts, duration
    return sum(float(n) * {"h": 3600, "m": 60, "s": 1}[unit] for n, unit in parts)


def test_redis_has_aof_password_and_volume(services: dict[str, Any]) -> None:
    redis = services["redis"]
    command = redis["command"]
    options = dict(zip(command[1::2], command[2::2], strict=True))
    assert options["--requirepass"] == PASSWORDS["LABQ_REDIS_PASSWORD"]
    assert options["--appendonly"] == "yes"
    assert options["--appendfsync"] == "everysec"
    assert options["--maxmemory-policy"] == "noeviction"
    assert any(v.split(":")[1] == "/data" for v in redis["volumes"])
    # The healthcheck authenticates through the environment, not its arguments.
    assert redis["environment"]["REDISCLI_AUTH"] == PASSWORDS["LABQ_REDIS_PASSWORD"]
    assert PASSWORDS["LABQ_REDIS_PASSWORD"] not in " ".join(redis["healthcheck"]["test"])
    assert all(p.startswith("127.0.0.1:") for p in redis.get("ports", []))


def test_flower_has_basic_auth_on_loopback(services: dict[str, Any]) -> None:
    flower = services["flower"]
    env = flower["environment"]
    assert env["LABQ_FLOWER_PASSWORD"] == PASSWORDS["LABQ_FLOWER_PASSWORD"]
    assert env["LABQ_FLOWER_USER"]
    assert f":{PASSWORDS['LABQ_REDIS_PASSWORD']}@redis:6379/" in env["LABQ_BROKER_URL"]
    assert flower["command"][:2] == ["labq", "flower"]
    assert flower["ports"] and all(p.startswith("127.0.0.1:") for p in flower["ports"])
    assert flower["depends_on"]["redis"]["condition"] == "service_healthy"


#: The lab segments of the simulated lab, one worker service each.
LAB_HOSTS = ("lab-a", "lab-b")


@pytest.mark.parametrize("service", LAB_HOSTS)
def test_lab_host_serves_its_queue_scales_and_stops_gracefully(
        services: dict[str, Any], service: str) -> None:
    worker = services[service]
    # `--scale lab-a=N` needs no fixed container name and no host ports.
    assert "container_name" not in worker
    assert "ports" not in worker
    assert worker["command"] == ["labq", "worker", "--queues", service]
    assert worker["init"] is True
    env = worker["environment"]
    assert f":{PASSWORDS['LABQ_REDIS_PASSWORD']}@redis:6379/" in env["LABQ_BROKER_URL"]
    assert int(env["LABQ_CONCURRENCY"]) >= 1
    # SIGQUIT starts Celery's soft shutdown, bounded by LABQ_SHUTDOWN_TIMEOUT;
    # Docker must wait longer than that before it kills the worker.
    assert worker["stop_signal"] == "SIGQUIT"
    assert seconds(worker["stop_grace_period"]) > float(env["LABQ_SHUTDOWN_TIMEOUT"])


def test_every_queue_of_the_testbed_has_a_lab_host(services: dict[str, Any]) -> None:
    testbed = load_testbed(ROOT / "config" / "testbed.yaml")
    queues = {d.queue for d in testbed.devices.values()} - {None}
    served = {s["command"][3] for s in services.values() if s["command"][:2] == ["labq", "worker"]}
    assert queues == served == set(LAB_HOSTS)


def test_sim_service_runs_the_simulated_lab(services: dict[str, Any]) -> None:
    sim = services["sim"]
    assert sim["command"][:2] == ["labq", "sim"]
    # The sim listens where the workers connect: the same rewritten testbed.
    for name in LAB_HOSTS:
        assert services[name]["entrypoint"] == sim["entrypoint"]
        assert services[name]["environment"]["LABQ_TESTBED"] == sim["environment"]["LABQ_TESTBED"]


def test_sim_testbed_puts_every_device_on_the_sim_service(
        services: dict[str, Any], tmp_path: Path) -> None:
    """Run the services' entrypoint here, with a command that prints the testbed it made."""
    sim = services["sim"]
    # `docker-compose config` prints `$` escaped as `$$`; the container sees `$`.
    script = sim["entrypoint"][2].replace("$$", "$").replace("/app/", f"{ROOT}/")
    made = tmp_path / "testbed.yaml"
    result = subprocess.run(
        [*sim["entrypoint"][:2], script, "sh", sys.executable, "-c",
         "import os; print(os.environ['LABQ_TESTBED'])"],
        env={**os.environ, "LABQ_TESTBED": str(made)},
        capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(made)  # the command ran, with the environment
    original = load_testbed(ROOT / "config" / "testbed.yaml")
    rewritten = load_testbed(made)
    assert set(rewritten.devices) == set(original.devices)
    for name, device in rewritten.devices.items():
        assert device.connection.ip == "sim", name
        assert device.connection.port == original.devices[name].connection.port
        assert device.queue == original.devices[name].queue


@pytest.mark.parametrize("missing", sorted(PASSWORDS))
def test_missing_password_is_refused_by_name(tmp_path: Path, missing: str) -> None:
    env = {k: v for k, v in PASSWORDS.items() if k != missing}
    result = compose_config(tmp_path, env)
    assert result.returncode != 0
    assert missing in result.stderr


def test_example_settings_file_sets_every_field() -> None:
    path = ROOT / "config" / "labq.yaml.example"
    keys = set(yaml.safe_load(path.read_text()))
    assert keys == {f.name for f in dataclasses.fields(Settings)}
    settings = Settings.load(env={}, config_file=path)
    assert settings == Settings()


def test_the_example_settings_file_is_the_one_settings_writes() -> None:
    from labq.ops.settings_example import example_config

    path = ROOT / "config" / "labq.yaml.example"
    assert path.read_text() == example_config(), (
        "regenerate it: labq config --example > config/labq.yaml.example")
    # Each default in its comments is the dataclass's: worker death at 1.5 x worker_ttl.
    assert f"({Settings().worker_ttl * 1.5:g} s in all, by" in path.read_text()
