"""What the admin's click commands outside ``labq.cli`` share with it: the
``--broker`` option, the settings that the group's context reads, and a
Redis client whose errors say which Redis failed."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click
import redis

from labq.errors import BrokerUnavailable
from labq.redis_client import connect, unavailable
from labq.settings import Settings

#: ``--broker``, as every command that reads the lab's Redis takes it.
broker_option = click.option("--broker", envvar="LABQ_BROKER_URL", show_envvar=True,
                             default=None, help="Redis URL of the lab.  [default: from settings]")


def command_settings(**overrides: Any) -> Settings:
    """The settings, as the group's context (``labq.cli.Context``) reads them, with ``overrides``."""
    return click.get_current_context().find_root().obj.settings(**overrides)  # type: ignore[no-any-return]


@contextmanager
def lab_redis(settings: Settings) -> Iterator[redis.Redis]:
    """A client of the lab's Redis for one command; a Redis error inside
    becomes :class:`BrokerUnavailable` naming the (masked) URL."""
    client = connect(settings.broker_url, settings, socket_timeout=10, socket_connect_timeout=5)
    try:
        yield client
    except redis.RedisError as exc:
        raise BrokerUnavailable(unavailable(settings.broker_url, exc, settings)) from exc
    finally:
        client.close()
