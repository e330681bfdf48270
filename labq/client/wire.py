"""The raw batch path: kombu's wire text for task messages, built once per batch.

What kombu's Redis transport sends for one task message is two commands:
``LPUSH`` of the JSON envelope onto the queue's key for the message's
priority (``queue`` for 0, ``queue\\x06\\x16<step>`` otherwise,
``priority_steps`` 0/3/6/9) and ``PUBLISH`` of the ``task-sent`` event's
envelope on the ``/0.celeryev/task.sent`` fanout channel. Going through
``send_task_message`` and kombu's ``Producer.publish`` twice per task costs
more CPU than the commands themselves, so :class:`Wire` builds the same two
payloads from templates, with kombu's own JSON encoder, delivery tags, queue
keys and fanout topics and Celery's event fields (dispatcher hostname and
pid, ``clock`` forwarded per event, ``utcoffset``, ``timestamp``), and
queues them on a non-transactional pipeline of the producer's client as
kombu's ``Producer.batch()`` does. Queues and the event exchange are
declared through the producer, as kombu would. :func:`wire_for` returns
``None`` (kombu's producer is then used) whenever the payloads could differ:
another transport, serializer or compression, client retries that make
kombu refuse to batch, publish signal receivers, queue expiry, or routing
options beyond queue and priority.
"""

from __future__ import annotations

import base64
import functools
import json
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, replace
from json.encoder import encode_basestring_ascii
from typing import TYPE_CHECKING, Any

from celery import signals
from celery.utils.time import utcoffset
from kombu.entity import maybe_delivery_mode
from kombu.serialization import registry as serializers
from kombu.transport import redis as kombu_redis
from kombu.transport.redis import Channel as RedisChannel
from kombu.transport.virtual.base import Channel as VirtualChannel
from kombu.utils import json as kombu_json

from labq.redis_client import reused_client

if TYPE_CHECKING:
    from labq.client.messages import TaskMessage


#: Takes a chunk's message texts for one list key, oldest first, onto a pipeline.
Sink = Callable[[Any, str, list[str]], None]
#: Adds a chunk of messages to their run's registry, on a pipeline (None: its own).
Record = Callable[[Any, "Sequence[TaskMessage]"], None]


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
        pipe = reused_client(self.channel).pipeline(transaction=False)
        stack.callback(pipe.reset)
        return _Closing(pipe, stack)

    def add(self, pipe: Any, part: Sequence[TaskMessage], sink: Sink | None = None) -> None:
        """Queue ``LPUSH`` (and event ``PUBLISH``) commands for ``part`` on ``pipe``.

        The JSON texts are kombu's: :func:`_envelope` and :func:`_event` are
        the dicts kombu and Celery build, encoded once per batch with slots
        (:func:`_fragments`); per message only the slots' values are encoded.
        With ``sink``, the texts go to it, by list key and oldest first,
        instead of onto the lists (a run's fair-share backlog).
        """
        held: dict[str, list[str]] = {}
        tag = iter(uuid4_strings(2 * len(part))).__next__  # kombu's tags: uuid4 strings
        text, string, b64 = _JSON.encode, encode_basestring_ascii, _b64
        for name in {m.queue for m in part}:  # cached by kombu: one SADD per queue ever
            _maybe_declare(self.producer, self.routes[name].entity)
        evd = self.dispatcher
        if evd is not None:
            _maybe_declare(self.producer, evd.exchange)
            clock = evd.clock
            e0, e1, e2 = self.event_envelope
        for m in part:
            headers, properties, body, sent_event = m.message
            route = self.routes[m.queue]
            t0, t1, t2, t3, t4, t5 = route.envelope
            # Producer.publish: serialize, envelope (prepare_message), then the
            # channel's base64 body and delivery tag (_inplace_augment_message).
            payload = "".join((
                t0, string(b64(text(body))), t1, text(headers), t2,
                _value(properties["correlation_id"]), t3, _value(properties["reply_to"]), t4,
                string(tag()), t5))
            if sink is None:
                pipe.lpush(route.key, payload)
            else:
                held.setdefault(route.key, []).append(payload)
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
        for key, payloads in held.items():
            sink(pipe, key, payloads)  # type: ignore[misc]  # held is empty without a sink


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
    return _task_fragments(route.delivery_mode, route.exchange, route.routing_key,
                           route.priority)


# Templates are cached: a run submitting one task at a time builds them once.
@functools.lru_cache(maxsize=256)
def _task_fragments(delivery_mode: int, exchange: str, routing_key: str,
                    priority: Any) -> tuple[str, ...]:
    slots = [_slot(i) for i in range(5)]
    obj = _envelope(slots[1], {"correlation_id": slots[2], "reply_to": slots[3]},
                    delivery_mode, {"exchange": exchange, "routing_key": routing_key},
                    priority, slots[0], slots[4])
    return _fragments(obj, [_JSON.encode(x) for x in slots])


def _event_template(evd: Any, route: _Route) -> tuple[str, ...]:
    """celery.events.Event('task-sent', hostname=, utcoffset=, pid=, clock=, **fields)."""
    return _event_fragments(evd.hostname, evd.pid, route.exchange, route.routing_key)


@functools.lru_cache(maxsize=256)
def _event_fragments(hostname: str, pid: int, exchange: str,
                     routing_key: str) -> tuple[str, ...]:
    slots = [_slot(i) for i in range(4)]
    obj = {"hostname": hostname, "utcoffset": slots[0], "pid": pid, "clock": slots[1],
           slots[2]: None, "queue": routing_key, "exchange": exchange,
           "routing_key": routing_key, "timestamp": slots[3], "type": "task-sent"}
    return _fragments(obj, [_JSON.encode(slots[0]), _JSON.encode(slots[1]),
                            _JSON.encode(slots[2]) + ": null", _JSON.encode(slots[3])])


def _event_envelope_template(evd: Any, exchange: str) -> tuple[str, ...]:
    return _event_envelope_fragments(_JSON.encode(evd.headers), exchange)


@functools.lru_cache(maxsize=64)
def _event_envelope_fragments(headers: str, exchange: str) -> tuple[str, ...]:
    slots = [_slot(i) for i in range(2)]
    obj = {
        "body": slots[0],
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": json.loads(headers),
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


def uuid4_strings(n: int) -> list[str]:
    """``n`` random (version 4) UUIDs as ``str(uuid.uuid4())`` writes them,
    from one ``os.urandom`` call: a quarter of the cost of ``uuid4()`` each."""
    raw = bytearray(os.urandom(16 * n))
    out = []
    for i in range(0, 16 * n, 16):
        raw[i + 6] = (raw[i + 6] & 0x0F) | 0x40  # version 4
        raw[i + 8] = (raw[i + 8] & 0x3F) | 0x80  # RFC 4122 variant
        h = raw[i:i + 16].hex()
        out.append(f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}")
    return out


def _maybe_declare(producer: Any, entity: Any) -> None:
    """``producer.maybe_declare(entity)``, skipped when kombu's own cache of
    declared entities has it (kombu binds a copy of the entity before it looks)."""
    connection = getattr(getattr(producer.channel, "connection", None), "client", None)
    declared = getattr(connection, "declared_entities", ())
    if entity.can_cache_declaration and hash(entity) in declared:
        return
    producer.maybe_declare(entity, retry=False)


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
_PLAIN_OPTIONS = frozenset({"queue", "routing_key", "priority", "serializer", "compression"})


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
    if (not redis_channel or not channel.supports_batch_publish
            or type(channel)._next_delivery_tag is not VirtualChannel._next_delivery_tag):
        return None
    if (conf.task_serializer != "json" or conf.task_compression or conf.event_serializer != "json"
            or channel.body_encoding != "base64" or not _kombu_json_as_assumed()):
        return None
    if publish_receivers():
        return None
    amqp = app.amqp
    routes: dict[str, _Route] = {}
    events = False
    for m in messages:
        opts = m.options
        # A routing key beside a direct queue changes nothing: Celery sends it
        # on the anonymous exchange with the queue's name (send_task_message).
        if (not _PLAIN_OPTIONS.issuperset(opts) or opts.get("serializer", "json") != "json"
                or opts.get("routing_key", m.queue) != m.queue
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
    _maybe_declare(producer, evd.exchange)
    if not channel.supports_fanout or channel.typeof(name).type != "fanout":
        return None
    return Wire(producer, channel,
                {q: replace(r, envelope=_task_template(r), event=_event_template(evd, r))
                 for q, r in routes.items()}, evd, name,
                tuple(channel._get_publish_topics(name, "task.sent")),
                _event_envelope_template(evd, name))


def publish_receivers() -> bool:
    """Whether anything listens to Celery's publish signals (the raw path sends none)."""
    return any(s.receivers for s in (signals.before_task_publish, signals.after_task_publish,
                                     signals.task_sent))


#: Event() fields set by the dispatcher and send_task_message, not the message.
_EVENT_OWN = frozenset({"hostname", "utcoffset", "pid", "clock", "queue", "exchange",
                        "routing_key", "timestamp", "type"})


def _priority(channel: Any, options: Mapping[str, Any]) -> Any:
    """The ``priority`` property prepare_message sets (the channel's default when unset)."""
    return options.get("priority") or channel.default_priority


# kombu's own functions, typed: the values they produce are the wire format.
_delivery_mode: Callable[[Any], int] = maybe_delivery_mode
