"""Each purpose's Redis client (intent/connections.py) has the timeouts the README documents."""

from __future__ import annotations

from typing import Any

import pytest
import redis
from redis.backoff import NoBackoff

from intent import connections
from intent.errors import ServiceUnavailableError
from intent.settings import (
    CIRCUIT_REDIS_SOCKET_TIMEOUT,
    REDIS_HEALTH_CHECK_INTERVAL,
    REDIS_PROBE_TIMEOUT,
    Settings,
)

URL = "redis://127.0.0.1:1/0"  # never connected to: building a client opens no socket


def options(client: redis.Redis) -> dict[str, Any]:
    return dict(client.connection_pool.connection_kwargs)


@pytest.fixture
def settings() -> Settings:
    return Settings(redis_url=URL, redis_socket_timeout=1.5, circuit_redis_socket_timeout=0.125)


def test_the_data_client_has_the_redis_socket_timeout(settings: Settings) -> None:
    kwargs = options(connections.data_client(settings))
    assert kwargs["socket_timeout"] == 1.5
    assert kwargs["socket_connect_timeout"] == 1.5
    assert kwargs["health_check_interval"] == REDIS_HEALTH_CHECK_INTERVAL == 30
    assert not kwargs.get("decode_responses")  # the state's codecs read bytes


def test_the_data_client_takes_another_url(settings: Settings) -> None:
    kwargs = options(connections.data_client(settings, "redis://127.0.0.1:2/3"))
    assert (kwargs["port"], kwargs["db"], kwargs["socket_timeout"]) == (2, 3, 1.5)


def test_the_stream_client_allows_a_blocked_read_on_top_of_the_timeout(
    settings: Settings,
) -> None:
    kwargs = options(connections.stream_client(settings, block=5.0))
    assert kwargs["socket_timeout"] == 6.5  # BLOCK 5 s + the data timeout
    assert kwargs["socket_connect_timeout"] == 1.5
    assert kwargs["health_check_interval"] == REDIS_HEALTH_CHECK_INTERVAL
    assert kwargs["decode_responses"] is True
    assert kwargs["encoding_errors"] == "surrogateescape"
    assert options(connections.stream_client(settings))["socket_timeout"] == 1.5


def test_the_breaker_client_costs_milliseconds_and_never_retries() -> None:
    kwargs = options(connections.breaker_client(URL))
    assert kwargs["socket_timeout"] == CIRCUIT_REDIS_SOCKET_TIMEOUT == 0.25
    assert kwargs["socket_connect_timeout"] == 0.25
    assert kwargs["decode_responses"] is True
    retry = kwargs["retry"]
    assert retry._retries == 0 and isinstance(retry._backoff, NoBackoff)
    assert options(connections.breaker_client(URL, 0.125))["socket_timeout"] == 0.125


def test_the_breaker_default_is_the_settings_default() -> None:
    assert Settings().circuit_redis_socket_timeout == CIRCUIT_REDIS_SOCKET_TIMEOUT


def test_the_rate_limit_storage_has_the_redis_socket_timeout(settings: Settings) -> None:
    storage = connections.rate_limit_storage(settings, "intent:rl:")
    assert storage.key_prefix == "intent:rl:"
    assert storage.wrap_exceptions is True
    kwargs = options(storage.storage)
    assert kwargs["socket_timeout"] == 1.5
    assert kwargs["socket_connect_timeout"] == 1.5


def test_the_probe_client_gives_up_within_its_timeout() -> None:
    kwargs = options(connections.probe_client(URL))
    assert kwargs["socket_timeout"] == kwargs["socket_connect_timeout"] == REDIS_PROBE_TIMEOUT
    assert options(connections.probe_client(URL, 0.5))["socket_timeout"] == 0.5


def test_redis_errors_become_the_trees_transient_error() -> None:
    refused = pytest.raises(ServiceUnavailableError, match="parking: ConnectionError: gone")
    with refused as info, connections.redis_errors("parking"):
        raise redis.ConnectionError("gone")
    assert info.value.service == "redis" and info.value.transient
    # Not an outage: a bug, surfaced as itself.
    with pytest.raises(redis.ResponseError), connections.redis_errors("parking"):
        raise redis.ResponseError("WRONGTYPE")
