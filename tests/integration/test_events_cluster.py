"""The bus on a Redis Cluster node: every script and the consumer run where a key outside
the command's slot is refused (CROSSSLOT), so a multi-key write across slots would fail here;
with several partitions too, none of whose commands may touch two partitions.

One Valkey node in cluster mode serving all 16384 slots: a plain client needs no redirects,
and the node still refuses any command or script whose keys hash to more than one slot.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, cast

import pytest
import redis

from intent import embedded
from intent.events import (
    ConsumerConfig,
    DeadLetters,
    EventConsumer,
    EventHandler,
    EventPublisher,
    Idempotency,
    current_delivery,
    event_id,
    replay,
)
from intent.keys import Keys
from intent.models import Event, IntentEvent
from tests.cluster import EmbeddedCluster

pytestmark = pytest.mark.integration

KEYS = Keys("svc.eu-1:")  # not the default prefix: the tag must follow it


@pytest.fixture(scope="module")
def cluster_url() -> Iterator[str]:
    """One node serving every slot (tests/cluster.py): a plain client on it needs no
    redirects."""
    try:
        embedded.valkey_executable()
    except (ImportError, RuntimeError) as exc:
        pytest.skip(f"needs the embedded Valkey: {exc}")
    with EmbeddedCluster(masters=1) as cluster:
        yield cluster.nodes[0].url


@pytest.fixture
def client(cluster_url: str) -> Iterator[redis.Redis]:
    """A client as the consumer needs (decoded, undecodable bytes kept), on an empty node."""
    client = redis.Redis.from_url(
        cluster_url, decode_responses=True, encoding_errors="surrogateescape", socket_timeout=5
    )
    client.flushall()
    yield client
    client.close()


def make_event(index: int) -> Event:
    request_id = f"req-{index}"
    return Event(
        id=event_id(request_id, IntentEvent.CONTEXT_CHANGED),
        type=IntentEvent.CONTEXT_CHANGED,
        pattern_id="checkout",
        data={"context_id": f"ctx-{index}"},
        timestamp="2025-01-01T00:00:00.000Z",
        request_id=request_id,
    )


def test_the_node_refuses_keys_of_two_slots(client: redis.Redis) -> None:
    # The control: the same move over keys without the shared tag is refused.
    with pytest.raises(redis.ResponseError, match="hash to the same slot"):
        client.eval("return 1", 2, KEYS.events_stream, f"{KEYS.events_stream}:dead")


def test_publish_dead_letter_and_requeue_run_on_a_cluster_node(client: redis.Redis) -> None:
    events = [make_event(i) for i in range(3)]
    publisher = EventPublisher(client, KEYS, maxlen=1000, dedup_ttl=60)
    ids = publisher.publish(events)
    assert all(ids) and publisher.publish(events) == ["", "", ""]

    failing = EventHandler()

    @failing.on(IntentEvent.CONTEXT_CHANGED)
    def fail(event: Event) -> None:
        raise RuntimeError(f"boom {event.id}")

    config = ConsumerConfig(
        group="g",
        consumer="c1",
        block=0.1,
        start_id="0",
        max_deliveries=1,
        claim_idle=5.0,
        shutdown_grace=0.0,
    )
    consumer = EventConsumer(client, KEYS, failing, config)
    stats = consumer.run(install_signal_handlers=False, max_events=3)
    assert (stats.failures, stats.dead_lettered) == (3, 3)
    assert cast(dict[str, Any], client.xpending(KEYS.events_stream, "g"))["pending"] == 0

    letters = DeadLetters(client, KEYS, maxlen=1000)
    listed = letters.list()
    assert [letter.original_id for letter in listed] == ids
    assert [letter.fields["id"] for letter in listed] == [e.id for e in events]
    assert letters.requeue(listed[0].dead_id) is not None
    assert letters.requeue_all() == 2 and letters.count() == 0
    requeued = cast(list[Any], client.xrange(KEYS.events_stream))[3:]
    assert [fields["id"] for _, fields in requeued] == [e.id for e in events]


def test_idempotent_handlers_run_on_a_cluster_node(client: redis.Redis) -> None:
    idempotency = Idempotency(client, KEYS, ttl=60, lease=5.0)
    runs: list[str] = []
    handler = EventHandler()

    @handler.on(IntentEvent.CONTEXT_CHANGED)
    @idempotency.once
    def record(event: Event) -> None:
        delivery = current_delivery()
        assert delivery is not None
        runs.append(event.id)

    event = make_event(1)
    publisher = EventPublisher(client, KEYS, maxlen=1000, dedup_ttl=1)
    publisher.publish([event])
    client.delete(KEYS.event_seen(event.id))  # published twice, as after a lost mark
    publisher.publish([event])
    config = ConsumerConfig(group="g", consumer="c1", block=0.1, start_id="0")
    stats = EventConsumer(client, KEYS, handler, config).run(
        install_signal_handlers=False, max_events=2
    )
    assert stats.handled == 2 and runs == [event.id]
    assert idempotency.is_done(event.id, group="g")


# -- partitions ------------------------------------------------------------------------------
PARTITIONS = 4


def context_event(index: int) -> Event:
    request_id = f"req-p{index}"
    return Event(
        id=event_id(request_id, IntentEvent.CONTEXT_CHANGED),
        type=IntentEvent.CONTEXT_CHANGED,
        pattern_id="checkout",
        data={"context_id": f"ctx-{index % 6}", "seq": index},
        timestamp="2025-01-01T00:00:00.000Z",
        request_id=request_id,
    )


def test_the_partitioned_bus_runs_on_a_cluster_node(client: redis.Redis) -> None:
    """Every command and script of the bus touches one partition: none is refused."""
    events = [context_event(i) for i in range(24)]
    publisher = EventPublisher(client, KEYS, maxlen=1000, dedup_ttl=60, partitions=PARTITIONS)
    ids = publisher.publish(events)  # one batch over every partition
    assert all(ids) and publisher.publish(events) == [""] * len(events)
    lengths = [cast(int, client.xlen(KEYS.event_stream(p))) for p in range(PARTITIONS)]
    assert sum(lengths) == len(events) and min(lengths) > 0

    failing = EventHandler()

    @failing.on(IntentEvent.CONTEXT_CHANGED)
    def fail(event: Event) -> None:
        raise RuntimeError(f"boom {event.id}")

    config = ConsumerConfig(
        group="g",
        consumer="c1",
        block=0.1,
        start_id="0",
        max_deliveries=1,
        claim_idle=5.0,
        shutdown_grace=0.0,
    )
    consumer = EventConsumer(client, KEYS, failing, config, partitions=PARTITIONS)
    stats = consumer.run(install_signal_handlers=False, max_events=len(events))
    assert (stats.failures, stats.dead_lettered) == (len(events), len(events))

    letters = DeadLetters(client, KEYS, maxlen=1000, partitions=PARTITIONS)
    listed = letters.list(count=100)
    assert sorted(letter.fields["id"] for letter in listed) == sorted(e.id for e in events)
    assert {letter.partition for letter in listed} == set(range(PARTITIONS))
    assert letters.requeue(listed[0].dead_id, listed[0].partition) is not None
    assert letters.requeue_all() == len(events) - 1 and letters.count() == 0

    runs: list[str] = []
    handler = EventHandler()
    idempotency = Idempotency(client, KEYS, ttl=60, lease=5.0)
    handler.register(IntentEvent.CONTEXT_CHANGED, idempotency.once(lambda e: runs.append(e.id)))
    result = replay(client, KEYS, "g", "0", partitions=PARTITIONS)
    # The first entries, delivered once already, again; the requeued ones are still new.
    assert result.partitions == PARTITIONS and result.events == len(events)
    consumer = EventConsumer(client, KEYS, handler, config, partitions=PARTITIONS)
    stats = consumer.run(install_signal_handlers=False, max_events=2 * len(events))
    # Each event twice on the stream (first and requeued), its handler once.
    assert stats.handled == 2 * len(events) and sorted(runs) == sorted(e.id for e in events)
    for partition in range(PARTITIONS):
        pending = cast(dict[str, Any], client.xpending(KEYS.event_stream(partition), "g"))
        assert pending["pending"] == 0


def test_a_cluster_client_consumes_every_partition(cluster_url: str, client: redis.Redis) -> None:
    """Through ``redis.RedisCluster`` (commands routed by slot, each partition's reader on
    the connections of the node serving it), as on a cluster of several nodes."""
    cluster = redis.RedisCluster.from_url(
        cluster_url, decode_responses=True, encoding_errors="surrogateescape", socket_timeout=5
    )
    try:
        events = [context_event(i) for i in range(12)]
        publisher = EventPublisher(cluster, KEYS, maxlen=1000, dedup_ttl=60, partitions=PARTITIONS)
        assert all(publisher.publish(events))
        seen: list[str] = []
        handler = EventHandler()
        handler.register(IntentEvent.CONTEXT_CHANGED, lambda event: seen.append(event.id))
        config = ConsumerConfig(group="g", consumer="c1", block=0.1, start_id="0")
        consumer = EventConsumer(cluster, KEYS, handler, config, partitions=PARTITIONS)
        stats = consumer.run(install_signal_handlers=False, max_events=len(events))
        assert stats.handled == len(events) and sorted(seen) == sorted(e.id for e in events)
        for partition in range(PARTITIONS):
            pending = cast(dict[str, Any], client.xpending(KEYS.event_stream(partition), "g"))
            assert pending["pending"] == 0
    finally:
        cluster.close()
