"""Sentinel URLs: both forms parsed alike, each purpose's client built through the Sentinels
with its own timeouts, and Celery's broker, result backend and beat configured from them.
Nothing here connects: a Sentinel-managed client asks the Sentinels on its first command."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from redis.sentinel import SentinelConnectionPool

from intent import connections
from intent.errors import SettingsError
from intent.settings import (
    SENTINEL_MASTER,
    SentinelTarget,
    Settings,
    get_settings,
    is_sentinel_url,
    load_settings,
    sentinel_target,
)

CELERY = "sentinel://:s%40cret@10.0.0.1:26379/2;sentinel://10.0.0.2:26380/2;sentinel://10.0.0.3"
LIMITS = "redis+sentinel://:s%40cret@10.0.0.1:26379,10.0.0.2:26380,10.0.0.3/orders"
HOSTS = (("10.0.0.1", 26379), ("10.0.0.2", 26380), ("10.0.0.3", 26379))


def test_both_forms_name_the_same_sentinels() -> None:
    assert sentinel_target(CELERY, "orders") == SentinelTarget(HOSTS, "orders", 2, None, "s@cret")
    assert sentinel_target(LIMITS, "ignored") == SentinelTarget(HOSTS, "orders", 0, None, "s@cret")
    # Celery's form takes the master's name from the setting; limits' from its path, or
    # the setting when it has none.
    assert sentinel_target("sentinel://h:1", SENTINEL_MASTER).service_name == "mymaster"
    assert sentinel_target("redis+sentinel://h:1", "fallback").service_name == "fallback"


def test_the_celery_form_round_trips() -> None:
    target = sentinel_target(LIMITS, "x")
    assert target.celery_url() == (
        "sentinel://:s%40cret@10.0.0.1:26379/0;sentinel://10.0.0.2:26380/0;"
        "sentinel://10.0.0.3:26379/0"
    )
    assert sentinel_target(target.celery_url(), "orders") == target


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("redis://h:6379/0", "not a Sentinel URL"),
        ("sentinel://h:1;redis://h:2", "every part"),
        ("sentinel://h:1/orders", "database number"),
        ("sentinel://:pw@:1", "at least one Sentinel host"),
    ],
)
def test_a_bad_sentinel_url_is_named(url: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        sentinel_target(url, "m")


def test_schemes() -> None:
    assert is_sentinel_url(CELERY) and is_sentinel_url(LIMITS)
    assert not is_sentinel_url("redis://h:6379") and not is_sentinel_url("redis+cluster://h:1")


def pool_of(client: redis.Redis) -> SentinelConnectionPool:
    pool = client.connection_pool
    assert isinstance(pool, SentinelConnectionPool)
    return pool


def sentinel_timeouts(pool: SentinelConnectionPool) -> set[Any]:
    """Each Sentinel's (timeout, retries): asked once, the next Sentinel being the retry."""
    return {
        (s.connection_pool.connection_kwargs["socket_timeout"], s.get_retry()._retries)
        for s in pool.sentinel_manager.sentinels
    }


@pytest.fixture
def settings() -> Settings:
    return Settings(redis_url=LIMITS, redis_socket_timeout=1.5, circuit_redis_socket_timeout=0.125)


def test_each_purpose_reaches_the_master_with_its_timeouts(settings: Settings) -> None:
    data = pool_of(connections.data_client(settings))
    assert data.service_name == "orders"
    assert data.connection_kwargs["socket_timeout"] == 1.5
    assert data.connection_kwargs["password"] == "s@cret"
    assert sentinel_timeouts(data) == {(1.5, 0)}  # a dead Sentinel costs what a dead Redis does
    stream = pool_of(connections.stream_client(settings, block=2.0))
    assert stream.connection_kwargs["socket_timeout"] == 3.5
    assert stream.connection_kwargs["decode_responses"] is True
    breaker = pool_of(connections.breaker_client(settings.redis_url or "", 0.125))
    assert breaker.connection_kwargs["socket_timeout"] == 0.125
    assert breaker.connection_kwargs["retry"]._retries == 0
    assert sentinel_timeouts(breaker) == {(0.125, 0)}
    limits = connections.rate_limit_storage(settings, "p")
    assert isinstance(limits.storage.connection_pool, SentinelConnectionPool)
    probe = pool_of(connections.probe_client("sentinel://h:1", 0.5, "m"))
    assert probe.service_name == "m"


@pytest.fixture
def celeryconfig(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """celeryconfig as a process with these URLs reads it (as it was afterwards)."""
    before = sys.modules.get("celeryconfig")

    def load(**env: str) -> Any:
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        get_settings.cache_clear()
        module = sys.modules.get("celeryconfig")
        return importlib.reload(module) if module else importlib.import_module("celeryconfig")

    yield load
    monkeypatch.undo()
    get_settings.cache_clear()
    if before is None:
        sys.modules.pop("celeryconfig", None)
    else:
        importlib.reload(before)


def test_celery_goes_through_the_sentinels_with_its_transport_options(celeryconfig: Any) -> None:
    conf = celeryconfig(
        INTENT_REDIS_URL="redis://127.0.0.1:1/0",
        INTENT_BROKER_URL=CELERY,
        INTENT_RESULT_BACKEND_URL=LIMITS,
        INTENT_SENTINEL_MASTER="orders",
        INTENT_REDIS_SOCKET_TIMEOUT="1.5",
    )
    assert conf.broker_url == CELERY.replace("10.0.0.3", "10.0.0.3:26379/2")
    broker = conf.broker_transport_options
    assert broker["master_name"] == "orders"
    assert broker["sentinel_kwargs"] == {"socket_timeout": 1.5, "socket_connect_timeout": 1.5}
    assert broker["visibility_timeout"] == 90  # the project's options still apply
    assert broker["unacked_restore_interval"] == 2.0
    backend = conf.result_backend_transport_options
    assert backend["master_name"] == "orders" and "retry_policy" in backend
    assert conf.result_backend == "tasks.backend:SentinelBackend+" + (
        "sentinel://:s%40cret@10.0.0.1:26379/0;sentinel://10.0.0.2:26380/0;"
        "sentinel://10.0.0.3:26379/0"
    )


def test_a_plain_redis_url_is_left_as_it_was(celeryconfig: Any) -> None:
    conf = celeryconfig(INTENT_REDIS_URL="redis://127.0.0.1:1/0")
    assert conf.broker_url == "redis://127.0.0.1:1/0"
    assert "master_name" not in conf.broker_transport_options
    assert conf.result_backend == "tasks.backend:RedisBackend+redis://127.0.0.1:1/0"


def test_celery_builds_the_sentinel_backend_and_transport() -> None:
    from celery import Celery
    from celery.app.backends import by_url
    from kombu import Connection

    from tasks import backend, transport

    transport.install()
    assert Connection(CELERY).transport_cls == "sentinel"
    assert Connection(CELERY).get_transport_cls() is transport.SentinelTransport
    cls, url = by_url("tasks.backend:SentinelBackend+" + CELERY, loader=Celery().loader)
    assert cls is backend.SentinelBackend and url == CELERY


def test_beat_asks_the_sentinels(monkeypatch: pytest.MonkeyPatch) -> None:
    from celery import Celery

    from tasks import beat

    monkeypatch.setenv("INTENT_REDIS_URL", LIMITS)
    get_settings.cache_clear()
    app = Celery()
    try:
        beat.configure(app)
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()
    assert app.conf.redbeat_redis_url.startswith("redis-sentinel")
    options = app.conf.redbeat_redis_options
    assert options["sentinels"] == list(HOSTS)
    assert options["service_name"] == "orders" and options["password"] == "s@cret"


def test_a_bad_sentinel_url_is_refused_when_the_settings_load_naming_the_variable() -> None:
    with pytest.raises(SettingsError, match="INTENT_BROKER_URL: a sentinel:// URL's path") as info:
        load_settings(redis_url="redis://h:1/0", broker_url="sentinel://:s3cret@h:1/orders")
    assert "s3cret" not in str(info.value)
    with pytest.raises(SettingsError, match=r"INTENT_REDIS_URL: .*at least one Sentinel host"):
        load_settings(redis_url="redis+sentinel://:s3cret@/orders")


@pytest.mark.parametrize(
    "url",
    [
        "sentinel://:hunter/2secret@h:26379/0",  # a '/' in the password: the rest is the path
        "redis+sentinel://:hunter/2secret@h:26379/m",  # the same in limits' form
        "sentinel://:hunter2secret@h:notaport/0",
    ],
)
def test_a_sentinel_url_that_cannot_be_read_is_refused_without_its_password(url: str) -> None:
    with pytest.raises(SettingsError) as info:
        load_settings(redis_url=url)
    message = str(info.value)
    assert "INTENT_REDIS_URL" in message and "percent-encoded" in message
    assert "secret" not in message and "hunter" not in message and "ter2" not in message
