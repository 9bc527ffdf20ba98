"""Redis as the service meets it: one builder per purpose, each with its timeouts, and
Redis's errors in the project's own terms.

Every Redis client of the service is built here, so each purpose's timeouts are written
once (their values are settings, see ``intent.settings``):

- ``data_client``: the state, cache, waiting room and publisher (``INTENT_REDIS_SOCKET_TIMEOUT``
  to connect and per reply: a dead Redis costs seconds, not minutes);
- ``stream_client``: a reader of the event stream: decoded text (undecodable bytes as lone
  surrogates), each reply allowed its ``BLOCK`` on top of the data timeout;
- ``breaker_client``: the breaker's shared state (``INTENT_CIRCUIT_REDIS_SOCKET_TIMEOUT``, no
  retries: a dead Redis costs milliseconds per call, and the breaker falls back to memory);
- ``rate_limit_storage``: ``limits``' storage, which builds its client from the data timeouts;
- ``probe_client``: a one-off "does it answer?" check.

A URL naming Redis Sentinels (:func:`is_sentinel_url`: Celery's
``sentinel://host:port;sentinel://host:port`` or ``limits``'
``redis+sentinel://host:port,host:port/service_name``) gives each of them a client of the
master the Sentinels name (:func:`sentinel_client`), with the same purpose's timeouts: its
connections ask the Sentinels for the master when they connect, and drop themselves when
it stops being one (a ``READONLY`` reply), so a failover costs the calls made while there
is no master, not a restart.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import redis
from limits.storage import RedisStorage
from redis.backoff import NoBackoff
from redis.retry import Retry
from redis.sentinel import Sentinel

from intent.errors import ServiceUnavailableError
from intent.settings import (
    CIRCUIT_REDIS_SOCKET_TIMEOUT,
    REDIS_HEALTH_CHECK_INTERVAL,
    REDIS_PROBE_TIMEOUT,
    SENTINEL_MASTER,
    Settings,
    is_sentinel_url,
    sentinel_target,
)


def data_client(settings: Settings, url: str | None = None) -> redis.Redis:
    """The client for the service's state (bytes replies)."""
    url = url or settings.require_redis_url()
    if is_sentinel_url(url):
        return sentinel_client(
            url,
            settings.sentinel_master,
            socket_timeout=settings.redis_socket_timeout,
            health_check_interval=REDIS_HEALTH_CHECK_INTERVAL,
        )
    return redis.Redis.from_url(
        url,
        socket_timeout=settings.redis_socket_timeout,
        socket_connect_timeout=settings.redis_socket_timeout,
        health_check_interval=REDIS_HEALTH_CHECK_INTERVAL,
    )


def stream_client(settings: Settings, block: float = 0.0) -> redis.Redis:
    """A client that reads the event stream, with XREADGROUP's ``block`` seconds allowed
    per reply on top of the data timeout (a blocked read is not a dead Redis)."""
    url = settings.require_redis_url()
    if is_sentinel_url(url):
        return sentinel_client(
            url,
            settings.sentinel_master,
            decode_responses=True,
            encoding_errors="surrogateescape",
            socket_timeout=block + settings.redis_socket_timeout,
            socket_connect_timeout=settings.redis_socket_timeout,
            health_check_interval=REDIS_HEALTH_CHECK_INTERVAL,
        )
    return redis.Redis.from_url(
        url,
        decode_responses=True,
        # Undecodable bytes arrive as lone surrogates (refused and dead-lettered, whose
        # XADD writes the original bytes back; shown by the CLI), never as an error that
        # stops the reader.
        encoding_errors="surrogateescape",
        socket_timeout=block + settings.redis_socket_timeout,
        socket_connect_timeout=settings.redis_socket_timeout,
        health_check_interval=REDIS_HEALTH_CHECK_INTERVAL,
    )


def breaker_client(
    url: str,
    socket_timeout: float = CIRCUIT_REDIS_SOCKET_TIMEOUT,
    sentinel_master: str = SENTINEL_MASTER,
) -> redis.Redis:
    """A client for breaker state: short timeouts, no retries, decoded replies. It fails
    fast: a dead Redis must cost milliseconds per call (the breaker then runs on its
    in-memory fallback), not redis-py's default retries with backoff."""
    if is_sentinel_url(url):
        return sentinel_client(
            url,
            sentinel_master,
            socket_timeout=socket_timeout,
            retry=Retry(NoBackoff(), 0),
            decode_responses=True,
        )
    return redis.Redis.from_url(
        url,
        socket_timeout=socket_timeout,
        socket_connect_timeout=socket_timeout,
        retry=Retry(NoBackoff(), 0),
        decode_responses=True,
    )


def rate_limit_storage(settings: Settings, key_prefix: str) -> RedisStorage:
    """``limits``' moving-window storage on the data timeouts; its errors arrive wrapped in
    ``limits.errors.StorageError`` (``intent.ratelimit`` tells an outage from a bug)."""
    url = settings.require_redis_url()
    if is_sentinel_url(url):
        # limits' own Sentinel storage reads from replicas; here every read is the master's.
        client = sentinel_client(
            url, settings.sentinel_master, socket_timeout=settings.redis_socket_timeout
        )
        return RedisStorage(
            "redis://",
            connection_pool=client.connection_pool,
            key_prefix=key_prefix,
            wrap_exceptions=True,
        )
    return RedisStorage(
        url,
        key_prefix=key_prefix,
        socket_timeout=settings.redis_socket_timeout,
        socket_connect_timeout=settings.redis_socket_timeout,
        wrap_exceptions=True,
    )


def probe_client(
    url: str, timeout: float = REDIS_PROBE_TIMEOUT, sentinel_master: str = SENTINEL_MASTER
) -> redis.Redis:
    """A client for one "does Redis answer?" check: connect and each reply within
    ``timeout``."""
    if is_sentinel_url(url):
        return sentinel_client(url, sentinel_master, socket_timeout=timeout)
    return redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)


# -- Redis Sentinel ----------------------------------------------------------------------


def sentinel_client(url: str, master_name: str, **connection_kwargs: Any) -> redis.Redis:
    """A client of the master the Sentinels of ``url`` name, built with the purpose's
    ``connection_kwargs`` (timeouts, decoding, retries). The Sentinels are asked with the
    same socket timeouts, each once (the next Sentinel is the retry): a dead Sentinel costs
    what a dead Redis costs that purpose, not redis-py's retries with backoff (seconds)."""
    target = sentinel_target(url, master_name)
    timeout = connection_kwargs.get("socket_timeout")
    connection_kwargs.setdefault("socket_connect_timeout", timeout)
    asking = {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "retry": Retry(NoBackoff(), 0),
    }
    sentinels = Sentinel(list(target.sentinels), sentinel_kwargs=asking)
    return sentinels.master_for(
        target.service_name,
        db=target.db,
        username=target.username,
        password=target.password,
        **connection_kwargs,
    )


@contextlib.contextmanager
def redis_errors(what: str) -> Iterator[None]:
    """Inside, a Redis that cannot be reached is ``ServiceUnavailableError("redis", ...)``
    (transient: retried, never a raw redis-py error reaching a caller); ``what`` says what
    was being done."""
    try:
        yield
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise ServiceUnavailableError("redis", f"{what}: {type(exc).__name__}: {exc}") from exc
