"""Consumers as processes (``intent events consume``): one killed with SIGKILL mid-handler
loses nothing, SIGTERM finishes the event in hand before exiting.

The consumer processes load their handler from this module (``--handlers``): it records
each start and end in Redis and, for events whose data says ``block``, waits in the handler
until the test sets a release key.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from intent.events import EventHandler, current_delivery
from intent.models import Event, IntentEvent
from tests.helpers import KEYS, StartConsumer, make_event, publish, settled, wait_until

pytestmark = pytest.mark.integration

STARTED = "intent:test:started"  # "consumer event_id deliveries" when a handler starts
DONE = "intent:test:done"  # the same when it returns
RELEASE = "intent:test:release"  # blocking handlers return once this key exists
ROOT = Path(__file__).resolve().parents[2]


def register_blocking(handler: EventHandler) -> None:
    """``--handlers`` target: every type, recording, blocking on ``data.block``."""
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


def marks(client: redis.Redis, key: str) -> list[tuple[str, str, int]]:
    return [
        (consumer, event_id, int(n))
        for consumer, event_id, n in (m.split(" ") for m in client.lrange(key, 0, -1))
    ]


def done_ids(client: redis.Redis) -> list[str]:
    return [event_id for _, event_id, _ in marks(client, DONE)]


class ConsumerProcess:
    def __init__(self, redis_url: str, name: str, **settings: str):
        env = {k: v for k, v in os.environ.items() if not k.startswith("INTENT_")}
        env.update(
            INTENT_REDIS_URL=redis_url,
            INTENT_CONSUMER_BLOCK="0.1",
            INTENT_CONSUMER_RETRY_BACKOFF="0.05",
            INTENT_CONSUMER_RETRY_BACKOFF_MAX="0.2",
            **{f"INTENT_CONSUMER_{k.upper()}": v for k, v in settings.items()},
        )
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "intent.cli",
                "events",
                "consume",
                "--group",
                "g",
                "--consumer",
                name,
                "--start-id",
                "0",
                "--no-builtin",
                "--handlers",
                f"{__name__}:register_blocking",
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def finish(self, timeout: float = 15) -> tuple[int, str, str]:
        out, err = self.process.communicate(timeout=timeout)
        return self.process.returncode, out, err

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.communicate(timeout=10)


@pytest.fixture
def processes(redis_client: redis.Redis) -> Iterator[list[ConsumerProcess]]:
    started: list[ConsumerProcess] = []
    yield started
    for process in started:
        process.kill()


def test_a_consumer_killed_mid_handler_loses_nothing(
    redis_client: redis.Redis,
    redis_url: str,
    processes: list[ConsumerProcess],
    start_consumer: StartConsumer,
) -> None:
    events = [make_event(i, block=(i == 5)) for i in range(20)]
    blocked = events[5].id
    publish(redis_client, events)
    first = ConsumerProcess(redis_url, "a", claim_idle="0.5")
    processes.append(first)
    wait_until(lambda: ("a", blocked, 1) in marks(redis_client, STARTED), timeout=30)
    first.process.send_signal(signal.SIGKILL)
    first.process.wait(10)
    assert blocked not in done_ids(redis_client)
    # a had read all 20 in one batch; the blocked one and those after it are pending on it.
    stranded = redis_client.xpending_range(KEYS.events_stream, "g", "-", "+", 100, "a")
    assert len(stranded) >= 15

    redis_client.set(RELEASE, "1")
    handler = EventHandler()
    register_blocking(handler)
    second = start_consumer(handler, "b", claim_idle=0.5)
    wait_until(lambda: settled(redis_client) and blocked in done_ids(redis_client), timeout=15)

    assert set(done_ids(redis_client)) == {e.id for e in events}  # nothing lost
    assert ("b", blocked, 2) in marks(redis_client, DONE)  # taken over: its 2nd delivery
    assert second.stats.claimed >= 1
    # Events after the blocked one were never finished by a: b handled each once.
    later = [event_id for event_id in done_ids(redis_client) if event_id > blocked]
    assert sorted(later) == [e.id for e in events[6:]]


def test_sigterm_finishes_the_event_in_hand_and_leaves_the_rest_for_others(
    redis_client: redis.Redis,
    redis_url: str,
    processes: list[ConsumerProcess],
    start_consumer: StartConsumer,
) -> None:
    events = [make_event(0, block=True)] + [make_event(i) for i in range(1, 5)]
    publish(redis_client, events)
    consumer = ConsumerProcess(redis_url, "a", claim_idle="30", shutdown_grace="0")
    processes.append(consumer)
    wait_until(lambda: ("a", events[0].id, 1) in marks(redis_client, STARTED), timeout=30)
    consumer.process.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    assert consumer.process.poll() is None  # still finishing the event in hand
    redis_client.set(RELEASE, "1")
    code, out, err = consumer.finish()
    assert code == 0, err
    assert '"handled": 1' in out and '"released": 4' in out
    assert done_ids(redis_client) == [events[0].id]

    # The event in hand was acknowledged; the others were released at once, uncounted.
    rows = redis_client.xpending_range(KEYS.events_stream, "g", "-", "+", 10)
    assert len(rows) == 4
    assert all(r["time_since_delivered"] >= 30_000 and r["times_delivered"] == 1 for r in rows)
    handler = EventHandler()
    register_blocking(handler)
    started = time.monotonic()
    start_consumer(handler, "b", claim_idle=30.0)
    wait_until(lambda: settled(redis_client), timeout=10)
    assert time.monotonic() - started < 5  # not after claim_idle (30 s)
    assert sorted(done_ids(redis_client)) == [e.id for e in events]


def test_sigterm_with_a_grace_period_also_handles_the_events_already_read(
    redis_client: redis.Redis, redis_url: str, processes: list[ConsumerProcess]
) -> None:
    events = [make_event(0, block=True)] + [make_event(i) for i in range(1, 5)]
    publish(redis_client, events)
    consumer = ConsumerProcess(redis_url, "a", shutdown_grace="5")
    processes.append(consumer)
    wait_until(lambda: ("a", events[0].id, 1) in marks(redis_client, STARTED), timeout=30)
    consumer.process.send_signal(signal.SIGTERM)
    redis_client.set(RELEASE, "1")
    code, out, err = consumer.finish()
    assert code == 0, err
    assert '"handled": 5' in out and '"released": 0' in out
    assert settled(redis_client)


def test_a_second_signal_stops_at_once_leaving_the_event_pending_for_others(
    redis_client: redis.Redis, redis_url: str, processes: list[ConsumerProcess]
) -> None:
    event = make_event(0, block=True)
    [stream_id] = publish(redis_client, [event])
    consumer = ConsumerProcess(redis_url, "a")
    processes.append(consumer)
    wait_until(lambda: ("a", event.id, 1) in marks(redis_client, STARTED), timeout=30)
    consumer.process.send_signal(signal.SIGINT)
    time.sleep(0.2)
    consumer.process.send_signal(signal.SIGINT)
    code, _, _ = consumer.finish()
    assert code == 130
    assert done_ids(redis_client) == []
    [row] = redis_client.xpending_range(KEYS.events_stream, "g", "-", "+", 10)
    assert (row["message_id"], row["consumer"]) == (stream_id, "a")
    assert row["time_since_delivered"] >= 60_000  # released: others take it over at once
