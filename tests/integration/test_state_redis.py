"""Detection state and event publishing against real Redis, under concurrency and replay."""

from __future__ import annotations

import multiprocessing as mp
import os
from typing import Any

import pytest
import redis

from intent.detection import PatternDetector, Rules
from intent.events import build_events, event_from_fields
from intent.keys import Keys
from intent.models import (
    Context,
    IntentEvent,
    IntentRequest,
    IntentResult,
    Prediction,
    PredictionSet,
)

pytestmark = pytest.mark.integration
KEYS = Keys("intent:")


def predictions(label: str, confidence: float) -> PredictionSet:
    return PredictionSet(
        pattern_id="p1",
        predictions=[Prediction(label=label, confidence=confidence)],
        model_version="m1",
    )


def _detect_in_process(url: str, request_id: str, barrier: Any, out: Any) -> None:
    client = redis.Redis.from_url(url)
    detector = PatternDetector(client, KEYS, Rules(), memo_ttl=60)
    barrier.wait()
    result = detector.detect(request_id, "ctx-1", "p1", predictions("buy", 0.9), "h1")
    out.put((request_id, [e.value for e in result.events]))


def test_sixteen_processes_detect_one_pattern_once(redis_client: redis.Redis) -> None:
    url = os.environ["INTENT_REDIS_URL"]
    ctx = mp.get_context("fork")
    barrier, out = ctx.Barrier(16), ctx.Queue()
    procs = [
        ctx.Process(target=_detect_in_process, args=(url, f"r{i}", barrier, out)) for i in range(16)
    ]
    for p in procs:
        p.start()
    results = dict(out.get(timeout=30) for _ in procs)
    for p in procs:
        p.join(timeout=10)

    detected = [rid for rid, events in results.items() if "pattern_detected" in events]
    assert len(detected) == 1
    assert all("prediction_received" in events for events in results.values())
    assert not any("pattern_updated" in events for events in results.values())


def test_a_redelivered_detection_repeats_its_decision(redis_client: redis.Redis) -> None:
    detector = PatternDetector(redis_client, KEYS, Rules(), memo_ttl=60)
    first = detector.detect("r1", "ctx-1", "p1", predictions("buy", 0.9), "h1")
    again = detector.detect("r1", "ctx-1", "p1", predictions("buy", 0.9), "h1")
    later = detector.detect("r2", "ctx-1", "p1", predictions("buy", 0.9), "h1")

    assert IntentEvent.PATTERN_DETECTED in first.events
    assert again == first
    assert IntentEvent.PATTERN_DETECTED not in later.events


def test_updates_and_context_changes_across_analyses(redis_client: redis.Redis) -> None:
    detector = PatternDetector(redis_client, KEYS, Rules(), memo_ttl=60)
    detector.detect("r1", "ctx-1", "p1", predictions("buy", 0.7), "h1")
    moved = detector.detect("r2", "ctx-1", "p1", predictions("buy", 0.85), "h2")
    assert moved.events == [
        IntentEvent.CONTEXT_CHANGED,
        IntentEvent.PATTERN_UPDATED,
        IntentEvent.PREDICTION_RECEIVED,
    ]
    assert redis_client.ttl(KEYS.pattern_state("ctx-1", "p1")) == -1  # durable state
    assert 0 < redis_client.ttl(KEYS.pattern_decision("ctx-1", "p1", "r2")) <= 60


def _result() -> IntentResult:
    request = IntentRequest(request_id="r-evt", client_id="web", context_id="c1", pattern_id="p1")
    context = Context(context_id="c1", version=1, attributes={"a": 1}, updated_at="t")
    from intent.models import PatternResult

    pattern = PatternResult(
        label="buy",
        confidence=0.9,
        context_hash="h",
        decided_at="2026-01-01T00:00:00Z",
        events=[IntentEvent.PATTERN_DETECTED, IntentEvent.PREDICTION_RECEIVED],
    )
    return IntentResult(
        request=request, context=context, predictions=predictions("buy", 0.9), pattern=pattern
    )


def test_publishing_is_idempotent_per_event_id(redis_client: redis.Redis) -> None:
    from intent.events import EventPublisher

    publisher = EventPublisher(redis_client, KEYS, maxlen=1000, dedup_ttl=60)
    events = build_events(_result())
    first = publisher.publish(events)
    second = publisher.publish(build_events(_result()))

    assert all(first) and second == ["", ""]
    entries = redis_client.xrange(KEYS.events_stream)
    assert [event_from_fields(f) for _, f in entries] == events
    assert 0 < redis_client.ttl(KEYS.event_seen(events[0].id)) <= 60


def test_the_stream_is_bounded(redis_client: redis.Redis) -> None:
    from intent.events import EventPublisher

    publisher = EventPublisher(redis_client, KEYS, maxlen=10, dedup_ttl=60)
    for i in range(300):
        result = _result()
        result = result.model_copy(
            update={"request": result.request.model_copy(update={"request_id": f"r{i}"})}
        )
        publisher.publish(build_events(result))
    # MAXLEN ~ trims whole macro nodes: the stream stays near the bound, far below 600.
    assert redis_client.xlen(KEYS.events_stream) < 250
