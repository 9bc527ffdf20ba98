"""The pipeline, breaker and consumer tests once more, with the state on a real Redis Cluster
of three masters (``INTENT_STATE_REDIS_URL=redis+cluster://...``): the broker and the Celery
results stay on the test Redis (``INTENT_REDIS_URL``), as Celery has no cluster mode.

The tests of ``test_pipeline_inprocess`` and ``test_pipeline_prefork`` (against a prefork
worker whose state is the cluster's), ``test_consumer`` and the breaker's contract and
operators' tests are collected here a second time: ``redis_url`` and ``redis_client`` name
the cluster, so every key they write and read is the cluster's, and every script and
pipeline runs where a key outside its command's slot is refused. The last test checks that
the keys landed on every master, so none of this can pass on one node.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from intent import connections
from intent.breaker import CircuitAdmin, CircuitBreaker, CircuitConfig, CircuitOpenError
from intent.breaker.stores import BreakerStore, FallbackStore, RedisStore
from intent.dev.stack import WorkerProcess, running_worker
from intent.events import ConsumerConfig, EventConsumer, EventHandler, current_delivery
from intent.models import Event, IntentEvent
from intent.reference import ReferenceServices
from intent.runtime import get_runtime
from tests.cluster import EmbeddedCluster
from tests.integration import (
    test_breaker_contract,
    test_breaker_redis,
    test_consumer,
    test_pipeline_inprocess,
    test_pipeline_prefork,
)
from tests.integration.conftest import FAST_RETRY_ENV

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("prefork_worker")]


@pytest.fixture(scope="module")
def redis_url(state_on_cluster: EmbeddedCluster) -> str:
    """The state's Redis: the cluster."""
    return state_on_cluster.url


@pytest.fixture
def redis_client(state_on_cluster: EmbeddedCluster) -> Iterator[redis.Redis]:
    """A client on the cluster, every master emptied before and after the test."""
    state_on_cluster.flush()
    client = connections.redis_client(state_on_cluster.url, decode_responses=True)
    yield client
    client.close()
    state_on_cluster.flush()


@pytest.fixture(scope="module")
def prefork_worker(
    reference: ReferenceServices, state_on_cluster: EmbeddedCluster
) -> Iterator[WorkerProcess]:
    """A prefork worker with its state on the cluster, its broker the test Redis."""
    with running_worker(concurrency=2, env=FAST_RETRY_ENV, loglevel="INFO") as worker:
        yield worker


@pytest.fixture
def store(redis_client: redis.Redis, redis_url: str) -> Iterator[BreakerStore]:
    """The breaker contract's store: on the cluster alone (the memory store is tested
    where the contract lives)."""
    cluster_store = RedisStore.from_url(redis_url)
    yield cluster_store
    cluster_store.close()


name = test_breaker_contract.name


def test_the_state_is_on_the_cluster_and_the_results_are_not(
    clean: redis.Redis, results_redis: redis.Redis, state_on_cluster: EmbeddedCluster
) -> None:
    from tasks import submit
    from tasks.app import app
    from tests.helpers import request

    rt = get_runtime()
    assert connections.on_cluster(rt.redis)
    assert rt.settings.effective_state_redis_url == state_on_cluster.url
    assert rt.settings.effective_broker_url == rt.settings.redis_url != state_on_cluster.url
    payload = request()
    assert submit(payload).get(timeout=30).status == "completed"
    # The request's claim and its events are the cluster's; its result is the broker Redis's.
    assert clean.get(rt.keys.request_claim(payload["request_id"])) is not None
    assert clean.xlen(rt.keys.events_stream) > 0  # the worker's publisher wrote them
    assert clean.keys(rt.keys.pattern_state(payload["context_id"], "*")) != []  # its detector
    result_key = app.backend.get_key_for_task(payload["request_id"])
    assert results_redis.exists(result_key) == 1 and clean.exists(result_key) == 0
    assert results_redis.keys(f"{rt.settings.key_prefix}*") == []


def test_the_metrics_read_the_queues_on_the_broker_and_the_rest_on_the_cluster(
    redis_client: redis.Redis, results_redis: redis.Redis, redis_url: str
) -> None:
    from intent.admin.exposition import SharedStateCollector
    from intent.runtime import Runtime
    from intent.settings import load_settings

    queue = f"cluster-gauge-{uuid.uuid4().hex[:8]}"  # no worker consumes it
    settings = load_settings(queue=queue, client_default_queue="")
    assert settings.effective_state_redis_url == redis_url
    rt = Runtime(settings)
    results_redis.rpush(queue, "a", "b", "c")
    redis_client.xadd(rt.keys.dead_letters, {"id": "evt_1"})
    try:
        families = {m.name: m for m in SharedStateCollector(rt).collect()}
    finally:
        results_redis.delete(queue)
        rt.close()
    assert [(s.labels, s.value) for s in families["intent_queue_messages"].samples] == [
        ({"queue": queue}, 3.0)
    ]
    dead = {s.labels["stream"]: s.value for s in families["intent_dead_letters"].samples}
    assert dead["events"] == 1.0


def test_a_cluster_outage_falls_back_to_memory_and_the_shared_state_resumes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with EmbeddedCluster(masters=3) as cluster:
        primary = RedisStore.from_url(cluster.url, socket_timeout=0.2)
        store = FallbackStore(primary, probe_interval=0.2, warn_interval=60)
        config = CircuitConfig(failure_threshold=3, min_throughput=3, recovery_timeout=30)
        breaker = CircuitBreaker("outage", config, store=store)
        for _ in range(5):
            breaker.call(lambda: "ok")
        assert primary.snapshot("outage").calls == 5

        cluster.stop()
        with caplog.at_level(logging.WARNING, logger="intent.breaker"):
            started, calls = time.monotonic(), 0
            while time.monotonic() - started < 0.8:
                assert breaker.call(lambda: "ok") == "ok"  # calls keep flowing
                calls += 1
                time.sleep(0.005)
        assert store.degraded
        assert calls >= 50  # a dead cluster costs milliseconds per call, not seconds
        assert [r for r in caplog.records if "unreachable" in r.getMessage()]

        cluster.start()  # the same nodes and slots, empty
        time.sleep(0.25)  # a probe is due
        breaker.call(lambda: "ok")
        assert not store.degraded
        assert primary.snapshot("outage").calls >= 1
        assert "outage" in CircuitAdmin(primary).names()  # registered again

        other = CircuitBreaker("outage", config, store=RedisStore.from_url(cluster.url))
        for _ in range(3):
            with pytest.raises(ConnectionError):
                other.call(test_breaker_redis._refused)
        with pytest.raises(CircuitOpenError):
            breaker.call(lambda: "ok")


def test_the_consumer_outlives_a_cluster_restart_that_lost_its_group() -> None:
    from tests.helpers import KEYS, Running, consumer_client, make_event, publish, wait_until

    with EmbeddedCluster(masters=3) as cluster:
        client = connections.redis_client(cluster.url, decode_responses=True)
        seen: list[str] = []
        config = ConsumerConfig(group="g", consumer="c", block=0.1, start_id="0")
        handler = EventHandler()
        for kind in IntentEvent:
            handler.register(kind, lambda event: seen.append(event.id))
        consumer = EventConsumer(
            consumer_client(cluster.url, socket_timeout=2), KEYS, handler, config
        )
        run = Running(consumer)
        run.thread.start()
        try:
            publish(client, [make_event(1)])
            wait_until(lambda: seen == ["evt_0001"])
            cluster.stop()  # the consumer sees the outage and keeps retrying
            time.sleep(0.5)
            cluster.start()  # the same nodes and slots, empty: no stream, no group
            publish(client, [make_event(2)])
            wait_until(lambda: seen == ["evt_0001", "evt_0002"], timeout=20)
        finally:
            run.stop()
            client.close()
            consumer.client.close()
        assert run.error is None


def test_the_consumer_follows_its_stream_when_the_slot_moves_to_another_master() -> None:
    """A resharding moves the stream (and its group) to another master: the consumer's
    blocked read is answered MOVED, it looks the slot up again and reads on the new master;
    every event handled once (the acks in flight when the slot moved are sent again)."""
    from redis.cluster import key_slot

    from tests.helpers import KEYS, Running, consumer_client, make_event, publish, wait_until

    with EmbeddedCluster(masters=2) as cluster:
        client = connections.redis_client(cluster.url, decode_responses=True)
        seen: list[str] = []
        config = ConsumerConfig(group="g", consumer="c", block=0.2, start_id="0")
        handler = EventHandler()
        for kind in IntentEvent:
            handler.register(kind, lambda event: seen.append(event.id))
        consumer = EventConsumer(
            consumer_client(cluster.url, socket_timeout=2), KEYS, handler, config
        )
        run = Running(consumer)
        run.thread.start()
        try:
            publish(client, [make_event(i) for i in range(1, 6)])
            wait_until(lambda: len(seen) == 5)
            stream = KEYS.event_stream()
            owner = client.get_node_from_key(stream).port  # type: ignore[attr-defined]
            to = next(i for i, node in enumerate(cluster.nodes) if node.port != owner)
            cluster.move_slot(key_slot(stream.encode()), to)
            publish(client, [make_event(i) for i in range(6, 11)])
            wait_until(lambda: len(seen) >= 10, timeout=20)
            time.sleep(0.5)  # nothing handled twice arrives late
            moved_to = client.get_node_from_key(stream).port  # type: ignore[attr-defined]
            assert moved_to == cluster.nodes[to].port != owner
        finally:
            run.stop()
            client.close()
            consumer.client.close()
        assert run.error is None
        assert seen == [f"evt_{i:04d}" for i in range(1, 11)]


def test_a_store_made_while_the_cluster_is_down_falls_back_at_once() -> None:
    cluster = EmbeddedCluster(masters=3)  # never started: nothing answers on its ports
    store = FallbackStore(
        RedisStore.from_url(cluster.url, socket_timeout=0.2), probe_interval=60, warn_interval=60
    )
    config = CircuitConfig(failure_threshold=3, min_throughput=3)
    started = time.monotonic()
    assert CircuitBreaker("early", config, store=store).call(lambda: "ok") == "ok"
    assert store.degraded and time.monotonic() - started < 2
    cluster.close()


def test_a_partitioned_stream_spreads_over_the_masters_and_keeps_each_contexts_order(
    state_on_cluster: EmbeddedCluster, redis_client: redis.Redis
) -> None:
    """INTENT_EVENT_PARTITIONS=4 on the 3-master cluster: the partitions' streams live on more
    than one master, two consumers of one group (each reading every partition on its
    slot's master) handle every event once, and each context's events in publish order."""
    from tests.helpers import KEYS, Running, consumer_client, wait_until
    from tests.integration.test_events_partitions import N, all_types, interleaved, publisher

    nodes = {
        redis_client.get_node_from_key(KEYS.event_stream(p)).name  # type: ignore[attr-defined]
        for p in range(N)
    }
    assert len(nodes) > 1, nodes
    seen: dict[str, list[tuple[str, int]]] = {"c1": [], "c2": []}

    def record(event: Event) -> None:
        delivery = current_delivery()
        assert delivery is not None
        seen[delivery.consumer].append((event.data["context_id"], event.data["seq"]))

    runs = []
    for name in seen:
        config = ConsumerConfig(group="g", consumer=name, block=0.1, start_id="0", batch_size=5)
        consumer = EventConsumer(
            consumer_client(state_on_cluster.url), KEYS, all_types(record), config, partitions=N
        )
        runs.append(Running(consumer))
        runs[-1].thread.start()
    events = interleaved(contexts=8, per_context=15)
    pub = publisher(redis_client)
    try:
        for index in range(0, len(events), 4):  # while they consume
            pub.publish(events[index : index + 4])
        pub.publish(events[:8])  # a redelivered emit: deduplicated in its partition
        wait_until(lambda: len(seen["c1"]) + len(seen["c2"]) >= len(events), timeout=30)
        time.sleep(0.3)  # nothing more arrives
    finally:
        for run in runs:
            run.stop()
            run.consumer.client.close()
    both = seen["c1"] + seen["c2"]
    assert sorted(both) == sorted((f"ctx-{c}", s) for c in range(8) for s in range(15))
    for name, mine in seen.items():
        for c in range(8):
            order = [s for ctx, s in mine if ctx == f"ctx-{c}"]
            assert order == sorted(order), (name, c, order)
    assert all(run.error is None for run in runs)
    lengths = [redis_client.xlen(KEYS.event_stream(p)) for p in range(N)]
    assert sum(lengths) == len(events) and all(lengths), lengths


# The tests collected again here, on the cluster. Left out: those that measure a single
# server's round trips or restart a standalone server of their own (the outage test above
# is the cluster's).
_LEFT_OUT = {
    "test_a_healthy_closed_call_costs_one_redis_round_trip",
    "test_redis_outage_falls_back_to_memory_and_the_shared_state_resumes",
    "test_the_consumer_outlives_a_redis_restart_that_lost_its_group",
}
for _module in (
    test_pipeline_inprocess,
    test_pipeline_prefork,
    test_consumer,
    test_breaker_contract,
    test_breaker_redis,
):
    for _name, _test in vars(_module).items():
        if _name.startswith("test_") and callable(_test) and _name not in _LEFT_OUT:
            assert _name not in globals(), f"{_name} is collected twice"
            globals()[_name] = _test


def test_the_keys_are_spread_over_every_master(
    state_on_cluster: EmbeddedCluster, clean: Any
) -> None:
    """Last (pytest runs a module's tests in the order they are defined): a run leaves keys on
    each master, so the tests above did not all run on one node."""
    from tasks import submit
    from tests.helpers import request

    for index in range(12):
        submit(request(context_id=f"ctx-spread-{index}")).get(timeout=30)
    per_node = state_on_cluster.keys_per_node()
    assert len(per_node) == 3 and all(count > 0 for count in per_node), per_node
