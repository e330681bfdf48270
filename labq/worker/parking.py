"""Parking: a waiter gives its prefork slot back until a session opens to it.

A device task whose devices are busy neither polls in its slot nor retries
on a timer. It builds the retry message Celery would publish (same id, one
retry more, its own queue: :func:`retry_message`) and hands it to Redis with
the devices it waits for (:meth:`labq.devices.lease.Leases.park`). Every
lease script that frees a session or shortens a line of such a device wakes
the earliest parked waiter that the change serves: it pushes the message to
the front of the queue's list, where a free slot takes it at once. So a
freed device is offered to its next waiter within one delivery, and waiters
cost nothing while they wait. A parked task runs nowhere: its start record
goes, so its run sees it queued, and the death of the worker that parked it
does not touch it.

A parked message is woken at the latest after ``wake_in`` seconds
(:class:`Waker`, in each worker's main process): a lease that expires unseen
frees nobody by itself. The message moves from the parked hash to the queue
in one script, so it is delivered once; it never expires.

A cancel drops its run's parked retries through the workers, which own the
leases (a testscript's Redis user may not touch them): the remote control
command :data:`UNPARK_COMMAND` answers with the ids it dropped, and those
tasks end at once.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

from celery.worker.control import control_command
from kombu.messaging import Producer
from kombu.transport import redis as kombu_redis

from labq.devices.lease import Leases
from labq.devices.reservations import Reservations
from labq.keys import starts_key
from labq.redis_client import connect

log = logging.getLogger(__name__)

#: A parked waiter is woken at least this often (well under the waiter TTL,
#: so its place in line never lapses while it is parked).
MAX_PARK = 10.0
#: Seconds between two sweeps of the parked waiters that are due.
SWEEP_EVERY = 1.0
#: The remote control command by which a cancel drops parked retries.
UNPARK_COMMAND = "labq_unpark"

Slots = Sequence[Sequence[tuple[str, int]]]

#: The Redis transport's own envelope encoder (``kombu.utils.json.dumps``).
_dumps: Callable[[Any], str] = vars(kombu_redis)["dumps"]


def wake_in(lease_timeout: float, waited: float) -> float:
    """The wake-by time of a park: soon enough to fail a wait past its lease timeout."""
    return max(0.05, min(MAX_PARK, lease_timeout - waited + 0.05))


class _Capture:
    """A kombu Redis channel that keeps the task message it is given.

    Everything but ``basic_publish`` goes to the real channel. The task's
    message is encoded as the transport's ``_put`` would (delivery tag,
    delivery info, the priority's list key) and kept; other messages (the
    ``task-sent`` event) are kept to be sent once the park has taken.
    """

    def __init__(self, channel: Any, task_id: str) -> None:
        self._channel = channel
        self._task_id = task_id
        self.message: tuple[str, str] | None = None  # (list key, envelope text)
        self.others: list[tuple[Any, str, str, dict[str, Any]]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._channel, name)

    def basic_publish(self, message: Any, exchange: str, routing_key: str, **kwargs: Any) -> None:
        ch = self._channel
        if self.message is not None or (message.get("headers") or {}).get("id") != self._task_id:
            self.others.append((message, exchange, routing_key, kwargs))
            return
        ch._inplace_augment_message(message, exchange, routing_key)
        if exchange and ch.typeof(exchange).type != "direct":
            raise _CannotPark(f"exchange {exchange!r} is not direct")
        queues = ch._lookup(exchange, routing_key) if exchange else [routing_key]
        if len(queues) != 1:
            raise _CannotPark(f"routing key {routing_key!r} reaches {len(queues)} queues")
        key = ch._q_for_pri(queues[0], ch._get_message_priority(message, reverse=False))
        self.message = (key, _dumps(message))

    def send_others(self) -> None:
        for message, exchange, routing_key, kwargs in self.others:
            self._channel.basic_publish(message, exchange, routing_key, **kwargs)


class _CannotPark(Exception):
    """The retry cannot be parked as one message on one list: retry on a timer."""


def _parkable(channel: Any) -> bool:
    return isinstance(channel, kombu_redis.Channel) and all(
        callable(getattr(channel, name, None)) for name in
        ("_inplace_augment_message", "_lookup", "_q_for_pri", "_get_message_priority"))


def park(task: Any, leases: Leases, own: Slots, since: float, wake_in: float,
         other: Sequence[Slots] = (), *, single: bool = False) -> None:
    """Give the slot back: raise the task's :class:`Retry`, its message parked.

    Returns (parking nothing) when a session opened meanwhile: the caller
    asks for its devices again. Another transport, or a route kombu would
    fan out, falls back to a plain retry after ``wake_in`` seconds.
    """
    app = task.app
    holder = task.request.id
    with app.producer_or_acquire() as producer:
        if not _parkable(producer.channel):
            raise task.retry(countdown=wake_in)
        capture = _Capture(producer.channel, holder)
        parking = Producer(  # type: ignore[no-untyped-call]
            capture, exchange=producer.exchange, serializer=producer.serializer,
            compression=producer.compression, auto_declare=False)
        try:
            retry = task.retry(countdown=0, producer=parking, throw=False)
        except _CannotPark as exc:
            log.info("task %s retries on a timer: %s", holder, exc)
            raise task.retry(countdown=wake_in) from None
        if capture.message is None:  # Celery published nothing: it may have changed
            raise task.retry(countdown=wake_in)
        key, text = capture.message
        start = getattr(task.request, "labq_start", None)  # (run id, record), see LabqTask
        if not leases.park(holder, own, other, since=since, wake_in=wake_in,
                           queue_key=key, message=text, single=single,
                           start_key=starts_key(start[0]) if start else ""):
            return
        capture.send_others()
    retry.message = f"waits parked for its devices (woken when they free, or in {wake_in:.0f} s)"
    raise retry


class Waker:
    """Wakes parked waiters that are due, releases reservations whose time is
    up and settles dead workers' tasks, every :data:`SWEEP_EVERY` seconds,
    from a daemon thread of the worker's main process."""

    def __init__(self, leases: Leases, hostname: str,
                 refill: Callable[[], int] | None = None,
                 reap: Callable[[], int] | None = None) -> None:
        self.leases = leases
        self.reservations = Reservations(leases.client, leases)
        #: Also dispatch fair-share backlogs onto this worker's queues.
        self.refill = refill
        #: Also settle the tasks of dead workers (labq.worker.reaper).
        self.reap = reap
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True,
                                        name=f"labq-waker-{hostname}")

    def start(self) -> Waker:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2 * SWEEP_EVERY)

    def _loop(self) -> None:
        while not self._stop.wait(SWEEP_EVERY):
            if self.reap is not None:
                try:
                    self.reap()
                except Exception as exc:  # Redis away: the next sweep tries again
                    log.warning("settling dead workers' tasks failed: %s", exc)
            if self.refill is not None:
                try:
                    self.refill()
                except Exception as exc:  # Redis away: the next sweep tries again
                    log.debug("fair-share refill failed: %s", exc)
            try:
                ended = self.reservations.expire()
                if ended:
                    log.info("reservations %s expired: their devices are free", ", ".join(ended))
                woken = self.leases.wake_due()
            except Exception as exc:  # Redis away: the next sweep tries again
                log.debug("waking parked waiters failed: %s", exc)
                continue
            if woken:
                log.debug("woke %d parked waiters at their wake-by time", woken)


@control_command(name=UNPARK_COMMAND, args=[("task_ids", list)], signature="<task_id> ...")
def _unpark_command(state: Any, task_ids: list[str]) -> dict[str, Any]:
    """Drop the parked retries of ``task_ids`` (their run is cancelled)."""
    settings = state.app.labq_settings
    client = connect(settings.broker_url, settings)
    try:
        return {"unparked": Leases(client).unpark([str(t) for t in task_ids])}
    except Exception as exc:  # the cancel's flag still stops them when they wake
        log.warning("could not drop parked retries: %s", exc)
        return {"unparked": [], "error": str(exc)}
    finally:
        client.close()
