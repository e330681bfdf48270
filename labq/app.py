"""The Celery app factory: ``create_app(settings)``.

Every default set here is explained in ``docs/celery-defaults.md``. There is
no hidden global app: ``tasks`` builds one lazily from the environment for
``celery -A tasks``, and everything else passes an app or settings around.
"""

from __future__ import annotations

import logging
import pkgutil
from functools import cached_property
from typing import Any

from celery import Celery
from celery.apps.worker import Worker as CeleryWorker

from labq.errors import ConfigError
from labq.redis_client import tls_options, uses_tls
from labq.routing import DeviceRouter
from labq.settings import Settings
from labq.transport import TRANSPORT

log = logging.getLogger(__name__)

TASK_PACKAGE = "tasks"
# Pools that honour soft and hard time limits; threads, solo, gevent and
# eventlet cannot interrupt or kill a running task.
ALLOWED_POOLS = frozenset({"prefork", "celery.concurrency.prefork:TaskPool"})


def quiet_paramiko(loglevel: int | str | None) -> None:
    """paramiko logs every connection and login at INFO: two lines per device
    task in the worker's log, which labq's own errors already cover. A worker
    at DEBUG keeps them, and so does a level set on ``paramiko`` explicitly."""
    from celery.utils.log import mlevel

    logger = logging.getLogger("paramiko")
    if logger.level == logging.NOTSET and mlevel(loglevel or logging.WARNING) > logging.DEBUG:
        logger.setLevel(logging.WARNING)


class PreforkOnlyWorker(CeleryWorker):  # type: ignore[misc]
    """A worker that refuses every pool but prefork."""

    def on_after_init(self, **kwargs: Any) -> None:
        check_pool(self.pool_cls)
        super().on_after_init(**kwargs)
        if self.app.conf.broker_url.startswith(("redis://", "rediss://")):
            # kombu's Redis transport reusing its clients (labq.transport); in
            # the worker only: clients such as Flower derive URLs from it.
            self.app.conf.broker_transport = TRANSPORT
        preload_for_fork()
        # labq.killing: children lead their own process group and may fork.
        from labq.killing import install

        install(child_nice=self.app.labq_settings.child_nice)
        quiet_paramiko(self.loglevel)

    def on_init_blueprint(self) -> None:
        super().on_init_blueprint()
        # Celery's Hub step builds the event loop the broker connection asks for.
        from labq.hub import LabqHub

        self._conninfo.requires_hub = LabqHub

    def _shutdown(self, warm: bool = True) -> None:
        # Children lead their own process groups, so the pool's own shutdown
        # reaches them but not what their tasks started: sweep those after.
        from labq.killing import pool_children, sweep_after_shutdown

        before = pool_children()
        try:
            super()._shutdown(warm=warm)
        finally:
            sweep_after_shutdown(before)
            # Last: a warm shutdown's running tasks were still this worker's.
            heartbeat = getattr(self, "_labq_heartbeat", None)
            if heartbeat is not None:
                heartbeat.stop(remove=True)

    def on_consumer_ready(self, consumer: Any) -> None:
        super().on_consumer_ready(consumer)
        if getattr(self, "_labq_heartbeat", None) is None:
            from labq.liveness import Heartbeat

            settings: Settings = self.app.labq_settings
            self._labq_heartbeat = Heartbeat(
                settings.broker_url, self.hostname, settings.worker_ttl,
                info=self._labq_beat_info, fence=_fence_running_tasks,
                settings=settings).start()

    def _labq_beat_info(self) -> dict[str, Any]:
        from celery.worker import state

        queues = sorted(self.app.amqp.queues.consume_from or self.app.amqp.queues)
        pool = getattr(self, "pool", None)
        size = getattr(pool, "num_processes", None) or self.concurrency
        return {"queues": queues, "concurrency": size, "busy": len(state.active_requests)}


def _fence_running_tasks() -> int:
    """Kill every running task with its process tree; returns how many."""
    from celery.worker import state

    requests = list(state.active_requests)
    for request in requests:
        kill = getattr(request, "_kill_tree", None)
        if kill is not None:
            kill("no heartbeat reached Redis")
    return len(requests)


#: Imported in the worker's main process, so each forked child shares them
#: instead of importing (and paying for) them on its first task.
PRELOAD = ("netmiko", "paramiko", "labq.device_task", "labq.drivers.netmiko")


def preload_for_fork() -> None:
    """Import what tasks use and freeze the heap before the pool forks.

    ``gc.freeze()`` moves the objects made so far out of the collector's
    reach, so a child's collections do not write to (and so copy) the pages
    it shares with the parent.
    """
    import gc
    import importlib

    for module in PRELOAD:
        try:
            importlib.import_module(module)
        except ImportError as exc:  # an optional driver; the task reports it if used
            log.debug("preload of %s skipped: %s", module, exc)
    gc.collect()
    gc.freeze()


def check_pool(pool: object) -> None:
    """Raise :class:`ConfigError` unless ``pool`` names the prefork pool."""
    from celery.concurrency import ALIASES
    from celery.concurrency.prefork import TaskPool

    if pool is TaskPool or pool in ALLOWED_POOLS:
        return
    name = pool
    if isinstance(pool, type):
        path = f"{pool.__module__}:{pool.__name__}"
        name = next((alias for alias, target in ALIASES.items() if target == path), path)
    raise ConfigError(
        "--pool",
        name,
        "labq runs tasks only in the prefork pool: other pools cannot enforce "
        "soft and hard time limits",
    )


class LabqCelery(Celery):  # type: ignore[misc]
    """A Celery app that knows its labq settings and uses the prefork-only worker."""

    labq_settings: Settings

    @cached_property
    def Worker(self) -> type[CeleryWorker]:  # noqa: N802 - Celery's own name
        return self.subclass_with_self(PreforkOnlyWorker)  # type: ignore[no-any-return]

    def _get_backend(self) -> Any:
        # Celery's Redis backend becomes labq's (labq.backend): the same
        # records, one round trip per state change. Any other stays as set.
        from celery.app import backends
        from celery.backends.redis import RedisBackend

        from labq.backend import LabqRedisBackend

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
        # Task events go out in batches, at most 50 ms late (labq.consumer).
        "worker_consumer": "labq.consumer:LabqConsumer",
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
                     task_cls="labq.task_base:LabqTask")
    app.labq_settings = settings
    app.conf.update(celery_config(settings))
    return app
