"""The broker transport: kombu's Redis transport, with one reused client per channel.

kombu's Redis channel builds a new ``redis.Redis`` object for every
synchronous command it sends (``conn_or_acquire``): each event publish, each
unacked-index update and each ack. Building one copies redis-py's table of
response callbacks, which cost about an eighth of a busy worker's main
process. The client object holds no connection of its own (each command
borrows one from the channel's pool), so one per channel and pool is reused
here; the wire traffic is unchanged.
"""

from __future__ import annotations

from typing import Any

from kombu.transport import redis as kombu_redis


def reused_client(channel: Any) -> Any:
    """The synchronous client of a kombu Redis ``channel``, made once per
    channel and pool (labq's raw publishing uses it on any Redis channel)."""
    client = getattr(channel, "_labq_client", None)
    # A new pool (after kombu dropped the old one) needs a new client.
    if client is None or client.connection_pool is not channel.pool:
        client = kombu_redis.Channel._create_client(channel)  # type: ignore[no-untyped-call]
        channel._labq_client = client
    return client


class Channel(kombu_redis.Channel):  # type: ignore[misc]
    """A Redis channel that reuses its synchronous client."""

    def _create_client(self, asynchronous: bool = False) -> Any:
        if asynchronous:  # BRPOP and pub/sub: kombu caches those itself
            return super()._create_client(asynchronous=True)  # type: ignore[no-untyped-call]
        return reused_client(self)


class Transport(kombu_redis.Transport):  # type: ignore[misc]
    """kombu's Redis transport with :class:`Channel`."""

    Channel = Channel


#: ``broker_transport`` for a ``redis://`` or ``rediss://`` broker URL.
TRANSPORT = "labq.transport:Transport"
