"""Task messages built as ``app.send_task`` would build them, routed, not yet sent.

:class:`Builder` looks up once what is the same for every message of one
task (execution options, settings, the route of each device), then builds
Celery's own protocol-2 message for each call
(``amqp.create_task_message``, with its ``task-sent`` event). Routing runs
here, so an unknown device is refused before anything is queued.
:mod:`labq.client.publish` sends what this builds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from celery.utils.saferepr import saferepr

from labq.devices.pick import Pick, encode
from labq.devices.routing import DeviceRouter
from labq.keys import OWNER_KWARG, PRIORITY_KWARG, RUN_KWARG, SCRIPT_KWARG


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
        self.device_task = bool(getattr(self.task, "labq_device_task", False))
        self.reply_to = app.thread_oid
        # A route that depends on the device alone can be kept per device.
        routers = getattr(self.amqp.router, "routes", None) or []
        self._routes: dict[Any, dict[str, Any]] | None = (
            {} if routers and all(isinstance(r, DeviceRouter) for r in routers) else None)

    def _route(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> dict[str, Any]:
        key = kwargs.get("device")
        single = getattr(self.task, "labq_roles", ("device",)) == ("device",)
        cached = (None if self._routes is None or args or not single
                  else self._routes.get(key))
        if cached is not None:
            return dict(cached)
        options = dict(self.amqp.router.route(dict(self.options), self.name, list(args),
                                              dict(kwargs), self.task))
        queue = options.get("queue")
        options["queue"] = getattr(queue, "name", None) or str(queue or self.default_queue)
        if (self._routes is not None and not args and single
                and isinstance(key, (str, type(None)))):
            self._routes[key] = dict(options)
        return options

    def build(self, args: Sequence[Any], kwargs: Mapping[str, Any], *, task_id: str,
              device: str | None) -> TaskMessage:
        options = self._route(args, kwargs)
        shown: Mapping[str, Any] = kwargs
        if self.device_task and any(isinstance(v, Pick) for v in kwargs.values()):
            shown = {k: str(v) if isinstance(v, Pick) else v for k, v in kwargs.items()}
            kwargs = {k: encode(v) for k, v in kwargs.items()}  # a Pick travels as JSON
        maxsize = self.maxsize
        message = self.amqp.create_task_message(
            task_id, self.name, list(args), dict(kwargs), reply_to=self.reply_to,
            time_limit=self.time_limit, soft_time_limit=self.soft_time_limit,
            create_sent_event=self.sent_event, ignore_result=self.ignore_result,
            argsrepr=_plain_repr(list(args) or (), maxsize),
            kwargsrepr=self._kwargsrepr(shown),
        )
        return TaskMessage(task_id=task_id, name=self.name, queue=options["queue"],
                           device=device, message=message, options=options)


    def _kwargsrepr(self, kwargs: Mapping[str, Any]) -> str | None:
        """What Flower and the worker log show of the keyword arguments.

        A device task shows its device first, then its run, then its own
        arguments (the testscript's name is left out): Flower's task list
        then shows which device each task is for, and its search finds it
        by device name or by ``kwargs:labq_run=<id>``. Still a dict's repr,
        so Flower parses its pairs; never credentials (they are not
        arguments).
        """
        if not self.device_task:
            return _plain_repr(dict(kwargs), self.maxsize)
        roles = getattr(self.task, "labq_roles", ("device",))
        first = {k: kwargs[k] for k in (*roles, RUN_KWARG, OWNER_KWARG, PRIORITY_KWARG)
                 if k in kwargs}
        shown = {**first, **{k: v for k, v in kwargs.items()
                             if k not in first and k != SCRIPT_KWARG}}
        return _plain_repr(shown, self.maxsize) or saferepr(shown, self.maxsize)


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
