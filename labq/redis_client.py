"""Redis clients made one way everywhere: TLS from the settings, bounded retries.

A ``rediss://`` URL gets the CA, certificate and key named by
``LABQ_REDIS_TLS_*``. Celery gets the same options as ``broker_use_ssl`` and
``redis_backend_use_ssl`` (:func:`labq.app.celery_config`), so kombu, the
result backend, Flower and labq's own clients all verify Redis alike.

kombu's Redis channel builds a new ``redis.Redis`` object for every
synchronous command it sends (``conn_or_acquire``): each event publish, each
unacked-index update and each ack. Building one copies redis-py's table of
response callbacks, which cost about an eighth of a busy worker's main
process. The client object holds no connection of its own (each command
borrows one from the channel's pool), so :class:`Transport` (the workers'
broker transport) and labq's raw publishing reuse one per channel and pool
(:func:`reused_client`); the wire traffic is unchanged.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import redis
from kombu.transport import redis as kombu_redis

from labq.errors import ConfigError
from labq.settings import ENV_PREFIX, Settings, mask_url

T = TypeVar("T")

#: Seconds between tries while Redis is away (restarting, loading its AOF).
RETRY_INTERVAL = 0.5


def text(value: Any) -> str:
    """A Redis reply as ``str``: bytes decoded as UTF-8, anything else by ``str()``."""
    return value.decode() if isinstance(value, bytes) else str(value)


def uses_tls(url: str) -> bool:
    return url.startswith("rediss://")


def tls_options(settings: Settings) -> dict[str, Any]:
    """The ``ssl_*`` options redis-py, kombu and Celery take, from ``settings``.

    The server's certificate is always verified: against ``redis_tls_ca``,
    else the system's CAs.
    """
    paths = {name: getattr(settings, name) for name in
             ("redis_tls_ca", "redis_tls_cert", "redis_tls_key")}
    for name, path in paths.items():
        if path and not Path(path).is_file():
            raise ConfigError(f"{ENV_PREFIX}{name.upper()}", path, "no such file")
    return {
        "ssl_cert_reqs": ssl.CERT_REQUIRED,
        "ssl_ca_certs": paths["redis_tls_ca"] or None,
        "ssl_certfile": paths["redis_tls_cert"] or None,
        "ssl_keyfile": paths["redis_tls_key"] or None,
    }


def connect(url: str, settings: Settings, **kwargs: Any) -> redis.Redis:
    """``redis.Redis.from_url(url, **kwargs)``, with TLS options for ``rediss://``."""
    if uses_tls(url):
        kwargs = {**tls_options(settings), **kwargs}
    return redis.Redis.from_url(url, **kwargs)


def describe(exc: BaseException, settings: Settings) -> str:
    """``exc`` as one line, with a hint when the TLS handshake failed."""
    text = f"{type(exc).__name__}: {exc}"
    if "CERTIFICATE_VERIFY_FAILED" in text or "SSL" in text:
        ca = settings.redis_tls_ca or "(empty: the system's CAs)"
        text += (f"; TLS to Redis failed: LABQ_REDIS_TLS_CA={ca} must be the CA that signed "
                 "Redis's certificate, and the URL's host must be named in that certificate")
    return text


#: Redis's replies that mean the credentials, not the address, are wrong.
_AUTH_REPLIES = ("WRONGPASS", "NOAUTH", "HELLO must be called", "Authentication required",
                 "invalid username-password", "invalid password")


def auth_failed(exc: BaseException) -> bool:
    """Whether ``exc`` says Redis refused (or was not given) the credentials."""
    return isinstance(exc, redis.AuthenticationError) or any(
        reply in str(exc) for reply in _AUTH_REPLIES)


def unavailable(url: str, exc: BaseException, settings: Settings | None = None) -> str:
    """Why Redis at ``url`` cannot be used, naming the real cause: refused
    credentials are "authentication failed for user X", not "unreachable"."""
    where = mask_url(url)
    if auth_failed(exc):
        parts = urlsplit(url)
        why = "Redis refused the password" if parts.password else "the URL gives no password"
        return (f"authentication failed for user {parts.username or 'default'!r} at {where}: "
                f"{why}; check the user and password in the URL (LABQ_BROKER_URL)")
    detail = describe(exc, settings) if settings is not None else f"{type(exc).__name__}: {exc}"
    return f"Redis at {where} is unreachable ({detail})"


def retrying(read: Callable[[], T], *, timeout: float,
             sleep: Callable[[float], None] = time.sleep) -> T:
    """``read()``, tried again for up to ``timeout`` seconds while Redis is
    unreachable or still loading its data (a restart); then the last error.

    Only for reads and idempotent writes: a command that failed mid-way may
    have run.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            return read()
        except (redis.ConnectionError, redis.TimeoutError):
            # BusyLoadingError (AOF being loaded) is a ConnectionError too.
            if time.monotonic() >= deadline:
                raise
            sleep(RETRY_INTERVAL)


# -- kombu's Redis transport, one reused client per channel --------------------

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
TRANSPORT = "labq.redis_client:Transport"
