"""The bus over several partitions (INTENT_EVENT_PARTITIONS=4) against real Redis: each
context's events on one partition in order, the dedup of a re-published emit, consumers in
threads and as processes (one killed with its process group mid-batch), dead letters,
replay and ``intent events tail`` / ``dead`` across partitions."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from intent.admin.exposition import SharedStateCollector
from intent.events import (
    ConsumerConfig,
    DeadLetters,
    EventConsumer,
    EventHandler,
    EventPublisher,
    current_delivery,
    replay,
)
from intent.events.idempotency import Idempotency
from intent.events.partitions import event_partition
from intent.models import Event, IntentEvent
from intent.runtime import get_runtime
from tests.helpers import KEYS, Running, consumer_client, environment, wait_until

pytestmark = pytest.mark.integration

N = 4
ROOT = Path(__file__).resolve().parents[2]
STARTED = "intent:test:started"  # "consumer event_id deliveries" when a handler starts
DONE = "intent:test:done"  # the same when it returns
RELEASE = "intent:test:release"  # blocking handlers return once this key exists


def context_event(context: int, seq: int, **data: Any) -> Event:
    request_id = f"req-{context}-{seq}"
    return Event(
        id=f"evt_{context:02d}_{seq:03d}",
        type=IntentEvent.PATTERN_UPDATED,
        pattern_id="checkout",
        data={"context_id": f"ctx-{context}", "seq": seq, **data},
        timestamp="2025-01-01T00:00:00.000Z",
        request_id=request_id,
    )


def publisher(client: redis.Redis, partitions: int = N) -> EventPublisher:
    return EventPublisher(client, KEYS, maxlen=100_000, dedup_ttl=600, partitions=partitions)


def interleaved(contexts: int, per_context: int) -> list[Event]:
    return [context_event(c, s) for s in range(per_context) for c in range(contexts)]


def all_types(fn: Callable[[Event], None]) -> EventHandler:
    handler = EventHandler()
    for kind in IntentEvent:
        handler.register(kind, fn)
    return handler


def settled_everywhere(client: redis.Redis, group: str = "g") -> bool:
    for partition in range(N):
        try:
            groups = client.xinfo_groups(KEYS.event_stream(partition))
        except redis.ResponseError:
            return False
        info = next((g for g in groups if g["name"] == group), None)
        if info is None or info["lag"] != 0 or info["pending"] != 0:
            return False
    return True


@pytest.fixture
def start(redis_url: str, redis_client: redis.Redis) -> Iterator[Callable[..., Running]]:
    running: list[Running] = []

    def start_one(handler: EventHandler, consumer: str = "c1", **overrides: Any) -> Running:
        values: dict[str, Any] = {
            "group": "g",
            "block": 0.1,
            "start_id": "0",
            "retry_backoff": 0.05,
            "retry_backoff_max": 0.2,
            "claim_idle": 5.0,
            "shutdown_grace": 0.0,
            **overrides,
        }
        config = ConsumerConfig(consumer=consumer, **values)
        consumer_ = EventConsumer(consumer_client(redis_url), KEYS, handler, config, partitions=N)
        run = Running(consumer_)
        run.thread.start()
        running.append(run)
        return run

    yield start_one
    for run in running:
        if run.thread.is_alive():
            run.stop()
        run.consumer.close()
        assert run.error is None, run.error


# -- publishing -------------------------------------------------------------------------------
def test_each_contexts_events_go_to_one_partition_in_order_and_once(
    redis_client: redis.Redis,
) -> None:
    events = interleaved(contexts=12, per_context=5)
    pub = publisher(redis_client)
    for event in events:  # one emit per analysis, contexts interleaved
        assert pub.publish([event]) != [""]
    # A retried emit step (the same events again, in one batch across partitions) adds none.
    assert pub.publish(events) == [""] * len(events)
    assert redis_client.xlen(KEYS.events_stream) < len(events)  # not all on one stream
    seen: dict[str, list[int]] = defaultdict(list)
    used = set()
    for partition in range(N):
        for _, fields in redis_client.xrange(KEYS.event_stream(partition)):
            context = json.loads(fields["data"])["context_id"]
            seen[context].append(json.loads(fields["data"])["seq"])
            assert event_partition(context_event(int(context[4:]), 0), N) == partition
            used.add(partition)
    assert used == set(range(N))
    assert dict(seen) == {f"ctx-{c}": list(range(5)) for c in range(12)}
    # The published ids' marks are the partition's own.
    event = events[0]
    assert redis_client.exists(KEYS.event_seen(event.id, event_partition(event, N)))


# -- consumers ---------------------------------------------------------------------------------
def test_order_per_context_holds_for_each_consumer_across_partitions(
    redis_client: redis.Redis, start: Callable[..., Running]
) -> None:
    seen: dict[tuple[str, str], list[tuple[str, int]]] = defaultdict(list)

    def record(event: Event) -> None:
        delivery = current_delivery()
        assert delivery is not None
        key = (delivery.group, delivery.consumer)
        seen[key].append((event.data["context_id"], event.data["seq"]))

    handler = all_types(record)
    runs = [
        start(handler, "solo-1", group="one", batch_size=7),
        start(handler, "shared-1", group="two", batch_size=5),
        start(handler, "shared-2", group="two", batch_size=5),
    ]
    events = interleaved(contexts=10, per_context=20)
    pub = publisher(redis_client)
    for index in range(0, len(events), 3):  # while they consume
        pub.publish(events[index : index + 3])
    wait_until(
        lambda: settled_everywhere(redis_client, "one") and settled_everywhere(redis_client, "two"),
        timeout=30,
    )
    for run in runs:
        run.stop()
    expected = {(f"ctx-{c}", s) for c in range(10) for s in range(20)}
    # Group "one": every event once, each context's in the order published.
    solo = seen[("one", "solo-1")]
    assert sorted(solo) == sorted(expected)
    for c in range(10):
        assert [s for ctx, s in solo if ctx == f"ctx-{c}"] == list(range(20))
    # Group "two": shared between its consumers, each event once; what each consumer saw of
    # a context is in publish order.
    shared = seen[("two", "shared-1")] + seen[("two", "shared-2")]
    assert sorted(shared) == sorted(expected)
    for consumer in ("shared-1", "shared-2"):
        for c in range(10):
            mine = [s for ctx, s in seen[("two", consumer)] if ctx == f"ctx-{c}"]
            assert mine == sorted(mine)
    assert sum(run.stats.handled for run in runs) == 2 * len(events)


def test_a_backlog_on_one_partition_does_not_hold_up_the_others(
    redis_client: redis.Redis, start: Callable[..., Running]
) -> None:
    backlog = [context_event(0, s) for s in range(500)]
    busy = event_partition(backlog[0], N)
    late = next(
        context_event(c, 0) for c in range(1, 20) if event_partition(context_event(c, 0), N) != busy
    )
    pub = publisher(redis_client)
    pub.publish(backlog)
    pub.publish([late])  # after the whole backlog, on another partition
    order: list[str] = []
    start(all_types(lambda event: order.append(event.id)), batch_size=10)
    wait_until(lambda: settled_everywhere(redis_client), timeout=30)
    assert len(order) == len(backlog) + 1
    # Partitions are read in turns: the late event waited for one batch of the backlog at
    # most, not for all of it.
    assert order.index(late.id) <= 10


def test_max_events_counts_across_partitions_and_leaves_the_rest_for_others(
    redis_client: redis.Redis, redis_url: str
) -> None:
    events = interleaved(contexts=8, per_context=4)
    publisher(redis_client).publish(events)
    handled: list[str] = []
    handler = all_types(lambda event: handled.append(event.id))
    config = ConsumerConfig(group="g", consumer="first", block=0.1, start_id="0", claim_idle=5.0)
    first = EventConsumer(consumer_client(redis_url), KEYS, handler, config, partitions=N)
    stats = first.run(install_signal_handlers=False, max_events=5)
    first.close()
    assert stats.handled == 5 and len(handled) == 5
    # What it read past 5 on other partitions is released: another consumer takes it at once
    # (well before claim_idle) and nothing is handled twice.
    config = ConsumerConfig(group="g", consumer="second", block=0.1, start_id="0", claim_idle=5.0)
    second = EventConsumer(consumer_client(redis_url), KEYS, handler, config, partitions=N)
    released = stats.released
    assert released > 0
    stats = second.run(install_signal_handlers=False, max_events=len(events) - 5 - released)
    second.close()
    # Taken over at its first look, though idle for less than claim_idle: released.
    assert stats.claimed == released
    assert sorted(handled) == sorted(e.id for e in events)
    assert settled_everywhere(redis_client)


def test_dead_letters_requeue_and_replay_work_per_partition(
    redis_client: redis.Redis, redis_url: str, start: Callable[..., Running]
) -> None:
    fail = True
    handled: list[str] = []

    def handle(event: Event) -> None:
        if fail:
            raise RuntimeError(f"boom {event.id}")
        handled.append(event.id)

    events = interleaved(contexts=8, per_context=2)
    ids = publisher(redis_client).publish(events)
    run = start(all_types(handle), max_deliveries=1)
    letters = DeadLetters(consumer_client(redis_url), KEYS, 1000, partitions=N)
    wait_until(lambda: letters.count() == len(events), timeout=20)
    wait_until(lambda: settled_everywhere(redis_client), timeout=10)
    listed = letters.list(count=1000)
    assert len(listed) == len(events)
    by_event = {letter.fields["id"]: letter for letter in listed}
    for event, stream_id in zip(events, ids, strict=True):
        letter = by_event[event.id]  # on its event's partition, with its original id there
        assert (letter.partition, letter.original_id) == (event_partition(event, N), stream_id)
    assert len({letter.partition for letter in listed}) > 1
    assert letters.list(count=3) == listed[:3]  # oldest first across partitions

    fail = False
    one = listed[0]
    new_id = letters.requeue(one.dead_id, one.partition)
    assert new_id is not None
    assert redis_client.xrange(KEYS.event_stream(one.partition), new_id, new_id)
    assert letters.requeue_all() == len(events) - 1 and letters.count() == 0
    wait_until(lambda: len(handled) == len(events), timeout=20)
    assert sorted(handled) == sorted(e.id for e in events)
    wait_until(lambda: settled_everywhere(redis_client), timeout=10)
    run.stop()

    # Replay from the start: every partition rewound, every event delivered again.
    result = replay(redis_client, KEYS, "g", "0", partitions=N)
    assert result.partitions == N
    total = sum(redis_client.xlen(KEYS.event_stream(p)) for p in range(N))
    assert result.events == total == 2 * len(events)
    handled.clear()
    start(all_types(handle), "c2")
    wait_until(lambda: len(handled) == total, timeout=20)
    # Each context's events, requeued ones included, handled in their partition's order.
    for c in range(8):
        partition = event_partition(context_event(c, 0), N)
        order = [f["id"] for _, f in redis_client.xrange(KEYS.event_stream(partition))]
        mine = [i for i in handled if i.startswith(f"evt_{c:02d}_")]
        assert mine == [i for i in order if i.startswith(f"evt_{c:02d}_")]


def test_idempotent_handlers_run_once_per_event_across_partitions(
    redis_client: redis.Redis, redis_url: str, start: Callable[..., Running]
) -> None:
    runs: list[str] = []
    idempotency = Idempotency(redis.Redis.from_url(redis_url), KEYS, ttl=60, lease=5.0)
    handler = EventHandler()
    handler.register(IntentEvent.PATTERN_UPDATED, idempotency.once(lambda e: runs.append(e.id)))
    events = interleaved(contexts=6, per_context=2)
    pub = publisher(redis_client)
    pub.publish(events)
    for event in events:  # their marks lost: published a second time
        redis_client.delete(KEYS.event_seen(event.id, event_partition(event, N)))
    assert all(pub.publish(events))
    run = start(handler)
    wait_until(lambda: settled_everywhere(redis_client), timeout=20)
    run.stop()
    assert run.stats.handled == 2 * len(events)
    assert sorted(runs) == sorted(e.id for e in events)


# -- processes ---------------------------------------------------------------------------------
def register_blocking(handler: EventHandler) -> None:
    """``--handlers`` target: records each start and end, blocking on ``data.block``."""
    client = redis.Redis.from_url(os.environ["INTENT_REDIS_URL"], decode_responses=True)

    def handle(event: Event) -> None:
        delivery = current_delivery()
        assert delivery is not None
        mark = f"{delivery.consumer} {event.id} {delivery.deliveries}"
        client.rpush(STARTED, mark)
        if event.data.get("block"):
            while not client.exists(RELEASE):
                time.sleep(0.01)
        client.rpush(DONE, mark)

    for kind in IntentEvent:
        handler.register(kind, handle)


def cli_env(redis_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("INTENT_")}
    return {**env, "INTENT_REDIS_URL": redis_url, "INTENT_EVENT_PARTITIONS": str(N), **extra}


def test_a_consumer_killed_mid_batch_leaves_entries_on_several_partitions_to_another(
    redis_client: redis.Redis, redis_url: str, start: Callable[..., Running]
) -> None:
    events = [context_event(c, s, block=(c == 0 and s == 0)) for s in range(5) for c in range(8)]
    blocked = events[0].id
    publisher(redis_client).publish(events)
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "intent.cli", "events", "consume", "--group", "g"),
            *("--consumer", "a", "--start-id", "0", "--no-builtin"),
            *("--handlers", f"{__name__}:register_blocking"),
        ],
        cwd=ROOT,
        env=cli_env(
            redis_url,
            INTENT_CONSUMER_BLOCK="0.1",
            INTENT_CONSUMER_CLAIM_IDLE="0.5",
            INTENT_CONSUMER_RETRY_BACKOFF="0.05",
        ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        started = lambda: [m.split(" ")[1] for m in redis_client.lrange(STARTED, 0, -1)]  # noqa: E731
        wait_until(lambda: blocked in started(), timeout=30, what="the blocking event")

        def stranded() -> dict[int, int]:
            return {
                p: len(redis_client.xpending_range(KEYS.event_stream(p), "g", "-", "+", 100, "a"))
                for p in range(N)
            }

        # Its reads of the other partitions were out while it handled the blocked batch.
        wait_until(lambda: sum(1 for n in stranded().values() if n) >= 2, timeout=10)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)
    done = [m.split(" ")[1] for m in redis_client.lrange(DONE, 0, -1)]
    assert blocked not in done
    left = stranded()
    assert sum(1 for n in left.values() if n) >= 2

    redis_client.set(RELEASE, "1")
    handler = EventHandler()
    register_blocking(handler)
    second = start(handler, "b", claim_idle=0.5)
    wait_until(lambda: settled_everywhere(redis_client), timeout=30)
    second.stop()
    done = [m.split(" ")[1] for m in redis_client.lrange(DONE, 0, -1)]
    assert set(done) == {e.id for e in events}  # nothing lost
    assert second.stats.claimed >= sum(left.values())
    assert f"b {blocked} 2" in redis_client.lrange(DONE, 0, -1)  # its 2nd delivery


def run_cli(redis_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "intent.cli", "events", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env=cli_env(redis_url),
        cwd=ROOT,
    )


def test_the_cli_tails_lists_and_requeues_across_partitions(
    redis_client: redis.Redis, redis_url: str
) -> None:
    events = interleaved(contexts=6, per_context=3)
    publisher(redis_client).publish(events)
    out = run_cli(redis_url, "tail", "--json", "--from", "0", "--count", str(len(events)))
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert sorted(row["id"] for row in rows) == sorted(e.id for e in events)
    by_id = {e.id: e for e in events}
    for row in rows:
        assert row["partition"] == event_partition(by_id[row["id"]], N)
    for c in range(6):  # each context in order
        mine = [row["data"]["seq"] for row in rows if row["data"]["context_id"] == f"ctx-{c}"]
        assert mine == [0, 1, 2]

    # Dead letters on two partitions: listed as P/ID, requeued by P/ID onto their partition.
    far = next(e for e in events if event_partition(e, N) != event_partition(events[0], N))
    letters = DeadLetters(consumer_client(redis_url), KEYS, 1000, partitions=N)
    for event in (events[0], far):
        partition = event_partition(event, N)
        stream = KEYS.event_stream(partition)
        redis_client.xgroup_create(stream, "g", id="0", mkstream=True)
        entry_id, fields = next(
            (i, f)
            for i, f in redis_client.xreadgroup("g", "c", {stream: ">"}, count=100)[0][1]
            if f["id"] == event.id
        )
        letters.add("g", entry_id, {**fields, "dead_reason": "failed"}, partition)
    out = run_cli(redis_url, "dead", "--json")
    listed = json.loads(out.stdout)
    assert {(d["partition"], d["fields"]["id"]) for d in listed} == {
        (event_partition(e, N), e.id) for e in (events[0], far)
    }
    text = run_cli(redis_url, "dead").stdout
    refs = [f"{d['partition']}/{d['dead_id']}" for d in listed]
    assert all(ref in text for ref in refs)
    bad = run_cli(redis_url, "dead", "requeue", f"{N}/1-0")
    assert bad.returncode == 1 and "partition 4 does not exist" in bad.stderr
    out = run_cli(redis_url, "dead", "requeue", *refs)
    assert out.returncode == 0, out.stderr
    assert letters.count() == 0
    for d in listed:  # back on its own partition: there twice now, first and requeued
        stream = redis_client.xrange(KEYS.event_stream(d["partition"]))
        assert [f["id"] for _, f in stream].count(d["fields"]["id"]) == 2


def test_the_runtime_publishes_by_partition_and_the_gauge_sums_every_partition(
    redis_client: redis.Redis, redis_url: str
) -> None:
    events = interleaved(contexts=6, per_context=1)
    with environment({"INTENT_EVENT_PARTITIONS": str(N), "INTENT_REDIS_URL": redis_url}):
        rt = get_runtime()
        assert rt.publisher.partitions == N
        assert all(rt.publisher.publish(events))
        for event in events:
            stream = KEYS.event_stream(event_partition(event, N))
            assert event.id in {f["id"] for _, f in redis_client.xrange(stream)}
        letters = DeadLetters(consumer_client(redis_url), KEYS, 1000, partitions=N)
        used = sorted({event_partition(e, N) for e in events})
        for partition in used:
            letters.client.xadd(KEYS.dead_letter_stream(partition), {"dead_reason": "failed"})
        gauges = {
            sample.labels["stream"]: sample.value
            for metric in SharedStateCollector(rt).collect()
            if metric.name == "intent_dead_letters"
            for sample in metric.samples
        }
        assert gauges["events"] == len(used) > 1


def test_dead_letters_page_through_the_same_id_on_two_partitions(
    redis_client: redis.Redis,
) -> None:
    """Each partition's dead letters have ids of their own stream: the same id on two
    partitions is two letters, and paging from the first reaches the second."""
    letters = DeadLetters(redis_client, KEYS, 1000, partitions=N)
    for partition in (2, 0):  # written out of order
        for dead_id in ("5-0", "9-0"):
            redis_client.xadd(
                KEYS.dead_letter_stream(partition),
                {"id": f"evt-{partition}-{dead_id}", "dead_reason": "handler_error"},
                id=dead_id,
            )
    order = [("5-0", 0), ("5-0", 2), ("9-0", 0), ("9-0", 2)]
    assert [(x.dead_id, x.partition) for x in letters.list(count=10)] == order
    paged: list[tuple[str, int]] = []
    page = letters.list(count=1)
    while page:
        paged += [(x.dead_id, x.partition) for x in page]
        page = letters.list(count=1, after=page[-1].dead_id, after_partition=page[-1].partition)
    assert paged == order
    # Without the partition the cursor is an id: after it on every partition.
    assert [(x.dead_id, x.partition) for x in letters.list(after="5-0")] == order[2:]
    for wrong in (-1, N):
        with pytest.raises(ValueError, match="after_partition"):
            letters.list(after="5-0", after_partition=wrong)
