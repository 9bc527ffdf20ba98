"""The consumer runner against real Redis, consumers in threads: retries and dead letters,
malformed and unknown entries, several consumers in a group, idempotency, replay,
takeover of stale entries and the built-in handler."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis

from intent import connections
from intent.events import (
    ConsumerConfig,
    DeadLetters,
    EventConsumer,
    EventHandler,
    EventPublisher,
    RejectEvent,
    ReplayError,
    current_delivery,
    event_from_fields,
    register_builtin_handlers,
    replay,
)
from intent.events.idempotency import EventInProgress, Idempotency
from intent.models import Context, Event, IntentEvent
from intent.runtime import get_runtime, reset_runtime
from tests.helpers import (
    KEYS,
    Running,
    StartConsumer,
    consumer_client,
    make_event,
    publish,
    settled,
    wait_until,
)

pytestmark = pytest.mark.integration

HANDLED = "intent:test:handled"  # a list of "consumer event_id" per handler run


def handled(client: redis.Redis) -> list[str]:
    """Event ids in the order handlers ran them."""
    return [item.split(" ")[1] for item in client.lrange(HANDLED, 0, -1)]


def recorder(client: redis.Redis) -> Callable[[Event], None]:
    def record(event: Event) -> None:
        delivery = current_delivery()
        assert delivery is not None
        client.rpush(HANDLED, f"{delivery.consumer} {event.id}")

    return record


def all_types(fn: Callable[[Event], None]) -> EventHandler:
    handler = EventHandler()
    for kind in IntentEvent:
        handler.register(kind, fn)
    return handler


def pending(client: redis.Redis, group: str = "g") -> int:
    return int(client.xpending(KEYS.events_stream, group)["pending"])


def dead(client: redis.Redis) -> list[Any]:
    return DeadLetters(client, KEYS, 1000).list()


# -- publishing ---------------------------------------------------------------------------------
def test_the_guides_publish_event_adds_an_event_once(redis_client: redis.Redis) -> None:
    publisher = EventPublisher(redis_client, KEYS, maxlen=1000, dedup_ttl=60)
    event = make_event(1)
    assert publisher.publish_event(event) is True
    assert publisher.publish_event(event) is False  # a retried emit step adds no duplicate
    [(_, fields)] = redis_client.xrange(KEYS.events_stream)
    assert event_from_fields(fields) == event


# -- retries and dead letters -----------------------------------------------------------------
def test_a_failing_handler_is_retried_with_backoff_then_dead_lettered_and_others_go_on(
    redis_client: redis.Redis, start_consumer: StartConsumer
) -> None:
    attempts: list[tuple[float, int]] = []
    record = recorder(redis_client)

    def handle(event: Event) -> None:
        if event.data.get("fail"):
            delivery = current_delivery()
            assert delivery is not None
            attempts.append((time.monotonic(), delivery.deliveries))
            raise RuntimeError(f"cannot handle {event.id}")
        record(event)

    events = [make_event(0, fail=True)] + [make_event(i) for i in range(1, 11)]
    stream_ids = publish(redis_client, events)
    run = start_consumer(all_types(handle), max_deliveries=3, retry_backoff=0.1)
    wait_until(lambda: len(dead(redis_client)) == 1)
    wait_until(lambda: settled(redis_client))

    assert sorted(handled(redis_client)) == [e.id for e in events[1:]]
    assert [n for _, n in attempts] == [1, 2, 3]
    gaps = [later - earlier for (earlier, _), (later, _) in itertools.pairwise(attempts)]
    assert gaps[0] >= 0.075 and gaps[1] >= 0.15  # 0.1 s then 0.2 s, less at most 25 % jitter
    [letter] = dead(redis_client)
    assert letter.reason == "failed"
    assert letter.error == "RuntimeError: cannot handle evt_0000"
    assert (letter.group, letter.consumer, letter.deliveries) == ("g", "c1", 3)
    assert letter.original_id == stream_ids[0]
    assert (
        letter.fields == redis_client.xrange(KEYS.events_stream, stream_ids[0], stream_ids[0])[0][1]
    )
    assert run.stats.dead_lettered == 1 and run.stats.failures == 3 and run.stats.retries == 2


def test_a_handler_that_succeeds_on_a_retry_is_acknowledged_once(
    redis_client: redis.Redis, start_consumer: StartConsumer
) -> None:
    deliveries: list[int] = []

    def flaky(event: Event) -> None:
        delivery = current_delivery()
        assert delivery is not None
        deliveries.append(delivery.deliveries)
        if delivery.deliveries < 3:
            raise ConnectionError("downstream not ready")

    publish(redis_client, [make_event(1)])
    run = start_consumer(all_types(flaky))
    wait_until(lambda: run.stats.handled == 1)
    assert deliveries == [1, 2, 3]
    assert settled(redis_client) and dead(redis_client) == []


def test_reject_event_dead_letters_at_once(
    redis_client: redis.Redis, start_consumer: StartConsumer
) -> None:
    def reject(event: Event) -> None:
        raise RejectEvent("no such customer")

    publish(redis_client, [make_event(1)])
    start_consumer(all_types(reject))
    wait_until(lambda: len(dead(redis_client)) == 1)
    [letter] = dead(redis_client)
    assert (letter.reason, letter.error, letter.deliveries) == ("rejected", "no such customer", 1)
    wait_until(lambda: settled(redis_client))


# -- malformed and unknown entries ------------------------------------------------------------
def test_malformed_entries_are_dead_lettered_with_the_reason_and_never_stop_the_consumer(
    redis_client: redis.Redis, start_consumer: StartConsumer
) -> None:
    good = make_event(1)
    stream = KEYS.events_stream
    redis_client.xgroup_create(stream, "g", "0", mkstream=True)
    valid = {
        "id": "evt_x",
        "type": "context_changed",
        "pattern_id": "p",
        "request_id": "r",
        "timestamp": "t",
        "source": "s",
        "schema_version": "1",
        "data": "{}",
    }
    bad = [
        {"id": "evt_m", "type": "context_changed"},
        {**valid, "data": "{not json"},
        {**valid, "schema_version": "one"},
        {**valid, "data": "[1, 2]"},
    ]
    bad_ids = [redis_client.xadd(stream, fields) for fields in bad]  # type: ignore[arg-type]
    publish(redis_client, [good])
    start_consumer(all_types(recorder(redis_client)))
    wait_until(lambda: len(dead(redis_client)) == 4 and handled(redis_client) == [good.id])
    letters = {letter.original_id: letter for letter in dead(redis_client)}
    assert set(letters) == set(bad_ids)
    assert all(letter.reason == "malformed" for letter in letters.values())
    assert "pattern_id: Field required" in letters[bad_ids[0]].error
    assert "data: is not valid JSON" in letters[bad_ids[1]].error
    assert "schema_version" in letters[bad_ids[2]].error
    assert "data" in letters[bad_ids[3]].error
    assert letters[bad_ids[1]].fields == bad[1]
    wait_until(lambda: settled(redis_client))


def test_entries_of_undecodable_bytes_or_deep_data_are_dead_lettered_bytes_intact(
    redis_url: str, redis_client: redis.Redis, start_consumer: StartConsumer
) -> None:
    """The five entries that stopped the consumer for good: data nested 1,000 deep, and a
    byte that is not UTF-8 in a field name, in a value, in data, in the type."""
    raw = connections.redis_client(redis_url)  # bytes in, bytes out (a cluster's too)
    stream = KEYS.events_stream
    redis_client.xgroup_create(stream, "g", "0", mkstream=True)
    valid = {
        b"id": b"evt_x",
        b"type": b"context_changed",
        b"pattern_id": b"p",
        b"request_id": b"r",
        b"timestamp": b"t",
        b"source": b"s",
        b"schema_version": b"1",
        b"data": b"{}",
    }
    bad = [
        {**valid, b"data": b"[" * 1000 + b"]" * 1000},
        {**valid, b"pattern\xff": b"p"},
        {**valid, b"pattern_id": b"p\xfe"},
        {**valid, b"data": b'{"k": "\xc3\x28"}'},
        {**valid, b"type": b"\xff"},
    ]
    bad_ids = [raw.xadd(stream, fields).decode() for fields in bad]  # type: ignore[arg-type]
    good = make_event(1)
    publish(redis_client, [good])
    start_consumer(all_types(recorder(redis_client)))
    reader = consumer_client(redis_url)  # as `intent events dead` reads them
    wait_until(lambda: len(dead(reader)) == 5 and handled(redis_client) == [good.id])
    letters = {letter.original_id: letter for letter in dead(reader)}
    reader.close()
    assert set(letters) == set(bad_ids)
    assert "nested deeper" in letters[bad_ids[0]].error
    assert all("UTF-8" in letters[i].error for i in bad_ids[1:])
    # The dead letters keep the original bytes, as they were in the stream.
    for dead_id, original in zip(bad_ids, bad, strict=True):
        (entry,) = raw.xrange(KEYS.dead_letters, letters[dead_id].dead_id, letters[dead_id].dead_id)
        assert all(entry[1][key] == value for key, value in original.items())
    wait_until(lambda: settled(redis_client))
    raw.close()


@pytest.mark.parametrize("policy", ["ack", "dead_letter"])
def test_unknown_types_follow_the_policy(
    redis_client: redis.Redis, start_consumer: StartConsumer, policy: str
) -> None:
    stream = KEYS.events_stream
    redis_client.xgroup_create(stream, "g", "0", mkstream=True)
    fields = {**{k: str(v) for k, v in make_event(9).model_dump().items()}, "data": "{}"}
    unknown_id = redis_client.xadd(stream, {**fields, "type": "order_shipped"})  # type: ignore[arg-type]
    publish(redis_client, [make_event(1)])
    run = start_consumer(all_types(recorder(redis_client)), unknown_type=policy)
    wait_until(lambda: handled(redis_client) == ["evt_0001"])
    wait_until(lambda: settled(redis_client))
    letters = dead(redis_client)
    if policy == "ack":
        assert letters == [] and run.stats.skipped == 1
    else:
        [letter] = letters
        assert (letter.reason, letter.original_id) == ("unknown_type", unknown_id)
        assert letter.error == "unknown event type 'order_shipped'"


def test_a_type_without_handlers_in_the_group_is_acknowledged(
    redis_client: redis.Redis, start_consumer: StartConsumer
) -> None:
    handler = EventHandler()
    handler.register(IntentEvent.CONTEXT_CHANGED, recorder(redis_client))
    publish(redis_client, [make_event(1, IntentEvent.PATTERN_DETECTED), make_event(2)])
    run = start_consumer(handler)
    wait_until(lambda: handled(redis_client) == ["evt_0002"] and settled(redis_client))
    assert run.stats.skipped == 1 and dead(redis_client) == []


# -- several consumers, idempotency -------------------------------------------------------------
def test_two_consumers_share_a_group_and_idempotent_handlers_act_once_under_redelivery(
    redis_client: redis.Redis, start_consumer: StartConsumer
) -> None:
    idempotency = Idempotency(redis_client, KEYS, ttl=600, lease=5.0)
    record = recorder(redis_client)

    @idempotency.once
    def act(event: Event) -> None:
        record(event)
        time.sleep(0.001)  # some work, so both consumers get batches

    events = [make_event(i) for i in range(300)]
    first = start_consumer(all_types(act), "a", batch_size=10)
    second = start_consumer(all_types(act), "b", batch_size=10)
    for start in range(0, 300, 50):
        publish(redis_client, events[start : start + 50])
    wait_until(lambda: len(handled(redis_client)) == 300 and settled(redis_client))
    by_consumer = [item.split(" ")[0] for item in redis_client.lrange(HANDLED, 0, -1)]
    assert sorted(handled(redis_client)) == [e.id for e in events]
    assert by_consumer.count("a") > 0 and by_consumer.count("b") > 0

    # Forced redelivery: every entry again (replay), and one event as a second entry.
    replay(redis_client, KEYS, "g", "0")
    redis_client.xadd(KEYS.events_stream, redis_client.xrange(KEYS.events_stream, count=1)[0][1])
    wait_until(lambda: first.stats.handled + second.stats.handled == 601)
    wait_until(lambda: settled(redis_client))
    assert sorted(handled(redis_client)) == [e.id for e in events]  # still once each


def test_an_event_in_progress_elsewhere_is_retried_not_acknowledged(
    redis_client: redis.Redis, start_consumer: StartConsumer
) -> None:
    idempotency = Idempotency(redis_client, KEYS, ttl=600, lease=5.0)
    record = recorder(redis_client)
    in_progress: list[str] = []

    @idempotency.once
    def slow(event: Event) -> None:
        record(event)
        time.sleep(0.8)

    def handle(event: Event) -> None:
        try:
            slow(event)
        except EventInProgress:
            in_progress.append(event.id)
            raise

    # The same event as two stream entries, handled by two consumers at the same time: b
    # reads the second entry while a is still in the handler with the first.
    [event] = [make_event(1)]
    publish(redis_client, [event])
    start_consumer(all_types(handle), "a")
    wait_until(lambda: handled(redis_client) == [event.id])
    time.sleep(0.15)  # a's read-ahead (BLOCK 0.1 s) has returned empty: a reads no more now
    start_consumer(all_types(handle), "b")
    redis_client.xadd(KEYS.events_stream, redis_client.xrange(KEYS.events_stream)[0][1])
    wait_until(lambda: settled(redis_client))
    assert handled(redis_client) == ["evt_0001"]
    assert in_progress == ["evt_0001"]
    assert idempotency.is_done("evt_0001", group="g")


def test_idempotency_gives_its_claim_back_on_failure_and_a_dead_claim_lapses(
    redis_client: redis.Redis,
) -> None:
    idempotency = Idempotency(redis_client, KEYS, ttl=600, lease=0.3, group="g")
    event = make_event(1)
    runs: list[str] = []

    def boom(event: Event) -> None:
        runs.append("boom")
        raise ValueError("half-way")

    with pytest.raises(ValueError):
        idempotency.run(event, boom)
    assert idempotency.run(event, lambda e: runs.append("ok")) is True  # claim was released
    assert idempotency.run(event, lambda e: runs.append("again")) is False
    assert runs == ["boom", "ok"]
    assert 590 < redis_client.ttl(idempotency.key(event.id)) <= 600

    # A run that died holding its claim: others wait for the lease, then run.
    other = make_event(2)
    redis_client.set(idempotency.key(other.id), "run:dead-process", px=300)
    with pytest.raises(EventInProgress) as info:
        idempotency.run(other, lambda e: runs.append("too early"))
    assert 0 < info.value.delay <= 0.3
    time.sleep(info.value.delay + 0.05)
    assert idempotency.run(other, lambda e: runs.append("after lease")) is True
    assert runs[-1] == "after lease"


# -- replay ----------------------------------------------------------------------------------
def test_replay_redelivers_exactly_the_events_after_the_id(
    redis_client: redis.Redis, start_consumer: StartConsumer
) -> None:
    events = [make_event(i) for i in range(10)]
    stream_ids = publish(redis_client, events)
    run = start_consumer(all_types(recorder(redis_client)))
    wait_until(lambda: len(handled(redis_client)) == 10 and settled(redis_client))
    run.stop()
    redis_client.delete(HANDLED)

    result = replay(redis_client, KEYS, "g", stream_ids[3])
    assert (result.events, result.previous_last_id) == (6, stream_ids[-1])
    start_consumer(all_types(recorder(redis_client)), "c2")
    wait_until(lambda: len(handled(redis_client)) == 6)
    time.sleep(0.3)  # nothing more arrives
    assert handled(redis_client) == [e.id for e in events[4:]]


def test_replay_refuses_a_missing_group_and_an_id_ahead_of_the_group(
    redis_client: redis.Redis,
) -> None:
    ids = publish(redis_client, [make_event(1), make_event(2)])
    with pytest.raises(ReplayError, match="no consumer group"):
        replay(redis_client, KEYS, "nobody", "0")
    redis_client.xgroup_create(KEYS.events_stream, "g", ids[0])
    with pytest.raises(ReplayError, match="only goes back"):
        replay(redis_client, KEYS, "g", ids[1])
    with pytest.raises(ReplayError, match="not a stream id"):
        replay(redis_client, KEYS, "g", "$")


# -- takeover -------------------------------------------------------------------------------
def test_entries_delivered_too_often_without_outcome_are_dead_lettered_unrun(
    redis_client: redis.Redis, start_consumer: StartConsumer
) -> None:
    stream = KEYS.events_stream
    [poison_id] = publish(redis_client, [make_event(1)])
    redis_client.xgroup_create(stream, "g", "0")
    redis_client.xreadgroup("g", "ghost", {stream: ">"})
    for _ in range(4):  # four consumers took it over and died: 5 deliveries
        redis_client.xclaim(stream, "g", "ghost", 0, [poison_id])
    time.sleep(0.25)
    ran: list[str] = []
    start_consumer(all_types(lambda e: ran.append(e.id)), claim_idle=0.2, max_deliveries=5)
    wait_until(lambda: len(dead(redis_client)) == 1)
    [letter] = dead(redis_client)
    assert (letter.reason, letter.deliveries, letter.original_id) == ("abandoned", 6, poison_id)
    assert ran == []


def test_own_pending_entries_are_retried_on_start_without_waiting_for_takeover(
    redis_client: redis.Redis, start_consumer: StartConsumer
) -> None:
    stream = KEYS.events_stream
    publish(redis_client, [make_event(i) for i in range(3)])
    redis_client.xgroup_create(stream, "g", "0")
    redis_client.xreadgroup("g", "c1", {stream: ">"})  # a previous run of c1 read them
    run = start_consumer(all_types(recorder(redis_client)), "c1", claim_idle=30.0)
    wait_until(lambda: len(handled(redis_client)) == 3, timeout=5)
    wait_until(lambda: settled(redis_client))
    assert run.stats.retries == 3 and run.stats.claimed == 0


def test_a_slow_batch_keeps_its_entries_from_being_taken_over(
    redis_client: redis.Redis, start_consumer: StartConsumer
) -> None:
    record = recorder(redis_client)

    def slow(event: Event) -> None:
        record(event)
        time.sleep(0.2)

    publish(redis_client, [make_event(i) for i in range(6)])
    start_consumer(all_types(slow), "a", claim_idle=0.5)
    wait_until(lambda: len(handled(redis_client)) == 1)
    # b looks for stale entries every 0.25 s; a's batch takes 1.2 s, over twice claim_idle.
    start_consumer(all_types(slow), "b", claim_idle=0.5)
    wait_until(lambda: settled(redis_client) and len(handled(redis_client)) >= 6)
    time.sleep(0.3)
    assert sorted(handled(redis_client)) == [f"evt_{i:04d}" for i in range(6)]  # once each


# -- built-in handler ----------------------------------------------------------------------------
def test_context_changed_invalidates_the_cached_context(
    redis_client: redis.Redis, start_consumer: StartConsumer
) -> None:
    reset_runtime()
    cache = get_runtime().context_cache
    for context_id in ("ctx-1", "ctx-2"):
        cache.put(Context(context_id=context_id, version=1, attributes={}, updated_at="t"))
    publish(redis_client, [make_event(1), make_event(7, IntentEvent.PATTERN_DETECTED)])
    start_consumer(register_builtin_handlers(EventHandler(), get_runtime().context_cache))
    wait_until(lambda: settled(redis_client))
    assert cache.get("ctx-1") is None
    assert cache.get("ctx-2") is not None


def test_a_context_changed_event_without_context_id_is_rejected(
    redis_client: redis.Redis, start_consumer: StartConsumer
) -> None:
    event = make_event(1).model_copy(update={"data": {"version": 3}})
    publish(redis_client, [event])
    start_consumer(register_builtin_handlers(EventHandler(), get_runtime().context_cache))
    wait_until(lambda: len(dead(redis_client)) == 1)
    assert dead(redis_client)[0].reason == "rejected"


def test_a_consumer_stops_with_max_events_and_acknowledges_them(
    redis_client: redis.Redis, redis_url: str
) -> None:
    publish(redis_client, [make_event(i) for i in range(25)])
    client = consumer_client(redis_url)
    config = ConsumerConfig(group="g", consumer="c", batch_size=10, start_id="0", block=0.1)
    stats = EventConsumer(client, KEYS, all_types(lambda e: None), config).run(
        install_signal_handlers=False, max_events=20
    )
    client.close()
    assert stats.handled == 20
    info = redis_client.xinfo_groups(KEYS.events_stream)[0]
    assert (info["pending"], info["entries-read"]) == (0, 20)


def test_the_consumer_needs_a_decoding_client_with_a_long_enough_timeout(redis_url: str) -> None:
    config = ConsumerConfig(group="g", consumer="c", block=1.0)
    with pytest.raises(ValueError, match="decode_responses"):
        EventConsumer(connections.redis_client(redis_url), KEYS, EventHandler(), config)
    strict = connections.redis_client(redis_url, decode_responses=True, socket_timeout=5)
    with pytest.raises(ValueError, match="surrogateescape"):
        EventConsumer(strict, KEYS, EventHandler(), config)
    short = consumer_client(redis_url, socket_timeout=0.5)
    with pytest.raises(ValueError, match="socket_timeout"):
        EventConsumer(short, KEYS, EventHandler(), config)


def test_the_consumer_outlives_a_redis_restart_that_lost_its_group() -> None:
    from intent.embedded import EmbeddedRedis

    with EmbeddedRedis() as server:
        client = redis.Redis.from_url(server.url, decode_responses=True, socket_timeout=5)
        seen: list[str] = []
        config = ConsumerConfig(group="g", consumer="c", block=0.1, start_id="0")
        consumer = EventConsumer(
            consumer_client(server.url, socket_timeout=2),
            KEYS,
            all_types(lambda event: seen.append(event.id)),
            config,
        )
        run = Running(consumer)
        run.thread.start()
        try:
            publish(client, [make_event(1)])
            wait_until(lambda: seen == ["evt_0001"])
            server.stop()  # the consumer sees connection errors and keeps retrying
            time.sleep(0.5)
            server.start()  # empty: no stream, no group
            publish(client, [make_event(2)])
            wait_until(lambda: seen == ["evt_0001", "evt_0002"], timeout=15)
        finally:
            run.stop()
            client.close()
            consumer.client.close()
        assert run.error is None
