"""Events per second handled by one consumer (intent.events) with a no-op handler against a
bare XREADGROUP/XACK loop, over the same events, in one run.

Starts its own Redis (embedded unless INTENT_REDIS_URL is set) and fills a stream with N
events published by EventPublisher, the four types in turn with the data the pipeline
gives them. Each round, each variant reads all N through a consumer group of its own
(created at 0, destroyed after), same batch size; variants alternate order over the rounds
and each rate is the median of its rounds, so a noisy machine shifts both alike. The
consumer's time is its whole ``run()``: group check, start-up look for stale entries, the
reads, parsing every entry into an Event, dispatch, acknowledgements, shutdown.

With ``--partitions P`` the events are published over P partition streams (by context, 50
contexts) and both variants read all of them: the bare loop one stream per command in
turns (as a Redis Cluster requires), the consumer with its lane per partition.

    python bench/events.py [--n 20000] [--rounds 7] [--batch 100] [--partitions 1] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import machine, redis_url
from intent.events import ConsumerConfig, EventConsumer, EventHandler, EventPublisher
from intent.keys import Keys
from intent.models import Event, IntentEvent


def sample_event(index: int, tag: str) -> Event:
    """An event as the pipeline publishes it (data per type as intent.events builds it)."""
    kinds = list(IntentEvent)
    kind = kinds[index % len(kinds)]
    context_id = f"ctx-{index % 50}"
    data: dict[str, object] = {"context_id": context_id}
    if kind in (IntentEvent.PATTERN_DETECTED, IntentEvent.PATTERN_UPDATED):
        data.update(label="purchase_intent", confidence=0.82)
    if kind is IntentEvent.PATTERN_UPDATED:
        data.update(previous_label="browsing", previous_confidence=0.64)
    if kind is IntentEvent.CONTEXT_CHANGED:
        data.update(context_hash="9f2c4e1a7b3d5f60" * 2, version=7)
    if kind is IntentEvent.PREDICTION_RECEIVED:
        data.update(
            model_version="ref-1.0.0",
            predictions=[
                {"label": "purchase_intent", "confidence": 0.82},
                {"label": "browsing", "confidence": 0.12},
                {"label": "support", "confidence": 0.06},
            ],
        )
    return Event(
        id=f"evt_{tag}_{index:08d}",
        type=kind,
        pattern_id="checkout",
        data=data,
        timestamp="2025-01-01T12:00:00.000Z",
        request_id=f"bench-{tag}-{index // 4}",
    )


def fill(client: redis.Redis, keys: Keys, n: int, tag: str, partitions: int) -> None:
    publisher = EventPublisher(client, keys, maxlen=n * 2, dedup_ttl=600, partitions=partitions)
    for start in range(0, n, 500):
        publisher.publish([sample_event(i, tag) for i in range(start, min(n, start + 500))])


def bare_round(
    client: redis.Redis, keys: Keys, group: str, n: int, batch: int, partitions: int
) -> float:
    """The baseline: read a batch, acknowledge it, nothing else (each partition in turn)."""
    streams = [keys.event_stream(p) for p in range(partitions)]
    for stream in streams:
        client.xgroup_create(stream, group, "0", mkstream=True)
    started = time.perf_counter()
    done = 0
    live = list(streams) if partitions > 1 else []
    while partitions == 1 and done < n:  # the loop as it was before partitions
        stream = streams[0]
        reply = client.xreadgroup(group, "bare", {stream: ">"}, count=batch, block=1000)
        if not reply:
            break
        entries = reply[0][1]
        client.xack(stream, group, *(entry_id for entry_id, _ in entries))
        done += len(entries)
    while done < n and live:
        for stream in list(live):
            if done >= n:
                break
            # An empty stream is done (all were filled before): no BLOCK.
            count = min(batch, n - done)
            reply = client.xreadgroup(group, "bare", {stream: ">"}, count=count)
            if not reply or not reply[0][1]:
                live.remove(stream)
                continue
            entries = reply[0][1]
            client.xack(stream, group, *(entry_id for entry_id, _ in entries))
            done += len(entries)
    elapsed = time.perf_counter() - started
    for stream in streams:
        client.xgroup_destroy(stream, group)
    if done != n:
        raise RuntimeError(f"bare loop read {done} of {n} events")
    return n / elapsed


def consumer_round(
    client: redis.Redis, keys: Keys, group: str, n: int, batch: int, partitions: int
) -> float:
    """The runner, with a no-op handler on every type and no idempotency."""
    handler = EventHandler()
    for kind in IntentEvent:
        handler.register(kind, lambda event: None)
    config = ConsumerConfig(group=group, consumer="runner", batch_size=batch, start_id="0")
    consumer = EventConsumer(client, keys, handler, config, partitions=partitions)
    started = time.perf_counter()
    stats = consumer.run(install_signal_handlers=False, max_events=n)
    elapsed = time.perf_counter() - started
    for partition in range(partitions):
        client.xgroup_destroy(keys.event_stream(partition), group)
    if stats.handled != n:
        raise RuntimeError(f"consumer handled {stats.handled} of {n} events: {stats}")
    return n / elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20000, help="events in the stream")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--batch", type=int, default=100, help="entries per read (COUNT)")
    parser.add_argument("--partitions", type=int, default=1, help="partition streams")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()

    owned = contextlib.ExitStack()  # the embedded Valkey, when this run starts one
    url = owned.enter_context(redis_url())
    tag = uuid.uuid4().hex[:8]
    keys = Keys(f"bench:{tag}:")
    # Both variants get the same client settings: decoded replies, a timeout above BLOCK.
    client = redis.Redis.from_url(
        url, decode_responses=True, socket_timeout=5, encoding_errors="surrogateescape"
    )
    try:
        fill(client, keys, args.n, tag, args.partitions)
        variants: dict[str, Callable[[redis.Redis, Keys, str, int, int, int], float]] = {
            "bare": bare_round,
            "consumer": consumer_round,
        }
        for label, run in variants.items():  # warm up: connections, imports, validators
            run(client, keys, f"warm-{label}", min(args.n, 2000), args.batch, args.partitions)
        samples: dict[str, list[float]] = {label: [] for label in variants}
        for index in range(max(1, args.rounds)):
            order = list(variants.items())
            if index % 2:
                order.reverse()
            for label, run in order:
                samples[label].append(
                    run(client, keys, f"{label}-{index}", args.n, args.batch, args.partitions)
                )
        client.delete(*(keys.event_stream(p) for p in range(args.partitions)))
        client.close()
    finally:
        owned.close()

    consumer_rate = statistics.median(samples["consumer"])
    bare_rate = statistics.median(samples["bare"])
    figures = {
        "consumer_per_s": round(consumer_rate, 1),
        "bare_per_s": round(bare_rate, 1),
        "ratio": round(consumer_rate / bare_rate, 3),
        "partitions": args.partitions,
    }
    if args.json:
        print(json.dumps(figures))
        return 0
    print(f"{machine()}")
    print(
        f"{args.n} events, batches of {args.batch}, median of {max(1, args.rounds)} "
        f"alternating rounds, {args.partitions} partition(s)   events/s"
    )
    print(f"  bare XREADGROUP/XACK loop                               {bare_rate:9.0f}")
    print(f"  EventConsumer, no-op handler (parse, dispatch, ack)     {consumer_rate:9.0f}")
    print(f"  ratio consumer / bare                                   {figures['ratio']:9.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
