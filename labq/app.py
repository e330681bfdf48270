"""The Celery app factory: ``create_app(settings)``.

Every default set here is explained in ``docs/celery-defaults.md``. There is
no hidden global app: ``tasks`` builds one lazily from the environment for
``celery -A tasks``, and everything else passes an app or settings around.
"""

from __future__ import annotations

import logging
import pkgutil
from functools import cached_property
from typing import TYPE_CHECKING, Any

from celery import Celery

from labq.devices.routing import DeviceRouter
from labq.redis_client import tls_options, uses_tls
from labq.settings import Settings

if TYPE_CHECKING:
    from celery.apps.worker import Worker as CeleryWorker

log = logging.getLogger(__name__)

TASK_PACKAGE = "tasks"


class LabqCelery(Celery):  # type: ignore[misc]
    """A Celery app that knows its labq settings and uses the prefork-only worker."""

    labq_settings: Settings

    @cached_property
    def Worker(self) -> type[CeleryWorker]:  # noqa: N802 - Celery's own name
        # The worker's main process lives in labq.worker.prefork.
        from labq.worker.prefork import PreforkOnlyWorker

        return self.subclass_with_self(PreforkOnlyWorker)  # type: ignore[no-any-return]

    def _get_backend(self) -> Any:
        # Celery's Redis backend becomes labq's (labq.worker.backend): the same
        # records, one round trip per state change. Any other stays as set.
        from celery.app import backends
        from celery.backends.redis import RedisBackend

        from labq.worker.backend import LabqRedisBackend

        cls, url = backends.by_url(self.backend_cls or self.conf.result_backend, self.loader)
        if cls is RedisBackend:
            cls = LabqRedisBackend
        return cls(app=self, url=url)


def task_modules(package: str = TASK_PACKAGE) -> list[str]:
    """Every module of the task package, so workers register all its tasks."""
    try:
        pkg = __import__(package)
    except ImportError:
        return []
    return sorted(
        f"{package}.{m.name}" for m in pkgutil.iter_modules(pkg.__path__) if not m.ispkg
    )


def celery_config(settings: Settings) -> dict[str, Any]:
    """The Celery configuration labq runs with, derived from ``settings``."""
    transport = {
        "visibility_timeout": settings.visibility_timeout,
        "health_check_interval": 10,
        "socket_keepalive": True,
    }
    default = settings.default_queue
    return {
        "broker_url": settings.broker_url,
        "result_backend": settings.backend_url,
        "broker_transport_options": transport,
        "redis_backend_health_check_interval": 10,
        "redis_socket_keepalive": True,
        "broker_connection_retry_on_startup": True,
        # rediss://: verify Redis with LABQ_REDIS_TLS_* (kombu alone would not).
        "broker_use_ssl": tls_options(settings) if uses_tls(settings.broker_url) else False,
        "redis_backend_use_ssl": (tls_options(settings) if uses_tls(settings.backend_url)
                                  else None),
        # JSON only: pickle from the broker would run code on the workers.
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "event_serializer": "json",
        # Ack after the task ends; a worker that dies hands the task back.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_acks_on_failure_or_timeout": True,
        # One message per free slot: nothing sits in a busy worker's buffer.
        "worker_prefetch_multiplier": 1,
        "worker_pool": "prefork",
        "worker_concurrency": settings.concurrency,
        "task_soft_time_limit": settings.soft_time_limit,
        "task_time_limit": settings.time_limit,
        # Flower sees queued tasks only with sent events.
        "worker_send_task_events": True,
        # Task events go out in batches, at most 50 ms late (labq.worker.consumer).
        "worker_consumer": "labq.worker.consumer:LabqConsumer",
        "task_send_sent_event": True,
        "task_track_started": True,
        "result_extended": True,
        "result_expires": settings.result_expires,
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        "worker_soft_shutdown_timeout": settings.shutdown_timeout,
        "worker_hijack_root_logger": False,
        "task_default_queue": default,
        "task_create_missing_queues": True,
        "task_routes": (DeviceRouter(settings.testbed, default),),
        "worker_lost_wait": 10.0,
        "broker_pool_limit": 10,
    }


def create_app(settings: Settings | None = None, *, main: str = "labq") -> LabqCelery:
    """A Celery app with labq's production defaults.

    ``settings`` defaults to :meth:`Settings.load` (environment and config
    file). The task modules under ``tasks/`` are included, so a worker built
    from this app registers them all.
    """
    settings = settings or Settings.load()
    app = LabqCelery(main, set_as_current=False, include=task_modules(),
                     task_cls="labq.worker.task_base:LabqTask")
    app.labq_settings = settings
    app.conf.update(celery_config(settings))
    return app
