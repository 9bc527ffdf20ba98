"""Events on the bus (a Redis Stream): building them from a decision and publishing once.

An event's id derives from its request and type, and the publish script skips an id it
has already seen, so a retried or redelivered emit step adds no duplicate.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

import redis

from intent import codec, scripts
from intent.errors import ValidationError
from intent.keys import Keys
from intent.models import Event, IntentEvent, IntentResult

__all__ = ["EventPublisher", "IntentEvent", "build_events", "event_from_fields", "event_id"]


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


# An entry's data: what an event may carry, and no more (a consumer reads untrusted entries).
DATA_LIMITS = codec.Limits(max_bytes=1 << 20, max_depth=32, max_string=1 << 20)


def event_from_fields(fields: Mapping[str, str] | Mapping[bytes, bytes]) -> Event:
    """Parse a stream entry back into an :class:`Event`; raises pydantic's ValidationError
    or :class:`~intent.errors.ValidationError` (not UTF-8, data too deep, not JSON...)."""
    text: dict[str, str] = {}
    for key, value in fields.items():
        name, content = _text(key, "a field name"), _text(value, f"field {key!r}")
        text[name] = content
    payload: dict[str, Any] = dict(text)
    try:
        payload["data"] = codec.loads(text.get("data", "{}"), DATA_LIMITS, "data")
    except ValidationError as exc:
        field = exc.field if exc.field == "data" else f"data.{exc.field}"
        raise ValidationError(field, exc.message) from None
    return Event.model_validate(payload)


def _text(value: str | bytes, what: str) -> str:
    """UTF-8 text: a client reading with errors="surrogateescape" hands undecodable bytes
    over as lone surrogates, refused here."""
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise ValidationError(what, "is not UTF-8 text") from None
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValidationError(what, "is not UTF-8 text") from None
    return value


class EventPublisher:
    """Publishes events to ``intent:events`` (XADD, MAXLEN ~), each id at most once."""

    def __init__(self, client: redis.Redis, keys: Keys, maxlen: int, dedup_ttl: int):
        self.client = client
        self.keys = keys
        self.maxlen = maxlen
        self.dedup_ttl = dedup_ttl
        self._publish = scripts.register(client, "publish_events")

    def publish(self, events: list[Event]) -> list[str]:
        """Publish ``events``; returns the stream id of each new one ('' if already there)."""
        if not events:
            return []
        ids = self._publish(
            keys=[self.keys.events_stream, *(self.keys.event_seen(e.id) for e in events)],
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
