from __future__ import annotations

import os
from dataclasses import FrozenInstanceError
from pathlib import Path

import pytest

from labq.errors import ConfigError
from labq.settings import Settings, mask_url


def load(env: dict[str, str] | None = None, **kw: object) -> Settings:
    return Settings.load(env=env or {}, config_file=kw.pop("config_file", os.devnull), **kw)


def test_environment_overrides_config_file_and_overrides_win(tmp_path: Path) -> None:
    cfg = tmp_path / "labq.yaml"
    cfg.write_text("concurrency: 3\nsoft_time_limit: 10\ntime_limit: 20\n")
    s = Settings.load(env={"LABQ_CONCURRENCY": "5"}, config_file=cfg)
    assert (s.concurrency, s.soft_time_limit, s.time_limit) == (5, 10.0, 20.0)
    assert Settings.load(env={"LABQ_CONCURRENCY": "5"}, config_file=cfg, concurrency=7).concurrency == 7


def test_config_file_named_by_labq_config(tmp_path: Path) -> None:
    cfg = tmp_path / "x.yaml"
    cfg.write_text("default_queue: bench\n")
    assert Settings.load(env={"LABQ_CONFIG": str(cfg)}).default_queue == "bench"


def test_missing_explicit_config_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        Settings.load(env={"LABQ_CONFIG": str(tmp_path / "nope.yaml")})


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({"LABQ_CONCURRENCY": "many"}, ["LABQ_CONCURRENCY", "'many'"]),
        ({"LABQ_CONCURRENCY": "0"}, ["LABQ_CONCURRENCY", "0"]),
        ({"LABQ_TIME_LIMIT": "-1"}, ["LABQ_TIME_LIMIT", "-1.0"]),
        ({"LABQ_SOFT_TIME_LIMIT": "90", "LABQ_TIME_LIMIT": "60"}, ["LABQ_SOFT_TIME_LIMIT", "90.0", "60.0"]),
        ({"LABQ_TIME_LIMIT": "7200"}, ["LABQ_TIME_LIMIT", "LABQ_MAX_TIME_LIMIT"]),
        ({"LABQ_BROKER_URL": "amqp://x"}, ["LABQ_BROKER_URL", "amqp://x"]),
        ({"LABQ_FLOWER_PORT": "70000"}, ["LABQ_FLOWER_PORT", "70000"]),
    ],
)
def test_bad_values_name_the_setting_and_the_value(env: dict[str, str], names: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        load(env)
    for name in names:
        assert name in str(info.value)


def test_unknown_key_in_config_file_is_named(tmp_path: Path) -> None:
    cfg = tmp_path / "labq.yaml"
    cfg.write_text("concurrrency: 3\n")
    with pytest.raises(ConfigError, match="concurrrency"):
        Settings.load(env={}, config_file=cfg)


def test_broken_yaml_names_the_file(tmp_path: Path) -> None:
    cfg = tmp_path / "labq.yaml"
    cfg.write_text("concurrency: [\n")
    with pytest.raises(ConfigError, match=str(cfg)):
        Settings.load(env={}, config_file=cfg)


def test_settings_are_frozen_and_replace_validates() -> None:
    s = load()
    with pytest.raises(FrozenInstanceError):
        s.concurrency = 3  # type: ignore[misc]
    assert s.replace(concurrency="3").concurrency == 3
    with pytest.raises(ConfigError, match="LABQ_CONCURRENCY"):
        s.replace(concurrency=0)


def test_visibility_timeout_exceeds_the_largest_hard_limit() -> None:
    s = load({"LABQ_MAX_TIME_LIMIT": "600", "LABQ_SHUTDOWN_TIMEOUT": "20"})
    assert s.visibility_timeout > s.max_time_limit + s.shutdown_timeout


def test_masked_hides_passwords() -> None:
    s = load({"LABQ_BROKER_URL": "redis://:hunter2@h:1/0", "LABQ_FLOWER_PASSWORD": "sesame"})
    text = repr(s.masked())
    assert "hunter2" not in text and "sesame" not in text
    assert s.masked()["broker_url"] == "redis://:****@h:1/0"


def test_mask_url_keeps_user_name() -> None:
    assert mask_url("rediss://worker:pw@host:6380/1") == "rediss://worker:****@host:6380/1"
    assert mask_url("redis://host:6379/0") == "redis://host:6379/0"


def test_to_env_round_trips() -> None:
    s = load({"LABQ_CONCURRENCY": "6", "LABQ_TESTBED": "x.yaml"})
    assert Settings.load(env=s.to_env(), config_file=os.devnull) == s


def test_mask_url_hides_passwords_with_slashes_and_at_signs() -> None:
    assert mask_url("redis://:p/a@ss@h:1/0") == "redis://:****@h:1/0"


def test_only_misspelt_labq_variables_are_reported() -> None:
    from labq.settings import unknown_env

    env = {"LABQ_CONCURENCY": "3", "LABQ_BROKER_URL": "redis://h/0", "LABQ_QUEUES": "lab-a",
           "LABQ_LAB_PASSWORD": "a testbed's own %ENV", "LABQ_WORKER_TTLL": "5", "PATH": "/bin"}
    assert unknown_env(env) == {"LABQ_CONCURENCY": "LABQ_CONCURRENCY",
                                "LABQ_WORKER_TTLL": "LABQ_WORKER_TTL"}


def test_priorities_parse_by_name_and_refuse_others_by_value() -> None:
    from labq import Priority, SubmitError

    assert Priority.parse("HIGH") is Priority.HIGH
    assert Priority.parse(Priority.LOW) is Priority.LOW
    assert [p.rank for p in Priority] == [0, 1, 2]
    for bad in ("urgent", 3, None):
        with pytest.raises(SubmitError, match=repr(bad)):
            Priority.parse(bad)


def test_durations_take_units_and_refuse_what_is_not_one() -> None:
    from labq.settings import parse_duration

    assert parse_duration("30m") == 1800 and parse_duration("1h30m") == 5400
    assert parse_duration(90) == 90 and parse_duration("2h") == 7200
    for bad in ("-5m", "soon", "0", "", "5x", -1, True):
        with pytest.raises(ConfigError, match="--for"):
            parse_duration(bad, "--for")


def test_fair_share_settings_are_checked() -> None:
    assert Settings(fair_share=False).fair_share is False
    with pytest.raises(ConfigError, match="LABQ_FAIR_CREDIT"):
        Settings(fair_credit=-1)
    with pytest.raises(ConfigError, match="LABQ_PRIORITY_AGE"):
        Settings(priority_age=0)
    assert Settings().replace(fair_share="off").fair_share is False
    with pytest.raises(ConfigError, match="LABQ_FAIR_SHARE"):
        Settings().replace(fair_share="maybe")
