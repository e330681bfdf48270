"""Batch publishing: many task messages through Redis pipelines.

:meth:`labq.Run.submit_many` validates every item first (task, JSON,
limits, device and route), then publishes the messages here in chunks.

The messages are exactly what ``app.send_task`` would publish: Celery builds
them (``amqp.create_task_message``, protocol 2, with the ``task-sent``
event). Each chunk goes out as one pipeline: through :mod:`labq.wire`'s
templates of kombu's own text when they apply, else through kombu's
producer inside ``Producer.batch()``. Either way two client round trips per
task become one per chunk, and the result backend's per-task ``SUBSCRIBE``
/ ``UNSUBSCRIBE`` (``RedisBackend.on_task_call``) is skipped: a run reads
results itself and never listens on those channels.

Each chunk is one pipeline execute, so when Redis fails mid-way the chunks
before it are known to be queued, the failing chunk is uncertain and the
rest was never sent: :class:`labq.errors.PartialSubmit` says which is which.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kombu.exceptions import KombuError, OperationalError
from redis.exceptions import RedisError

from labq.errors import BrokerUnavailable, PartialSubmit, SubmitError
from labq.routing import DeviceRouter
from labq.settings import mask_url
from labq.wire import Wire, publish_receivers, wire_for

#: Messages per pipeline: big enough to amortise the round trip, small enough
#: that a failure leaves little uncertain.
DEFAULT_CHUNK = 500


@dataclass(frozen=True)
class TaskMessage:
    """One validated, routed, serialisable task message, not yet published."""

    task_id: str
    name: str
    queue: str
    device: str | None
    #: Celery's protocol-2 message: (headers, properties, body, sent_event).
    message: Any = field(repr=False)
    #: Routing options for ``send_task_message`` (queue, exchange, routing key).
    options: Mapping[str, Any] = field(repr=False, default_factory=dict)


def build(app: Any, name: str, args: Sequence[Any], kwargs: Mapping[str, Any], *,
          task_id: str, device: str | None, default_queue: str,
          soft_time_limit: float | None, time_limit: float | None,
          queue: str | None = None, sent_event: bool = True) -> TaskMessage:
    """Route and build one message as ``app.send_task`` would; nothing is sent.

    Routing runs here, so an unknown device raises before anything is queued.
    ``queue`` overrides the route, as ``send_task(queue=...)`` does.
    ``sent_event=False`` leaves out the ``task-sent`` event even where
    ``task_send_sent_event`` is on (Flower then learns of the task when a
    worker receives it).
    """
    return Builder(app, name, default_queue=default_queue, soft_time_limit=soft_time_limit,
                   time_limit=time_limit, queue=queue, sent_event=sent_event
                   ).build(args, kwargs, task_id=task_id, device=device)


class Builder:
    """Builds the messages of one task for :func:`build`, looking up once
    what is the same for all of them (execution options, settings, and the
    route of each device when only labq's device router routes)."""

    def __init__(self, app: Any, name: str, *, default_queue: str,
                 soft_time_limit: float | None, time_limit: float | None,
                 queue: str | None = None, sent_event: bool = True) -> None:
        self.app, self.name, self.default_queue = app, name, default_queue
        self.soft_time_limit, self.time_limit = soft_time_limit, time_limit
        self.task = app.tasks.get(name)
        # As send_task: the task's own execution options (priority, ...) are
        # defaults; the limits are explicit and ignore_result is a header.
        own = self.task._get_exec_options() if self.task is not None else {}
        options = {k: v for k, v in (own or {}).items() if v is not None}
        for key in ("time_limit", "soft_time_limit", "expires"):
            options.pop(key, None)
        self.ignore_result = options.pop("ignore_result", None)
        if queue:
            options["queue"] = queue
        self.options = options
        self.amqp = app.amqp  # a cached property: looked up once
        self.sent_event = sent_event and app.conf.task_send_sent_event
        self.maxsize = self.amqp.argsrepr_maxsize
        self.reply_to = app.thread_oid
        # A route that depends on the device alone can be kept per device.
        routers = getattr(self.amqp.router, "routes", None) or []
        self._routes: dict[Any, dict[str, Any]] | None = (
            {} if routers and all(isinstance(r, DeviceRouter) for r in routers) else None)

    def _route(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> dict[str, Any]:
        key = kwargs.get("device")
        cached = None if self._routes is None or args else self._routes.get(key)
        if cached is not None:
            return dict(cached)
        options = dict(self.amqp.router.route(dict(self.options), self.name, list(args),
                                              dict(kwargs), self.task))
        queue = options.get("queue")
        options["queue"] = getattr(queue, "name", None) or str(queue or self.default_queue)
        if self._routes is not None and not args and isinstance(key, (str, type(None))):
            self._routes[key] = dict(options)
        return options

    def build(self, args: Sequence[Any], kwargs: Mapping[str, Any], *, task_id: str,
              device: str | None) -> TaskMessage:
        options = self._route(args, kwargs)
        maxsize = self.maxsize
        message = self.amqp.create_task_message(
            task_id, self.name, list(args), dict(kwargs), reply_to=self.reply_to,
            time_limit=self.time_limit, soft_time_limit=self.soft_time_limit,
            create_sent_event=self.sent_event, ignore_result=self.ignore_result,
            argsrepr=_plain_repr(list(args) or (), maxsize),
            kwargsrepr=_plain_repr(dict(kwargs), maxsize),
        )
        return TaskMessage(task_id=task_id, name=self.name, queue=options["queue"],
                           device=device, message=message, options=options)


def _plain_repr(value: list[Any] | tuple[()] | dict[str, Any], maxsize: int) -> str | None:
    """``repr(value)`` where it equals Celery's ``saferepr`` (short, flat, plain
    scalars), which costs a fifth of a batch's CPU; ``None`` lets Celery do it."""
    items = value.values() if isinstance(value, dict) else value
    for item in items:
        if isinstance(item, str):
            if "\\" in item or not item.isprintable():
                return None
        elif item is not None and not isinstance(item, (bool, int, float)):
            return None
    text = repr(value)
    return text if len(text) <= maxsize else None


def publish(app: Any, messages: Sequence[TaskMessage], *, chunk: int = DEFAULT_CHUNK,
            broker: str = "", raw: bool = True, wires: dict[Any, Wire] | None = None) -> None:
    """Publish ``messages`` in pipelines of ``chunk``; all or a :class:`PartialSubmit`.

    ``raw=False`` forces kombu's producer for every message (the fallback
    :func:`wire_for` picks by itself when the raw payloads could differ).
    ``wires`` keeps the :class:`Wire` of a single message between calls,
    by producer and message shape (``Run.submit`` sends one at a time).
    """
    if chunk < 1:
        raise SubmitError(f"chunk={chunk!r}: must be at least 1")
    send = app.amqp.send_task_message
    queued: list[str] = []
    try:
        with app.producer_or_acquire() as producer:
            wire: Wire | None = None
            decided = not raw
            key = None
            if raw and wires is not None and len(messages) == 1 and not publish_receivers():
                key = _shape(producer, messages[0])
                wire = wires.get(key) if key is not None else None
                decided = wire is not None
            for start in range(0, len(messages), chunk):
                part = messages[start:start + chunk]
                sending = True
                declared: set[str] = set()
                try:
                    if not decided:  # inside the try: it opens the producer's channel
                        wire, decided = wire_for(app, producer, messages), True
                        if wires is not None and key is not None and wire is not None:
                            wires[key] = wire
                    if wire is not None:
                        with wire.pipeline() as pipe:
                            wire.add(pipe, part)
                            sending = False
                            pipe.execute()
                    else:
                        # max_size above the chunk's commands: kombu must not
                        # flush on its own, so one execute covers this chunk.
                        with producer.batch(max_size=4 * len(part) + 16) as batch:
                            for m in part:
                                # Declare each queue once per chunk, not per message.
                                declare: list[Any] | None = None if m.queue not in declared else []
                                declared.add(m.queue)
                                send(producer, m.name, m.message, retry=False, declare=declare,
                                     **m.options)
                            sending = False
                            batch.flush()
                except (KombuError, RedisError, OSError, ConnectionError) as exc:
                    ids = [m.task_id for m in messages]
                    done = len(queued)
                    uncertain = [] if sending else ids[done:done + len(part)]
                    unsent = ids[done + len(uncertain):]
                    raise PartialSubmit(
                        f"batch submit to {broker or 'Redis'} failed after {done} of {len(ids)} "
                        f"tasks were queued ({type(exc).__name__}: {exc}); queued: "
                        f"{_ids(queued)}; uncertain: {_ids(uncertain)}; not sent: {_ids(unsent)}",
                        queued, uncertain, unsent) from exc
                queued += [m.task_id for m in part]
    except PartialSubmit:
        raise
    except OperationalError as exc:  # no producer at all: nothing was sent
        raise BrokerUnavailable(
            f"cannot submit {len(messages)} tasks: Redis at {mask_url(broker)} "
            f"is unreachable: {exc}") from exc


def _shape(producer: Any, m: TaskMessage) -> Any:
    """What :func:`wire_for` decides a message's :class:`Wire` by (None: unknown)."""
    headers, properties, _body, sent_event = m.message
    try:
        key = (id(producer), id(producer.channel), m.queue, frozenset(m.options.items()),
               tuple(properties), "compression" in headers,
               tuple(sent_event) if sent_event else None)
        hash(key)
    except TypeError:
        return None
    return key


def _ids(ids: Sequence[str]) -> str:
    if not ids:
        return "none"
    if len(ids) <= 6:
        return ", ".join(ids)
    return f"{', '.join(ids[:3])}, ... {ids[-1]} ({len(ids)})"
