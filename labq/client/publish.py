"""Batch publishing: many task messages through Redis pipelines.

:meth:`labq.Run.submit_many` validates every item first (task, JSON,
limits, device and route) and builds its message (:mod:`labq.client.messages`),
then publishes the messages here in chunks.

The messages are exactly what ``app.send_task`` would publish: Celery builds
them (``amqp.create_task_message``, protocol 2, with the ``task-sent``
event). Each chunk goes out as one pipeline: through :mod:`labq.client.wire`'s
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

import logging
from collections.abc import Sequence
from typing import Any

from kombu.exceptions import KombuError, OperationalError
from redis.exceptions import RedisError

from labq.client.messages import TaskMessage
from labq.client.wire import Record, Sink, Wire, publish_receivers, wire_for
from labq.errors import BrokerUnavailable, PartialSubmit, SubmitError
from labq.settings import mask_url

log = logging.getLogger(__name__)

#: Messages per pipeline: big enough to amortise the round trip, small enough
#: that a failure leaves little uncertain.
DEFAULT_CHUNK = 500


def publish(app: Any, messages: Sequence[TaskMessage], *, chunk: int = DEFAULT_CHUNK,
            broker: str = "", raw: bool = True, wires: dict[Any, Wire] | None = None,
            sink: Sink | None = None, record: Record | None = None) -> None:
    """Publish ``messages`` in pipelines of ``chunk``; all or a :class:`PartialSubmit`.

    ``raw=False`` forces kombu's producer for every message (the fallback
    :func:`wire_for` picks by itself when the raw payloads could differ).
    ``wires`` keeps the :class:`Wire` of a single message between calls,
    by producer and message shape (``Run.submit`` sends one at a time).
    ``sink`` takes each chunk's texts instead of the queue lists (a run's
    fair-share backlogs); kombu's producer, when it must publish, ignores
    it and the messages go straight onto their lists, served in order.
    ``record`` adds each chunk to the run's registry on the same pipeline
    (with kombu's producer, on a pipeline of its own after the chunk).
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
                            wire.add(pipe, part, sink)
                            if record is not None:
                                record(pipe, part)
                            sending = False
                            pipe.execute()
                    else:
                        if sink is not None:
                            _warn_unfair()
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
                        if record is not None:
                            record(None, part)
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


_warned = False


def _warn_unfair() -> None:
    global _warned
    if not _warned:  # once per process: it says what every such batch does
        _warned = True
        log.warning("kombu's producer publishes these tasks (publish signal receivers, or "
                    "a wire format labq does not reproduce): they skip fair share and "
                    "are served in order")


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
