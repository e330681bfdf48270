"""Batch publishing: many task messages through Redis pipelines.

:meth:`labq.Run.submit_many` validates every item first (task, JSON,
limits, device and route), then publishes the messages here in chunks.

The messages are exactly what ``app.send_task`` would publish: Celery builds
them (``amqp.create_task_message``, protocol 2, with the ``task-sent`` event).
What kombu's Redis transport then sends for one message is two commands:
``LPUSH`` of the JSON envelope onto the queue's key for the message's
priority (``queue`` for 0, ``queue\\x06\\x16<step>`` otherwise,
``priority_steps`` 0/3/6/9) and ``PUBLISH`` of the event's envelope on the
``/0.celeryev/task.sent`` fanout channel. Going through ``send_task_message``
and kombu's ``Producer.publish`` twice per task costs more CPU than the
commands themselves, so :class:`Wire` builds the same two payloads directly,
with kombu's own JSON encoder (its json serializer), delivery tags, queue keys and
fanout topics and Celery's event fields (dispatcher hostname and pid,
``clock`` forwarded per event, ``utcoffset``, ``timestamp``), and queues
them on a non-transactional pipeline of the producer's client as kombu's
``Producer.batch()`` does. Queues and the event exchange are declared
through the producer, as kombu would. :func:`wire_for` falls back to kombu's
producer (inside ``Producer.batch()``) whenever the payloads could differ:
another transport, serializer or compression, client retries that make
kombu refuse to batch, publish signal receivers, queue expiry, or routing
options beyond queue and priority. Either way two client round trips per task
become one per chunk, and the result backend's per-task ``SUBSCRIBE`` /
``UNSUBSCRIBE`` (``RedisBackend.on_task_call``) is skipped: a run reads
results itself and never listens on those channels.

Each chunk is one pipeline execute, so when Redis fails mid-way the chunks
before it are known to be queued, the failing chunk is uncertain and the
rest was never sent: :class:`labq.errors.PartialSubmit` says which is which.
"""

from __future__ import annotations

import base64
import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from json.encoder import encode_basestring_ascii
from typing import Any

from celery import signals
from celery.utils.time import utcoffset
from kombu.entity import maybe_delivery_mode
from kombu.exceptions import KombuError, OperationalError
from kombu.serialization import registry as serializers
from kombu.transport import redis as kombu_redis
from kombu.transport.redis import Channel as RedisChannel
from kombu.utils import json as kombu_json
from redis.exceptions import RedisError

from labq.errors import BrokerUnavailable, PartialSubmit, SubmitError
from labq.settings import mask_url

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
    task = app.tasks.get(name)
    # As send_task: the task's own execution options (priority, ...) are
    # defaults; the limits are explicit and ignore_result is a header.
    own = task._get_exec_options() if task is not None else {}
    options = {k: v for k, v in (own or {}).items() if v is not None}
    for key in ("time_limit", "soft_time_limit", "expires"):
        options.pop(key, None)
    ignore_result = options.pop("ignore_result", None)
    if queue:
        options["queue"] = queue
    amqp = app.amqp  # a cached property: looked up once, not three times
    options = dict(amqp.router.route(options, name, list(args), dict(kwargs), task))
    queue = options.get("queue")
    queue_name = getattr(queue, "name", None) or str(queue or default_queue)
    options["queue"] = queue_name
    maxsize = amqp.argsrepr_maxsize
    message = amqp.create_task_message(
        task_id, name, list(args), dict(kwargs),
        reply_to=app.thread_oid, time_limit=time_limit, soft_time_limit=soft_time_limit,
        create_sent_event=sent_event and app.conf.task_send_sent_event,
        ignore_result=ignore_result,
        argsrepr=_plain_repr(list(args) or (), maxsize), kwargsrepr=_plain_repr(dict(kwargs), maxsize),
    )
    return TaskMessage(task_id=task_id, name=name, queue=queue_name, device=device,
                       message=message, options=options)


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
            broker: str = "", raw: bool = True) -> None:
    """Publish ``messages`` in pipelines of ``chunk``; all or a :class:`PartialSubmit`.

    ``raw=False`` forces kombu's producer for every message (the fallback
    :func:`wire_for` picks by itself when the raw payloads could differ).
    """
    if chunk < 1:
        raise SubmitError(f"chunk={chunk!r}: must be at least 1")
    send = app.amqp.send_task_message
    queued: list[str] = []
    try:
        with app.producer_or_acquire() as producer:
            wire: Wire | None = None
            decided = not raw
            for start in range(0, len(messages), chunk):
                part = messages[start:start + chunk]
                sending = True
                declared: set[str] = set()
                try:
                    if not decided:  # inside the try: it opens the producer's channel
                        wire, decided = wire_for(app, producer, messages), True
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


@dataclass(frozen=True)
class _Route:
    """What kombu derives from a message's queue: the list key and envelope constants."""

    entity: Any  # the kombu Queue declared before the first LPUSH
    key: str  # the Redis list (priority suffix included)
    delivery_mode: int
    priority: Any
    exchange: str
    routing_key: str
    #: JSON fragments around the message's own values (see :meth:`Wire.add`).
    envelope: tuple[str, ...] = ()
    event: tuple[str, ...] = ()


@dataclass(frozen=True)
class Wire:
    """The Redis commands kombu would send for a batch, built without its producer.

    One instance per :func:`publish` call; constants (routes, event topics,
    dispatcher identity) are looked up once, per-task fields per message.
    """

    producer: Any
    channel: Any
    routes: Mapping[str, _Route]
    #: ``task-sent`` event constants (``None``: no message carries an event).
    dispatcher: Any
    event_exchange: str
    event_topics: Sequence[str]
    event_envelope: tuple[str, ...] = ()

    def pipeline(self) -> Any:
        """A non-transactional pipeline on the producer's Redis client, as kombu's batch."""
        stack = ExitStack()
        client = stack.enter_context(self.channel.conn_or_acquire())
        pipe = client.pipeline(transaction=False)
        stack.callback(pipe.reset)
        return _Closing(pipe, stack)

    def add(self, pipe: Any, part: Sequence[TaskMessage]) -> None:
        """Queue ``LPUSH`` (and event ``PUBLISH``) commands for ``part`` on ``pipe``.

        The JSON texts are kombu's: :func:`_envelope` and :func:`_event` are
        the dicts kombu and Celery build, encoded once per batch with slots
        (:func:`_fragments`); per message only the slots' values are encoded.
        """
        channel = self.channel
        tag = channel._next_delivery_tag
        text, string, b64 = _JSON.encode, encode_basestring_ascii, _b64
        for name in {m.queue for m in part}:  # cached by kombu: one SADD per queue ever
            self.producer.maybe_declare(self.routes[name].entity, retry=False)
        evd = self.dispatcher
        if evd is not None:
            self.producer.maybe_declare(evd.exchange, retry=False)
            clock = evd.clock
            e0, e1, e2 = self.event_envelope
        for m in part:
            headers, properties, body, sent_event = m.message
            route = self.routes[m.queue]
            t0, t1, t2, t3, t4, t5 = route.envelope
            # Producer.publish: serialize, envelope (prepare_message), then the
            # channel's base64 body and delivery tag (_inplace_augment_message).
            pipe.lpush(route.key, "".join((
                t0, string(b64(text(body))), t1, text(headers), t2,
                _value(properties["correlation_id"]), t3, _value(properties["reply_to"]), t4,
                string(tag()), t5)))
            if sent_event and evd is not None:
                # EventDispatcher.publish: Event() field order, clock forwarded
                # per event, the dispatcher's identity, delivery mode 1.
                v0, v1, v2, v3, v4 = route.event
                event = "".join((
                    v0, _value(utcoffset()), v1, _value(clock.forward()), v2,
                    ", ".join([f"{string(k)}: {_value(v)}" for k, v in sent_event.items()]),
                    v3, _value(time.time()), v4))
                envelope = "".join((e0, string(b64(event)), e1, string(tag()), e2))
                for topic in self.event_topics:
                    pipe.publish(topic, envelope)


_SLOT = "\x00labq-slot-{}\x00"


def _slot(i: int) -> str:
    return _SLOT.format(i)


def _fragments(obj: Any, tokens: Sequence[str]) -> tuple[str, ...]:
    """The JSON text of ``obj`` cut at ``tokens`` (encoded slots), in order."""
    rest, out = _JSON.encode(obj), []
    for token in tokens:
        head, sep, rest = rest.partition(token)
        if not sep:
            raise AssertionError(f"{token!r} not in the encoded template")
        out.append(head)
    return (*out, rest)


def _envelope(headers: Any, properties: Mapping[str, Any], delivery_mode: Any,
              delivery_info: Mapping[str, Any], priority: Any, body: Any, tag: Any) -> Any:
    """kombu's Redis message: ``prepare_message`` + ``_inplace_augment_message``."""
    return {
        "body": body,
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": headers,
        "properties": {
            **properties,
            "delivery_mode": delivery_mode,
            "delivery_info": dict(delivery_info),
            "priority": priority,
            "body_encoding": "base64",
            "delivery_tag": tag,
        },
    }


def _task_template(route: _Route) -> tuple[str, ...]:
    slots = [_slot(i) for i in range(5)]
    obj = _envelope(slots[1], {"correlation_id": slots[2], "reply_to": slots[3]},
                    route.delivery_mode, {"exchange": route.exchange,
                                          "routing_key": route.routing_key},
                    route.priority, slots[0], slots[4])
    return _fragments(obj, [_JSON.encode(x) for x in slots])


def _event_template(evd: Any, route: _Route) -> tuple[str, ...]:
    """celery.events.Event('task-sent', hostname=, utcoffset=, pid=, clock=, **fields)."""
    slots = [_slot(i) for i in range(4)]
    obj = {"hostname": evd.hostname, "utcoffset": slots[0], "pid": evd.pid, "clock": slots[1],
           slots[2]: None, "queue": route.routing_key, "exchange": route.exchange,
           "routing_key": route.routing_key, "timestamp": slots[3], "type": "task-sent"}
    return _fragments(obj, [_JSON.encode(slots[0]), _JSON.encode(slots[1]),
                            _JSON.encode(slots[2]) + ": null", _JSON.encode(slots[3])])


def _event_envelope_template(evd: Any, exchange: str) -> tuple[str, ...]:
    slots = [_slot(i) for i in range(2)]
    obj = {
        "body": slots[0],
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": evd.headers,
        "properties": {
            "delivery_mode": 1,
            "delivery_info": {"exchange": exchange, "routing_key": "task.sent"},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": slots[1],
        },
    }
    return _fragments(obj, [_JSON.encode(x) for x in slots])


def _value(v: Any) -> str:
    """``v`` as kombu's JSONEncoder writes it inside a container."""
    t = type(v)
    if t is str:
        return encode_basestring_ascii(v)
    if v is None:
        return "null"
    if t is int:
        return int.__repr__(v)
    if t is float and math.isfinite(v):
        return float.__repr__(v)
    return _JSON.encode(v)


class _Closing:
    """``with`` for a pipeline whose connection must go back to kombu's pool."""

    def __init__(self, pipe: Any, stack: ExitStack) -> None:
        self.pipe, self.stack = pipe, stack

    def __enter__(self) -> Any:
        return self.pipe

    def __exit__(self, *exc: object) -> None:
        self.stack.close()


def _b64(payload: str) -> str:
    """The channel's ``base64`` body encoding of a JSON text."""
    return base64.b64encode(payload.encode("utf-8")).decode("ascii")


#: One instance of kombu's JSON encoder: ``kombu.utils.json.dumps(x)`` is
#: ``json.dumps(x, cls=JSONEncoder)``, i.e. ``JSONEncoder().encode(x)``, minus
#: building an encoder per call. :func:`_kombu_json_as_assumed` checks it.
_JSON = kombu_json.JSONEncoder()


def _kombu_json_as_assumed() -> bool:
    """kombu's ``json`` serializer and the Redis transport's envelope encoder are
    ``kombu.utils.json.dumps`` with its stock defaults (``utf-8`` JSON)."""
    codec = serializers._encoders.get("json")
    return (codec is not None and codec.encoder is kombu_json.dumps
            and (codec.content_type, codec.content_encoding) == ("application/json", "utf-8")
            and getattr(kombu_redis, "dumps", None) is kombu_json.dumps
            and kombu_json.dumps.__defaults__ == (json.dumps, kombu_json.JSONEncoder, None))


#: Options the raw path reproduces (serializer only as json, compression only off).
_PLAIN_OPTIONS = frozenset({"queue", "priority", "serializer", "compression"})


def wire_for(app: Any, producer: Any, messages: Sequence[TaskMessage]) -> Wire | None:
    """A :class:`Wire` when its commands equal kombu's for every message, else ``None``.

    ``None`` (kombu's producer publishes) whenever something changes the wire
    format or adds side effects the raw path does not reproduce: another
    transport or serializer, compression, a pipeline kombu would not batch
    (client retries), publish signal receivers, queue expiry, exchanges or
    extra message properties in the routing options.
    """
    conf = app.conf
    channel: Any = producer.channel
    redis_channel = isinstance(channel, RedisChannel)
    if not redis_channel or not channel.supports_batch_publish:
        return None
    if (conf.task_serializer != "json" or conf.task_compression or conf.event_serializer != "json"
            or channel.body_encoding != "base64" or not _kombu_json_as_assumed()):
        return None
    if any(s.receivers for s in (signals.before_task_publish, signals.after_task_publish,
                                 signals.task_sent)):
        return None
    amqp = app.amqp
    routes: dict[str, _Route] = {}
    events = False
    for m in messages:
        opts = m.options
        if (not _PLAIN_OPTIONS.issuperset(opts) or opts.get("serializer", "json") != "json"
                or opts.get("compression") or "compression" in m.message[0]
                or tuple(m.message[1]) != ("correlation_id", "reply_to")):
            return None
        sent_event = m.message[3]
        if sent_event:
            if not _EVENT_OWN.isdisjoint(sent_event) or not all(
                    type(k) is str for k in sent_event):
                return None
            events = True
        if m.queue in routes:
            if routes[m.queue].priority != _priority(channel, m.options):
                return None
            continue
        queue = amqp.queues[m.queue]  # as send_task_message: missing queues are created
        exchange = queue.exchange
        if getattr(exchange, "type", "direct") != "direct" or m.queue in (channel._expires or {}):
            return None
        mode = getattr(exchange, "delivery_mode", None) or conf.task_default_delivery_mode
        mode = _delivery_mode(mode or producer.exchange.delivery_mode)
        priority = _priority(channel, m.options)
        key = channel._q_for_pri(m.queue, channel._get_message_priority(
            {"properties": {"priority": priority}}))
        routes[m.queue] = _Route(entity=queue, key=key,
                                 delivery_mode=mode, priority=priority, exchange="",
                                 routing_key=m.queue)
    if not events:
        return Wire(producer, channel, {q: replace(r, envelope=_task_template(r))
                                        for q, r in routes.items()}, None, "", ())
    evd = amqp._event_dispatcher
    name = evd.exchange.name
    producer.maybe_declare(evd.exchange, retry=False)
    if not channel.supports_fanout or channel.typeof(name).type != "fanout":
        return None
    return Wire(producer, channel,
                {q: replace(r, envelope=_task_template(r), event=_event_template(evd, r))
                 for q, r in routes.items()}, evd, name,
                tuple(channel._get_publish_topics(name, "task.sent")),
                _event_envelope_template(evd, name))


#: Event() fields set by the dispatcher and send_task_message, not the message.
_EVENT_OWN = frozenset({"hostname", "utcoffset", "pid", "clock", "queue", "exchange",
                        "routing_key", "timestamp", "type"})


def _priority(channel: Any, options: Mapping[str, Any]) -> Any:
    """The ``priority`` property prepare_message sets (the channel's default when unset)."""
    return options.get("priority") or channel.default_priority


# kombu's own functions, typed: the values they produce are the wire format.
_delivery_mode: Callable[[Any], int] = maybe_delivery_mode



def _ids(ids: Sequence[str]) -> str:
    if not ids:
        return "none"
    if len(ids) <= 6:
        return ", ".join(ids)
    return f"{', '.join(ids[:3])}, ... {ids[-1]} ({len(ids)})"
