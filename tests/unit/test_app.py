from __future__ import annotations

import logging
import os

import pytest

import labq
from labq.app import create_app
from labq.errors import ConfigError
from labq.settings import Settings
from labq.worker.prefork import check_pool, quiet_paramiko


def settings(**kw: object) -> Settings:
    return Settings.load(env={}, config_file=os.devnull, **kw)


def test_production_defaults() -> None:
    conf = create_app(settings()).conf
    assert conf.accept_content == ["json"] and conf.task_serializer == "json"
    assert conf.result_accept_content == ["json"]
    assert conf.task_acks_late and conf.task_reject_on_worker_lost
    assert conf.worker_prefetch_multiplier == 1
    assert conf.worker_send_task_events and conf.task_send_sent_event
    assert conf.task_track_started
    assert conf.worker_cancel_long_running_tasks_on_connection_loss
    assert conf.worker_soft_shutdown_timeout > 0
    assert conf.worker_pool == "prefork"


def test_visibility_timeout_is_derived_from_the_largest_hard_limit() -> None:
    s = settings(max_time_limit=900, time_limit=600, soft_time_limit=500)
    conf = create_app(s).conf
    assert conf.broker_transport_options["visibility_timeout"] == s.visibility_timeout > 900
    assert conf.task_time_limit == 600 and conf.task_soft_time_limit == 500


def test_apps_are_independent() -> None:
    a = create_app(settings(concurrency=2))
    b = create_app(settings(concurrency=3))
    assert (a.conf.worker_concurrency, b.conf.worker_concurrency) == (2, 3)


def test_diag_tasks_are_registered() -> None:
    app = create_app(settings())
    app.loader.import_default_modules()
    assert {"tasks.diag.echo", "tasks.diag.sleep", "tasks.diag.burn",
            "tasks.diag.stubborn"} <= set(app.tasks)


@pytest.mark.parametrize("pool", ["threads", "solo", "gevent", "eventlet"])
def test_pools_without_time_limits_are_refused(pool: str) -> None:
    with pytest.raises(ConfigError, match=f"'{pool}'.*prefork"):
        check_pool(pool)


def test_prefork_is_accepted() -> None:
    from celery.concurrency.prefork import TaskPool

    check_pool("prefork")
    check_pool(TaskPool)


def test_worker_refuses_threads_pool() -> None:
    from celery import _state

    app = create_app(settings())
    previous = _state.get_current_app()
    try:
        with pytest.raises(ConfigError, match="threads"):
            app.Worker(pool="threads", concurrency=1)
    finally:
        # Building a worker makes its app current; later tests rely on labq
        # never leaving one current.
        previous.set_current()


def test_public_api_is_exactly_all() -> None:
    public = {n for n in dir(labq) if not n.startswith("_")}
    modules = {n for n in public if type(getattr(labq, n)).__name__ == "module"}
    assert public - modules == set(labq.__all__)
    for name in labq.__all__:
        assert getattr(labq, name).__module__.startswith("labq.")


def test_every_error_derives_from_the_root() -> None:
    from labq import errors

    classes = [c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, Exception)]
    assert all(issubclass(c, labq.LabqError) for c in classes)
    assert all(c.__doc__ for c in classes)


def test_every_error_is_public_once() -> None:
    from labq import errors

    classes = {n for n, c in vars(errors).items() if isinstance(c, type) and issubclass(c, Exception)}
    assert classes <= set(labq.__all__)
    assert len(labq.__all__) == len(set(labq.__all__))


def test_device_errors_sit_under_device_error() -> None:
    for cls in (labq.DeviceBusy, labq.UnknownDevice, labq.DriverError, labq.LeaseError,
                labq.DeviceUnreachable, labq.AuthenticationFailed):
        assert issubclass(cls, labq.DeviceError), cls
    # The ones with their own arguments still say which device.
    assert labq.DeviceBusy("r1", 1.0, []).device == "r1"
    assert labq.UnknownDevice("r9", "lab", []).device == "r9"
    assert labq.DriverError("no driver").device == ""


def test_the_error_tree_in_the_docstring_is_the_class_tree() -> None:
    import re

    from labq import errors

    drawn: dict[str, set[str]] = {}  # class -> its parents in the drawing
    path: list[str] = []
    for line in (errors.__doc__ or "").splitlines():
        m = re.match(r"^    ([ \u2502\u251c\u2514\u2500]*)([A-Z][A-Za-z]+)\b", line)
        if not m:
            continue
        depth = len(m.group(1)) // 4
        del path[depth:]
        if path:
            drawn.setdefault(m.group(2), set()).add(path[-1])
        path.append(m.group(2))
    classes = {n: c for n, c in vars(errors).items()
               if isinstance(c, type) and issubclass(c, Exception)}
    assert set(drawn) | {"LabqError"} == set(classes)
    for name, parents in drawn.items():
        assert {classes[p] for p in parents} <= set(classes[name].__bases__), (name, parents)


def test_every_celery_default_is_explained_in_the_docs() -> None:
    from pathlib import Path

    from labq.app import celery_config

    doc = (Path(__file__).resolve().parents[2] / "docs" / "celery-defaults.md").read_text()
    missing = [key for key in celery_config(settings()) if f"`{key}`" not in doc]
    assert missing == []


def test_device_task_refuses_a_soft_limit_at_or_above_the_hard_one() -> None:
    from labq import device_task

    with pytest.raises(labq.TimeLimitError, match=r"soft_time_limit=45.*time_limit=45"):
        device_task(soft_time_limit=45, time_limit=45)


@pytest.mark.parametrize(("loglevel", "preset", "expected"), [
    ("INFO", logging.NOTSET, logging.WARNING),
    (logging.WARNING, logging.NOTSET, logging.WARNING),
    ("DEBUG", logging.NOTSET, logging.NOTSET),
    ("INFO", logging.INFO, logging.INFO),
])
def test_paramiko_connection_chatter_is_quiet_unless_asked_for(
        loglevel: int | str, preset: int, expected: int) -> None:
    logger = logging.getLogger("paramiko")
    before = logger.level
    logger.setLevel(preset)
    try:
        quiet_paramiko(loglevel)
        assert logger.level == expected
    finally:
        logger.setLevel(before)
