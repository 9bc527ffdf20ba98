"""The publishing side of the bus: events built from a decision, added to the stream once.

An event's id derives from its request and type, and the publish script skips an id it
has already seen, so a retried or redelivered emit step adds no duplicate. With several
partitions each event goes to its context's (intent.events.partitions), whose ``seen``
marks are the ones that count for it: one script call per partition an emit touches.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import redis

from intent import scripts
from intent.events.partitions import event_partition
from intent.keys import Keys
from intent.models import Event, IntentEvent, IntentResult


def event_id(request_id: str, event_type: IntentEvent) -> str:
    digest = hashlib.sha256(f"{request_id}:{event_type.value}".encode()).hexdigest()
    return f"evt_{digest[:24]}"


def _event_data(result: IntentResult, event_type: IntentEvent) -> dict[str, Any]:
    context, pattern, predictions = result.context, result.pattern, result.predictions
    assert context is not None and pattern is not None
    data: dict[str, Any] = {"context_id": context.context_id}
    if event_type in (IntentEvent.PATTERN_DETECTED, IntentEvent.PATTERN_UPDATED):
        data.update(label=pattern.label, confidence=pattern.confidence)
    if event_type is IntentEvent.PATTERN_UPDATED:
        data.update(
            previous_label=pattern.previous_label,
            previous_confidence=pattern.previous_confidence,
        )
    if event_type is IntentEvent.CONTEXT_CHANGED:
        data.update(context_hash=pattern.context_hash, version=context.version)
    if event_type is IntentEvent.PREDICTION_RECEIVED and predictions is not None:
        data.update(
            model_version=predictions.model_version,
            predictions=[p.model_dump() for p in predictions.predictions],
        )
    return data


def build_events(result: IntentResult) -> list[Event]:
    """The events an analysis's decision calls for; same input, same events (ids, times)."""
    pattern = result.pattern
    if pattern is None:
        return []
    return [
        Event(
            id=event_id(result.request.request_id, event_type),
            type=event_type,
            pattern_id=result.request.pattern_id,
            data=_event_data(result, event_type),
            timestamp=pattern.decided_at,
            request_id=result.request.request_id,
        )
        for event_type in pattern.events
    ]


def _stream_fields(event: Event) -> list[str]:
    return [
        "id",
        event.id,
        "type",
        event.type.value,
        "pattern_id",
        event.pattern_id,
        "request_id",
        event.request_id,
        "timestamp",
        event.timestamp,
        "source",
        event.source,
        "schema_version",
        str(event.schema_version),
        "data",
        json.dumps(event.data, separators=(",", ":")),
    ]


class EventPublisher:
    """Publishes events to ``intent:events`` (XADD, MAXLEN ~), each id at most once; with
    ``partitions`` > 1, each to its context's partition stream."""

    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        maxlen: int,
        dedup_ttl: int,
        partitions: int = 1,
    ):
        self.client = client
        self.keys = keys
        self.maxlen = maxlen
        self.dedup_ttl = dedup_ttl
        self.partitions = partitions
        self._publish = scripts.register(client, "publish_events")

    def publish(self, events: list[Event]) -> list[str]:
        """Publish ``events``; returns the stream id of each new one ('' if already there)."""
        if not events:
            return []
        if self.partitions == 1:
            return self._publish_to(0, events)
        by_partition: dict[int, list[int]] = {}
        for index, event in enumerate(events):
            by_partition.setdefault(event_partition(event, self.partitions), []).append(index)
        ids = [""] * len(events)
        # One script per partition (never two partitions' keys in one call: one slot each).
        for partition, indexes in by_partition.items():
            added = self._publish_to(partition, [events[i] for i in indexes])
            for index, stream_id in zip(indexes, added, strict=True):
                ids[index] = stream_id
        return ids

    def _publish_to(self, partition: int, events: list[Event]) -> list[str]:
        keys = self.keys
        ids = self._publish(
            keys=[
                keys.event_stream(partition),
                *(keys.event_seen(e.id, partition) for e in events),
            ],
            args=[
                self.maxlen,
                self.dedup_ttl,
                *(json.dumps(_stream_fields(e)) for e in events),
            ],
        )
        return [i.decode() if isinstance(i, bytes) else str(i) for i in ids]

    def publish_event(self, event: Event) -> bool:
        """Publish one event; False when its id was already published."""
        return bool(self.publish([event])[0])
