"""The worker's main process: a Celery worker that runs tasks in prefork children only.

:class:`PreforkOnlyWorker` is what ``celery -A tasks worker`` and ``labq
worker`` build from a labq app (``LabqCelery.Worker``). It refuses every
pool but prefork (only prefork can interrupt and kill a task), imports what
tasks use and freezes the heap before the pool forks, makes each child lead
its own process group (:mod:`labq.worker.killing`), uses the hub that skips
needless system calls (:mod:`labq.worker.hub`) and the broker transport that
reuses its clients, and, once its consumer is ready, writes the worker's
heartbeat (:mod:`labq.worker.liveness`) and wakes the parked waiters that
are due (:class:`labq.worker.parking.Waker`).
"""

from __future__ import annotations

import logging
from typing import Any

import psutil
from celery.apps.worker import Worker as CeleryWorker

from labq.devices.lease import Leases
from labq.errors import ConfigError
from labq.fairshare.backlogs import Backlogs
from labq.redis_client import TRANSPORT, connect
from labq.settings import Settings
from labq.worker.hub import LabqHub
from labq.worker.killing import KillingRequest, install, pool_children, sweep_after_shutdown
from labq.worker.liveness import Heartbeat
from labq.worker.parking import Waker
from labq.worker.reaper import Reaper

log = logging.getLogger(__name__)

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
            # kombu's Redis transport reusing its clients (labq.redis_client); in
            # the worker only: clients such as Flower derive URLs from it.
            self.app.conf.broker_transport = TRANSPORT
        preload_for_fork()
        # Children lead their own process group and may fork.
        install(child_nice=self.app.labq_settings.child_nice)
        quiet_paramiko(self.loglevel)

    def on_init_blueprint(self) -> None:
        super().on_init_blueprint()
        # Celery's Hub step builds the event loop the broker connection asks for.
        self._conninfo.requires_hub = LabqHub

    def _shutdown(self, warm: bool = True) -> None:
        # Children lead their own process groups, so the pool's own shutdown
        # reaches them but not what their tasks started: sweep those after.
        before = pool_children()
        try:
            super()._shutdown(warm=warm)
        finally:
            sweep_after_shutdown(before)
            # Last: a warm shutdown's running tasks were still this worker's.
            heartbeat = getattr(self, "_labq_heartbeat", None)
            if heartbeat is not None:
                heartbeat.stop(remove=True)
            waker = getattr(self, "_labq_waker", None)
            if waker is not None:
                waker.stop()

    def on_consumer_ready(self, consumer: Any) -> None:
        super().on_consumer_ready(consumer)
        if getattr(self, "_labq_heartbeat", None) is None:
            settings: Settings = self.app.labq_settings
            client = connect(settings.broker_url, settings)
            # No task of this process started before the process did.
            reaper = Reaper(client, self.hostname, settings, backend=self.app.backend,
                            started_at=psutil.Process().create_time())
            reaper.settle_former_self()  # before the first heartbeat prunes its entries
            self._labq_heartbeat = Heartbeat(
                settings.broker_url, self.hostname, settings.worker_ttl,
                info=self._labq_beat_info, fence=_fence_running_tasks,
                settings=settings).start()
            refill = None
            if settings.fair_share:
                backlogs = Backlogs(client, settings)

                def refill() -> int:
                    return backlogs.refill(self._labq_beat_info()["queues"])
            self._labq_waker = Waker(Leases(client), self.hostname, refill,
                                     reap=reaper.sweep).start()

    def _labq_beat_info(self) -> dict[str, Any]:
        from celery.worker import state

        queues = sorted(self.app.amqp.queues.consume_from or self.app.amqp.queues)
        pool = getattr(self, "pool", None)
        size = getattr(pool, "num_processes", None) or self.concurrency
        active = _active_ids(state.active_requests)
        return {"queues": queues, "concurrency": size, "busy": len(active), "active": active}


def _active_ids(requests: Any) -> list[str]:
    """The ids of the running requests, read from the heartbeat's thread while
    the main thread may change the set (a RuntimeError then: read again)."""
    for _ in range(10):
        try:
            return [r.id for r in list(requests)]
        except RuntimeError:
            continue
    return [r.id for r in tuple(requests)]


def _fence_running_tasks() -> int:
    """Kill every running task with its process tree; returns how many."""
    from celery.worker import state

    requests = list(state.active_requests)
    for request in requests:
        if isinstance(request, KillingRequest):
            request.kill_tree("no heartbeat reached Redis")
    return len(requests)


#: Imported in the worker's main process, so each forked child shares them
#: instead of importing (and paying for) them on its first task.
PRELOAD = ("netmiko", "paramiko", "labq.worker.device_task", "labq.devices.drivers.netmiko")


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
