"""A run's submits: check each call, build and publish its message, and
track it in the run's state and registry.

:class:`labq.client.run.Run` makes one :class:`Submitter` and hands it its
:class:`~labq.client.run_state.RunState`; ``Run.submit`` and
``Run.submit_many`` are this module's two methods. Every message goes out
with the run's reserved keyword arguments (``tags``), into the run's
fair-share backlog when fair share is on (labq.fairshare), and onto the
run's task list in the registry in the same pipeline (labq.client.run_info).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timezone
from functools import partial
from typing import Any

import redis

from labq.app import LabqCelery
from labq.client import publish
from labq.client.messages import Builder, TaskMessage, build
from labq.client.publish import DEFAULT_CHUNK
from labq.client.run_info import record_queues, task_entries
from labq.client.run_state import Call, RunState
from labq.client.submission import check_json, check_limits, first, task_name
from labq.client.wire import uuid4_strings
from labq.errors import BrokerUnavailable, PartialSubmit, SubmitError
from labq.fairshare.backlogs import Backlogs
from labq.fairshare.priority import Priority
from labq.keys import tasks_key
from labq.settings import Settings, mask_url

log = logging.getLogger(__name__)


class Submitter:
    """Publishes the tasks of run ``state.run_id`` (see the module)."""

    def __init__(self, app: LabqCelery, settings: Settings, state: RunState,
                 client: redis.Redis, *, tags: Mapping[str, Any], priority: Priority,
                 limits: tuple[float | None, float | None]) -> None:
        self.app = app
        self.settings = settings
        self.state = state
        self.client = client
        #: The reserved keyword arguments every task of the run carries.
        self.tags = dict(tags)
        self.priority = priority
        #: The run's own (soft, hard) limits, between a call's and the task's.
        self.limits = limits
        self.backlogs = Backlogs(client, settings) if settings.fair_share else None
        #: Raw publishing templates of single submits (labq.client.publish).
        self._wires: dict[Any, Any] = {}

    @property
    def run_id(self) -> str:
        return self.state.run_id

    def submit(self, task: Any, args: tuple[Any, ...], kwargs: dict[str, Any],
               soft: float | None, hard: float | None) -> str:
        """One task (``Run.submit``); its id."""
        name, soft, hard = self._prepare(task, soft, hard)
        check_json(name, args, kwargs)
        if args and "device" not in kwargs and self._is_device_task(name):
            # run.submit(execute, "r1", ...): the device goes where routing looks.
            kwargs, args = {"device": args[0], **kwargs}, args[1:]
        body = {**kwargs, **self.tags}
        at = datetime.now(timezone.utc)
        message = self._send(name, list(args), body, task_id=str(uuid.uuid4()),
                             soft=soft, hard=hard, device=self._first_device(name, kwargs), at=at)
        self._track([message], soft, hard, args=list(args), at=at)
        return message.task_id

    def submit_many(self, task: Any, kwargs_list: Iterable[Mapping[str, Any]], *,
                    soft: float | None, hard: float | None, chunk: int = DEFAULT_CHUNK,
                    sent_events: bool = True) -> list[str]:
        """Many tasks in pipelines of ``chunk`` (``Run.submit_many``); their ids in order."""
        name, soft, hard = self._prepare(task, soft, hard)
        builder = Builder(self.app, name, default_queue=self.settings.default_queue,
                          soft_time_limit=soft, time_limit=hard, sent_event=sent_events)
        items = list(kwargs_list)
        messages = []
        for kwargs, task_id in zip(items, uuid4_strings(len(items)), strict=True):
            kwargs = dict(kwargs)
            check_json(name, (), kwargs)
            body = {**kwargs, **self.tags}
            messages.append(builder.build((), body, task_id=task_id,
                                          device=self._first_device(name, kwargs)))
        at = datetime.now(timezone.utc)
        try:
            publish.publish(self.app, messages, chunk=chunk,
                            broker=mask_url(self.settings.broker_url),
                            sink=self._sink if self.backlogs else None,
                            record=partial(self._record, at=at))
        except PartialSubmit as exc:
            queued = set(exc.queued)
            self._track((m for m in messages if m.task_id in queued), soft, hard, at=at)
            raise
        self._track(messages, soft, hard, at=at)
        return [m.task_id for m in messages]

    def _track(self, messages: Iterable[TaskMessage], soft: float | None = None,
               hard: float | None = None, args: list[Any] | None = None, *,
               at: datetime) -> None:
        """The published ``messages`` join the run's state, queued at ``at``
        (as the registry has them: ``_record``)."""
        known = self.state.queues
        for m in messages:
            body = m.message[2][1]  # protocol 2 body: (args, kwargs, embed)
            self.state.track(m.task_id, Call(m.name, args or [], body, m.queue, soft, hard),
                             m.device, at)
        if self.state.queues != known:  # a cancel from elsewhere purges these
            try:
                record_queues(self.client, self.run_id, set(self.state.queues))
            except redis.RedisError as exc:
                log.warning("run %s: queues not recorded for labq cancel: %s", self.run_id, exc)

    def _send(self, name: str, args: list[Any], body: dict[str, Any], *, task_id: str,
              soft: float | None, hard: float | None, device: str | None,
              at: datetime) -> TaskMessage:
        """Build and publish one message. Routing runs in the build: an
        unknown device is refused before any publish."""
        message = build(
            self.app, name, args, body, task_id=task_id, device=device,
            default_queue=self.settings.default_queue, soft_time_limit=soft, time_limit=hard)
        try:
            publish.publish(self.app, [message], broker=mask_url(self.settings.broker_url),
                            wires=self._wires,
                            sink=self._sink if self.backlogs else None,
                            record=partial(self._record, at=at))
        except PartialSubmit as exc:
            maybe = " (it may have been queued)" if exc.uncertain else ""
            raise BrokerUnavailable(
                f"cannot submit {name} as task {task_id}{maybe}: Redis at "
                f"{mask_url(self.settings.broker_url)} failed: {exc.__cause__}") from exc
        return message

    def _sink(self, pipe: Any, queue: str, payloads: list[str]) -> None:
        """Where the run's messages go: its fair-share backlog (labq.fairshare)."""
        assert self.backlogs is not None
        self.backlogs.submit(queue, self.run_id, self.priority, payloads, pipe)

    def _record(self, pipe: Any, part: Sequence[TaskMessage], *, at: datetime) -> None:
        """Add ``part`` to the run's registry, on the publish's pipeline (None: on our own)."""
        own = pipe is None
        pipe = self.client.pipeline(transaction=False) if own else pipe
        pipe.rpush(tasks_key(self.run_id), *task_entries(part, at))
        pipe.expire(tasks_key(self.run_id), int(self.settings.run_retention))
        if own:
            pipe.execute()

    def _prepare(self, task: Any, soft: float | None,
                 hard: float | None) -> tuple[str, float | None, float | None]:
        """The task's name and effective limits: the call's, else the run's,
        else the task's own (decorator); refused when they cannot work."""
        if self.state.cancelled:
            raise SubmitError(f"run {self.run_id!r} is cancelled; submit to a new run")
        name = task_name(self.app, task)
        own = self.app.tasks[name]
        soft = first(soft, self.limits[0], own.soft_time_limit)
        hard = first(hard, self.limits[1], own.time_limit)
        check_limits(soft, hard, self.settings)
        return name, soft, hard

    def _first_device(self, name: str, kwargs: Mapping[str, Any]) -> str | None:
        """The first role's device when it is named; a Pick's is known once it starts."""
        roles = getattr(self.app.tasks.get(name), "labq_roles", ("device",))
        value = kwargs.get(roles[0])
        return value if isinstance(value, str) and value else None

    def _is_device_task(self, name: str) -> bool:
        return bool(getattr(self.app.tasks.get(name), "labq_device_task", False))
