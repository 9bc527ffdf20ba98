"""The event bus, both sides: the publisher, the entries on the stream, handlers by type, a
consumer-group runner with retries, dead letters and takeover, replay, idempotent handlers,
and the built-in handler.

This module only re-exports the user API; the modules of the package import each other
directly, never this one, so loading any of them loads no cycle.
"""

from intent.errors import RejectEvent, RetryLater
from intent.events.builtin import ContextInvalidation, register_builtin_handlers
from intent.events.config import ConsumerConfig, UnknownTypePolicy, default_consumer_name
from intent.events.consumer import ConsumerStats, EventConsumer
from intent.events.deadletter import DeadLetter, DeadLetters
from intent.events.entries import event_from_fields
from intent.events.handler import Delivery, EventHandler, Handler, current_delivery
from intent.events.idempotency import EventInProgress, Idempotency
from intent.events.publisher import EventPublisher, build_events, event_id
from intent.events.replay import ReplayError, ReplayResult, replay
from intent.models import Event, IntentEvent

__all__ = [
    "ConsumerConfig",
    "ConsumerStats",
    "ContextInvalidation",
    "DeadLetter",
    "DeadLetters",
    "Delivery",
    "Event",
    "EventConsumer",
    "EventHandler",
    "EventInProgress",
    "EventPublisher",
    "Handler",
    "Idempotency",
    "IntentEvent",
    "RejectEvent",
    "ReplayError",
    "ReplayResult",
    "RetryLater",
    "UnknownTypePolicy",
    "build_events",
    "current_delivery",
    "default_consumer_name",
    "event_from_fields",
    "event_id",
    "register_builtin_handlers",
    "replay",
]
