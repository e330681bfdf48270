"""Grow and shrink one worker's prefork pool live, as ``labq scale HOST N`` does.

The pool size is the number of prefork children ``inspect stats`` lists, not
its ``max-concurrency`` (which keeps the start-up value after a grow). The
change goes through Celery's ``pool_grow``/``pool_shrink`` control commands,
addressed to that one worker.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from kombu.exceptions import OperationalError

from labq.errors import BrokerUnavailable, ConfigError
from labq.settings import mask_url


@dataclass(frozen=True)
class PoolChange:
    node: str
    before: int
    after: int


def _control(app: Any, what: str, call: Any) -> Any:
    try:
        return call()
    except (OperationalError, OSError) as exc:
        raise BrokerUnavailable(
            f"{what}: Redis at {mask_url(app.labq_settings.broker_url)} is unreachable: {exc}"
        ) from exc


def resolve_node(app: Any, host: str, timeout: float = 1.0) -> str:
    """The node name (``name@hostname``) of the worker ``host`` names.

    ``host`` is a full node name or the part before ``@``. Raises
    :class:`ConfigError` naming ``host`` and the workers that answered when
    none (or more than one) matches.
    """
    replies = _control(app, "ping", lambda: app.control.ping(timeout=timeout)) or []
    nodes = sorted(node for reply in replies for node in reply)
    matches = [n for n in nodes if host in (n, n.split("@", 1)[0])]
    if len(matches) != 1:
        known = ", ".join(nodes) or "none"
        reason = "several workers match; give the full name" if matches else "no such worker"
        raise ConfigError("HOST", host, f"{reason}; workers answering: {known}")
    return str(matches[0])


def pool_size(app: Any, node: str, timeout: float = 2.0) -> int:
    """How many prefork children ``node`` has now, from ``inspect stats``."""
    stats = _control(app, "inspect stats",
                     lambda: app.control.inspect(destination=[node], timeout=timeout).stats())
    if not stats or node not in stats:
        raise ConfigError("HOST", node, "the worker did not answer inspect stats")
    return len(stats[node]["pool"]["processes"])


def scale_pool(app: Any, node: str, size: int, timeout: float = 15.0) -> PoolChange:
    """Grow or shrink ``node``'s pool to ``size`` children; wait until it has.

    A shrink removes idle children only; when all are busy the worker refuses
    and the pool keeps its size (``after`` then differs from ``size``).
    """
    if size < 1:
        raise ConfigError("N", size, "a pool needs at least 1 child")
    before = pool_size(app, node)
    if size != before:
        command = "pool_grow" if size > before else "pool_shrink"
        replies = _control(app, command, lambda: app.control.broadcast(
            command, arguments={"n": abs(size - before)}, destination=[node],
            reply=True, timeout=2.0)) or []
        for reply in replies:
            error = reply.get(node, {}).get("error")
            if error:
                raise ConfigError("HOST", node, f"{command} refused: {error}")
    deadline = time.monotonic() + timeout
    after = pool_size(app, node)
    while after != size and time.monotonic() < deadline:
        time.sleep(0.2)
        after = pool_size(app, node)
    return PoolChange(node, before, after)
